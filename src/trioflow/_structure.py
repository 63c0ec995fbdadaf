"""Strict structuring of JSON-like data into typed values, reporting every problem with its path.

Tool arguments (from an MCP client) and configuration files arrive as JSON-like data. cattrs
turns them into typed values and, with detailed validation, collects every bad field; this
module makes its converter strict the way JSON Schema is (``"5"`` is not an int, ``1`` is not a
bool, a string is not a list) and flattens cattrs' exception groups into ``(path, message)``
pairs such as ``("items[2].count", "expected int, got 'x'")``.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
    StructureHandlerNotFoundError,
)
from cattrs.gen import make_dict_structure_fn

__all__ = ("Invalid", "describe", "join_path", "problems_of", "strict_converter")

Hook = Callable[[Any, Any], Any]


class Invalid(ValueError):
    """A value does not fit its type or bounds; the message is shown as is (path added)."""


def describe(value: object) -> str:
    """Return a short repr of a value for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_name(tp: Any) -> str:
    names = {int: "int", float: "number", str: "string", bool: "bool", type(None): "null"}
    if tp in names:
        return names[tp]
    if _is_array(tp):
        return "array"
    if _is_mapping(tp) or _is_record(tp):
        return "object"
    if _is_literal(tp):
        return "one of " + ", ".join(describe(v) for v in get_args(tp))
    return getattr(tp, "__name__", None) or repr(tp)


def _int(value: Any, tp: Any) -> int:
    if tp is not int:  # an IntEnum: singledispatch picks int's hook for it (int is in its MRO)
        return _enum(value, tp)  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"expected int, got {describe(value)}")
    return value


def _float(value: Any, tp: Any) -> float:
    if tp is not float:  # an Enum mixing in float
        return _enum(value, tp)  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"expected number, got {describe(value)}")
    return float(value)


def _str(value: Any, tp: Any) -> str:
    if tp is not str:  # a StrEnum, or an Enum mixing in str
        return _enum(value, tp)  # type: ignore[return-value]
    if not isinstance(value, str):
        raise Invalid(f"expected string, got {describe(value)}")
    return value


def _bool(value: Any, _: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected bool, got {describe(value)}")
    return value


def _none(value: Any, _: Any) -> None:
    if value is not None:
        raise Invalid(f"expected null, got {describe(value)}")


def _note(exc: BaseException, index: int | str, tp: Any) -> BaseException:
    exc.add_note(IterableValidationNote(f"Structuring {tp!r} @ index {index!r}", index, tp))
    return exc


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType)


_SEQUENCES = (list, tuple, Sequence, typing.MutableSequence, set, frozenset, typing.AbstractSet)


def _is_array(tp: Any) -> bool:
    origin = get_origin(tp) or tp
    return origin in _SEQUENCES or origin in (typing.List, typing.Tuple, typing.Set)  # noqa: UP006


def _is_mapping(tp: Any) -> bool:
    origin = get_origin(tp) or tp
    return origin in (dict, Mapping, typing.MutableMapping, typing.Dict)  # noqa: UP006


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def _is_literal(tp: Any) -> bool:
    return get_origin(tp) is Literal


def _is_annotated(tp: Any) -> bool:
    return get_origin(tp) is typing.Annotated


def _array_factory(tp: Any, converter: cattrs.Converter) -> Hook:
    origin = get_origin(tp) or tp
    args = get_args(tp)
    is_set = origin in (set, frozenset, typing.AbstractSet)
    accepted: tuple[type, ...] = (list, tuple, set, frozenset) if is_set else (list, tuple)
    hetero = origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis)
    elem = args[0] if args else Any

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, accepted):
            raise Invalid(f"expected array, got {describe(value)}")
        given: list[Any] = list(typing.cast("Iterable[Any]", value))
        if hetero:
            if len(given) != len(args):
                raise Invalid(f"expected an array of {len(args)} items, got {len(given)}")
            pairs = list(zip(given, args, strict=True))
        else:
            pairs = [(item, elem) for item in given]
        out: list[Any] = []
        errors: list[Exception] = []
        for index, (item, item_type) in enumerate(pairs):
            try:
                out.append(converter.structure(item, item_type))
            except Exception as exc:
                errors.append(_note(exc, index, item_type))  # type: ignore[arg-type]
        if errors:
            raise IterableValidationError(f"While structuring {tp!r}", errors, tp)
        if origin in (set, typing.AbstractSet):
            return set(out)
        if origin is frozenset:
            return frozenset(out)
        if origin is tuple:
            return tuple(out)
        return out

    return structure


def _mapping_factory(tp: Any, converter: cattrs.Converter) -> Hook:
    args = get_args(tp)
    key_type, value_type = args if len(args) == 2 else (Any, Any)

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise Invalid(f"expected object, got {describe(value)}")
        out: dict[Any, Any] = {}
        errors: list[Exception] = []
        for key, item in value.items():
            try:
                k = converter.structure(key, key_type)
                out[k] = converter.structure(item, value_type)
            except Exception as exc:
                errors.append(_note(exc, key, value_type))  # type: ignore[arg-type]
        if errors:
            raise IterableValidationError(f"While structuring {tp!r}", errors, tp)
        return out

    return structure


def _same(candidate: object, value: object) -> bool:
    """Whether a JSON value is this enum value or literal: ``True`` does not match ``1``."""
    if isinstance(candidate, enum.Enum):
        candidate = candidate.value
    return type(candidate) is type(value) and candidate == value


