"""as_completed: outcomes in completion order, back-pressure, early exit."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from _helpers import FAILED, SUCCEEDED, Tracker
from trioflow import (
    ResourceManager,
    RetryPolicy,
    as_completed,
)

pytestmark = pytest.mark.anyio


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
