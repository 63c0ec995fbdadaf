"""Building frozen attrs values on a run's hot paths, without their generated ``__init__``.

A frozen attrs class sets each field through ``object.__setattr__`` in its ``__init__``, behind
keyword arguments and validators: right for values users build, twice the cost of what a run
needs for the snapshots and records it makes by the thousand from its own, already checked
counters. :func:`builder` makes a function that takes the fields positionally, in their
declared order, and sets the slots directly, generated once per class as attrs generates its
methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

__all__ = ("builder",)

T = TypeVar("T")


def builder(cls: type[T]) -> Callable[..., T]:
    """Return a function building ``cls`` from its fields, positionally, without ``__init__``.

    Only for values whose fields the caller knows to be valid: no converter, validator or
    default runs.

    Args:
        cls: A slotted attrs class (frozen or not).

    Returns:
        ``build(field1, field2, ...) -> cls``, every field given, in declaration order.
    """
    names = [field.name for field in attrs.fields(cls)]  # type: ignore[arg-type]
    namespace: dict[str, Any] = {"_new": cls.__new__, "_cls": cls}
    lines = [f"def build({', '.join(names)}):", "    obj = _new(_cls)"]
    for k, name in enumerate(names):
        namespace[f"_set{k}"] = getattr(cls, name).__set__  # the slot's own descriptor
        lines.append(f"    _set{k}(obj, {name})")
    lines.append("    return obj")
    exec("\n".join(lines), namespace)  # code made from the class's own field names
    build: Callable[..., T] = namespace["build"]
    build.__qualname__ = f"builder({cls.__qualname__})"
    return build
