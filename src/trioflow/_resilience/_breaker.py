"""A circuit breaker: stop calling a dependency that keeps failing, and probe it later.

Closed, the breaker lets every call through and counts consecutive failures. At
``failure_threshold`` it opens: calls fail at once with :class:`~trioflow.CircuitOpenError`
until ``reset_timeout`` has passed. Then it is half-open: up to ``half_open_max_calls`` trial
calls go through (others are refused); a trial that succeeds closes the circuit, one that
fails opens it again for another ``reset_timeout``.

With ``failure_ratio``, the breaker also opens when, over the last ``sampling_duration``
seconds, at least ``minimum_throughput`` calls ended and that share of them failed (the
advanced circuit breaker of Polly). The window is a ring of ten time buckets, so its memory
stays constant however many calls go through.

The open -> half-open step needs no background task: it happens at the first call (or read
of :attr:`CircuitBreaker.state`) after ``reset_timeout``.
"""

from __future__ import annotations

import contextvars
import enum
import math
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, TypeVarTuple, final

import attrs

from .._backend import current_time
from .._checks import (
    NotAwaitableError,
    check_async_callable,
    check_int,
    check_number,
    is_awaitable,
    not_awaitable,
    validator,
)
from .._errors import CircuitOpenError
from .._events import Listeners

__all__ = (
    "CircuitBreaker",
    "CircuitBreakerStatistics",
    "CircuitState",
    "CircuitStateChanged",
    "protect",
)

P = ParamSpec("P")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# What one finished call means to the breaker.
_NEUTRAL = 0  # cancellation or another BaseException: the dependency said nothing
_SUCCESS = 1  # returned, or raised an excluded exception: the dependency answered
_FAILURE = 2

# How many time buckets the sampling window of the ratio mode is cut into.
_BUCKETS = 10


