from __future__ import annotations

import asyncio
import contextvars
import functools
import math
from collections.abc import Coroutine, Generator
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from trioflow import CircuitBreaker, CircuitOpenError, CircuitState
from trioflow._resilience._breaker import protect

pytestmark = pytest.mark.anyio

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Boom(ConnectionError):
    pass


class BadRequest(ValueError):
    pass


async def ok() -> str:
    await anyio.sleep(0)
    return "ok"


async def boom() -> str:
    await anyio.sleep(0)
    raise Boom("down")


async def fail_times(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            await breaker.call(boom)


async def test_opens_after_consecutive_failures_and_fails_fast() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=10)
    calls = 0

    async def counted() -> str:
        nonlocal calls
        calls += 1
        raise Boom

    for _ in range(3):
        with pytest.raises(Boom):
            await breaker.call(counted)
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(counted)
    assert calls == 3
    assert info.value.retry_at == 10
    assert "trial calls allowed in 10 s" in str(info.value)
    stats = breaker.statistics()
    assert (stats.state, stats.failures, stats.rejected, stats.opened) == (OPEN, 3, 1, 1)
    assert stats.retry_at == 10


async def test_a_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=10)
    await fail_times(breaker, 2)
    assert await breaker.call(ok) == "ok"
    assert breaker.statistics().consecutive_failures == 0
    await fail_times(breaker, 2)
    assert breaker.state is CLOSED


async def test_half_opens_after_reset_timeout_and_closes_on_success() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5)
    seen: list[tuple[CircuitState, CircuitState, float]] = []
    breaker.add_listener(lambda e: seen.append((e.old, e.new, anyio.current_time())))
    await fail_times(breaker, 1)
    await anyio.sleep(4.5)
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok)
    await anyio.sleep(0.5)
    assert await breaker.call(ok) == "ok"
    assert breaker.state is CLOSED
    assert seen == [(CLOSED, OPEN, 0), (OPEN, HALF_OPEN, 5), (HALF_OPEN, CLOSED, 5)]


async def test_a_failed_trial_opens_again_for_a_full_reset_timeout() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=5)
    await fail_times(breaker, 2)
    await anyio.sleep(5)
    assert breaker.state is HALF_OPEN
    await fail_times(breaker, 1)
    assert breaker.state is OPEN
    assert breaker.statistics().retry_at == 10
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(ok)
    assert info.value.retry_at == 10


async def test_half_open_admits_at_most_half_open_max_calls() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1, half_open_max_calls=2)
    await fail_times(breaker, 1)
    await anyio.sleep(1)
    release = anyio.Event()
    results: list[str] = []

    async def slow() -> str:
        await release.wait()
        return "slow"

    async def trial() -> None:
        results.append(await breaker.call(slow))

    async with anyio.create_task_group() as tg:
        tg.start_soon(trial)
        tg.start_soon(trial)
        await anyio.sleep(0.1)
        assert breaker.statistics().half_open_calls == 2
        with pytest.raises(CircuitOpenError, match="half-open") as info:
            await breaker.call(ok)
        assert info.value.retry_at == anyio.current_time()
        release.set()
    assert results == ["slow", "slow"]
    assert breaker.state is CLOSED


async def test_excluded_exceptions_pass_through_and_do_not_count() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5, exclude=BadRequest)

    async def bad() -> None:
        raise BadRequest("your fault")

    for _ in range(3):
        with pytest.raises(BadRequest):
            await breaker.call(bad)
    assert breaker.state is CLOSED
    assert breaker.statistics().successes == 3


async def test_exception_groups_count_unless_every_leaf_is_excluded() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5, exclude=(BadRequest,))
    with pytest.raises(ExceptionGroup):
        async with breaker:
            raise ExceptionGroup("x", [BadRequest(), ExceptionGroup("y", [BadRequest()])])
    assert breaker.state is CLOSED
    with pytest.raises(ExceptionGroup):
        async with breaker:
            raise ExceptionGroup("x", [BadRequest(), Boom()])
    assert breaker.state is OPEN


async def test_cancellation_never_counts() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5)
    for _ in range(3):
        with anyio.move_on_after(1):
            async with breaker:
                await anyio.sleep(10)
    assert breaker.state is CLOSED
    stats = breaker.statistics()
    assert (stats.calls, stats.successes, stats.failures) == (3, 0, 0)


async def test_cancelled_trial_gives_its_slot_back() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1)
    await fail_times(breaker, 1)
    await anyio.sleep(1)
    with anyio.move_on_after(1):
        async with breaker:
            await anyio.sleep(10)
    assert breaker.state is HALF_OPEN
    assert breaker.statistics().half_open_calls == 0
    assert await breaker.call(ok) == "ok"
    assert breaker.state is CLOSED


