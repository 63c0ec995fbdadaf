"""run_batch with a ResourceManager: a finished operation's slot passed to the next one.

A worker whose operation ends keeps its slot for the batch's next operation only while nobody
else waits for the manager's tokens; these tests pin that the shortcut is invisible: other users
are still served first come, first served, a shrinking limit is followed, and the manager's
statistics and listeners see every operation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _helpers import Boom, Tracker
from trioflow import BatchResult, ResourceManager, ResourceManagerEvent, SlotReleased, run_batch
from trioflow.testing import virtual_time_backends

pytestmark = pytest.mark.anyio


async def test_another_user_waiting_is_served_before_the_batch_takes_the_slot_again() -> None:
    rm = ResourceManager(limit=2)
    tracker = Tracker()
    started: list[float] = []

    async def other() -> None:
        await anyio.sleep(0.5)  # the batch's read-ahead operation waits since 0

        async def call() -> None:
            started.append(anyio.current_time())
            await anyio.sleep(1)

        await rm.run(call)

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        result = await run_batch(tracker.ops([1] * 6), limit=rm)
    # At 1 both slots free: the first to the batch's waiter, the second to the other user.
    assert started == [1]
    assert result.succeeded == 6
    assert tracker.peak == 2
    # 0-1: ops 0, 1; 1-2: op 2 and the other user; 2-3: ops 3, 4; 3-4: op 5.
    assert anyio.current_time() == 4


async def test_a_batch_follows_a_resource_managers_limit_when_it_shrinks() -> None:
    rm = ResourceManager(limit=4)
    tracker = Tracker()
    peaks: list[int] = []

    async def shrink() -> None:
        await anyio.sleep(0.5)
        rm.limit = 2
        for _ in range(10):
            await anyio.sleep(1)
            peaks.append(tracker.running)

    async with anyio.create_task_group() as tg:
        tg.start_soon(shrink)
        result = await run_batch(tracker.ops([1] * 12), limit=rm)
        ended = anyio.current_time()
    assert result.succeeded == 12
    assert max(peaks) <= 2
    # 4 ran in the first second, then 2 at a time: 4 more seconds.
    assert ended == 5
    assert rm.statistics().executing == 0


@st.composite
def batches(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 12))
    return {
        "durations": draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)),
        "failing": draw(st.sets(st.integers(0, max(n - 1, 0)))) if n else set(),
        "limit": draw(st.integers(1, 4)),
        "other": draw(st.booleans()),  # a second batch shares the manager
    }


@pytest.mark.parametrize("backend", range(2), ids=["trio", "asyncio"])
@settings(max_examples=60, deadline=None)
@given(case=batches())
def test_the_managers_statistics_and_listeners_see_every_operation(
    backend: int, case: dict[str, Any]
) -> None:
    durations: list[float] = case["durations"]
    failing = tuple(case["failing"])
    limit: int = case["limit"]
    events: list[SlotReleased] = []
    tracker = Tracker()
    results: list[BatchResult[Any]] = []

    async def main() -> None:
        rm = ResourceManager(limit=limit)

        def listen(event: ResourceManagerEvent) -> None:
            assert isinstance(event, SlotReleased)
            events.append(event)

        rm.add_listener(listen)

        async def batch() -> None:
            results.append(await run_batch(tracker.ops(durations, failing), limit=rm))

        async with anyio.create_task_group() as tg:
            tg.start_soon(batch)
            if case["other"]:
                tg.start_soon(batch)
        stats = rm.statistics()
        copies = 2 if case["other"] else 1
        n = len(durations) * copies
        assert (stats.executing, stats.waiting) == (0, 0)
        assert stats.executed == n
        assert stats.failed == len(failing) * copies
        assert len(events) == n
        assert sorted(event.duration for event in events) == sorted(durations * copies)
        assert sum(not event.ok for event in events) == len(failing) * copies
        assert tracker.peak <= limit
        for result in results:
            assert result.failed == len(failing)
            assert all(isinstance(o.error, Boom) for o in result.outcomes if o.error)

    name, options = virtual_time_backends()[backend]
    anyio.run(main, backend=name, backend_options=options)


async def test_an_async_input_runs_every_operation_under_a_resource_manager() -> None:
    # Workers taking from an async input await between the check for a waiter and the slot,
    # so more than one of them may wait for a slot, each with its own operation.
    rm = ResourceManager(limit=2)
    tracker = Tracker()

    async def operations() -> AsyncIterator[Any]:
        for op in tracker.ops([1] * 8):
            await anyio.lowlevel.checkpoint()
            yield op

    result = await run_batch(operations(), limit=rm)
    assert list(result.values) == list(range(8))
    assert sorted(tracker.started) == list(range(8))
    assert tracker.peak == 2
    assert anyio.current_time() == 4
    assert (rm.statistics().executed, rm.statistics().executing) == (8, 0)