def _enum(value: Any, tp: type[enum.Enum]) -> enum.Enum:
    if isinstance(value, tp):
        return value
    for member in tp:
        if _same(member, value):
            return member
    allowed = ", ".join(describe(m.value) for m in tp)
    raise Invalid(f"expected one of {allowed}, got {describe(value)}")


def _literal_factory(tp: Any, converter: cattrs.Converter) -> Hook:
    values = get_args(tp)
    allowed = ", ".join(describe(v.value if isinstance(v, enum.Enum) else v) for v in values)

    def structure(value: Any, _: Any) -> Any:
        for candidate in values:
            if candidate is value or _same(candidate, value):
                return candidate
        raise Invalid(f"expected one of {allowed}, got {describe(value)}")

    return structure


def _union_factory(tp: Any, converter: cattrs.Converter) -> Hook:
    arms = get_args(tp)
    names = " or ".join(_json_name(arm) for arm in arms)
    # Primitive arms are tried first, with an exact type match, so 1 stays an int in
    # ``float | int`` and ``str | list[str]`` does not split a string.
    exact = {int: int, float: float, str: str, bool: bool, type(None): type(None)}
    complex_arms = [arm for arm in arms if arm not in exact]

    def structure(value: Any, _: Any) -> Any:
        for arm in arms:
            if exact.get(arm) is type(value):
                return value
        if type(value) is int and float in arms:
            return float(value)
        for arm in complex_arms:
            try:
                return converter.structure(value, arm)
            except (ClassValidationError, IterableValidationError) as exc:
                if len(complex_arms) == 1:
                    raise  # the value has the arm's shape: report the fields inside it
                del exc
            except Exception:
                pass
        raise Invalid(f"expected {names}, got {describe(value)}")

    return structure


def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp))


def _record_factory(tp: Any, converter: cattrs.Converter) -> Hook:
    inner = make_dict_structure_fn(tp, converter)

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise Invalid(f"expected object, got {describe(value)}")
        return inner(value, tp)

    return structure


def _annotated_factory(tp: Any, converter: cattrs.Converter) -> Hook:
    base = get_args(tp)[0]
    return lambda value, _: converter.structure(value, base)


def strict_converter() -> cattrs.Converter:
    """Return a cattrs converter that structures JSON-like data strictly.

    Unknown keys of attrs classes and dataclasses are rejected; attrs fields are keyed by their
    ``__init__`` names (aliases: ``secret`` for ``_secret``), as described in JSON Schema;
    every bad field is collected (detailed validation); primitives are not coerced (``"5"`` is
    not an int, ``0`` is not a bool); a string is not an array; enums and literals match by
    value and type.

    Returns:
        A new converter.
    """
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True, use_alias=True)
    for tp, hook in ((int, _int), (float, _float), (str, _str), (bool, _bool)):
        converter.register_structure_hook(tp, hook)
    converter.register_structure_hook(type(None), _none)
    factories: list[tuple[Callable[[Any], bool], Callable[[Any, cattrs.Converter], Hook]]] = [
        (_is_annotated, _annotated_factory),
        (_is_array, _array_factory),
        (_is_mapping, _mapping_factory),
        (_is_enum, lambda tp, _: _enum),
        (_is_literal, _literal_factory),
        (_is_record, _record_factory),
        (_is_union, _union_factory),
    ]
    for predicate, factory in factories:
        converter.register_structure_hook_factory(predicate, factory)
    return converter


def _join(path: str, key: object) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}" if path else key
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    return f"{path}[{key!r}]"


def join_path(path: str, sub: str) -> str:
    """Join a path and a relative path (``"retry"`` + ``"max_delay"`` -> ``"retry.max_delay"``).

    Args:
        path: The outer path, ``""`` for the root.
        sub: The relative path, ``""`` for the outer value itself.

    Returns:
        The joined path.
    """
    if not sub or sub == "$":
        return path or "$"
    if not path or path == "$":
        return sub
    return f"{path}{sub}" if sub.startswith("[") else f"{path}.{sub}"


def _leaf_message(exc: BaseException) -> str:
    if isinstance(exc, Invalid):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required field is missing"
    if isinstance(exc, StructureHandlerNotFoundError):
        return f"unsupported type: {exc}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _aliases(cls: type) -> dict[str, str]:
    if not attrs.has(cls):
        return {}
    return {a.name: a.alias for a in attrs.fields(cls) if a.alias and a.alias != a.name}


def problems_of(exc: BaseException, path: str = "") -> Iterator[tuple[str, str]]:
    """Flatten a structuring exception into ``(path, message)`` pairs.

    Args:
        exc: What ``converter.structure`` raised.
        path: The path of the structured value (``""`` for the root).

    Yields:
        One ``(path, message)`` pair per problem, in the order cattrs found them; unknown keys
        are reported one by one as ``(path.key, "unknown key")``.
    """
    if isinstance(exc, ClassValidationError | IterableValidationError):
        aliases = _aliases(exc.cl) if isinstance(exc, ClassValidationError) else {}
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            if isinstance(note, IterableValidationNote):
                key = note.index
            else:  # name the key as the data spells it: an attrs field's alias
                key = aliases.get(note.name, note.name)
            yield from problems_of(sub, _join(path, key))
        for sub in without:
            yield from problems_of(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield _join(path, key), "unknown key"
    elif isinstance(getattr(exc, "problems", None), tuple):
        # An error that already lists its problems by relative path (trioflow.ConfigError).
        for sub, message in exc.problems:  # type: ignore[attr-defined]
            yield join_path(path, sub), message
    else:
        yield path or "$", _leaf_message(exc)