async def test_results_of_calls_from_an_earlier_state_are_ignored() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=100)
    release = anyio.Event()

    async def slow_ok() -> str:
        await release.wait()
        return "late"

    async with anyio.create_task_group() as tg:
        tg.start_soon(breaker.call, slow_ok)
        await anyio.sleep(1)
        await fail_times(breaker, 1)
        release.set()
    # The late success was admitted while closed; it must not close the open circuit.
    assert breaker.state is OPEN
    assert breaker.statistics().successes == 1


async def test_context_manager_entries_are_tracked_per_task() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=10)
    other = CircuitBreaker(failure_threshold=1, reset_timeout=10)
    first_in = anyio.Event()
    second_out = anyio.Event()

    async def first() -> None:
        async def body() -> None:
            async with breaker:
                first_in.set()
                await second_out.wait()
                raise Boom

        with pytest.raises(Boom):
            await body()

    async def second() -> None:
        await first_in.wait()
        async with breaker, other:  # nested, in another task
            pass
        second_out.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        tg.start_soon(second)
    stats = breaker.statistics()
    assert (stats.calls, stats.successes, stats.failures) == (2, 1, 1)
    assert stats.consecutive_failures == 1
    assert other.statistics().successes == 1


async def test_exit_without_enter_is_an_error() -> None:
    breaker = CircuitBreaker()
    with pytest.raises(RuntimeError, match="without a matching enter"):
        await breaker.__aexit__(None, None, None)


async def test_listeners_can_be_removed_and_reset_closes() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=10)
    seen: list[CircuitState] = []
    remove = breaker.add_listener(lambda e: seen.append(e.new))
    await fail_times(breaker, 1)
    breaker.reset()
    remove()
    remove()  # idempotent
    await fail_times(breaker, 1)
    assert seen == [OPEN, CLOSED]
    assert breaker.state is OPEN
    with pytest.raises(TypeError, match="fn must be callable"):
        breaker.add_listener(3)  # type: ignore[arg-type]


async def test_statistics_are_a_frozen_snapshot() -> None:
    breaker = CircuitBreaker(failure_threshold=4, reset_timeout=2.5)
    await fail_times(breaker, 1)
    stats = breaker.statistics()
    assert stats.state is CLOSED
    assert (stats.failure_threshold, stats.reset_timeout) == (4, 2.5)
    assert stats.retry_at is None
    assert stats.half_open_calls == 0
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.calls = 0  # type: ignore[misc]
    await breaker.call(ok)
    assert stats.calls == 1
    assert breaker.statistics().calls == 2
    assert repr(breaker) == "CircuitBreaker(failure_threshold=4, reset_timeout=2.5, state=closed)"
    assert (breaker.failure_threshold, breaker.reset_timeout) == (4, 2.5)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"failure_threshold": 0}, ValueError, "failure_threshold must be an int >= 1, got 0"),
        ({"failure_threshold": 2.0}, TypeError, "failure_threshold must be an int >= 1, got 2.0"),
        ({"half_open_max_calls": 0}, ValueError, "half_open_max_calls must be an int >= 1, got 0"),
        ({"reset_timeout": -1}, ValueError, "reset_timeout must be a finite number >= 0, got -1"),
        ({"reset_timeout": math.nan}, ValueError, "reset_timeout must be .* got nan"),
        ({"exclude": ValueError()}, TypeError, "exclude must be an exception type"),
        ({"exclude": (int,)}, TypeError, "exclude must be an exception type"),
        ({"clock": 1}, TypeError, "clock must be a callable"),
    ],
)
def test_bad_arguments_are_rejected(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        CircuitBreaker(**kwargs)


async def test_protect_counts_every_call_as_call_does_and_passes_keywords() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=10, exclude=BadRequest)
    twin = CircuitBreaker(failure_threshold=2, reset_timeout=10, exclude=BadRequest)

    async def fetch(url: str, *, fail: type[Exception] | None = None) -> str:
        await anyio.sleep(0)
        if fail is not None:
            raise fail(url)
        return url

    guarded = protect(breaker, fetch)
    assert await guarded("a") == "a"
    assert await twin.call(fetch, "a") == "a"
    for fail in (BadRequest, Boom, Boom):
        with pytest.raises(fail):
            await guarded("b", fail=fail)
        with pytest.raises(fail):
            await twin.call(functools.partial(fetch, "b", fail=fail))
    assert breaker.statistics() == twin.statistics()
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpenError):
        await guarded("c")
    await anyio.sleep(10)
    assert await guarded("d") == "d"  # the half-open trial closes it
    assert breaker.state is CLOSED
    stats = breaker.statistics()
    assert (stats.calls, stats.successes, stats.failures, stats.rejected) == (5, 3, 2, 1)


