"""logger= on run_batch, run_workflow and Pipeline.run: the started and completed events."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

from _helpers import Boom
from _lifecycle_stages import SEVEN_STAGES
from trioflow import ResourceManager, Workflow, run_batch, run_workflow
from trioflow.lifecycle import Pipeline, Request, Stage

pytestmark = pytest.mark.anyio


def op(seconds: float, *, fail: bool = False) -> Callable[[], Awaitable[int]]:
    async def operation() -> int:
        await anyio.sleep(seconds)
        if fail:
            raise Boom("no")
        return 1

    return operation


def four() -> list[Callable[[], Awaitable[int]]]:
    """Four 10-second operations, the third failing: 20 seconds with a limit of 2."""
    return [op(10), op(10), op(10, fail=True), op(10)]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def stdlib() -> Iterator[tuple[logging.Logger, Records]]:
    logger = logging.getLogger("trioflow.tests.engine_logs")
    handler = Records()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)


class Silent:
    """A structlog-shaped logger whose info level is off; building an event would fail."""

    def __init__(self) -> None:
        self.asked = 0

    def is_enabled_for(self, level: int) -> bool:
        self.asked += 1
        return level > logging.INFO

    def info(self, event: str, **fields: object) -> None:
        raise AssertionError(f"{event} written at a level that is off")


async def test_run_batch_logs_started_and_completed_with_structlog() -> None:
    with capture_logs() as logs:
        result = await run_batch(four(), limit=2, logger=structlog.get_logger("app"))
    assert result.failed == 1
    assert logs == [
        {"event": "batch started", "log_level": "info", "total": 4, "limit": 2},
        {
            "event": "batch completed",
            "log_level": "info",
            "total": 4,
            "succeeded": 3,
            "failed": 1,
            "cancelled": 0,
            "limit": 2,
            "duration": 20.0,
        },
    ]


async def test_run_batch_logs_to_a_stdlib_logger(stdlib: tuple[logging.Logger, Records]) -> None:
    logger, handler = stdlib
    await run_batch(four(), limit=2, logger=logger)
    assert [r.getMessage() for r in handler.records] == [
        "batch started total=4 limit=2",
        "batch completed total=4 succeeded=3 failed=1 cancelled=0 limit=2 duration=20",
    ]
    assert all(r.levelno == logging.INFO for r in handler.records)
    done = handler.records[1]
    assert (done.succeeded, done.failed, done.duration) == (3, 1, 20.0)  # type: ignore[attr-defined]


async def test_nothing_is_built_when_the_level_is_off(
    stdlib: tuple[logging.Logger, Records],
) -> None:
    silent = Silent()
    await run_batch(four(), limit=2, logger=silent)
    assert silent.asked == 1  # once per batch, not per operation

    logger, handler = stdlib
    logger.setLevel(logging.WARNING)
    await run_batch(four(), limit=2, logger=logger)
    assert handler.records == []

    filtering = structlog.wrap_logger(
        structlog.PrintLogger(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    with capture_logs() as logs:
        await run_batch(four(), limit=2, logger=filtering)
    assert logs == []


async def test_no_logger_logs_nothing() -> None:
    with capture_logs() as logs:
        await run_batch(four(), limit=2)
    assert logs == []


@pytest.mark.parametrize("bad", [3, "app", object()])
async def test_a_bad_logger_is_refused_before_anything_runs(bad: object) -> None:
    ran: list[int] = []

    async def operation() -> None:
        ran.append(1)

    with pytest.raises(TypeError, match=r"logger must be a logging\.Logger, a structlog logger"):
        await run_batch([operation], logger=bad)
    with pytest.raises(TypeError, match="logger must be"):
        await run_workflow(Workflow("w"), logger=bad)
    with pytest.raises(TypeError, match="logger must be"):
        await _pipeline().run(Request("q"), logger=bad)
    assert ran == []


async def test_unknown_total_and_a_shared_limit() -> None:
    async def endless() -> AsyncIterator[Callable[[], Awaitable[int]]]:
        for _ in range(3):
            yield op(1)

    manager = ResourceManager(limit=5)
    with capture_logs() as logs:
        await run_batch(endless(), limit=manager, logger=structlog.get_logger())
    assert logs[0] == {"event": "batch started", "log_level": "info", "total": None, "limit": 5}
    assert logs[1]["total"] == 3
    assert logs[1]["duration"] == 1.0


async def test_a_cancelled_or_aborted_batch_says_so() -> None:
    with capture_logs() as logs, anyio.move_on_after(5):
        await run_batch([op(10)], logger=structlog.get_logger())
    assert [e["event"] for e in logs] == ["batch started", "batch cancelled"]
    assert logs[1]["duration"] == 5.0

    def broken() -> Iterator[Callable[[], Awaitable[int]]]:
        yield op(1)
        raise RuntimeError("input broke")

    with capture_logs() as logs, pytest.raises(RuntimeError, match="input broke"):
        await run_batch(broken(), limit=1, logger=structlog.get_logger())
    assert logs[1]["event"] == "batch aborted"
    assert logs[1]["error_type"] == "RuntimeError"


async def test_run_workflow_logs_its_run_id_and_failed_steps() -> None:
    wf = Workflow("build")

    async def good(ctx: Any) -> int:
        await anyio.sleep(2)
        return 1

    async def bad(ctx: Any) -> int:
        await anyio.sleep(3)
        raise Boom("tests failed")

    wf.step("compile", good)
    wf.step("test", bad, after="compile")
    wf.step("lint", bad, optional=True)
    wf.step("ship", good, after="test")
    with capture_logs() as logs:
        result = await run_workflow(
            wf, run_id="r1", limit=3, fail_fast=False, logger=structlog.get_logger()
        )
    assert not result.ok
    assert logs == [
        {
            "event": "workflow started",
            "log_level": "info",
            "workflow": "build",
            "run_id": "r1",
            "steps": 4,
            "limit": 3,
        },
        {
            "event": "workflow completed",
            "log_level": "info",
            "workflow": "build",
            "run_id": "r1",
            "ok": False,
            "succeeded": 1,
            "failed": 2,
            "cancelled": 0,
            "skipped": 0,
            "not_run": 1,
            "compensated": 0,
            "failed_steps": ["test", "lint"],
            "duration": 5.0,
        },
    ]


async def test_run_workflow_to_a_stdlib_logger(stdlib: tuple[logging.Logger, Records]) -> None:
    logger, handler = stdlib
    wf = Workflow("w")

    async def step(ctx: Any) -> None:
        await anyio.sleep(1)

    wf.step("only", step)
    await run_workflow(wf, run_id="abc", logger=logger)
    assert [r.getMessage() for r in handler.records] == [
        "workflow started workflow=w run_id=abc steps=1 limit=None",
        "workflow completed workflow=w run_id=abc ok=True succeeded=1 failed=0 cancelled=0 "
        "skipped=0 not_run=0 compensated=0 failed_steps=[] duration=1",
    ]


def _pipeline(fail: bool = False) -> Pipeline:
    async def stage(request: Request) -> str:
        await anyio.sleep(1)
        if fail and request.state.value == "planned":
            raise Boom("plan failed")
        return "done"

    return Pipeline([Stage(name, state, stage) for name, state in SEVEN_STAGES])


async def test_pipeline_run_logs_the_request() -> None:
    with capture_logs() as logs:
        result = await _pipeline().run(Request("q", id="req-1"), logger=structlog.get_logger())
    assert result.ok
    assert logs == [
        {"event": "request started", "log_level": "info", "request_id": "req-1", "stages": 7},
        {
            "event": "request completed",
            "log_level": "info",
            "request_id": "req-1",
            "status": "succeeded",
            "state": "completed",
            "category": None,
            "degraded": [],
            "duration": 7.0,
        },
    ]
    with capture_logs() as logs:
        failed = await _pipeline(fail=True).run(
            Request("q", id="req-2"), logger=structlog.get_logger()
        )
    assert not failed.ok
    assert logs[1]["status"] == "failed"
    assert logs[1]["category"] == "internal"
    assert logs[1]["duration"] == 3.0


async def test_a_logger_adapter_is_a_stdlib_logger(
    stdlib: tuple[logging.Logger, Records],
) -> None:
    logger, handler = stdlib
    adapter = logging.LoggerAdapter(logger, {"service": "api"})
    await run_batch([op(1)], logger=adapter)
    assert [r.getMessage() for r in handler.records] == [
        "batch started total=1 limit=None",
        "batch completed total=1 succeeded=1 failed=0 cancelled=0 limit=None duration=1",
    ]


def test_importing_trioflow_loads_neither_structlog_nor_tenacity() -> None:
    # Both are imported on first use (a retry, a coordinator): see trioflow._logs.
    import subprocess
    import sys

    code = (
        "import sys, trioflow, trioflow.lifecycle; "
        "print(sorted(m for m in ('structlog', 'tenacity') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"
