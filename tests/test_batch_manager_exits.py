"""run_batch and as_completed with a ResourceManager: every way out gives the slots back.

A worker of a managed batch hands its slot from one operation to the next while nobody else
waits; whatever ends the batch (the input ending or raising, an operation that cannot run, a
fail_fast failure, on_progress raising, the consumer leaving, a cancellation) must leave the
manager with nothing executing and nothing waiting, with every operation that ran counted
once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from _helpers import Boom, Tracker
from trioflow import Progress, ResourceManager, as_completed, run_batch

pytestmark = pytest.mark.anyio


def assert_idle(rm: ResourceManager, executed: int) -> None:
    stats = rm.statistics()
    assert (stats.executing, stats.waiting, stats.executed) == (0, 0, executed)


def broken(ops: list[Any], error: BaseException) -> Iterator[Any]:
    yield from ops
    raise error


async def test_the_input_raising_midway_gives_every_slot_back() -> None:
    rm = ResourceManager(limit=2)
    tracker = Tracker()
    with pytest.raises(Boom) as caught:
        await run_batch(broken(tracker.ops([1, 1, 1, 1.5, 1]), Boom("input")), limit=rm)
    assert "raised by the operations iterable after 5 operations" in caught.value.__notes__[0]
    # 0 and 1 ran 0-1 while 2 waited as the read-ahead; 2 ran 1-2 and 3 from 1; taking the
    # one after 4 at 2 raised, which cancelled 3: 0, 1 and 2 count.
    assert sorted(tracker.cancelled) == [3]
    assert_idle(rm, 3)


async def test_an_operation_that_cannot_run_midway_gives_every_slot_back() -> None:
    rm = ResourceManager(limit=2)
    tracker = Tracker()
    ops: list[Any] = tracker.ops([1, 2, 1])
    ops.append("not callable")
    with pytest.raises(TypeError, match="operation 3 must be a zero-argument async callable"):
        await run_batch(ops, limit=rm)
    # 0 ran 0-1 and 1 from 0 (2 read ahead); at 1, taking 3 aborted the batch, which
    # cancelled 1, and 2 never started.
    assert sorted(tracker.started) == [0, 1]
    assert tracker.cancelled == [1]
    assert_idle(rm, 1)


async def test_an_operation_returning_no_awaitable_gives_every_slot_back() -> None:
    rm = ResourceManager(limit=2)
    tracker = Tracker()

    class Sync:
        """A callable object: judged only by what its call returns."""

        def __call__(self) -> int:
            return 1

    ops: list[Any] = [*tracker.ops([1, 2, 1]), Sync()]
    with pytest.raises(TypeError, match=r"operation 3 must return an awaitable, got 1 \(int\)"):
        await run_batch(ops, limit=rm)
    # 0 ran 0-1 and 1 0-2 (2 read ahead); at 1, 0's slot went on to 2 (1-2), with 3 read
    # ahead; at 2, 3 was called under its slot (which counts it) and refused, with nothing
    # left running.
    assert sorted(tracker.started) == [0, 1, 2]
    assert tracker.cancelled == []
    assert_idle(rm, 4)


async def test_a_fail_fast_failure_gives_every_slot_back_and_starts_nothing_more() -> None:
    rm = ResourceManager(limit=2)
    tracker = Tracker()
    ops = tracker.ops([1, 1, 0.5, 1, 1, 1], failing=(2,))
    result = await run_batch(ops, limit=rm, fail_fast=True)
    # 0 and 1 ran 0-1, then 2 and 3 (4 read ahead); 2 failed at 1.5, which cancelled 3, and
    # 4 never started.
    assert (result.succeeded, result.failed, result.cancelled) == (2, 1, 2)
    assert sorted(tracker.started) == [0, 1, 2, 3]
    assert tracker.cancelled == [3]
    assert anyio.current_time() == 1.5
    stats = rm.statistics()
    assert (stats.executing, stats.waiting, stats.executed, stats.failed) == (0, 0, 3, 1)


async def test_on_progress_raising_gives_every_slot_back() -> None:
    rm = ResourceManager(limit=2)
    tracker = Tracker()

    def report(progress: Progress) -> None:
        if progress.completed == 3:
            raise Boom("report")

    with pytest.raises(Boom):
        await run_batch(tracker.ops([1] * 8), limit=rm, on_progress=report)
    stats = rm.statistics()
    assert (stats.executing, stats.waiting) == (0, 0)
    assert stats.executed == len(tracker.started) - len(tracker.cancelled)


async def test_the_consumer_leaving_as_completed_gives_every_slot_back() -> None:
    rm = ResourceManager(limit=2)
    tracker = Tracker()
    seen = []
    async with as_completed(tracker.ops([1] * 10), limit=rm) as outcomes:
        async for outcome in outcomes:
            seen.append(outcome.index)
            if len(seen) == 3:
                break
    assert len(seen) == 3
    stats = rm.statistics()
    assert (stats.executing, stats.waiting) == (0, 0)
    assert stats.executed == len(tracker.started) - len(tracker.cancelled)


async def test_a_cancellation_gives_every_slot_back_and_counts_nothing_for_it() -> None:
    rm = ResourceManager(limit=2)
    tracker = Tracker()
    with anyio.move_on_after(2.5):
        await run_batch(tracker.ops([1] * 10), limit=rm)
    # 0-1, 1-2 ran; 4 and 5 were cancelled at 2.5.
    assert sorted(tracker.cancelled) == [4, 5]
    assert_idle(rm, 4)
