"""Building frozen attrs values on hot paths, without their generated ``__init__``.

A frozen attrs class sets each field through ``object.__setattr__`` in its ``__init__``, behind
keyword arguments and validators: right for values users build, several times what an engine
needs for the outcomes, snapshots and records it makes by the thousand from its own, already
checked counters. :func:`builder` makes a function that takes the fields positionally, in their
declared order, generated once per class as attrs generates its methods. It fills a private,
mutable twin of the class (a subclass adding nothing but plain attribute setting) with ordinary
attribute stores, then makes the object an instance of the class itself (``__class__``
assignment, which CPython allows between classes of the same layout): about a third of the
cost of setting each slot through its descriptor, and the object is then exactly what the
class's own ``__init__`` would have made. :func:`refiller` makes a function that sets some of
the fields of an instance again: for a value nobody but its maker can reach any more, which
the maker may reuse (as CPython's ``zip`` reuses its result tuple when it holds the only
reference). :func:`lazy_field` lets a field's slot hold a placeholder that becomes the
field's value when first read.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MemberDescriptorType
from typing import Any, TypeVar, final

import attrs

__all__ = ("builder", "lazy_field", "refiller")

T = TypeVar("T")


def _generate(cls: type[Any], name: str, fields: list[str], head: str, tail: str) -> Any:
    # One function setting each field through its slot's own descriptor, made from the
    # class's own field names (as attrs makes its methods).
    namespace: dict[str, Any] = {"_new": cls.__new__, "_cls": cls}
    lines = [f"def {name}({', '.join([*([head] if head else []), *fields])}):"]
    if not head:
        lines.append("    obj = _new(_cls)")
    for k, field in enumerate(fields):
        namespace[f"_set{k}"] = getattr(cls, field).__set__  # the slot's own descriptor
        lines.append(f"    _set{k}(obj, {field})")
    lines.append(f"    return {tail}")
    return _made(cls, name, lines, namespace)


def _made(cls: type[Any], name: str, lines: list[str], namespace: dict[str, Any]) -> Any:
    exec("\n".join(lines), namespace)
    made = namespace[name]
    made.__qualname__ = f"{name}er({cls.__qualname__})"
    return made


def _twin(cls: type[Any], fields: list[str]) -> type[Any] | None:
    # A subclass that adds no slot (so an instance may become a ``cls`` by assigning its
    # ``__class__``) and sets attributes as plain objects do, straight into the slots: the
    # slots' own descriptors are in its dict, so a lazy field's reader, set on ``cls`` later,
    # is not in the way. None when a field has no slot of its own.
    slots = {}
    for field in fields:
        slot = cls.__dict__.get(field)
        if type(slot) is not MemberDescriptorType:
            return None
        slots[field] = slot
    return type(
        f"_Building{cls.__name__}",
        (cls,),
        {
            "__slots__": (),
            "__module__": cls.__module__,
            # object's own: attribute setting then takes the interpreter's plain path.
            "__setattr__": object.__setattr__,
            "__delattr__": object.__delattr__,
            **slots,
        },
    )


def builder(cls: type[T]) -> Callable[..., T]:
    """Return a function building ``cls`` from its fields, positionally, without ``__init__``.

    Only for values whose fields the caller knows to be valid: no converter, validator or
    default runs. Call it before :func:`lazy_field` for the same class.

    Args:
        cls: A slotted attrs class (frozen or not).

    Returns:
        ``build(field1, field2, ...) -> cls``, every field given, in declaration order.
    """
    names = [field.name for field in attrs.fields(cls)]  # type: ignore[arg-type]
    twin = _twin(cls, names)
    if twin is not None:
        namespace: dict[str, Any] = {"_new": object.__new__, "_twin": twin, "_cls": cls}
        lines = [f"def build({', '.join(names)}):", "    obj = _new(_twin)"]
        lines += [f"    obj.{field} = {field}" for field in names]
        lines += ["    obj.__class__ = _cls", "    return obj"]
        build: Callable[..., T] = _made(cls, "build", lines, namespace)
        try:
            probe = build(*([None] * len(names)))
        except TypeError:  # an interpreter that refuses the class assignment
            pass
        else:
            if type(probe) is cls:
                return build
    build = _generate(cls, "build", names, "", "obj")
    return build


def refiller(cls: type[T], *fields: str) -> Callable[..., None]:
    """Return a function setting some fields of a ``cls`` again, without ``__setattr__``.

    Only for an instance nobody else can reach (its maker holds the only reference, and no
    weak reference exists), with values the caller knows to be valid: to anyone else it is a
    new value, since nobody saw the old one.

    Args:
        cls: A slotted attrs class (frozen or not).
        *fields: The names of the fields to set, in the order the function takes them.

    Returns:
        ``refill(obj, field1, field2, ...) -> None``.
    """
    known = {field.name for field in attrs.fields(cls)}  # type: ignore[arg-type]
    unknown = [field for field in fields if field not in known]
    if unknown:
        raise ValueError(f"fields must be fields of {cls.__qualname__}, got {unknown!r}")
    refill: Callable[..., None] = _generate(cls, "refill", list(fields), "obj", "None")
    return refill


@final
class _LazyField:
    # A field's class attribute in place of its slot's descriptor: reads through the slot,
    # turning a placeholder into the value, so that attrs (eq, hash, repr, asdict, evolve,
    # pickling) and every reader see the value.
    __slots__ = ("_keep", "_make", "_placeholder", "_slot")

    def __init__(
        self, slot: Any, placeholder: type, make: Callable[[Any], Any], *, keep: bool
    ) -> None:
        self._slot = slot
        self._placeholder = placeholder
        self._make = make
        self._keep = keep

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self._slot
        value = self._slot.__get__(obj, owner)
        if type(value) is self._placeholder:
            value = self._make(value)
            if self._keep:
                self._slot.__set__(obj, value)
        return value

    def __set__(self, obj: object, value: object) -> None:
        self._slot.__set__(obj, value)

    def __delete__(self, obj: object) -> None:
        self._slot.__delete__(obj)


def lazy_field(
    cls: type[Any], name: str, placeholder: type, make: Callable[[Any], Any], *, keep: bool
) -> Any:
    """Let field ``name`` of ``cls`` hold a placeholder until it is read.

    Reading the field gives ``make(placeholder)`` when its slot holds an instance of exactly
    ``placeholder`` (and keeps that value in the slot instead, with ``keep``); any other
    value reads as it is. Call it after the :func:`builder` and :func:`refiller` functions of
    ``cls`` are made: they set the slot itself.

    Args:
        cls: A slotted attrs class.
        name: One of its fields.
        placeholder: The type of the values that stand for another.
        make: Turns a placeholder into the field's value.
        keep: Whether the value replaces the placeholder in the slot once made.

    Returns:
        The slot's own descriptor (``slot.__get__(obj)`` reads the placeholder).
    """
    slot = cls.__dict__[name]
    setattr(cls, name, _LazyField(slot, placeholder, make, keep=keep))
    return slot
