"""Deprecated names: an alias that still works and says, once per place of use, what replaced it.

The way trio deprecates (``trio._deprecate``): a module keeps a table of old names, and its
``__getattr__`` (:pep:`562`) resolves each one to the new object with a
:class:`DeprecationWarning` that names the replacement. Python's warning filters show it once
per calling line, so code written against an older trioflow keeps working and is told once
where to change.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ("Alias", "module_getattr", "warn_renamed")


class Alias:
    """An old name's replacement: where it lives now and since which version it is deprecated."""

    __slots__ = ("new_name", "since", "target")

    def __init__(self, new_name: str, target: Callable[[], Any], since: str = "0.2") -> None:
        self.new_name = new_name  # e.g. "trioflow.ResourceExhaustedError"
        self.target = target  # resolved lazily: the new object may live in a later import
        self.since = since


def warn_renamed(old: str, new: str, *, since: str = "0.2", stacklevel: int = 3) -> None:
    """Warn that ``old`` was renamed to ``new``.

    Args:
        old: The old name, e.g. ``"trioflow.map"`` or ``"retry.max_retries"``.
        new: What to use instead.
        since: The trioflow version that deprecated it.
        stacklevel: Passed to :func:`warnings.warn`, so the warning points at the caller.
    """
    warnings.warn(
        f"{old} is deprecated since trioflow {since}; use {new} instead",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def module_getattr(
    module: str, aliases: Mapping[str, Alias], lazy: Mapping[str, Callable[[], Any]] | None = None
) -> Callable[[str], Any]:
    """Return a module ``__getattr__`` for the deprecated ``aliases`` of ``module``.

    Args:
        module: The module's name, for messages.
        aliases: Old name -> its replacement.
        lazy: Names that are not deprecated but loaded on first use (a submodule), each with
            the function that loads it.

    Returns:
        The function to assign to the module's ``__getattr__``.
    """
    loaders = dict(lazy or {})

    def __getattr__(name: str) -> Any:
        loader = loaders.get(name)
        if loader is not None:
            return loader()
        alias = aliases.get(name)
        if alias is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warn_renamed(f"{module}.{name}", alias.new_name, since=alias.since)
        return alias.target()

    return __getattr__
