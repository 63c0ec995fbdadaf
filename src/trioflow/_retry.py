"""Retry policies: exponential backoff with jitter, built on tenacity, in anyio time.

A :class:`RetryPolicy` is a frozen value. ``await policy.call(fn, *args)`` runs ``fn`` up to
``attempts`` times, sleeping with :func:`anyio.sleep` between tries (so virtual clocks in tests
apply), and re-raises the last exception itself. Cancellation is never retried.

Before each wait the policy tells whoever watches: a ``retry scheduled`` structlog event and
the policy's ``on_retry`` hook, both with one :class:`RetryEvent` worth of fields (never the
call's arguments, which may hold secrets).
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, final

import anyio
import attrs

from ._checks import (
    NotAwaitableError,
    Validator,
    check_async_callable,
    check_bool,
    check_int,
    check_number,
    describe,
    is_awaitable,
    not_awaitable,
    validator,
)
from ._telemetry import hooks

if TYPE_CHECKING:
    import tenacity

__all__ = ("RetryEvent", "RetryPolicy")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

ExceptionFilter = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


_int_at_least_1 = validator(check_int, minimum=1)


def _number_at_least(minimum: float) -> Validator:
    return validator(check_number, minimum=minimum)


def _max_delay_check(instance: RetryPolicy, attribute: attrs.Attribute[Any], value: float) -> None:
    check_number(value, attribute.name, minimum=0)
    if value < instance.initial_delay:
        raise ValueError(
            f"max_delay must be >= initial_delay ({instance.initial_delay!r}), got {value!r}"
        )


def _to_filter(value: object) -> object:
    # A single exception class is callable too: never mistake it for a predicate.
    if isinstance(value, type):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    return value


def _filter_check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, tuple):
        bad = [c for c in value if not (isinstance(c, type) and issubclass(c, BaseException))]
        if bad or not value:
            raise TypeError(
                "on must be an exception class, a non-empty tuple of exception classes or a "
                f"predicate, got {value!r}"
            )
    elif not callable(value):
        raise TypeError(
            "on must be an exception class, a tuple of exception classes or a predicate, "
            f"got {value!r}"
        )


def _check_on_retry(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not callable(value) or inspect.iscoroutinefunction(inspect.unwrap(value)):
        raise TypeError(
            "on_retry must be a plain (not async) callable taking a RetryEvent, or None, "
            f"got {describe(value)}"
        )


@final
@attrs.frozen(kw_only=True)
class RetryEvent:
    """One retry about to happen: what :class:`RetryPolicy` hands its ``on_retry`` hook.

    The same fields make the ``retry scheduled`` structlog event (with the error as
    ``error_type`` and ``error``, its type name and message). The call's arguments are in
    neither: they may hold secrets.

    Attributes:
        attempt: The try that just failed, from 1; the next try is ``attempt + 1``.
        attempts: The policy's total tries (``RetryPolicy.attempts``).
        delay: Seconds the policy waits now before the next try: the backoff plus jitter,
            raised to the error's ``retry_after`` when it has one.
        error: The exception that try raised.
    """

    attempt: int
    attempts: int
    delay: float
    error: Exception


def _log_fields(event: RetryEvent) -> dict[str, object]:
    return {
        "attempt": event.attempt,
        "attempts": event.attempts,
        "delay": event.delay,
        "error_type": type(event.error).__qualname__,
        "error": str(event.error),
    }


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _retry_after(exc: BaseException) -> float:
    """The largest valid ``retry_after`` (seconds) on the exception or any leaf of it, or 0."""
    longest = 0.0
    for leaf in (exc, *_leaves(exc)) if isinstance(exc, BaseExceptionGroup) else (exc,):
        value = getattr(leaf, "retry_after", None)
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > longest
        ):
            longest = float(value)
    return longest


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How to retry a failing async call: attempts, exponential backoff, jitter, which errors.

    The wait before retry ``n`` (1-based) is ``min(initial_delay * multiplier ** (n - 1),
    max_delay)``, plus a random extra of up to ``jitter`` seconds; an exception with a
    ``retry_after`` attribute (seconds, e.g. from a rate-limited server) makes that wait at
    least that long. Cancellation, and any ``BaseException`` that is not an ``Exception``, is
    never retried. An ``ExceptionGroup`` is retried only when every exception in it matches
    ``on``.

    Example::

        policy = RetryPolicy(attempts=5, initial_delay=0.5, max_delay=10)
        body = await policy.call(fetch, url)

    Args:
        attempts: Total tries, an int >= 1 (1 means no retry).
        initial_delay: Seconds before the first retry, >= 0 (0 retries at once).
        multiplier: Growth factor of the wait between retries, >= 1.
        max_delay: Cap on the planned wait, >= ``initial_delay``.
        jitter: Random extra wait, uniformly up to this many seconds, >= 0 (0 means none).
        on: Which exceptions are retried: an exception class, a tuple of them, or a predicate
            taking the exception and returning whether to retry it.
        on_retry: Called with a :class:`RetryEvent` before each wait, in the task that
            retries, so keep it quick (count, report, record). A plain function: an
            ``async def`` is refused. An exception it raises is logged (a ``retry hook
            failed`` structlog error) and the retry goes on: watching never breaks the work.
            A cancelled call is never retried, so cancellation never reaches it.
        log_retries: Whether each retry is also logged as a ``retry scheduled`` structlog
            event (on ``structlog.get_logger("trioflow")``, at info level) with the fields of
            :class:`RetryEvent`; False for a caller that reports retries its own way.

    Raises:
        TypeError: A field has the wrong type.
        ValueError: A field is out of range (negative, NaN, infinite, below its minimum).
    """

    attempts: int = attrs.field(default=3, validator=_int_at_least_1)
    initial_delay: float = attrs.field(default=1.0, validator=_number_at_least(0))
    multiplier: float = attrs.field(default=2.0, validator=_number_at_least(1))
    max_delay: float = attrs.field(default=30.0, validator=_max_delay_check)
    jitter: float = attrs.field(default=0.0, validator=_number_at_least(0))
    on: ExceptionFilter = attrs.field(
        default=(ConnectionError, TimeoutError), converter=_to_filter, validator=_filter_check
    )
    on_retry: Callable[[RetryEvent], object] | None = attrs.field(
        default=None, validator=_check_on_retry
    )
    log_retries: bool = attrs.field(default=True, validator=validator(check_bool))

    def _planned_delay(self, retry: int) -> float:
        """The wait before retry number ``retry`` (1-based), without jitter."""
        try:
            # In floats: an int multiplier to a huge power would build a huge int instead.
            delay = float(self.initial_delay) * float(self.multiplier) ** (retry - 1)
        except OverflowError:
            return float(self.max_delay)
        return float(min(delay, self.max_delay))

    def delay(self, retry: int) -> float:
        """Return the planned wait before one retry, without jitter or ``retry_after``.

        Computed on its own, so a policy of a great many attempts costs nothing up front.

        Args:
            retry: Which retry, from 1 (the wait after the first failed try).

        Returns:
            The wait in seconds, at most ``max_delay``.

        Raises:
            ValueError: ``retry`` is not in ``1 .. attempts - 1``.
        """
        if isinstance(retry, bool) or not isinstance(retry, int) or not 1 <= retry < self.attempts:
            raise ValueError(
                f"retry must be an int from 1 to {self.attempts - 1} (attempts - 1), got {retry!r}"
            )
        return self._planned_delay(retry)

    def delays(self) -> tuple[float, ...]:
        """Return the planned waits between tries, without jitter or ``retry_after``.

        Returns:
            ``attempts - 1`` waits in seconds, e.g. ``(1.0, 2.0, 4.0, 5.0)`` for
            ``RetryPolicy(attempts=5, initial_delay=1, multiplier=2, max_delay=5)``.
        """
        return tuple(self._planned_delay(n) for n in range(1, self.attempts))

    def should_retry(self, exc: BaseException) -> bool:
        """Return whether this policy retries an exception (attempts left aside).

        Args:
            exc: The exception an attempt raised.

        Returns:
            False for cancellation and any other non-``Exception``; for an ``ExceptionGroup``,
            whether every exception in it matches ``on``; otherwise whether ``exc`` matches.
        """
        # Cancellation is a BaseException on every backend: this also keeps it out.
        if not isinstance(exc, Exception):
            return False
        if isinstance(exc, ExceptionGroup):
            return all(self._matches(leaf) for leaf in _leaves(exc))
        return self._matches(exc)

    def _matches(self, exc: BaseException) -> bool:
        on = self.on
        if isinstance(on, tuple):
            return isinstance(exc, on)
        return bool(on(exc))

    def _wait_after(self, tries: int, exc: BaseException | None) -> float:
        """The wait after try ``tries`` failed with ``exc``: backoff, jitter, retry_after."""
        delay = self._planned_delay(tries)
        if self.jitter:
            delay += random.uniform(0, self.jitter)
        if exc is not None:
            delay = max(delay, _retry_after(exc))
        return delay

    def _later_wait(self, state: tenacity.RetryCallState) -> float:
        # tenacity counts from the second try (the first ran before tenacity was involved).
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        return self._wait_after(state.attempt_number + 1, exc)

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        # tenacity's attempt 1 is our second try; its planned sleep is our wait.
        outcome = state.outcome
        action = state.next_action
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, Exception) and action is not None:
            self._scheduled(state.attempt_number + 1, action.sleep, error)

    def _scheduled(self, attempt: int, delay: float, error: Exception) -> None:
        """Tell the log and the hook that try ``attempt`` failed and a wait of ``delay`` starts."""
        event = RetryEvent(attempt=attempt, attempts=self.attempts, delay=delay, error=error)
        log = None
        if self.log_retries:
            log = _logger()
            log.info("retry scheduled", **_log_fields(event))
        hook = self.on_retry
        if hook is None:
            return
        try:
            returned = hook(event)
            if is_awaitable(returned):
                close = getattr(returned, "close", None)
                if close is not None:
                    close()  # a coroutine never awaited would warn at garbage collection
                raise TypeError(
                    f"on_retry must be a plain function, but it returned {describe(returned)}"
                )
        except Exception as exc:
            # A listener's failure is logged and does not break the retry (house rule).
            (log or _logger()).error("retry hook failed", exc_info=exc, **_log_fields(event))

    def _retry(self, state: tenacity.RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None or not outcome.failed:
            return False
        exc = outcome.exception()
        if exc is None or isinstance(exc, anyio.get_cancelled_exc_class()):
            return False
        return self.should_retry(exc)

    async def call(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Call ``fn(*args)``, retrying as this policy says.

        Sleeps between tries with :func:`anyio.sleep`, so a cancel scope around the call
        interrupts a wait, and a virtual clock makes the waits instant in tests.

        Args:
            fn: An async function (or any callable returning an awaitable).
            *args: Positional arguments for ``fn``.

        Returns:
            What ``fn`` returned on the first successful try.

        Raises:
            TypeError: ``fn`` is not callable, or is a plain ``def`` function (refused before
                it is called); or a call of ``fn`` returned something that cannot be awaited
                (raised at once: never retried).
            BaseException: The last try's exception itself (not a tenacity ``RetryError``);
                when there was more than one try, with a note saying how many. An exception
                that is not retried (cancellation included) propagates at once.
        """
        check_async_callable(fn, "fn")
        # The first try runs without tenacity: most calls succeed at once, and this keeps the
        # cost of a policy on a batch's hot path to one try/except.
        try:
            awaitable = fn(*args)
            if not is_awaitable(awaitable):
                raise not_awaitable("fn", awaitable)
            return await awaitable
        except Exception as exc:
            # A result that cannot be awaited is a bug in the caller's code, not a failure.
            if self.attempts == 1 or isinstance(exc, NotAwaitableError):
                raise
            if not self.should_retry(exc):
                raise
            first_wait = self._wait_after(1, exc)
            first_error = exc
            failure: BaseException | None = exc  # the last failure, for telemetry
        tries = 1

        async def attempt() -> T:
            nonlocal tries
            tries += 1
            telemetry = hooks.current
            if telemetry is not None:  # a span event and a count per retry attempt
                telemetry.retried(tries, failure)
            awaitable = fn(*args)
            if not is_awaitable(awaitable):
                raise not_awaitable("fn", awaitable)
            return await awaitable

        # tenacity is imported at the first retry, not with trioflow: it imports tornado when
        # tornado is installed (Dask brings it), a tenth of a second that every command and
        # short-lived worker would pay for nothing.
        import tenacity
        from tenacity.asyncio import AsyncRetrying

        def retry(state: tenacity.RetryCallState) -> bool:
            nonlocal failure
            outcome = state.outcome
            failure = None if outcome is None else outcome.exception()
            if outcome is not None and isinstance(outcome.exception(), NotAwaitableError):
                return False
            return self._retry(state)

        watched = self.log_retries or self.on_retry is not None
        retrying = AsyncRetrying(
            sleep=anyio.sleep,
            stop=tenacity.stop_after_attempt(self.attempts - 1),
            wait=self._later_wait,
            retry=retry,
            before_sleep=self._before_sleep if watched else None,
            reraise=True,
        )
        if watched:
            self._scheduled(1, first_wait, first_error)
        await anyio.sleep(first_wait)
        try:
            result: T = await retrying(attempt)
        except Exception as exc:
            if isinstance(exc, NotAwaitableError):
                raise
            if self.should_retry(exc):
                exc.add_note(f"trioflow: gave up after {tries} attempts")
            else:
                exc.add_note(
                    f"trioflow: raised on attempt {tries} of {self.attempts}, not retried"
                )
            raise
        return result


def _logger() -> Any:
    # structlog is imported at the first retry, not with trioflow: it is slow to import.
    import structlog

    return structlog.get_logger("trioflow")
