"""Argument checks shared by every layer: one wording for one kind of bad input.

Each check takes the value and the name the message gives it, returns the value normalised,
and raises ``TypeError`` for a value of the wrong type (``bool`` is never a number) and
``ValueError`` for one out of range, always worded "NAME must be EXPECTED, got VALUE (TYPE)"::

    check_int("5", "limit", minimum=1)  # TypeError: limit must be an int >= 1, got '5' (str)
    check_int(0, "limit", minimum=1)    # ValueError: limit must be an int >= 1, got 0 (int)

The same checks serve attrs fields through :func:`validator` (the message names the field by
its alias) and the configuration loader through :func:`problem` (the message without a name,
which the loader prefixes with the value's path). A timeout is ``None`` or ``math.inf`` for
no deadline, as in trio and anyio; :func:`check_timeout` returns ``None`` for both, so a hot
path tests one thing.

Whether a callable is async is judged here too, once for every layer:
:func:`check_async_callable` refuses a plain ``def`` function before it is ever called, and
:func:`is_awaitable` / :func:`not_awaitable` judge the result of a callable that can only be
judged by calling it (a lambda returning a coroutine is valid).
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
from collections.abc import Callable
from types import CoroutineType, FunctionType, MethodType
from typing import Any, NoReturn

import attrs

__all__ = (
    "NotAwaitableError",
    "Validator",
    "check_async_callable",
    "check_bool",
    "check_fraction",
    "check_int",
    "check_name",
    "check_number",
    "check_percent",
    "check_timeout",
    "describe",
    "is_awaitable",
    "is_sync_function",
    "no_deadline",
    "not_awaitable",
    "problem",
    "validator",
)

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]

_MAX_REPR = 60
_FLOAT_MAX = sys.float_info.max


def describe(value: object) -> str:
    """Describe a value for an error message: its (shortened) repr and its type.

    Args:
        value: The value the caller gave.

    Returns:
        For example ``'5' (str)``, ``True (bool)`` or ``nan (float)``.
    """
    text = repr(value)
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return f"{text} ({type(value).__qualname__})"


def _fail(error: type[Exception], name: str, expected: str, value: object) -> NoReturn:
    raise error(f"{name} must be {expected}, got {describe(value)}")


def _bound(x: float) -> str:
    return str(int(x)) if isinstance(x, int) else f"{x:g}"


def _bounds(low: float | None, high: float | None, *, open_low: bool, open_high: bool) -> str:
    if low is not None and high is not None:
        opening, closing = "(" if open_low else "[", ")" if open_high else "]"
        return f"in {opening}{_bound(low)}, {_bound(high)}{closing}"
    if low is not None:
        return f"{'>' if open_low else '>='} {_bound(low)}"
    if high is not None:
        return f"{'<' if open_high else '<='} {_bound(high)}"
    return ""


def check_int(
    value: object, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Check an int argument, optionally within ``[minimum, maximum]``.

    Args:
        value: What the caller passed.
        name: How the message names the argument, e.g. ``"limit"`` or ``"pools['db']"``.
        minimum: The smallest value allowed, if any.
        maximum: The largest value allowed, if any.

    Returns:
        The value.

    Raises:
        TypeError: Not an int (a ``bool`` or a float with an integral value included).
        ValueError: Outside the bounds.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(TypeError, name, _int_expected(minimum, maximum), value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        _fail(ValueError, name, _int_expected(minimum, maximum), value)
    return value


def _int_expected(minimum: int | None, maximum: int | None) -> str:
    bounds = _bounds(minimum, maximum, open_low=False, open_high=False)
    return f"an int {bounds}" if bounds else "an int"


def check_number(
    value: object,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
    finite: bool = True,
) -> float:
    """Check a real-number argument (an int or a float, never a bool).

    Args:
        value: What the caller passed.
        name: How the message names the argument.
        minimum: The lower bound, if any.
        maximum: The upper bound (inclusive), if any.
        strict: Whether the lower bound is exclusive (``> minimum``) rather than ``>=``.
        finite: Whether infinity is refused (the default: a rate, a delay or a factor of
            infinity means nothing). NaN is always refused.

    Returns:
        The value as a float.

    Raises:
        TypeError: Not an int or a float.
        ValueError: NaN, infinite (with ``finite``), or outside the bounds.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(TypeError, name, _number_expected(minimum, maximum, strict, finite), value)
    number = value
    if (
        number != number  # NaN
        or (minimum is not None and (number <= minimum if strict else number < minimum))
        or (maximum is not None and number > maximum)
    ):
        _fail(ValueError, name, _number_expected(minimum, maximum, strict, finite), value)
    try:
        converted = float(number)
    except OverflowError:  # an int too large for a float
        converted = math.inf
    if finite and (converted == math.inf or converted == -math.inf):
        _fail(ValueError, name, _number_expected(minimum, maximum, strict, finite), value)
    return converted


