"""Checked settings: attrs fields that carry a check, and every problem reported with its path.

A settings class declares each field with :func:`field` and a *check* (a function returning a
problem message, a list of ``(path, message)`` problems, or ``None``) and calls :func:`validate`
in ``__attrs_post_init__``. The same checks run whether the value is built in code or structured
from JSON-like data by :func:`checked_converter` (which also rejects unknown keys, parses
durations and checks every entry of a mapping), and every problem of the whole tree is raised at
once as one :class:`~trioflow.ConfigError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, get_args

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ._checks import check_bool, check_int, check_number, check_percent, problem
from ._errors import ConfigError
from ._structure import Invalid, describe, join_path, problems_of, strict_converter

__all__ = (
    "Check",
    "Problems",
    "boolean",
    "checked_converter",
    "field",
    "instance_of",
    "int_at_least",
    "is_number",
    "mapping",
    "names",
    "number_at_least",
    "one_of",
    "optional",
    "parse_duration",
    "percent",
    "validate",
)

Problems = list[tuple[str, str]]
Check = Callable[[Any], "str | Problems | None"]

_CHECK = "trioflow.check"
_DURATION = "trioflow.duration"
_ITEMS = "trioflow.items"
_KEYS = "trioflow.keys"


# --- checks: return a problem message, or None ---------------------------------------------
# The predicates are those of _checks, so a file and a constructor refuse the same values with
# the same words; only the name is replaced by the value's path.
def is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def int_at_least(minimum: int) -> Check:
    return lambda value: problem(check_int, value, minimum=minimum)


def number_at_least(minimum: float, *, strict: bool = False, finite: bool = True) -> Check:
    return lambda value: problem(
        check_number, value, minimum=minimum, strict=strict, finite=finite
    )


def percent(value: Any) -> str | Problems | None:
    return problem(check_percent, value)


def optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def boolean(value: Any) -> str | None:
    return problem(check_bool, value)


def one_of(*choices: str) -> Check:
    listed = ", ".join(repr(c) for c in choices)

    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {listed}, got {describe(value)}"

    return check


def names(value: Any) -> str | None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        return f"must be a list of non-empty strings, got {describe(value)}"
    return None


def mapping(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return f"must be a mapping, got {describe(value)}"
    return None


def _key(name: str) -> str:
    return name if name.isidentifier() else f"[{name!r}]"


def _as_problems(result: str | Problems | None) -> Problems:
    if result is None:
        return []
    if isinstance(result, str):
        return [("", result)]
    return result


def instance_of(cls: type, *, optional: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if (optional and value is None) or isinstance(value, cls):
            return None
        return f"must be a {cls.__name__}, got {describe(value)}"

    return check


_HMS = re.compile(r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$")


def parse_duration(value: Any, *, optional: bool = False) -> float | None:
    """Parse a duration: seconds as a number, or an ``"HH:MM:SS[.fff]"`` string.

    Args:
        value: The value read from the configuration.
        optional: Whether ``None`` (or the string ``"none"``) is allowed, meaning no limit.

    Returns:
        The duration in seconds, or ``None``.

    Raises:
        Invalid: The value is not a duration.
    """
    if optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
        return None
    if is_number(value):
        try:
            return float(value)
        except OverflowError:  # an int too large for a float: the field's check refuses it
            return math.inf
    if isinstance(value, str):
        match = _HMS.match(value.strip())
        if match:
            hours, minutes, seconds = match.groups()
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    expected = 'seconds or an "HH:MM:SS" string' + (' or "none"' if optional else "")
    raise Invalid(f"must be a duration ({expected}), got {describe(value)}")


def field(
    default: Any = attrs.NOTHING,
    *,
    check: Check,
    duration: Literal["required", "optional"] | None = None,
    items: Check | None = None,
    keys: Check | None = None,
    factory: Callable[[], Any] | None = None,
    converter: Callable[[Any], Any] | None = None,
) -> Any:
    # check: the whole value; items/keys: each value/key of a mapping, so that every bad
    # entry is reported (with its key in the path), not only the first.
    metadata = {_CHECK: check, _DURATION: duration, _ITEMS: items, _KEYS: keys}
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata, converter=converter)
    return attrs.field(default=default, metadata=metadata, converter=converter)


def _entry_problems(value: Mapping[Any, Any], items: Check | None, keys: Check | None) -> Problems:
    problems: Problems = []
    for key, item in value.items():
        where = _key(key) if isinstance(key, str) else f"[{key!r}]"
        for check, checked in ((keys, key), (items, item)):
            if check is not None:
                problems.extend(
                    (join_path(where, sub), p) for sub, p in _as_problems(check(checked))
                )
    return problems


def validate(instance: Any, cross: Callable[[], Problems] | None = None) -> None:
    """Check every field of a config value; raise one ConfigError listing every problem.

    ``cross`` checks fields against each other (run only when each of them is valid alone).
    """
    problems: Problems = []
    for a in attrs.fields(type(instance)):
        check = a.metadata.get(_CHECK)
        if check is None:
            continue
        value = getattr(instance, a.name)
        found = _as_problems(check(value))
        if not found and isinstance(value, Mapping):
            found = _entry_problems(value, a.metadata[_ITEMS], a.metadata[_KEYS])
        problems.extend((join_path(a.name, sub), problem) for sub, problem in found)
    if not problems and cross is not None:
        problems = cross()
    if problems:
        raise ConfigError(problems)


def _field_hook(converter: cattrs.Converter, attribute: attrs.Attribute[Any]) -> Any:
    check: Check = attribute.metadata[_CHECK]
    items: Check | None = attribute.metadata[_ITEMS]
    keys: Check | None = attribute.metadata[_KEYS]
    duration = attribute.metadata.get(_DURATION)
    tp: Any = attribute.type

    def structure(value: Any, _: Any) -> Any:
        if duration is not None:
            value = parse_duration(value, optional=duration == "optional")
        elif items is not None or keys is not None:
            value = _structure_entries(converter, value, tp, items, keys)
        else:
            value = converter.structure(value, tp)
            if isinstance(value, list):
                value = tuple(value)
        problems = _as_problems(check(value))
        if problems:
            raise ConfigError(problems)
        return value

    return structure


def _structure_entries(
    converter: cattrs.Converter, value: Any, tp: Any, items: Check | None, keys: Check | None
) -> dict[str, Any]:
    """Structure a mapping entry by entry, collecting every bad key and value."""
    if not isinstance(value, Mapping):
        raise Invalid(f"expected a table, got {describe(value)}")
    _, item_type = get_args(tp)
    out: dict[str, Any] = {}
    problems: Problems = []
    for key, raw in value.items():
        where = _key(key) if isinstance(key, str) else f"[{key!r}]"
        if keys is not None:
            problems.extend((where, p) for _, p in _as_problems(keys(key)))
        try:
            item = converter.structure(raw, item_type)
        except Exception as exc:
            problems.extend(problems_of(exc, where))
            continue
        if items is not None:
            found = _as_problems(items(item))
            problems.extend((join_path(where, sub), p) for sub, p in found)
        out[key] = item
    if problems:
        raise ConfigError(problems)
    return out


def checked_converter(classes: Iterable[type]) -> cattrs.Converter:
    """Return a strict converter structuring these settings classes, checking every field.

    Args:
        classes: The attrs classes whose fields were declared with :func:`field`.

    Returns:
        A converter whose ``structure`` raises an error that
        :func:`~trioflow._structure.problems_of` flattens into every problem with its path.
    """
    converter = strict_converter()
    for cls in classes:
        attrs.resolve_types(cls)
        overrides = {
            a.name: override(struct_hook=_field_hook(converter, a))
            for a in attrs.fields(cls)
            if _CHECK in a.metadata
        }
        hook: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, converter, **overrides)  # type: ignore[arg-type]
        converter.register_structure_hook(cls, _table(hook))
    return converter


def _table(hook: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def structure(value: Any, tp: Any) -> Any:
        if not isinstance(value, Mapping):
            raise Invalid(f"expected a table, got {describe(value)}")
        return hook(value, tp)

    return structure
