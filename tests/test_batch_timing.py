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