def _number_expected(
    minimum: float | None, maximum: float | None, strict: bool, finite: bool
) -> str:
    bounded = (
        minimum is not None
        and maximum is not None
        and math.isfinite(minimum)
        and math.isfinite(maximum)
    )
    kind = "a finite number" if finite and not bounded else "a number"
    bounds = _bounds(minimum, maximum, open_low=strict, open_high=False)
    return f"{kind} {bounds}" if bounds else kind


def check_fraction(value: object, name: str, *, strict: bool = False) -> float:
    """Check a fraction: a number in ``[0, 1]``, or in ``(0, 1)`` with ``strict``.

    Args:
        value: What the caller passed.
        name: How the message names the argument.
        strict: Whether 0 and 1 themselves are refused.

    Returns:
        The value as a float.

    Raises:
        TypeError: Not an int or a float.
        ValueError: NaN or outside the interval.
    """
    expected = "a number " + _bounds(0, 1, open_low=strict, open_high=strict)
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(TypeError, name, expected, value)
    fraction = value
    if not (0 < fraction < 1 if strict else 0 <= fraction <= 1):  # also refuses NaN
        _fail(ValueError, name, expected, value)
    return float(fraction)


def check_percent(value: object, name: str) -> float:
    """Check a percentage threshold: a number in ``(0, 100]``.

    Args:
        value: What the caller passed.
        name: How the message names the argument.

    Returns:
        The value as a float.

    Raises:
        TypeError: Not an int or a float.
        ValueError: NaN or outside ``(0, 100]``.
    """
    return check_number(value, name, minimum=0, maximum=100, strict=True)


def check_timeout(value: object, name: str = "timeout") -> float | None:
    """Check a timeout: seconds >= 0, or ``None`` or ``math.inf`` for no deadline.

    Args:
        value: What the caller passed.
        name: How the message names the argument, e.g. ``"timeout of step 'build'"``.

    Returns:
        The seconds as a float, or ``None`` for no deadline (given as ``None`` or
        ``math.inf``), so that a hot path needs one ``is None`` test.

    Raises:
        TypeError: Not a number or None (``bool`` and ``str`` included).
        ValueError: Negative or NaN.
    """
    if value is None:
        return None
    kind = type(value)  # the common cases first, at once
    if kind is float:
        if 0 <= value < math.inf:  # type: ignore[operator]
            return value  # type: ignore[return-value]
    elif kind is int and 0 <= value <= _FLOAT_MAX:  # type: ignore[operator]
        return float(value)  # type: ignore[arg-type]
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(TypeError, name, _TIMEOUT, value)
    seconds = value
    if not seconds >= 0:  # also refuses NaN
        _fail(ValueError, name, _TIMEOUT, value)
    if seconds == math.inf:
        return None
    try:
        return float(seconds)
    except OverflowError:  # an int too large for a float: longer than any deadline
        return None


_TIMEOUT = "a number of seconds >= 0 or None (no deadline)"


def no_deadline(value: object) -> object:
    """An attrs converter for a timeout field: ``math.inf`` becomes ``None``, the rest stays.

    Pair it with ``validator(check_timeout)``, which then sees ``None`` for no deadline.
    """
    return None if type(value) is float and value == math.inf else value


def check_bool(value: object, name: str) -> bool:
    """Check a flag: ``True`` or ``False``, not 0, 1 or None.

    Args:
        value: What the caller passed.
        name: How the message names the argument.

    Returns:
        The value.

    Raises:
        TypeError: Not a bool.
    """
    if value is not True and value is not False:
        _fail(TypeError, name, "a bool", value)
    return value


def check_name(value: object, name: str) -> str:
    """Check a name: a non-empty str.

    Args:
        value: What the caller passed.
        name: How the message names the argument.

    Returns:
        The value.

    Raises:
        TypeError: Not a str, or the empty string.
    """
    if not isinstance(value, str) or not value:
        _fail(TypeError, name, "a non-empty str", value)
    return value