# --- stateful model test ----------------------------------------------------------------------
# The machine drives the real `async with breaker:` synchronously: each call is a coroutine
# stepped by hand (in its own contextvars context, as a task would be) and paused inside the
# block, so many calls can be in flight at once. Time comes from an injected fake clock.


class _Pause:
    def __await__(self) -> Generator[None, None, None]:
        yield


class Call:
    def __init__(self, breaker: CircuitBreaker) -> None:
        self.context = contextvars.copy_context()
        self.coro: Coroutine[Any, Any, None] = self._body(breaker)
        self.generation = -1

    @staticmethod
    async def _body(breaker: CircuitBreaker) -> None:
        async with breaker:
            await _Pause()

    def start(self) -> None:
        self.context.run(self.coro.send, None)

    def finish(self, how: str) -> None:
        if how == "success":
            with pytest.raises(StopIteration):
                self.context.run(self.coro.send, None)
            return
        exc: BaseException = {
            "failure": Boom(),
            "excluded": BadRequest(),
            "cancelled": asyncio.CancelledError(),
        }[how]
        with pytest.raises(type(exc)):
            self.context.run(self.coro.throw, exc)


@attrs.define
class Model:
    threshold: int | None
    reset_timeout: float
    max_trials: int
    # The ratio mode: (failure_ratio, sampling_duration, minimum_throughput), or None.
    ratio: tuple[float, float, int] | None = None
    state: CircuitState = CLOSED
    consecutive: int = 0
    retry_at: float = 0.0
    trials: int = 0
    epoch: int = 0
    transitions: list[tuple[CircuitState, CircuitState]] = attrs.Factory(list)
    # Every call that ended while closed since the circuit last closed: (time, failed).
    ended: list[tuple[float, bool]] = attrs.Factory(list)

    def window(self, now: float) -> tuple[int, int]:
        """(successes, failures) of the calls that ended in the ten buckets up to ``now``."""
        if self.ratio is None or self.state is not CLOSED:
            return 0, 0
        width = self.ratio[1] / 10
        newest = math.floor(now / width)
        live = [failed for at, failed in self.ended if math.floor(at / width) > newest - 10]
        return live.count(False), live.count(True)

    def move(self, new: CircuitState, now: float) -> None:
        self.transitions.append((self.state, new))
        self.state = new
        self.epoch += 1
        self.trials = 0
        if new is CLOSED:
            self.consecutive = 0
            self.ended.clear()
        if new is OPEN:
            self.retry_at = now + self.reset_timeout

    def observe(self, now: float) -> None:
        if self.state is OPEN and now >= self.retry_at:
            self.move(HALF_OPEN, now)

    def admit(self, now: float) -> float | None:
        """Return None if admitted, else the expected retry_at."""
        self.observe(now)
        if self.state is CLOSED:
            return None
        if self.state is OPEN:
            return self.retry_at
        if self.trials < self.max_trials:
            self.trials += 1
            return None
        return now

    def finish(self, epoch: int, how: str, now: float) -> None:
        if epoch != self.epoch or how == "cancelled":
            if epoch == self.epoch and self.state is HALF_OPEN:
                self.trials -= 1
            return
        good = how in ("success", "excluded")
        if self.state is CLOSED:
            self.ended.append((now, not good))
            if good:
                self.consecutive = 0
            else:
                self.consecutive += 1
                ok, bad = self.window(now)
                by_ratio = (
                    self.ratio is not None
                    and ok + bad >= self.ratio[2]
                    and bad / (ok + bad) >= self.ratio[0]
                )
                if by_ratio or (self.threshold is not None and self.consecutive >= self.threshold):
                    self.move(OPEN, now)
        elif self.state is HALF_OPEN:
            self.trials -= 1
            self.move(CLOSED if good else OPEN, now)


