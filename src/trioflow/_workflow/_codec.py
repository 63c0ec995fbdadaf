"""The JSON codec of stored values: step values and shared state as a store keeps them.

A value is stored as a :class:`~trioflow.StoredValue`: the JSON text of its unstructured form,
made by a cattrs converter (attrs classes, dataclasses, datetimes, enums, paths, sets and
tuples), and the name of its type. Decoding gives the type back when it can be known: from the
step function's return annotation, or from the stored type name when that type can be
imported.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import pathlib
import typing
from collections.abc import Callable
from types import NoneType
from typing import Any

import cattrs
from cattrs.preconf.json import make_converter

from .._errors import UnstorableValueError
from ._store import StoredValue

__all__ = ("converter", "decode_value", "encode_value", "return_hint")

converter: cattrs.Converter = make_converter()
"""The cattrs converter that turns step values and state into JSON-ready data and back."""
converter.register_unstructure_hook(pathlib.PurePath, str)
converter.register_structure_hook_func(
    lambda t: isinstance(t, type) and issubclass(t, pathlib.PurePath),
    lambda value, t: t(value),
)

_JSON_NATIVE = (str, int, float, bool, NoneType)


class _Unstorable(Exception):
    def __init__(self, culprit: type) -> None:
        super().__init__(culprit)
        self.culprit = culprit


def _refuse(obj: object) -> Any:
    raise _Unstorable(type(obj))


# One encoder for every value: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(default=_refuse, separators=(",", ":")).encode
_NULL = StoredValue(json="null")  # a step that returns nothing: most steps


def _type_name(tp: type) -> str:
    return f"{tp.__module__}:{tp.__qualname__}"


def encode_value(step: str, value: Any) -> StoredValue:
    """Encode a value as JSON through :data:`converter`.

    Args:
        step: The step the value belongs to (for the error message).
        value: Any value.

    Returns:
        Its :class:`StoredValue`.

    Raises:
        UnstorableValueError: The value (or something inside it) cannot be stored as JSON; the
            error names the step and the type that could not be stored.
    """
    if value is None:
        return _NULL
    tp = type(value)
    try:
        data = value if tp in _JSON_NATIVE else converter.unstructure(value)
        text = _encode(data)
    except _Unstorable as exc:
        raise UnstorableValueError(step, exc.culprit) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise UnstorableValueError(step, tp) from exc
    return StoredValue(json=text, type=None if tp in _JSON_NATIVE else _type_name(tp))


def _resolve(name: str) -> Any:
    module_name, _, qualname = name.partition(":")
    if "<" in qualname:  # a local class: cannot be found again
        return None
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return obj if isinstance(obj, type) else None


def decode_value(stored: StoredValue, hint: Any = None) -> Any:
    """Decode a stored value, giving back its type when it can be known.

    The type is taken from ``hint`` (a step function's return annotation) when given, else from
    the stored type name when that type can be imported; otherwise the JSON data comes back as
    it is (dicts, lists, strings, numbers).

    Args:
        stored: The stored value.
        hint: A type to structure the data into, or None.

    Returns:
        The value.
    """
    data = stored.data()
    for target in (hint, _resolve(stored.type) if stored.type else None):
        if target is None or target is Any or target is object:
            continue
        try:
            return converter.structure(data, target)
        except Exception:
            continue
    return data


def return_hint(fn: Callable[..., Any]) -> Any:
    """Return the resolved return annotation of a step function, or None.

    Args:
        fn: A step function (or a callable object with an async ``__call__``).

    Returns:
        The annotation, or None when there is none or it cannot be resolved.
    """
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(type(target), "__call__", None)  # noqa: B004 - a callable object
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        return None
    return hints.get("return")
