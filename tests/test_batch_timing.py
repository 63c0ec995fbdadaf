"""run_batch: timing in virtual time, outcome order, limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from _helpers import FAILED, SUCCEEDED, Boom, Tracker
from trioflow import (
    Outcome,
    run_batch,
)

pytestmark = pytest.mark.anyio


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


# --- equality ------------------------------------------------------------------------------


async def test_equal_batches_give_equal_results() -> None:
    first = await run_batch(Tracker().ops([1, 2, 3]), limit=2)
    second = await run_batch(Tracker().ops([1, 2, 3]), limit=2)
    assert first == second
    assert first.outcomes == second.outcomes
    third = await run_batch(Tracker().ops([1, 2, 4]), limit=2)
    assert first != third


# --- timeouts: one deadline per worker, one watchdog -------------------------------------------


async def test_a_timeout_cuts_only_the_operation_that_overran_and_its_worker_goes_on() -> None:
    tracker = Tracker()
    result = await run_batch(tracker.ops([5, 1, 1, 1, 5, 1]), limit=2, timeout=3)
    # Worker A: op 0 cut at 3, then op 4 (3..6, cut), B: ops 1, 2, 3 (0..3), then op 5 (3..4).
    assert [o.status for o in result.outcomes] == [FAILED, *[SUCCEEDED] * 3, FAILED, SUCCEEDED]
    assert [o.duration for o in result.outcomes] == [3, 1, 1, 1, 3, 1]
    for index in (0, 4):
        error = result.outcomes[index].error
        assert type(error) is TimeoutError
        assert str(error) == "operation timed out after 3 seconds"
    assert result.duration == anyio.current_time() == 6
    assert sorted(tracker.cancelled) == [0, 4]


async def test_fail_fast_stops_at_the_first_timeout() -> None:
    tracker = Tracker()
    result = await run_batch(tracker.ops([1, 10, 1.5, 1.5, 1]), limit=2, timeout=3, fail_fast=True)
    # op 1 times out at 3 while op 3 (started at 2.5) runs: op 3 is cancelled, op 4 never taken.
    assert [o.status.value for o in result.outcomes] == [
        "succeeded",
        "failed",
        "succeeded",
        "cancelled",
    ]
    assert (result.total, result.succeeded, result.failed, result.cancelled) == (4, 2, 1, 1)
    assert result.duration == anyio.current_time() == 3


async def test_a_thousand_workers_with_deadlines_meet_every_one_exactly() -> None:
    seconds = [i % 7 + 0.25 for i in range(3000)]
    reports: list[int] = []
    result = await run_batch(
        Tracker().ops(seconds),
        limit=1000,
        timeout=3.5,
        on_progress=lambda progress: reports.append(progress.completed),
    )
    expected = [SUCCEEDED if s < 3.5 else FAILED for s in seconds]
    assert [o.status for o in result.outcomes] == expected
    assert [o.duration for o in result.outcomes] == [min(s, 3.5) for s in seconds]
    assert reports == list(range(1, 3001))
    assert result.duration == anyio.current_time()


async def test_an_operation_that_catches_the_timeout_is_still_recorded_as_timed_out() -> None:
    # A well-behaved cleanup (awaiting under a shield after the cancellation) delays the end;
    # the outcome is the timeout all the same, and the worker goes on with the next operation.
    async def cleans_up() -> str:
        try:
            await anyio.sleep(10)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(1)
        return "unreachable"

    async def quick() -> str:
        await anyio.sleep(1)
        return "quick"

    result = await run_batch([cleans_up, quick], limit=1, timeout=2)
    assert type(result.outcomes[0].error) is TimeoutError
    assert result.outcomes[0].duration == 3  # cut at 2, one second of cleanup
    assert result.outcomes[1].value == "quick"
    assert result.duration == anyio.current_time() == 4
