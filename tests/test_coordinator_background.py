"""Background tasks of a coordinator: bounded, scoped by its block, failures logged and counted."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import structlog
from structlog.testing import LogCapture

from _lifecycle_stages import SEVEN_STAGES
from trioflow import ConfigError
from trioflow.lifecycle import (
    Pipeline,
    Request,
    RequestKind,
    Router,
    Stage,
    open_coordinator,
)

pytestmark = pytest.mark.anyio


def _router() -> Router:
    async def noop(request: Request) -> None:
        return None

    pipeline = Pipeline([Stage(name, state, noop) for name, state in SEVEN_STAGES])
    return Router(lambda r: RequestKind.SIMPLE_QUERY, {RequestKind.SIMPLE_QUERY: pipeline})


def _capture() -> tuple[LogCapture, Any]:
    cap = LogCapture()
    return cap, structlog.wrap_logger(structlog.ReturnLogger(), processors=[cap])


async def test_at_most_background_limit_run_at_once_and_the_rest_wait_their_turn() -> None:
    running = peak = 0
    started: list[float] = []

    async def job(n: int) -> None:
        nonlocal running, peak
        started.append(anyio.current_time())
        running += 1
        peak = max(peak, running)
        await anyio.sleep(10)
        running -= 1

    config = {"enable_metrics": False, "background_limit": 3}
    async with open_coordinator(config, router=_router(), logger=_capture()[1]) as coordinator:
        for n in range(7):
            coordinator.start_background(job, n)
        await anyio.sleep(1)
        stats = coordinator.statistics()
        assert (stats.background_running, stats.background_waiting) == (3, 4)
        await anyio.sleep(30)
        stats = coordinator.statistics()
        assert (stats.background_running, stats.background_completed) == (0, 7)
    assert peak == 3
    assert started == [0, 0, 0, 10, 10, 10, 20]


async def test_a_failing_background_task_is_logged_and_counted_and_breaks_nothing() -> None:
    cap, log = _capture()

    async def breaks() -> None:
        await anyio.sleep(1)
        raise KeyError("lost cache")

    async with open_coordinator({"enable_metrics": False}, router=_router(), logger=log) as c:
        c.start_background(breaks, name="refresh cache")
        await anyio.sleep(2)
        result = await c.process(Request("q"))
        assert result.ok
        assert c.statistics().background_failed == 1
    failures = [e for e in cap.entries if e["event"] == "background task failed"]
    assert len(failures) == 1
    assert failures[0]["task"] == "refresh cache"
    assert failures[0]["error"] == "KeyError: 'lost cache'"
    assert isinstance(failures[0]["exc_info"], KeyError)


async def test_closing_the_coordinator_cancels_its_background_tasks() -> None:
    cancelled: list[str] = []

    async def forever(name: str) -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.append(name)
            raise

    config = {"enable_metrics": False, "background_limit": 1}
    async with open_coordinator(config, router=_router(), logger=_capture()[1]) as coordinator:
        coordinator.start_background(forever, "running")
        coordinator.start_background(forever, "waiting")
        await anyio.sleep(5)
    # One ran and was cancelled; the other, waiting for the only place, never started (which
    # of the two started first is the scheduler's choice).
    assert len(cancelled) == 1
    stats = coordinator.statistics()
    assert (stats.background_failed, stats.background_completed) == (0, 0)
    assert (stats.background_running, stats.background_waiting) == (0, 0)
    with pytest.raises(RuntimeError, match="closed"):
        coordinator.start_background(forever, "late")


async def test_bad_background_tasks_and_limits_are_refused_before_anything_starts() -> None:
    def plain() -> None:
        pass

    async with open_coordinator(
        {"enable_metrics": False}, router=_router(), logger=_capture()[1]
    ) as coordinator:
        with pytest.raises(TypeError, match="fn must be"):
            coordinator.start_background(plain)  # type: ignore[arg-type]
        assert coordinator.statistics().background_waiting == 0
    with pytest.raises(ConfigError, match="background_limit"):
        async with open_coordinator({"background_limit": 0}, router=_router()):
            pass
