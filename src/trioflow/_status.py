"""The one base of trioflow's status enums, and their one word for "done well": ``SUCCEEDED``.

Every status (how an operation, a step, a run or a request's processing ended) is a
:class:`Status`: a :class:`enum.StrEnum` whose values are the lowercase member names, so a
status compares equal to its value (``StepStatus.SUCCEEDED == "succeeded"``), prints as it, and
hashes as fast as a str. A member renamed since an earlier release stays reachable by its old
name and old value, with a :class:`DeprecationWarning` naming the new one.
"""

from __future__ import annotations

import enum
from typing import Any

from ._deprecate import warn_renamed

__all__ = ("Status", "renamed_members")

_RENAMED: dict[str, dict[str, str]] = {}  # class qualname -> old member name -> new name


class _StatusType(enum.EnumType):
    def __getattr__(cls, name: str) -> Any:
        new = _RENAMED.get(cls.__qualname__, {}).get(name)
        if new is None:
            raise AttributeError(name)
        warn_renamed(f"{cls.__name__}.{name}", f"{cls.__name__}.{new}")
        return cls[new]


class Status(enum.StrEnum, metaclass=_StatusType):
    """Base class of trioflow's status enums (not used on its own)."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        # An old member's value (e.g. "completed") still finds the new member, with a warning.
        for old, new in _RENAMED.get(cls.__qualname__, {}).items():
            if value == old.lower():
                warn_renamed(f"{cls.__name__}({value!r})", f"{cls.__name__}({cls[new].value!r})")
                return cls[new]
        return None


def renamed_members(status: type[Status], **old_to_new: str) -> None:
    """Declare members of ``status`` renamed since an earlier release.

    Args:
        status: The status enum.
        **old_to_new: Old member name -> the new member's name, e.g. ``COMPLETED="SUCCEEDED"``.
    """
    _RENAMED.setdefault(status.__qualname__, {}).update(old_to_new)
