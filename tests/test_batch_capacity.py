"""run_batch with a ResourceManager: shared capacity, growing limits, health."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog.testing

import trioflow
from _helpers import CANCELLED, FAILED, SUCCEEDED, Tracker
from trioflow import (
    BatchResult,
    ResourceManager,
    run_batch,
)

pytestmark = pytest.mark.anyio


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


async def test_a_resource_manager_listener_raising_is_logged_and_the_batch_goes_on() -> None:
    rm = ResourceManager(limit=2)
    tracker = Tracker()

    def listener(event: trioflow.ResourceManagerEvent) -> None:
        raise RuntimeError("listener broke")

    rm.add_listener(listener)
    with structlog.testing.capture_logs() as logs:
        result = await run_batch(tracker.ops([1, 5, 5]), limit=rm)
    assert [o.status for o in result.outcomes] == [SUCCEEDED] * 3
    assert [log["event"] for log in logs] == ["listener failed"] * 3
    assert rm.statistics().executing == 0


# --- health -------------------------------------------------------------------------------


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