class BreakerMachine(RuleBasedStateMachine):
    calls = Bundle("calls")

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.in_flight: list[tuple[Call, int]] = []

    def clock(self) -> float:
        return self.now

    @initialize(
        threshold=st.integers(1, 4) | st.none(),
        reset_timeout=st.sampled_from([0.0, 1.0, 2.5, 10.0]),
        max_trials=st.integers(1, 3),
        ratio=st.none()
        | st.tuples(
            st.sampled_from([0.25, 0.5, 2 / 3, 1.0]),
            st.sampled_from([5.0, 10.0, 20.0]),
            st.integers(1, 5),
        ),
    )
    def setup(
        self,
        threshold: int | None,
        reset_timeout: float,
        max_trials: int,
        ratio: tuple[float, float, int] | None,
    ) -> None:
        if ratio is None and threshold is None:
            threshold = 3
        names = ("failure_ratio", "sampling_duration", "minimum_throughput")
        ratio_mode: dict[str, Any] = {} if ratio is None else dict(zip(names, ratio, strict=True))
        self.breaker = CircuitBreaker(
            threshold,
            reset_timeout,
            half_open_max_calls=max_trials,
            exclude=(BadRequest,),
            clock=self.clock,
            **ratio_mode,
        )
        self.seen: list[tuple[CircuitState, CircuitState]] = []
        self.breaker.add_listener(lambda e: self.seen.append((e.old, e.new)))
        self.model = Model(threshold, reset_timeout, max_trials, ratio)

    @rule(dt=st.sampled_from([0.5, 1.0, 2.5, 10.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def read_state(self) -> None:
        self.model.observe(self.now)
        assert self.breaker.state is self.model.state

    @rule(target=calls)
    def start(self) -> Any:
        call = Call(self.breaker)
        expected = self.model.admit(self.now)
        if expected is None:
            call.start()
            entry = (call, self.model.epoch)
            self.in_flight.append(entry)
            return entry
        with pytest.raises(CircuitOpenError) as info:
            call.start()
        assert info.value.retry_at == expected
        return None

    @rule(entry=consumes(calls), how=st.sampled_from(["success", "failure", "excluded"]))
    def finish(self, entry: tuple[Call, int] | None, how: str) -> None:
        self._finish(entry, how)

    @rule(entry=consumes(calls))
    def cancel(self, entry: tuple[Call, int] | None) -> None:
        self._finish(entry, "cancelled")

    def _finish(self, entry: tuple[Call, int] | None, how: str) -> None:
        if entry is None:
            return
        call, epoch = entry
        self.in_flight.remove(entry)
        call.finish(how)
        self.model.finish(epoch, how, self.now)

    @invariant()
    def agrees_with_the_model(self) -> None:
        if not hasattr(self, "model"):
            return
        stats = self.breaker.statistics()
        self.model.observe(self.now)
        assert stats.state is self.model.state
        assert stats.consecutive_failures == self.model.consecutive
        assert (stats.window_successes, stats.window_failures) == self.model.window(self.now)
        if stats.state is HALF_OPEN:
            assert stats.half_open_calls == self.model.trials
        if stats.state is OPEN:
            assert stats.retry_at == self.model.retry_at
        assert self.seen == self.model.transitions

    def teardown(self) -> None:
        for call, _ in self.in_flight:
            call.context.run(call.coro.close)


TestBreakerModel = BreakerMachine.TestCase
TestBreakerModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


@pytest.mark.anyio
async def test_call_with_a_non_callable_is_refused_and_not_counted() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=10)
    with pytest.raises(TypeError, match="fn must be an async callable, got 42"):
        await breaker.call(42)  # type: ignore[arg-type]
    stats = breaker.statistics()
    assert stats.state is CircuitState.CLOSED
    assert stats.failures == 0


# --- async callables ---------------------------------------------------------------------------


async def test_call_and_protect_refuse_a_plain_def_function_before_admission() -> None:
    calls: list[int] = []

    def save() -> int:
        calls.append(1)
        return 1

    breaker = CircuitBreaker(failure_threshold=1)
    with pytest.raises(TypeError, match=r"^fn must be an async callable, got <function"):
        await breaker.call(save)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^fn must be an async callable"):
        protect(breaker, functools.partial(save))  # type: ignore[arg-type]
    assert calls == []
    stats = breaker.statistics()
    assert (stats.calls, stats.failures, stats.state) == (0, 0, CircuitState.CLOSED)


@pytest.mark.parametrize("via", ["call", "protect"])
@pytest.mark.parametrize("half_open", [False, True])
async def test_a_result_that_cannot_be_awaited_is_not_a_failure(via: str, half_open: bool) -> None:
    calls: list[int] = []

    def save() -> int:
        calls.append(1)
        return 5

    async def down() -> None:
        raise ConnectionError

    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1)
    if half_open:
        with pytest.raises(ConnectionError):
            await breaker.call(down)
        await anyio.sleep(1)
        assert breaker.state is CircuitState.HALF_OPEN
    bad: Any = lambda: save()  # noqa: E731
    guarded = protect(breaker, bad) if via == "protect" else functools.partial(breaker.call, bad)
    for _ in range(3):
        with pytest.raises(TypeError, match=r"^fn must return an awaitable, got 5 \(int\)$"):
            await guarded()
    assert calls == [1, 1, 1]  # half-open: each gave its trial slot back
    stats = breaker.statistics()
    assert stats.state is (CircuitState.HALF_OPEN if half_open else CircuitState.CLOSED)
    assert stats.failures == (1 if half_open else 0)
    assert stats.half_open_calls == 0