class CircuitState(enum.Enum):
    """The state of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    """Calls go through; consecutive failures are counted."""
    OPEN = "open"
    """Calls fail at once with :class:`~trioflow.CircuitOpenError`."""
    HALF_OPEN = "half_open"
    """A limited number of trial calls go through to probe the dependency."""


@attrs.frozen(kw_only=True)
class CircuitBreakerStatistics:
    """A snapshot of a :class:`CircuitBreaker`.

    Attributes:
        state: The state now.
        consecutive_failures: Failures in a row while closed.
        failure_threshold: Consecutive failures that open the circuit (None: only the
            ratio opens it).
        reset_timeout: Seconds the circuit stays open before half-opening.
        half_open_calls: Trial calls in progress (half-open only).
        retry_at: While open, when it half-opens (``anyio.current_time()`` clock); else None.
        calls: Calls let through.
        successes: Calls that returned or raised an excluded exception.
        failures: Calls that raised a counted exception.
        rejected: Calls refused with :class:`~trioflow.CircuitOpenError`.
        opened: How many times the circuit opened.
        failure_ratio: The share of failures over the window that opens the circuit, or
            None without the ratio mode.
        sampling_duration: Seconds the window covers (None without the ratio mode).
        minimum_throughput: Calls the window needs before the ratio counts (None without).
        window_successes: Successes in the window now (0 without the ratio mode).
        window_failures: Failures in the window now (0 without the ratio mode).
    """

    state: CircuitState
    consecutive_failures: int
    failure_threshold: int | None
    reset_timeout: float
    half_open_calls: int
    retry_at: float | None
    calls: int
    successes: int
    failures: int
    rejected: int
    opened: int
    failure_ratio: float | None = None
    sampling_duration: float | None = None
    minimum_throughput: int | None = None
    window_successes: int = 0
    window_failures: int = 0


_threshold = validator(check_int, minimum=1)
_timeout = validator(check_number, minimum=0)


def _optional(check: Callable[..., object], **options: object) -> Callable[..., None]:
    def run(instance: object, attribute: attrs.Attribute[object], value: object) -> None:
        if value is not None:
            check(value, attribute.alias, **options)

    return run


@final
class _Window:
    """The ratio mode's sliding window: successes and failures in a ring of time buckets.

    Bucket ``k`` holds the calls that ended in ``[k * width, (k + 1) * width)``, with
    ``width = sampling_duration / 10``; at time ``now`` the window is the ten buckets up to
    the one ``now`` is in. So a call counts until the start of its bucket plus
    ``sampling_duration``, and the ring never holds more than ten pairs of counts.
    """

    __slots__ = ("bad", "bucket", "ids", "ok", "slot", "width")

    def __init__(self, sampling_duration: float) -> None:
        self.width = sampling_duration / _BUCKETS
        self.ids: list[int | None] = [None] * _BUCKETS
        self.ok = [0] * _BUCKETS
        self.bad = [0] * _BUCKETS
        # The bucket the last call landed in, and its slot: most calls land there too.
        self.bucket: int | None = None
        self.slot = 0

    def add(self, now: float, failed: bool) -> None:
        # Always the same rule as counts(), floor(now / width), so the edges are exact.
        bucket = math.floor(now / self.width)
        slot = self.slot
        if bucket != self.bucket:
            self.bucket = bucket
            self.slot = slot = bucket % _BUCKETS
            if self.ids[slot] != bucket:  # a bucket that left the window: start it afresh
                self.ids[slot] = bucket
                self.ok[slot] = self.bad[slot] = 0
        if failed:
            self.bad[slot] += 1
        else:
            self.ok[slot] += 1

    def counts(self, now: float) -> tuple[int, int]:
        """Return the (successes, failures) in the window at ``now``."""
        newest = math.floor(now / self.width)
        ok = bad = 0
        for slot, bucket in enumerate(self.ids):
            if bucket is not None and newest - _BUCKETS < bucket <= newest:
                ok += self.ok[slot]
                bad += self.bad[slot]
        return ok, bad

    def clear(self) -> None:
        self.ids = [None] * _BUCKETS
        self.bucket = None


def _exception_types(value: object) -> tuple[type[BaseException], ...]:
    types = (value,) if isinstance(value, type) else value
    if not isinstance(types, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in types
    ):
        raise TypeError(f"exclude must be an exception type or a tuple of them, got {value!r}")
    return types


def _clock_or_default(clock: Callable[[], float] | None) -> Callable[[], float]:
    if clock is None:
        return current_time  # anyio.current_time(), without anyio's dispatch on each read
    if not callable(clock):
        raise TypeError(f"clock must be a callable returning seconds, got {clock!r}")
    return clock


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found += _leaves(exc)
        else:
            found.append(exc)
    return found


@final
class _Ticket:
    """One ``async with breaker:`` in progress, kept in a per-task stack (a context var)."""

    __slots__ = ("breaker", "generation", "parent")

    def __init__(self, breaker: CircuitBreaker, generation: int, parent: _Ticket | None) -> None:
        self.breaker = breaker
        self.generation = generation
        self.parent = parent


_TICKETS: contextvars.ContextVar[_Ticket | None] = contextvars.ContextVar(
    "trioflow_breaker_tickets", default=None
)


@attrs.frozen(kw_only=True)
class CircuitStateChanged:
    """A :class:`CircuitBreaker` moved from one state to another.

    Attributes:
        kind: Always ``"state_changed"``.
        old: The state before.
        new: The state now.
        at: When, on the breaker's clock.
    """

    kind: Literal["state_changed"] = "state_changed"
    old: CircuitState
    new: CircuitState
    at: float


def _old_and_new(fn: Callable[..., object]) -> Callable[[CircuitStateChanged], object]:
    """Adapt a 0.1 listener, ``fn(old_state, new_state)``, to events."""

    def listener(event: CircuitStateChanged) -> object:
        return fn(event.old, event.new)

    return listener


@final
@attrs.define(eq=False, repr=False, on_setattr=attrs.setters.NO_OP)
class CircuitBreaker:
    """Fail fast while a dependency keeps failing; let trial calls probe it later.

    Use it as an async context manager around the call, or hand it the call::

        breaker = CircuitBreaker(failure_threshold=5, reset_timeout=30)

        async with breaker:
            await fetch()

        value = await breaker.call(fetch, url)

    What counts: a call that returns succeeds; one that raises an ``Exception`` fails, unless
    it is an instance of ``exclude`` - then it passes through to the caller and counts as a
    success (the dependency answered; the error is about the request). An ``ExceptionGroup``
    fails unless every exception in it is excluded. Cancellation and other ``BaseException``
    s (``KeyboardInterrupt``) count as nothing, and in half-open state they give the trial
    slot back; so does a callable whose result cannot be awaited (a ``TypeError``, the
    caller's bug rather than the dependency's).

    Only results of calls let through in the current state move the breaker: a call started
    while closed that fails after the circuit opened changes nothing (it still counts in
    :meth:`statistics`).

    Entering never waits and is not a checkpoint, so a closed breaker costs a few hundred
    nanoseconds per call.

    **The ratio mode.** With ``failure_ratio``, each call that ends while the circuit is
    closed (and was let through while closed) is also counted in a sliding window of
    ``sampling_duration`` seconds, cut into ten buckets: a call counts from when it ends until
    the start of its bucket plus ``sampling_duration``. At a failure, the circuit opens if the
    window holds at least ``minimum_throughput`` calls and ``failures / calls >=
    failure_ratio``. Either rule opens it: ``failure_threshold`` failures in a row, or the
    ratio; give ``failure_threshold=None`` to open on the ratio alone. The window starts
    empty each time the circuit closes. Half-open trials are judged as without the ratio
    mode: one success closes the circuit, one failure opens it again::

        breaker = CircuitBreaker(
            failure_threshold=None, failure_ratio=0.5, sampling_duration=30,
            minimum_throughput=10,
        )

    Args:
        failure_threshold: Consecutive failures that open the circuit, an int >= 1; or None
            (only with ``failure_ratio``) to open on the ratio alone.
        reset_timeout: Seconds the circuit stays open before half-opening, >= 0.
        half_open_max_calls: Trial calls let through at once while half-open, an int >= 1.
        exclude: Exception types that pass through without counting as failures.
        clock: The time source in seconds; defaults to ``anyio.current_time``.
        failure_ratio: The share of failures in the window that opens the circuit, a number
            in (0, 1]; None (the default) for no ratio mode.
        sampling_duration: Seconds the window covers, > 0 (30 by default with
            ``failure_ratio``).
        minimum_throughput: Calls the window must hold before the ratio opens the circuit,
            an int >= 1 (10 by default with ``failure_ratio``).

    Raises:
        ValueError: If a threshold is below 1 or ``reset_timeout`` is negative or not finite;
            if ``failure_ratio`` is outside (0, 1], ``sampling_duration`` is not above 0 or
            ``minimum_throughput`` below 1; if ``sampling_duration`` or
            ``minimum_throughput`` is given without ``failure_ratio``, or
            ``failure_threshold`` is None without it.
        TypeError: If ``exclude`` is not an exception type or a tuple of them, or a number
            has the wrong type (a threshold not an int, a timeout not a number).
    """

    _failure_threshold: int | None = attrs.field(
        alias="failure_threshold", default=5, validator=_optional(check_int, minimum=1)
    )
    _reset_timeout: float = attrs.field(alias="reset_timeout", default=30.0, validator=_timeout)
    _half_open_max_calls: int = attrs.field(
        alias="half_open_max_calls", default=1, kw_only=True, validator=_threshold
    )
    _exclude: tuple[type[BaseException], ...] = attrs.field(
        alias="exclude", default=(), kw_only=True, converter=_exception_types
    )
    _clock: Callable[[], float] = attrs.field(
        alias="clock", default=None, kw_only=True, converter=_clock_or_default
    )
    _failure_ratio: float | None = attrs.field(
        alias="failure_ratio",
        default=None,
        kw_only=True,
        validator=_optional(check_number, minimum=0, maximum=1, strict=True),
    )
    _sampling_duration: float | None = attrs.field(
        alias="sampling_duration",
        default=None,
        kw_only=True,
        validator=_optional(check_number, minimum=0, strict=True),
    )
    _minimum_throughput: int | None = attrs.field(
        alias="minimum_throughput",
        default=None,
        kw_only=True,
        validator=_optional(check_int, minimum=1),
    )
    # The ratio mode's window; None without it.
    _window: _Window | None = attrs.field(default=None, init=False)
    _state: CircuitState = attrs.field(default=CircuitState.CLOSED, init=False)
    # Bumped on every transition, so results of calls admitted in an earlier state are
    # recognised and ignored.
    _generation: int = attrs.field(default=0, init=False)
    _consecutive_failures: int = attrs.field(default=0, init=False)
    _retry_at: float = attrs.field(default=0.0, init=False)
    _trials: int = attrs.field(default=0, init=False)
    _listeners: Listeners[CircuitStateChanged] = attrs.field(
        factory=lambda: Listeners("CircuitBreaker"), init=False
    )
    _calls: int = attrs.field(default=0, init=False)
    _successes: int = attrs.field(default=0, init=False)
    _failures: int = attrs.field(default=0, init=False)
    _rejected: int = attrs.field(default=0, init=False)
    _opened: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if self._failure_ratio is None:
            for name in ("sampling_duration", "minimum_throughput"):
                given = getattr(self, f"_{name}")
                if given is not None:
                    raise ValueError(
                        f"{name} needs failure_ratio (the ratio mode), got {name}={given!r} "
                        "without it"
                    )
            if self._failure_threshold is None:
                raise ValueError(
                    "failure_threshold must be an int >= 1 without failure_ratio, got None"
                )
            return
        if self._sampling_duration is None:
            self._sampling_duration = 30.0
        if self._minimum_throughput is None:
            self._minimum_throughput = 10
        self._window = _Window(self._sampling_duration)

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(failure_threshold={self._failure_threshold!r}, "
            f"reset_timeout={self._reset_timeout!r}, state={self._state.value})"
        )

    @property
    def failure_threshold(self) -> int | None:
        """Consecutive failures that open the circuit (None: only the ratio opens it)."""
        return self._failure_threshold

    @property
    def failure_ratio(self) -> float | None:
        """The share of failures over the window that opens the circuit, or None."""
        return self._failure_ratio

    @property
    def reset_timeout(self) -> float:
        """Seconds the circuit stays open before half-opening."""
        return self._reset_timeout

    @property
    def state(self) -> CircuitState:
        """The state now; reading it half-opens an open circuit whose timeout has passed."""
        if self._state is CircuitState.OPEN and self._clock() >= self._retry_at:
            self._transition(CircuitState.HALF_OPEN)
        return self._state

    def add_listener(self, fn: Callable[[CircuitStateChanged], object]) -> Callable[[], None]:
        """Call ``fn(event)`` with a :class:`CircuitStateChanged` on every state change.

        Listeners run synchronously, right after the change, in the task that caused it. A
        listener that raises is logged and changes nothing else.

        Example::

            remove = breaker.add_listener(lambda e: print(f"{e.old.value} -> {e.new.value}"))

        A listener of trioflow 0.1, ``fn(old_state, new_state)``, still works (with a
        :class:`DeprecationWarning`).

        Args:
            fn: A synchronous callable taking one event.

        Returns:
            A function that removes the listener (idempotent).

        Raises:
            TypeError: If ``fn`` is not callable.
        """
        return self._listeners.add(fn, legacy=(2, "(old_state, new_state)", _old_and_new))

    def reset(self) -> None:
        """Close the circuit now and forget the failures counted so far."""
        if self._state is not CircuitState.CLOSED:
            self._transition(CircuitState.CLOSED)
        self._consecutive_failures = 0
        if self._window is not None:
            self._window.clear()

    def _transition(self, new: CircuitState) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._trials = 0
        if new is CircuitState.CLOSED:
            self._consecutive_failures = 0
            if self._window is not None:
                self._window.clear()
        elif new is CircuitState.OPEN:
            self._opened += 1
            self._retry_at = self._clock() + self._reset_timeout
        if self._listeners:
            self._listeners.emit(CircuitStateChanged(old=old, new=new, at=self._clock()))

    def _admit(self) -> int:
        """Let a call through and return its generation, or raise CircuitOpenError."""
        state = self._state
        if state is CircuitState.CLOSED:
            self._calls += 1
            return self._generation
        if state is CircuitState.OPEN:
            now = self._clock()
            if now < self._retry_at:
                self._rejected += 1
                raise CircuitOpenError(
                    f"circuit is open; trial calls allowed in {self._retry_at - now:g} s",
                    retry_at=self._retry_at,
                )
            self._transition(CircuitState.HALF_OPEN)
        if self._trials >= self._half_open_max_calls:
            self._rejected += 1
            raise CircuitOpenError(
                f"circuit is half-open and its {self._half_open_max_calls} trial call(s) "
                "are in progress",
                retry_at=self._clock(),
            )
        self._trials += 1
        self._calls += 1
        return self._generation

    def _outcome(self, exc: BaseException | None) -> int:
        if exc is None:
            return _SUCCESS
        if isinstance(exc, NotAwaitableError):
            return _NEUTRAL  # the caller's bug (a sync callable): the dependency said nothing
        if isinstance(exc, BaseExceptionGroup):
            real = [e for e in _leaves(exc) if isinstance(e, Exception)]
            if not real:
                return _NEUTRAL
            if all(isinstance(e, self._exclude) for e in real):
                return _SUCCESS
            return _FAILURE
        if not isinstance(exc, Exception):
            return _NEUTRAL
        if self._exclude and isinstance(exc, self._exclude):
            return _SUCCESS
        return _FAILURE

    def _settle(self, generation: int, exc: BaseException | None) -> None:
        """Record how a call admitted in ``generation`` ended."""
        outcome = self._outcome(exc)
        if outcome == _SUCCESS:
            self._successes += 1
        elif outcome == _FAILURE:
            self._failures += 1
        if generation != self._generation:
            return  # admitted in an earlier state: its result no longer says anything
        state = self._state
        if state is CircuitState.CLOSED:
            if outcome == _SUCCESS:
                self._consecutive_failures = 0
                if self._window is not None:
                    self._window.add(self._clock(), False)
            elif outcome == _FAILURE:
                self._consecutive_failures += 1
                threshold = self._failure_threshold
                if (
                    threshold is not None and self._consecutive_failures >= threshold
                ) or self._ratio_reached():
                    self._transition(CircuitState.OPEN)
        elif state is CircuitState.HALF_OPEN:
            self._trials -= 1
            if outcome == _SUCCESS:
                self._transition(CircuitState.CLOSED)
            elif outcome == _FAILURE:
                self._transition(CircuitState.OPEN)

    def _ratio_reached(self) -> bool:
        """Count a failure in the window; return whether the window's ratio opens the circuit."""
        window = self._window
        if window is None:
            return False
        now = self._clock()
        window.add(now, True)
        ok, bad = window.counts(now)
        calls = ok + bad
        assert self._minimum_throughput is not None
        assert self._failure_ratio is not None
        return calls >= self._minimum_throughput and bad / calls >= self._failure_ratio

    async def __aenter__(self) -> None:
        if self._state is CircuitState.CLOSED:  # _admit() inlined for the common case
            self._calls += 1
            generation = self._generation
        else:
            generation = self._admit()
        _TICKETS.set(_Ticket(self, generation, _TICKETS.get()))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ticket = _TICKETS.get()
        if ticket is not None and ticket.breaker is self:
            _TICKETS.set(ticket.parent)
        else:
            # Not innermost (exits out of order in one task): unlink our entry from the stack.
            previous: _Ticket | None = None
            while ticket is not None and ticket.breaker is not self:
                previous, ticket = ticket, ticket.parent
            if ticket is None or previous is None:
                raise RuntimeError("CircuitBreaker exited without a matching enter in this task")
            previous.parent = ticket.parent
        if exc is None and self._state is CircuitState.CLOSED and self._window is None:
            if ticket.generation == self._generation:
                self._consecutive_failures = 0
            self._successes += 1
            return
        if exc is None:
            self._succeeded(ticket.generation)
            return
        self._settle(ticket.generation, exc)

    async def call(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Call ``await fn(*args)`` through the breaker.

        Args:
            fn: An async function.
            *args: Positional arguments for ``fn`` (use ``functools.partial`` for keywords).

        Returns:
            What ``fn`` returned.

        Raises:
            CircuitOpenError: If the circuit is open, or half-open with every trial slot taken.
            TypeError: ``fn`` is not callable or is a plain ``def`` function (checked before
                admission, so it never counts as a failure of the protected dependency); or
                ``fn`` returned something that cannot be awaited (not counted either).
        """
        check_async_callable(fn, "fn")
        generation = self._admit()
        try:
            awaitable = fn(*args)
            if not is_awaitable(awaitable):
                raise not_awaitable("fn", awaitable)
            result = await awaitable
        except BaseException as exc:
            self._settle(generation, exc)
            raise
        self._succeeded(generation)
        return result

    def _succeeded(self, generation: int) -> None:
        """``_settle(generation, None)``, with the common case (closed) first."""
        if self._state is CircuitState.CLOSED:
            if generation == self._generation:
                self._consecutive_failures = 0
                window = self._window
                if window is not None:
                    window.add(self._clock(), False)
            self._successes += 1
        else:
            self._settle(generation, None)

    def statistics(self) -> CircuitBreakerStatistics:
        """Return a snapshot of the breaker's state and counters.

        Returns:
            A frozen :class:`CircuitBreakerStatistics`.
        """
        state = self.state
        return CircuitBreakerStatistics(
            state=state,
            consecutive_failures=self._consecutive_failures,
            failure_threshold=self._failure_threshold,
            reset_timeout=self._reset_timeout,
            half_open_calls=self._trials if state is CircuitState.HALF_OPEN else 0,
            retry_at=self._retry_at if state is CircuitState.OPEN else None,
            calls=self._calls,
            successes=self._successes,
            failures=self._failures,
            rejected=self._rejected,
            opened=self._opened,
            **self._window_statistics(),
        )

    def _window_statistics(self) -> dict[str, Any]:
        window = self._window
        if window is None:
            return {}
        ok, bad = window.counts(self._clock()) if self._state is CircuitState.CLOSED else (0, 0)
        return {
            "failure_ratio": self._failure_ratio,
            "sampling_duration": self._sampling_duration,
            "minimum_throughput": self._minimum_throughput,
            "window_successes": ok,
            "window_failures": bad,
        }


def protect(breaker: CircuitBreaker, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Return an async function that calls ``fn`` through ``breaker``, with ``fn``'s signature.

    The breaker's fast path for code that wraps a function once and calls it many times
    (:func:`~trioflow.resilient`): each call counts exactly as :meth:`CircuitBreaker.call`
    would count it, but keyword arguments pass straight through (no ``functools.partial`` per
    call) and a closed breaker admits the call without a method call. ``fn`` is checked
    once, here.

    Args:
        breaker: The breaker every call goes through.
        fn: The async function to protect.

    Returns:
        ``async def guarded(*args, **kwargs)``, which raises
        :class:`~trioflow.CircuitOpenError` while the breaker refuses calls.

    Raises:
        TypeError: ``fn`` is not callable or is a plain ``def`` function.
    """
    check_async_callable(fn, "fn")

    async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        if breaker._state is CircuitState.CLOSED:  # _admit() inlined for the common case
            breaker._calls += 1
            generation = breaker._generation
        else:
            generation = breaker._admit()
        try:
            awaitable = fn(*args, **kwargs)
            if not is_awaitable(awaitable):
                raise not_awaitable("fn", awaitable)
            result = await awaitable
        except BaseException as exc:
            breaker._settle(generation, exc)
            raise
        breaker._succeeded(generation)
        return result

    return guarded
