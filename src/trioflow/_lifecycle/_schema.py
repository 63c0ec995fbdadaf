"""JSON Schema of Python types, and the parameter descriptions of Google-style docstrings.

How a tool is described to an MCP client: :func:`json_schema` turns a parameter's type hint into
the JSON Schema of the values it accepts (the same strict shapes the tool registry structures
arguments into), :func:`json_default` tells whether a default can be shown in a schema, and
:func:`parse_docstring` reads the summary and the ``Args:`` descriptions of a docstring.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args, get_origin

import attrs

__all__ = ("json_default", "json_schema", "parse_docstring")

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}
_ARRAYS = (list, tuple, set, frozenset, Sequence, typing.MutableSequence, typing.AbstractSet)
_MAPPINGS = (dict, Mapping, typing.MutableMapping)


def json_default(value: object) -> tuple[bool, object]:
    """Return ``(True, json value)`` for a default that JSON can show, else ``(False, None)``."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, tuple | frozenset | set):
        value = list(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False, None
    return True, value


def _type_of_values(values: Sequence[object]) -> dict[str, Any]:
    kinds = {type(v) for v in values}
    if len(kinds) == 1:
        (kind,) = kinds
        if kind in _JSON_TYPES:
            return {"type": _JSON_TYPES[kind]}
        if kind is type(None):
            return {"type": "null"}
    return {}


def json_schema(tp: Any, *, _seen: tuple[type, ...] = ()) -> dict[str, Any]:
    """Return the JSON Schema of values of a Python type, as tools accept them.

    Supported: ``int``, ``float``, ``str``, ``bool``, ``None``, ``Any``, ``list``/``Sequence``/
    ``set``/``tuple`` of a type, fixed-length tuples, ``dict``/``Mapping`` with string keys,
    unions and ``Optional``, ``Literal``, ``Enum`` and (nested) attrs classes and dataclasses;
    ``Annotated[T, "text"]`` adds ``text`` as the description.

    Args:
        tp: The type.

    Returns:
        A JSON Schema as a dict.

    Raises:
        TypeError: The type is not supported (or is recursive).
    """
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is typing.Annotated:
        schema = json_schema(args[0], _seen=_seen)
        text = [a for a in args[1:] if isinstance(a, str)]
        if text:
            schema = {**schema, "description": " ".join(text)}
        return schema
    if tp is Any or tp is object:
        return {}
    if tp is None or tp is type(None):
        return {"type": "null"}
    if tp in _JSON_TYPES:
        return {"type": _JSON_TYPES[tp]}
    if origin in (typing.Union, types.UnionType):
        arms = [json_schema(arm, _seen=_seen) for arm in args]
        return {"anyOf": arms}
    if origin is Literal:
        values = [a.value if isinstance(a, enum.Enum) else a for a in args]
        return {**_type_of_values(values), "enum": values}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [member.value for member in tp]
        return {"title": tp.__name__, **_type_of_values(values), "enum": values}
    if (origin or tp) in _ARRAYS:
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            items = [json_schema(a, _seen=_seen) for a in args]
            n = len(items)
            return {"type": "array", "prefixItems": items, "minItems": n, "maxItems": n}
        schema = {"type": "array", "items": json_schema(args[0], _seen=_seen) if args else {}}
        if (origin or tp) in (set, frozenset, typing.AbstractSet):
            schema["uniqueItems"] = True
        return schema
    if (origin or tp) in _MAPPINGS:
        if args and args[0] is not str:
            raise TypeError(f"mapping keys must be str to be described as JSON, got {tp!r}")
        value_schema = json_schema(args[1], _seen=_seen) if args else {}
        return {"type": "object", "additionalProperties": value_schema}
    if isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp)):
        if tp in _seen:
            raise TypeError(f"recursive types are not supported, got {tp.__qualname__}")
        return _record_schema(tp, _seen=(*_seen, tp))
    raise TypeError(f"unsupported parameter type {tp!r}")


def _record_schema(cls: type, *, _seen: tuple[type, ...]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    properties: dict[str, Any] = {}
    required: list[str] = []
    if attrs.has(cls):
        for a in attrs.fields(cls):
            if not a.init:
                continue
            name = a.alias or a.name
            schema = json_schema(hints.get(a.name, Any), _seen=_seen)
            if a.default is attrs.NOTHING:
                required.append(name)
            elif not isinstance(a.default, attrs.Factory):  # type: ignore[arg-type]
                ok, value = json_default(a.default)
                if ok:
                    schema = {**schema, "default": value}
            properties[name] = schema
    else:
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            schema = json_schema(hints.get(f.name, Any), _seen=_seen)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
            elif f.default is not dataclasses.MISSING:
                ok, value = json_default(f.default)
                if ok:
                    schema = {**schema, "default": value}
            properties[f.name] = schema
    schema = {"title": cls.__name__, "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    schema["additionalProperties"] = False
    return schema


_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_SECTION = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")
_ARG_LINE = re.compile(r"^(\s*)(\*{0,2}\w+)(?:\s*\(.*?\))?:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Return the summary (first paragraph) and the ``Args:`` descriptions of a docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip():
            break
        summary.append(line.strip())
    params: dict[str, str] = {}
    in_args = False
    indent: int | None = None
    current: str | None = None
    for line in lines:
        if _ARGS_HEADER.match(line):
            in_args, indent, current = True, None, None
            continue
        if not in_args:
            continue
        if not line.strip():
            continue
        if _SECTION.match(line) and (indent is None or len(line) - len(line.lstrip()) < indent):
            in_args = False
            continue
        match = _ARG_LINE.match(line)
        depth = len(line) - len(line.lstrip())
        if match and (indent is None or depth == indent):
            indent = depth
            current = match.group(2).lstrip("*")
            params[current] = match.group(3).strip()
        elif current is not None:
            params[current] = f"{params[current]} {line.strip()}".strip()
    return " ".join(summary), params
