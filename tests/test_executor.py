from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import trioflow
from trioflow import (
    BatchResult,
    OperationFailure,
    Outcome,
    OutcomeStatus,
    Progress,
    ResourceManager,
    RetryPolicy,
    as_completed,
    run_batch,
)

pytestmark = pytest.mark.anyio

SUCCEEDED = OutcomeStatus.SUCCEEDED
FAILED = OutcomeStatus.FAILED
CANCELLED = OutcomeStatus.CANCELLED


class Boom(Exception):
    pass


async def napping(seconds: float, value: int) -> int:
    await anyio.sleep(seconds)
    return value


class Tracker:
    """Makes operations that sleep, then return or raise; records what ran and how many at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.started: list[int] = []
        self.finished: list[int] = []
        self.cancelled: list[int] = []

    def op(
        self, index: int, seconds: float, *, fail: bool = False, value: Any = None
    ) -> Callable[[], Awaitable[Any]]:
        async def operation() -> Any:
            self.started.append(index)
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                await anyio.sleep(seconds)
            except anyio.get_cancelled_exc_class():
                self.cancelled.append(index)
                raise
            finally:
                self.running -= 1
            self.finished.append(index)
            if fail:
                raise Boom(f"op {index}")
            return index if value is None else value

        return operation

    def ops(self, durations: list[float], failing: tuple[int, ...] = ()) -> list[Any]:
        return [self.op(i, d, fail=i in failing) for i, d in enumerate(durations)]


# --- timing, order, limits ---------------------------------------------------------------------


async def test_four_ten_second_operations_with_limit_two_take_twenty_seconds() -> None:
    tracker = Tracker()
    result = await run_batch(tracker.ops([10, 10, 10, 10]), limit=2)
    assert anyio.current_time() == 20
    assert result.duration == 20
    assert tracker.peak == 2
    assert result.values == (0, 1, 2, 3)
    assert [o.duration for o in result.outcomes] == [10, 10, 10, 10]
    assert (result.total, result.succeeded, result.failed, result.cancelled) == (4, 4, 0, 0)
    assert result.ok


async def test_outcomes_are_in_input_order_whatever_the_completion_order() -> None:
    tracker = Tracker()
    result = await run_batch(tracker.ops([5, 1, 3, 2, 4]), limit=5)
    assert tracker.finished == [1, 3, 2, 4, 0]
    assert [o.index for o in result.outcomes] == [0, 1, 2, 3, 4]
    assert result.values == (0, 1, 2, 3, 4)
    assert [o.duration for o in result.outcomes] == [5, 1, 3, 2, 4]
    assert anyio.current_time() == 5


async def test_outcomes_built_lazily_equal_outcomes_built_directly() -> None:
    tracker = Tracker()
    result = await run_batch(tracker.ops([1, 2], failing=(1,)), limit=1)
    first, second = result.outcomes
    assert first == Outcome(index=0, status=SUCCEEDED, value=0, duration=1, attempts=1)
    assert second.status is FAILED
    assert isinstance(second.error, Boom)
    assert second == Outcome(
        index=1, status=FAILED, value=None, error=second.error, duration=2, attempts=1
    )
    assert result.outcomes is result.outcomes  # built once


async def test_unbounded_batch_starts_everything_at_once() -> None:
    tracker = Tracker()
    result = await run_batch(tracker.ops([3, 1, 2] * 100))
    assert anyio.current_time() == 3
    assert tracker.peak == 300
    assert result.values == tuple(range(300))


async def test_a_small_input_with_a_big_limit_starts_only_the_workers_it_needs() -> None:
    seen: list[int] = []
    baseline = len(anyio.get_running_tasks())

    async def op() -> None:
        await anyio.sleep(1)
        seen.append(len(anyio.get_running_tasks()) - baseline)

    await run_batch([op, op, op], limit=10_000)
    assert max(seen) <= 3


async def test_in_flight_operations_never_exceed_the_limit() -> None:
    tracker = Tracker()
    pulled_ahead: list[int] = []

    def operations() -> Iterator[Callable[[], Awaitable[Any]]]:
        for i in range(50):
            # Taken lazily: when an operation is taken, at most limit - 1 others are running.
            pulled_ahead.append(tracker.running)
            yield tracker.op(i, 1 + i % 4)

    result = await run_batch(operations(), limit=4)
    assert result.succeeded == 50
    assert tracker.peak == 4
    assert max(pulled_ahead) <= 3


# --- laziness ------------------------------------------------------------------------------


async def test_an_endless_generator_stops_at_the_first_failure() -> None:
    tracker = Tracker()
    pulled = 0

    def endless() -> Iterator[Callable[[], Awaitable[Any]]]:
        nonlocal pulled
        for i in range(1000):  # endless enough; a broken fail_fast fails the test, not hangs
            pulled += 1
            yield tracker.op(i, 1 + i % 3, fail=i == 20)

    result = await run_batch(endless(), limit=3, fail_fast=True)
    assert result.failed == 1
    assert result.errors[0].index == 20
    assert pulled == result.total
    assert pulled <= result.succeeded + result.failed + 3
    assert result.cancelled == len(tracker.cancelled) <= 2


async def test_an_endless_generator_without_a_limit_stops_at_the_first_failure() -> None:
    # Without a limit, the batch reads the input as fast as it can, yielding to the operations
    # every few hundred; so the failure must come without time passing (a virtual clock only
    # moves when every task waits, and reading an endless input never waits).
    pulled = 0

    async def fails() -> None:
        await anyio.lowlevel.checkpoint()
        raise Boom

    async def waits() -> None:
        await anyio.sleep(2)

    def endless() -> Iterator[Callable[[], Awaitable[Any]]]:
        nonlocal pulled
        yield fails
        for _ in range(20_000):  # endless enough; a broken fail_fast fails the test, not hangs
            pulled += 1
            yield waits

    result = await run_batch(endless(), fail_fast=True)
    assert result.failed == 1
    assert result.cancelled == pulled == result.total - 1
    assert result.total < 2000  # a few rounds of spawning: it stopped
    assert anyio.current_time() == 0


async def test_an_endless_generator_stops_with_the_callers_cancel_scope() -> None:
    tracker = Tracker()
    pulled = 0

    def endless() -> Iterator[Callable[[], Awaitable[Any]]]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield tracker.op(i, 2)

    with anyio.move_on_after(9):
        await run_batch(endless(), limit=3)
    assert len(tracker.finished) == 12
    assert pulled == 15
    assert sorted(tracker.cancelled) == [12, 13, 14]


async def test_async_iterable_input_is_read_lazily() -> None:
    tracker = Tracker()
    pulled_ahead: list[int] = []

    async def operations() -> AsyncGenerator[Callable[[], Awaitable[Any]], None]:
        for i in range(10):
            await anyio.sleep(0.5)
            pulled_ahead.append(tracker.running)
            yield tracker.op(i, 2)

    async with contextlib.aclosing(operations()) as ops:
        result = await run_batch(ops, limit=2)
    assert result.values == tuple(range(10))
    assert max(pulled_ahead) <= 1
    assert tracker.peak == 2


async def test_async_iterable_input_without_a_limit() -> None:
    async def operations() -> AsyncGenerator[Callable[[], Awaitable[int]], None]:
        for i in range(600):
            yield functools.partial(napping, 1, i)

    async with contextlib.aclosing(operations()) as ops:
        result = await run_batch(ops)
    assert result.total == 600
    assert anyio.current_time() == 1


# --- timeouts ------------------------------------------------------------------------------


async def test_an_operation_past_its_timeout_fails_with_timeout_error() -> None:
    tracker = Tracker()
    result = await run_batch(tracker.ops([10, 2, 3.5]), timeout=3, limit=3)
    assert anyio.current_time() == 3
    slow, fast, late = result.outcomes
    assert slow.status is FAILED
    assert type(slow.error) is TimeoutError
    assert slow.duration == 3
    assert (fast.status, fast.value, fast.duration) == (SUCCEEDED, 1, 2)
    assert late.status is FAILED
    assert late.duration == 3
    assert sorted(tracker.cancelled) == [0, 2]
    assert (
        result.errors[0].message
        == "operation 0 failed: TimeoutError: operation timed out after 3 seconds"
    )


async def test_a_zero_timeout_fails_every_operation_that_waits() -> None:
    tracker = Tracker()
    result = await run_batch(tracker.ops([1, 1]), timeout=0)
    assert [o.status for o in result.outcomes] == [FAILED, FAILED]
    assert anyio.current_time() == 0


# --- failures ------------------------------------------------------------------------------


async def test_without_fail_fast_every_failure_is_collected() -> None:
    tracker = Tracker()
    result = await run_batch(tracker.ops([1, 2, 3, 4, 5], failing=(1, 3)), limit=2)
    assert anyio.current_time() == 9
    assert [o.status for o in result.outcomes] == [SUCCEEDED, FAILED, SUCCEEDED, FAILED, SUCCEEDED]
    assert result.values == (0, 2, 4)
    assert (result.succeeded, result.failed, result.cancelled) == (3, 2, 0)
    assert not result.ok
    assert [e.index for e in result.errors] == [1, 3]
    error = result.errors[0]
    assert isinstance(error, OperationFailure)
    assert isinstance(error.exception, Boom)
    assert error.message == "operation 1 failed: Boom: op 1"


async def test_raise_for_errors_raises_every_failure_with_its_index() -> None:
    tracker = Tracker()
    result = await run_batch(tracker.ops([1, 2, 3], failing=(0, 2)))
    with pytest.raises(ExceptionGroup) as info:
        result.raise_for_errors()
    assert str(info.value) == "2 of 3 operations failed (2 sub-exceptions)"
    assert [e.__notes__ for e in info.value.exceptions] == [["operation 0"], ["operation 2"]]
    with pytest.raises(ExceptionGroup) as again:
        result.raise_for_errors()
    assert [e.__notes__ for e in again.value.exceptions] == [["operation 0"], ["operation 2"]]


async def test_raise_for_errors_returns_none_when_nothing_failed() -> None:
    result = await run_batch(Tracker().ops([1]))
    result.raise_for_errors()  # does not raise
    assert result.errors == ()


async def test_fail_fast_cancels_what_is_in_flight_and_starts_nothing_more() -> None:
    tracker = Tracker()
    result = await run_batch(
        tracker.ops([5, 1, 10, 1, 1, 1], failing=(1,)), limit=3, fail_fast=True
    )
    assert anyio.current_time() == 1
    assert result.duration == 1
    assert tracker.started == [0, 1, 2]
    assert sorted(tracker.cancelled) == [0, 2]
    assert [o.status for o in result.outcomes] == [CANCELLED, FAILED, CANCELLED]
    assert [o.duration for o in result.outcomes] == [1, 1, 1]
    assert (result.total, result.succeeded, result.failed, result.cancelled) == (3, 0, 1, 2)
    assert result.outcomes[0].error is None
    assert [e.index for e in result.errors] == [1]


async def test_fail_fast_with_the_general_path_behaves_the_same() -> None:
    tracker = Tracker()
    progress: list[Progress] = []
    result = await run_batch(
        tracker.ops([5, 1, 10, 1], failing=(1,)),
        limit=3,
        fail_fast=True,
        timeout=100,
        on_progress=progress.append,
    )
    assert anyio.current_time() == 1
    assert [o.status for o in result.outcomes] == [CANCELLED, FAILED, CANCELLED]
    assert progress == [Progress(total=4, completed=1, failed=1, running=2)]


# --- cancellation by the caller ------------------------------------------------------------


@pytest.mark.parametrize("limit", [None, 2])
@pytest.mark.parametrize("general", [False, True])
async def test_the_callers_cancellation_cancels_everything_and_propagates(
    limit: int | None, general: bool
) -> None:
    tracker = Tracker()
    progress: list[Progress] = []
    baseline = len(anyio.get_running_tasks())
    seen: BaseException | None = None
    options: dict[str, Any] = {"on_progress": progress.append, "retry": RetryPolicy()}
    with anyio.move_on_after(5) as scope:
        try:
            await run_batch(
                tracker.ops([1, 10, 10, 10]), limit=limit, **(options if general else {})
            )
        except BaseException as exc:
            seen = exc
            raise
    assert scope.cancelled_caught
    assert isinstance(seen, anyio.get_cancelled_exc_class())  # itself, not in a group
    assert anyio.current_time() == 5
    assert tracker.finished == [0]
    assert sorted(tracker.cancelled) == [1, 2, 3][: (2 if limit else 3)]
    assert tracker.running == 0
    assert tracker.started.count(1) == 1  # cancellation is never retried
    assert len(anyio.get_running_tasks()) == baseline
    if general:
        assert progress == [Progress(total=4, completed=1, failed=0, running=1 if limit else 3)]


# --- progress --------------------------------------------------------------------------------


async def test_progress_is_reported_after_each_operation() -> None:
    tracker = Tracker()
    progress: list[Progress] = []
    await run_batch(tracker.ops([1, 2, 3], failing=(1,)), limit=2, on_progress=progress.append)
    assert progress == [
        Progress(total=3, completed=1, failed=0, running=1),
        Progress(total=3, completed=2, failed=1, running=1),
        Progress(total=3, completed=3, failed=1, running=0),
    ]
    assert [p.percent for p in progress] == [100 / 3, 200 / 3, 100.0]


async def test_progress_total_is_unknown_until_a_generator_is_exhausted() -> None:
    tracker = Tracker()
    progress: list[Progress] = []
    await run_batch((op for op in tracker.ops([1, 2, 3])), limit=2, on_progress=progress.append)
    assert [(p.total, p.completed, p.percent) for p in progress] == [
        (None, 1, None),
        (None, 2, None),
        (3, 3, 100.0),
    ]


def test_progress_percent() -> None:
    assert Progress(total=4, completed=1, failed=0, running=0).percent == 25.0
    assert Progress(total=0, completed=0, failed=0, running=0).percent == 100.0
    assert Progress(total=None, completed=5, failed=0, running=1).percent is None


async def test_an_exception_from_on_progress_aborts_the_batch() -> None:
    tracker = Tracker()

    def explode(progress: Progress) -> None:
        raise RuntimeError("progress bar broke")

    with pytest.raises(RuntimeError, match="progress bar broke") as info:
        await run_batch(tracker.ops([1, 5, 5]), limit=3, on_progress=explode)
    assert info.value.__notes__ == ["raised by on_progress"]
    assert sorted(tracker.cancelled) == [1, 2]
    assert anyio.current_time() == 1


# --- retry ---------------------------------------------------------------------------------


async def test_retry_attempts_are_recorded() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        await anyio.sleep(1)
        if calls < 3:
            raise ConnectionError("reset")
        return "ok"

    async def broken() -> str:
        raise ValueError("not retried")

    policy = RetryPolicy(attempts=4, initial_delay=1, multiplier=2)
    result = await run_batch([flaky, broken], retry=policy)
    ok, bad = result.outcomes
    assert (ok.status, ok.value, ok.attempts) == (SUCCEEDED, "ok", 3)
    assert ok.duration == 1 + 1 + 1 + 2 + 1  # three tries, waits of 1 and 2 seconds
    assert (bad.status, bad.attempts) == (FAILED, 1)
    assert result.values == ("ok",)


async def test_the_timeout_applies_to_each_attempt() -> None:
    durations = iter([10, 1])

    async def slow_then_fast() -> int:
        await anyio.sleep(next(durations))
        return 7

    result = await run_batch(
        [slow_then_fast], timeout=2, retry=RetryPolicy(attempts=2, initial_delay=0.5)
    )
    (outcome,) = result.outcomes
    assert (outcome.status, outcome.value, outcome.attempts) == (SUCCEEDED, 7, 2)
    assert outcome.duration == 2 + 0.5 + 1


async def test_retries_that_run_out_record_the_last_error_and_every_attempt() -> None:
    async def down() -> None:
        await anyio.sleep(1)
        raise ConnectionError("down")

    result = await run_batch([down], retry=RetryPolicy(attempts=3, initial_delay=0))
    (outcome,) = result.outcomes
    assert outcome.status is FAILED
    assert isinstance(outcome.error, ConnectionError)
    assert outcome.attempts == 3
    assert outcome.duration == 3


# --- bad input -----------------------------------------------------------------------------

_TIMEOUT = r"timeout must be a number of seconds >= 0 or None \(no deadline\)"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"limit": 0}, ValueError, "limit must be an int >= 1, got 0"),
        ({"limit": -3}, ValueError, "limit must be an int >= 1, got -3"),
        (
            {"limit": 2.0},
            TypeError,
            "limit must be an int >= 1, a ResourceManager or None, got 2.0",
        ),
        (
            {"limit": True},
            TypeError,
            "limit must be an int >= 1, a ResourceManager or None, got True",
        ),
        ({"timeout": -1}, ValueError, rf"{_TIMEOUT}, got -1 \(int\)"),
        ({"timeout": math.nan}, ValueError, rf"{_TIMEOUT}, got nan \(float\)"),
        ({"timeout": -math.inf}, ValueError, rf"{_TIMEOUT}, got -inf \(float\)"),
        ({"timeout": "5"}, TypeError, rf"{_TIMEOUT}, got '5' \(str\)"),
        ({"timeout": False}, TypeError, "timeout must be a number"),
        ({"fail_fast": 1}, TypeError, "fail_fast must be a bool, got 1"),
        ({"retry": 3}, TypeError, "retry must be a RetryPolicy or None, got 3"),
        ({"on_progress": "print"}, TypeError, "on_progress must be a callable"),
    ],
)
async def test_bad_arguments_are_rejected_before_anything_runs(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    tracker = Tracker()
    with pytest.raises(error, match=message):
        await run_batch(tracker.ops([1]), **kwargs)
    if set(kwargs) <= {"limit", "timeout", "retry"}:
        with pytest.raises(error, match=message):
            as_completed(tracker.ops([1]), **kwargs)  # raised at the call, not at entry
    assert tracker.started == []


async def test_operations_must_be_iterable() -> None:
    with pytest.raises(
        TypeError, match=r"operations must be an iterable or async iterable .* got 42 \(int\)"
    ):
        await run_batch(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [None, 1, 3])
async def test_a_non_callable_operation_raises_naming_its_index_and_cancels_the_batch(
    limit: int | None,
) -> None:
    tracker = Tracker()
    ops: list[Any] = [*tracker.ops([5, 5]), "not an operation", tracker.op(3, 5)]
    message = r"operation 2 must be a zero-argument async callable, got 'not an operation' \(str\)"
    with pytest.raises(TypeError, match=message):
        await run_batch(ops, limit=limit)
    assert 3 not in tracker.started
    if limit == 1:  # found only once the worker reaches it
        assert tracker.finished == [0, 1]
        assert anyio.current_time() == 10
    else:  # found at once; what runs is cancelled
        assert tracker.finished == []
        assert sorted(tracker.cancelled) == [0, 1]
        assert anyio.current_time() == 0


async def test_a_coroutine_instead_of_a_callable_gets_a_hint() -> None:
    async def fetch() -> int:
        return 1

    with pytest.raises(TypeError, match=r"operation 1 .* not a coroutine"):
        await run_batch([fetch, fetch()], timeout=1)  # type: ignore[arg-type]


async def test_an_exception_from_the_input_iterator_propagates() -> None:
    tracker = Tracker()

    def broken() -> Iterator[Callable[[], Awaitable[Any]]]:
        yield tracker.op(0, 1)
        yield tracker.op(1, 5)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone") as info:
        await run_batch(broken(), limit=3)
    assert info.value.__notes__ == ["raised by the operations iterable after 2 operations"]
    assert anyio.current_time() == 0
    assert sorted(tracker.cancelled) == [0, 1]


async def test_an_exception_from_an_async_input_propagates() -> None:
    async def broken() -> AsyncIterator[Callable[[], Awaitable[Any]]]:
        yield functools.partial(anyio.sleep, 1)
        await anyio.sleep(2)
        raise OSError("socket gone")

    with pytest.raises(OSError, match="socket gone"):
        await run_batch(broken())


# --- shared capacity -----------------------------------------------------------------------


async def test_a_resource_manager_shared_by_two_batches_never_exceeds_its_limit() -> None:
    rm = ResourceManager(limit=3)
    tracker = Tracker()
    results: list[BatchResult[Any]] = []

    async def batch(first: int) -> None:
        ops = [tracker.op(first + i, 1) for i in range(6)]
        results.append(await run_batch(ops, limit=rm))

    async with anyio.create_task_group() as tg:
        tg.start_soon(batch, 0)
        tg.start_soon(batch, 100)
    assert tracker.peak == 3
    assert anyio.current_time() == 4
    assert sorted(v for r in results for v in r.values) == [*range(6), *range(100, 106)]
    assert rm.statistics().executed == 12


async def test_a_batch_follows_a_resource_managers_limit_when_it_grows() -> None:
    rm = ResourceManager(limit=1)
    tracker = Tracker()

    async def grow() -> None:
        await anyio.sleep(5)
        rm.limit = 4

    async with anyio.create_task_group() as tg:
        tg.start_soon(grow)
        result = await run_batch(tracker.ops([10, 10, 10, 10]), limit=rm)
    assert result.succeeded == 4
    assert tracker.peak == 4
    assert anyio.current_time() == 15


async def test_a_resource_manager_batch_with_timeouts_and_fail_fast() -> None:
    rm = ResourceManager(limit=2)
    tracker = Tracker()
    result = await run_batch(tracker.ops([1, 10, 5, 5]), limit=rm, timeout=3, fail_fast=True)
    assert [o.status for o in result.outcomes] == [SUCCEEDED, FAILED, CANCELLED, CANCELLED]
    # The last one had been taken from the input and was waiting for a slot.
    assert [o.attempts for o in result.outcomes] == [1, 1, 1, 0]
    assert tracker.started == [0, 1, 2]
    assert anyio.current_time() == 3
    stats = rm.statistics()
    assert (stats.executing, stats.executed, stats.failed) == (0, 2, 1)


async def test_a_resource_manager_listener_raising_aborts_the_batch() -> None:
    rm = ResourceManager(limit=2)
    tracker = Tracker()

    def listener(duration: float, succeeded: bool) -> None:
        raise RuntimeError("listener broke")

    rm.add_listener(listener)
    with pytest.raises(RuntimeError, match="listener broke") as info:
        await run_batch(tracker.ops([1, 5, 5]), limit=rm)
    assert info.value.__notes__ == ["raised by a ResourceManager listener"]
    assert anyio.current_time() == 1
    # The third, read ahead, is handed the freed slot just before the abort: trio lets it start
    # (then cancels it), asyncio cancels it on waking. Either way it never finishes.
    assert tracker.finished == [0]
    assert 1 in tracker.cancelled
    assert tracker.running == 0
    assert rm.statistics().executing == 0


# --- map -----------------------------------------------------------------------------------


async def test_map_returns_values_in_order() -> None:
    async def double(x: int) -> int:
        await anyio.sleep(10 - x)
        return 2 * x

    assert await trioflow.amap(double, range(10), limit=3) == [2 * x for x in range(10)]


async def test_map_over_an_async_iterable() -> None:
    async def items() -> AsyncIterator[int]:
        for i in range(5):
            yield i

    async def square(x: int) -> int:
        await anyio.sleep(1)
        return x * x

    assert await trioflow.amap(square, items(), limit=2) == [0, 1, 4, 9, 16]
    assert anyio.current_time() == 3


async def test_map_raises_the_first_failure_and_cancels_the_rest() -> None:
    started: list[int] = []

    async def fn(x: int) -> int:
        started.append(x)
        await anyio.sleep(x)
        if x == 2:
            raise Boom("two")
        return x

    with pytest.raises(ExceptionGroup) as info:
        await trioflow.amap(fn, [5, 2, 9, 1, 1], limit=3, timeout=100)
    (error,) = info.value.exceptions
    assert isinstance(error, Boom)
    assert error.__notes__ == ["operation 1"]
    assert anyio.current_time() == 2
    assert started == [5, 2, 9]


async def test_map_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="fn must be an async callable of one argument, got 3"):
        await trioflow.amap(3, [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="items must be an iterable"):
        await trioflow.amap(anyio.sleep, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit must be an int >= 1, got 0"):
        await trioflow.amap(anyio.sleep, [1], limit=0)


# --- as_completed --------------------------------------------------------------------------


async def test_as_completed_hands_out_outcomes_in_completion_order() -> None:
    tracker = Tracker()
    seen: list[tuple[int, float]] = []
    async with as_completed(tracker.ops([3, 1, 2.5, 1], failing=(2,)), limit=3) as outcomes:
        async for outcome in outcomes:
            seen.append((outcome.index, anyio.current_time()))
            assert outcome.status is (FAILED if outcome.index == 2 else SUCCEEDED)
    assert seen == [(1, 1), (3, 2), (2, 2.5), (0, 3)]


async def test_as_completed_timeouts_and_unbounded() -> None:
    tracker = Tracker()
    async with as_completed(tracker.ops([5, 1]), timeout=2) as outcomes:
        got = [(o.index, o.status, type(o.error)) async for o in outcomes]
    assert got == [(1, SUCCEEDED, type(None)), (0, FAILED, TimeoutError)]
    assert anyio.current_time() == 2


async def test_a_slow_consumer_holds_the_operations_back() -> None:
    tracker = Tracker()
    limit = 3  # the channel then holds min(limit, 256) = 3 outcomes
    async with as_completed(tracker.ops([1] * 30), limit=limit) as outcomes:
        await anyio.sleep(100)
        assert len(tracker.started) == limit + limit
        indexes = [o.index async for o in outcomes]
    assert sorted(indexes) == list(range(30))


async def test_leaving_as_completed_early_cancels_the_rest() -> None:
    tracker = Tracker()
    baseline = len(anyio.get_running_tasks())
    async with as_completed(tracker.ops([1, 5, 5, 5]), limit=3) as outcomes:
        async for outcome in outcomes:
            assert outcome.index == 0
            break
    assert anyio.current_time() == 1
    assert sorted(tracker.cancelled) == [1, 2, 3]
    assert len(anyio.get_running_tasks()) == baseline


async def test_as_completed_over_an_endless_input_reads_only_what_it_hands_out() -> None:
    tracker = Tracker()
    pulled = 0

    def endless() -> Iterator[Callable[[], Awaitable[Any]]]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield tracker.op(i, 1 + i % 3)

    handed_out = 0
    async with as_completed(endless(), limit=4) as outcomes:
        async for _ in outcomes:
            handed_out += 1
            if handed_out == 50:
                break
    # What was read: what was handed out, plus at most the channel's 4 and 4 in flight.
    assert pulled <= handed_out + 4 + 4
    assert tracker.running == 0


async def test_an_error_in_the_as_completed_body_propagates_as_itself() -> None:
    tracker = Tracker()

    async def consume() -> None:
        async with as_completed(tracker.ops([1, 5]), limit=2) as outcomes:
            async for _ in outcomes:
                raise KeyError("consumer bug")

    with pytest.raises(KeyError):
        await consume()
    assert tracker.cancelled == [1]


async def test_as_completed_hands_out_an_input_error_after_the_outcomes_before_it() -> None:
    tracker = Tracker()

    def broken() -> Iterator[Callable[[], Awaitable[Any]]]:
        yield tracker.op(0, 1)
        raise OSError("disk gone")

    seen: list[int] = []

    async def consume() -> None:
        async with as_completed(broken(), limit=1) as outcomes:
            async for outcome in outcomes:
                seen.append(outcome.index)

    with pytest.raises(OSError, match="disk gone"):
        await consume()
    assert seen == [0]
    assert anyio.current_time() == 1


async def test_as_completed_raises_an_input_error_at_exit_if_not_consumed() -> None:
    with pytest.raises(TypeError, match="operation 0"):
        async with as_completed([None], limit=1):  # type: ignore[arg-type]
            await anyio.sleep(1)


async def test_as_completed_with_a_resource_manager_and_retry() -> None:
    rm = ResourceManager(limit=2)
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError
        await anyio.sleep(1)
        return calls

    async with as_completed(
        [flaky, flaky, flaky], limit=rm, retry=RetryPolicy(initial_delay=1)
    ) as outcomes:
        got = sorted([(o.index, o.attempts) async for o in outcomes])
    assert got == [(0, 2), (1, 1), (2, 1)]


async def test_the_callers_cancellation_of_as_completed_propagates() -> None:
    tracker = Tracker()
    with anyio.move_on_after(3) as scope:
        async with as_completed(tracker.ops([1, 10, 10]), limit=2) as outcomes:
            async for _ in outcomes:
                pass
    assert scope.cancelled_caught
    assert sorted(tracker.cancelled) == [1, 2]


class Unhealthy:
    healthy = False

    async def wait_healthy(self) -> None:
        await anyio.sleep_forever()


async def test_operations_refused_by_an_unhealthy_resource_manager_fail_without_running() -> None:
    rm = ResourceManager(limit=2, health=Unhealthy(), when_unhealthy="fail")
    tracker = Tracker()
    result = await run_batch(tracker.ops([1, 1, 1]), limit=rm)
    assert tracker.started == []
    assert [o.status for o in result.outcomes] == [FAILED] * 3
    assert all(isinstance(o.error, trioflow.ResourceExhaustedError) for o in result.outcomes)
    assert [o.attempts for o in result.outcomes] == [0, 0, 0]


async def test_equal_batches_give_equal_results() -> None:
    first = await run_batch(Tracker().ops([1, 2, 3]), limit=2)
    second = await run_batch(Tracker().ops([1, 2, 3]), limit=2)
    assert first == second
    assert first.outcomes == second.outcomes
    third = await run_batch(Tracker().ops([1, 2, 4]), limit=2)
    assert first != third


# --- the same behaviour on every path --------------------------------------------------------
# The engine has a lean path (int limit or none, plain sync input), a general path (timeout,
# retry, progress or an async input) and a ResourceManager path; the trio and asyncio backends
# differ only in their primitives. Each case below runs on every path and on both backends.

LIMITS = ["none", "int", "manager"]
INPUTS = ["sync", "async"]


def make_limit(kind: str) -> int | ResourceManager | None:
    return {"none": None, "int": 2, "manager": ResourceManager(limit=2)}[kind]


def feed(kind: str, ops: list[Any], error: Exception | None = None) -> Any:
    """The operations as a list or an async generator, optionally raising after the last."""
    if kind == "sync":
        if error is None:
            return ops

        def broken() -> Iterator[Any]:
            yield from ops
            raise error

        return broken()

    async def agen() -> AsyncIterator[Any]:
        for op in ops:
            yield op
        if error is not None:
            raise error

    return agen()


@pytest.mark.parametrize("source", INPUTS)
@pytest.mark.parametrize("limit", LIMITS)
async def test_every_path_propagates_the_callers_cancellation_as_itself(
    limit: str, source: str
) -> None:
    tracker = Tracker()
    baseline = len(anyio.get_running_tasks())
    seen: BaseException | None = None
    with anyio.move_on_after(5) as scope:
        try:
            await run_batch(feed(source, tracker.ops([1, 10, 10])), limit=make_limit(limit))
        except BaseException as exc:
            seen = exc
            raise
    assert scope.cancelled_caught
    assert type(seen) is anyio.get_cancelled_exc_class()
    assert anyio.current_time() == 5
    assert tracker.finished == [0]
    assert sorted(tracker.cancelled) == [1, 2]
    assert tracker.running == 0
    assert len(anyio.get_running_tasks()) == baseline


@pytest.mark.parametrize("source", INPUTS)
@pytest.mark.parametrize("limit", LIMITS)
async def test_every_path_fails_fast_the_same_way(limit: str, source: str) -> None:
    tracker = Tracker()
    result = await run_batch(
        feed(source, tracker.ops([5, 1, 10], failing=(1,))),
        limit=make_limit(limit) if limit != "int" else 3,
        fail_fast=True,
    )
    if limit == "manager":  # a manager of 2: the third waited for a slot and never started
        assert sorted(tracker.started) == [0, 1]
        assert [o.attempts for o in result.outcomes] == [1, 1, 0]
    else:  # (without a limit, trio starts the tasks in any order)
        assert sorted(tracker.started) == [0, 1, 2]
    assert [o.status for o in result.outcomes] == [CANCELLED, FAILED, CANCELLED]
    assert (result.succeeded, result.failed, result.cancelled) == (0, 1, 2)
    assert anyio.current_time() == 1


@pytest.mark.parametrize("source", INPUTS)
@pytest.mark.parametrize("limit", LIMITS)
async def test_every_path_times_out_operations_the_same_way(limit: str, source: str) -> None:
    tracker = Tracker()
    result = await run_batch(
        feed(source, tracker.ops([1, 4, 1])), limit=make_limit(limit), timeout=2
    )
    assert [o.status for o in result.outcomes] == [SUCCEEDED, FAILED, SUCCEEDED]
    assert type(result.outcomes[1].error) is TimeoutError
    assert [o.duration for o in result.outcomes] == [1, 2, 1]
    assert tracker.cancelled == [1]
    assert anyio.current_time() == 2


@pytest.mark.parametrize("source", INPUTS)
@pytest.mark.parametrize("limit", LIMITS)
async def test_every_path_raises_the_inputs_error_as_itself(limit: str, source: str) -> None:
    tracker = Tracker()
    with pytest.raises(OSError, match="disk gone") as info:
        await run_batch(
            feed(source, tracker.ops([1, 5]), OSError("disk gone")), limit=make_limit(limit)
        )
    assert info.value.__notes__ == ["raised by the operations iterable after 2 operations"]
    if limit == "int":
        # Two workers run the two operations; one reads the input again only once it is free.
        assert anyio.current_time() == 1
        assert (tracker.finished, tracker.cancelled) == ([0], [1])
    else:
        # Without a limit the input is read at once; with a manager, one operation (here, the
        # end of the input) is read ahead, while the others hold their slots.
        assert anyio.current_time() == 0
        assert (tracker.finished, sorted(tracker.cancelled)) == ([], [0, 1])


@pytest.mark.parametrize("source", INPUTS)
@pytest.mark.parametrize("limit", LIMITS)
async def test_every_path_raises_the_progress_callbacks_error_as_itself(
    limit: str, source: str
) -> None:
    tracker = Tracker()

    def explode(progress: Progress) -> None:
        raise RuntimeError("progress bar broke")

    with pytest.raises(RuntimeError, match="progress bar broke") as info:
        await run_batch(
            feed(source, tracker.ops([1, 5, 5])), limit=make_limit(limit), on_progress=explode
        )
    assert info.value.__notes__ == ["raised by on_progress"]
    assert anyio.current_time() == 1
    assert tracker.finished == [0]
    assert tracker.running == 0