def validator(check: Callable[..., object], /, **options: Any) -> Validator:
    """Turn a check into an attrs validator that names the field by its alias (``rate``).

    Args:
        check: One of the checks of this module (or one with the same signature).
        **options: Its keyword options, e.g. ``minimum=1``.

    Returns:
        A validator for ``attrs.field(validator=...)``.
    """

    def run(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        check(value, attribute.alias or attribute.name, **options)

    return run


_SUBJECT = "value"


def problem(check: Callable[..., object], value: object, /, **options: Any) -> str | None:
    """Run a check and return its complaint without a name, or None if the value passes.

    The configuration loader and the CLI report problems under a path of their own
    (``retry.jitter: must be a finite number >= 0, got -1 (int)``).

    Args:
        check: One of the checks of this module.
        value: The value to check.
        **options: The check's keyword options.

    Returns:
        ``"must be ..., got ..."``, or None.
    """
    try:
        check(value, _SUBJECT, **options)
    except (TypeError, ValueError) as exc:
        return str(exc).removeprefix(f"{_SUBJECT} ")
    return None


# --- async callables ---------------------------------------------------------------------

_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE
_partial = functools.partial
_SYNC_HINT = (
    "; a plain def function cannot be awaited: make it async def, or run it in a worker "
    "thread with trioflow.in_thread"
)


class NotAwaitableError(TypeError):
    """A callable that had to return an awaitable returned something else.

    A ``TypeError`` like any refused argument, in a class of its own so that no layer mistakes
    it for a failure of the call: retry policies never retry it, circuit breakers never count
    it, a fallback never rescues it and a batch never records it as an operation's failure.
    """


def is_sync_function(value: object) -> bool:
    """Return whether ``value`` is a plain ``def`` function, which can never be awaited.

    A ``functools.partial`` or a bound method is judged by the function inside. Coroutine
    functions (``async def``, ``@types.coroutine``), a ``def`` that wraps one
    (``functools.wraps``), lambdas and every other callable (an object whose ``__call__`` is
    async or not, a class, a builtin) are not plain functions here: they are judged by what
    calling them returns (:func:`is_awaitable`).

    Args:
        value: A callable.

    Returns:
        True for a plain synchronous ``def`` function (a generator function included).
    """
    fn = value
    while type(fn) is _partial:
        fn = fn.func
    if type(fn) is MethodType:
        fn = fn.__func__
    if type(fn) is not FunctionType:
        return False
    code = fn.__code__
    if code.co_flags & _ASYNC_CODE or code.co_name == "<lambda>":
        return False  # the common case, without inspect's unwrapping
    target = inspect.unwrap(fn)
    return target is fn or not inspect.iscoroutinefunction(target)


def check_async_callable(
    value: object, name: str, expected: str = "an async callable"
) -> Callable[..., Any]:
    """Check an argument that is called and awaited: refuse what is not callable, or sync.

    Args:
        value: What the caller passed.
        name: How the message names the argument, e.g. ``"fn"`` or ``"operation 3"``.
        expected: What the message says was expected.

    Returns:
        The value.

    Raises:
        TypeError: Not callable, or a plain ``def`` function (see :func:`is_sync_function`),
            found before it is ever called, so its side effects never happen.
    """
    if not callable(value):
        _fail(TypeError, name, expected, value)
    if is_sync_function(value):
        raise TypeError(f"{name} must be {expected}, got {describe(value)}{_SYNC_HINT}")
    return value


def is_awaitable(value: object) -> bool:
    """Return whether a callable's result can be awaited (a coroutine, first, at once).

    Args:
        value: What the call returned.

    Returns:
        True for a coroutine, a future or any object with ``__await__``.
    """
    return type(value) is CoroutineType or inspect.isawaitable(value)


def not_awaitable(name: str, result: object) -> NotAwaitableError:
    """Build the error for a callable whose result is not awaitable.

    Args:
        name: How the message names the callable, e.g. ``"operation 3"``.
        result: What calling it returned.

    Returns:
        ``NotAwaitableError("operation 3 must return an awaitable, got 5 (int)")``.
    """
    return NotAwaitableError(f"{name} must return an awaitable, got {describe(result)}")
