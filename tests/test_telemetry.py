"""trioflow.telemetry: spans and metrics, read back with the SDK's in-memory exporter and reader.

Every test makes a TracerProvider and a MeterProvider of its own (never the global ones) and
runs on trio and on asyncio, in virtual time.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import trioflow
import trioflow.telemetry
from _lifecycle_stages import SEVEN_STAGES
from trioflow.lifecycle import (
    ErrorCategory,
    Pipeline,
    Request,
    RequestKind,
    Router,
    Stage,
    open_coordinator,
)
from trioflow.testing import virtual_time_backends

pytestmark = pytest.mark.anyio

SRC = Path(trioflow.__file__).parent.parent


class Telemetry:
    """A tracer and a meter provider of a test's own, enabled, and what they recorded."""

    def __init__(self, **options: Any) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        trioflow.telemetry.enable(self.tracer_provider, self.meter_provider, **options)

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = self.exporter.get_finished_spans()
        return [span for span in found if name is None or span.name == name]

    def span(self, name: str) -> ReadableSpan:
        (found,) = self.spans(name)
        return found

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:  # nothing was recorded
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for each in scope.metrics
            if each.name == metric
            for point in each.data.data_points
        ]

    def values(self, metric: str, key: str) -> dict[Any, Any]:
        """A counter's or gauge's values by one attribute."""
        return {point.attributes.get(key): point.value for point in self.points(metric)}

    def close(self) -> None:
        trioflow.telemetry.disable()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    recorded = Telemetry()
    yield recorded
    recorded.close()


@pytest.fixture
def traced() -> Iterator[Telemetry]:
    """With a span per operation (``trace_operations=True``)."""
    recorded = Telemetry(trace_operations=True)
    yield recorded
    recorded.close()


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def by_attribute(spans: list[ReadableSpan], key: str) -> dict[Any, ReadableSpan]:
    return {(span.attributes or {})[key]: span for span in spans}


def own_id(span: ReadableSpan) -> int:
    assert span.context is not None
    span_id: int = span.context.span_id
    return span_id


async def ok(value: int = 1) -> int:
    await anyio.sleep(1)
    return value


async def boom() -> int:
    await anyio.sleep(1)
    raise ValueError("boom")


# --- off ------------------------------------------------------------------------------------


@pytest.mark.real_time
def test_until_enable_nothing_imports_opentelemetry() -> None:
    program = textwrap.dedent(
        """
        import sys
        import anyio, trioflow, trioflow.lifecycle

        async def one() -> int:
            return 1

        async def step(ctx: trioflow.Context) -> int:
            return 2

        async def main() -> None:
            await trioflow.run_batch([one, one], limit=1, retry=trioflow.RetryPolicy())
            workflow = trioflow.Workflow("w")
            workflow.step("s", step)
            assert (await trioflow.run_workflow(workflow)).ok

        anyio.run(main)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
        assert not loaded, loaded
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


async def test_after_disable_nothing_is_recorded(telemetry: Telemetry) -> None:
    assert trioflow.telemetry.enabled()
    trioflow.telemetry.disable()
    assert not trioflow.telemetry.enabled()
    await trioflow.run_batch([ok, ok], limit=2)
    assert telemetry.spans() == []
    assert telemetry.points("trioflow.batch.operations") == []


async def test_enabling_again_reuses_the_instruments(telemetry: Telemetry) -> None:
    manager = trioflow.ResourceManager(limit=2)
    trioflow.telemetry.observe(manager, name="m")
    await trioflow.run_batch([ok], limit=manager)
    trioflow.telemetry.enable(
        telemetry.tracer_provider, telemetry.meter_provider, trace_operations=True
    )
    await trioflow.run_batch([ok], limit=manager)
    assert telemetry.values("trioflow.batch.operations", "trioflow.outcome") == {"succeeded": 2}
    # One observation per observed object, not one per enable().
    assert telemetry.values("trioflow.limiter.executed", "strategy.name") == {"m": 2}
    assert len(telemetry.points("trioflow.limiter.executed")) == 1
    trioflow.telemetry.disable()
    assert telemetry.points("trioflow.limiter.executed") == []


def test_enable_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="tracer_provider must be an OpenTelemetry TracerProvider"):
        trioflow.telemetry.enable("tracer")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="meter_provider must be an OpenTelemetry MeterProvider"):
        trioflow.telemetry.enable(None, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="trace_operations must be a bool"):
        trioflow.telemetry.enable(trace_operations=1)  # type: ignore[arg-type]
    assert not trioflow.telemetry.enabled()
    with pytest.raises(TypeError, match="obj must be a ResourceManager"):
        trioflow.telemetry.observe(object(), name="x")
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        trioflow.telemetry.observe(trioflow.ResourceManager(limit=1), name="")


# --- batches --------------------------------------------------------------------------------


async def test_a_batch_is_one_span_under_the_callers_span(telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("caller"):
        result = await trioflow.run_batch([ok, boom, ok], limit=2)
    caller, batch = telemetry.span("caller"), telemetry.span("trioflow.batch")
    assert [span.name for span in telemetry.spans()] == ["trioflow.batch", "caller"]
    assert parent_of(batch) == own_id(caller)
    assert dict(batch.attributes or {}) == {
        "trioflow.batch.limit": 2,
        "trioflow.batch.total": 3,
        "trioflow.batch.succeeded": 2,
        "trioflow.batch.failed": 1,
        "trioflow.batch.cancelled": 0,
        "trioflow.outcome": "failed",
    }
    assert batch.status.status_code is StatusCode.ERROR
    assert (result.succeeded, result.failed) == (2, 1)


async def test_operation_spans_are_children_of_the_batch_span(traced: Telemetry) -> None:
    await trioflow.run_batch([ok, boom, ok], limit=2)
    batch = traced.span("trioflow.batch")
    operations = sorted(
        traced.spans("trioflow.operation"),
        key=lambda span: str((span.attributes or {})["trioflow.operation.index"]),
    )
    assert [parent_of(span) for span in operations] == [own_id(batch)] * 3
    outcomes = [(span.attributes or {})["trioflow.outcome"] for span in operations]
    assert outcomes == ["succeeded", "failed", "succeeded"]
    failed = operations[1]
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "ValueError"
    (event,) = failed.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.message"] == "boom"


async def test_traced_operations_keep_the_input_checks(traced: Telemetry) -> None:
    # A refused operation is still refused by the engine, not recorded as a failure.
    with pytest.raises(TypeError, match="operation 1 must be a zero-argument async callable"):
        await trioflow.run_batch([ok, 5], limit=2)  # type: ignore[arg-type]
    # The input's length still reaches the progress reports.
    totals: list[int | None] = []
    await trioflow.run_batch(
        [ok, ok], limit=1, on_progress=lambda progress: totals.append(progress.total)
    )
    assert totals == [2, 2]


async def test_a_generator_input_is_traced_lazily(traced: Telemetry) -> None:
    taken: list[int] = []

    def operations() -> Iterator[Callable[[], Awaitable[int]]]:
        for i in range(3):
            taken.append(i)
            yield ok

    result = await trioflow.run_batch(operations(), limit=1, fail_fast=True)
    assert (result.succeeded, taken) == (3, [0, 1, 2])
    indexes = [(s.attributes or {})["trioflow.operation.index"] for s in traced.spans()[:-1]]
    assert indexes == [0, 1, 2]


async def test_an_async_input_is_traced_too(traced: Telemetry) -> None:
    async def operations() -> Any:
        for _ in range(3):
            yield ok

    result = await trioflow.run_batch(operations(), limit=2)
    assert result.succeeded == 3
    assert len(traced.spans("trioflow.operation")) == 3


async def test_a_cancelled_batch_is_cancelled_not_failed(traced: Telemetry) -> None:
    with anyio.move_on_after(1.5):
        await trioflow.run_batch([ok, ok, ok, ok], limit=2)
    batch = traced.span("trioflow.batch")
    assert (batch.attributes or {})["trioflow.outcome"] == "cancelled"
    assert batch.status.status_code is StatusCode.UNSET
    assert batch.events == ()
    outcomes = sorted(
        str((span.attributes or {})["trioflow.outcome"])
        for span in traced.spans("trioflow.operation")
    )
    assert outcomes == ["cancelled", "cancelled", "succeeded", "succeeded"]


async def test_fail_fast_cancels_are_counted_as_cancelled(telemetry: Telemetry) -> None:
    async def slow() -> int:
        await anyio.sleep(10)
        return 1

    result = await trioflow.run_batch([boom, slow], limit=2, fail_fast=True)
    batch = telemetry.span("trioflow.batch")
    assert (batch.attributes or {})["trioflow.batch.cancelled"] == result.cancelled == 1
    assert telemetry.values("trioflow.batch.operations", "trioflow.outcome") == {
        "failed": 1,
        "cancelled": 1,
    }


async def test_retry_attempts_are_events_of_the_current_span(telemetry: Telemetry) -> None:
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("again")
        return calls

    policy = trioflow.RetryPolicy(attempts=3, initial_delay=1)
    result = await trioflow.run_batch([flaky], limit=1, retry=policy)
    assert result.values == (3,)
    batch = telemetry.span("trioflow.batch")
    assert [event.name for event in batch.events] == ["trioflow.retry"] * 2
    assert [dict(event.attributes or {}) for event in batch.events] == [
        {"trioflow.retry.attempt": 2, "exception.type": "ConnectionError"},
        {"trioflow.retry.attempt": 3, "exception.type": "ConnectionError"},
    ]
    (point,) = telemetry.points("trioflow.retry.attempts")
    assert point.value == 2
    assert dict(point.attributes) == {
        "event.name": "OnRetry",
        "strategy.name": "retry",
        "exception.type": "ConnectionError",
    }


async def test_batch_metrics_equal_the_result(telemetry: Telemetry) -> None:
    operations: list[Callable[[], Awaitable[int]]] = [ok, boom, ok, functools.partial(ok, 2)]
    result = await trioflow.run_batch(operations, limit=3)
    assert telemetry.values("trioflow.batch.operations", "trioflow.outcome") == {
        "succeeded": result.succeeded,
        "failed": result.failed,
    }
    (durations,) = telemetry.points("trioflow.batch.operation.duration")
    assert durations.count == result.total
    assert durations.sum == pytest.approx(sum(o.duration for o in result.outcomes))
    (batches,) = telemetry.points("trioflow.batch.duration")
    assert (batches.count, batches.sum) == (1, pytest.approx(result.duration))


async def test_operation_durations_can_be_left_out() -> None:
    recorded = Telemetry(operation_durations=False)
    try:
        await trioflow.run_batch([ok, ok], limit=2)
        assert recorded.points("trioflow.batch.operation.duration") == []
        assert [p.count for p in recorded.points("trioflow.batch.duration")] == [1]
    finally:
        recorded.close()


@pytest.mark.parametrize("backend", range(2), ids=["trio", "asyncio"])
@settings(max_examples=25)
@given(
    fails=st.lists(st.booleans(), max_size=12),
    limit=st.integers(1, 5),
    fail_fast=st.booleans(),
)
def test_span_and_metrics_agree_with_the_result_on_any_batch(
    backend: int, fails: list[bool], limit: int, fail_fast: bool
) -> None:
    recorded = Telemetry()
    try:
        operations = [boom if fail else ok for fail in fails]

        async def main() -> trioflow.BatchResult[int]:
            return await trioflow.run_batch(operations, limit=limit, fail_fast=fail_fast)

        name, options = virtual_time_backends()[backend]
        result = anyio.run(main, backend=name, backend_options=options)
        attributes = recorded.span("trioflow.batch").attributes or {}
        assert attributes["trioflow.batch.total"] == result.total
        assert attributes["trioflow.batch.succeeded"] == result.succeeded
        assert attributes["trioflow.batch.failed"] == result.failed
        assert attributes["trioflow.batch.cancelled"] == result.cancelled
        counts = {"succeeded": result.succeeded, "failed": result.failed}
        counts["cancelled"] = result.cancelled
        expected = {outcome: n for outcome, n in counts.items() if n}
        assert recorded.values("trioflow.batch.operations", "trioflow.outcome") == expected
    finally:
        recorded.close()


async def test_context_flows_into_worker_threads(traced: Telemetry) -> None:
    tracer = traced.tracer_provider.get_tracer("test")
    threads: list[str] = []

    def blocking() -> int:
        threads.append(threading.current_thread().name)
        with tracer.start_as_current_span("in thread"):
            return 1

    await trioflow.run_batch([trioflow.in_thread(blocking)], limit=1)
    (operation,) = traced.spans("trioflow.operation")
    assert parent_of(traced.span("in thread")) == own_id(operation)
    assert threads != [threading.current_thread().name]


# --- workflows ------------------------------------------------------------------------------


async def test_a_workflow_run_has_a_span_per_step(telemetry: Telemetry) -> None:
    calls = 0

    async def flaky(ctx: trioflow.Context) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TimeoutError("slow")
        return 1

    async def fails(ctx: trioflow.Context) -> int:
        raise KeyError("no")

    async def never(ctx: trioflow.Context) -> int:
        return 0

    workflow = trioflow.Workflow("build")
    workflow.step("fetch", flaky, retry=trioflow.RetryPolicy(attempts=2, initial_delay=0))
    workflow.step("skip", never, after=["fetch"], when=lambda ctx: False)
    workflow.step("test", fails, after=["fetch"], optional=True)
    result = await trioflow.run_workflow(workflow, run_id="r1", fail_fast=False)
    run = telemetry.span("trioflow.workflow")
    assert dict(run.attributes or {}) == {
        "trioflow.workflow.name": "build",
        "trioflow.run.id": "r1",
        "trioflow.workflow.ok": True,
        "trioflow.workflow.steps": 3,
        "trioflow.outcome": "succeeded",
    }
    steps = {
        (s.attributes or {})["trioflow.step.name"]: s for s in telemetry.spans("trioflow.step")
    }
    assert {parent_of(span) for span in steps.values()} == {own_id(run)}
    fetch = steps["fetch"].attributes or {}
    assert (fetch["trioflow.step.status"], fetch["trioflow.step.attempts"]) == ("succeeded", 2)
    assert [event.name for event in steps["fetch"].events] == ["trioflow.retry"]
    assert (steps["skip"].attributes or {})["trioflow.step.status"] == "skipped"
    failed = steps["test"]
    assert (failed.attributes or {})["trioflow.outcome"] == "failed"
    assert (failed.attributes or {})["trioflow.step.status"] == "failed"
    assert failed.status.status_code is StatusCode.ERROR
    by_status = telemetry.values("trioflow.workflow.steps", "trioflow.step.status")
    assert by_status == {
        status.value: result.count(status)
        for status in trioflow.StepStatus
        if result.count(status)
    }


async def test_a_failed_run_and_a_cancelled_step(telemetry: Telemetry) -> None:
    async def fails(ctx: trioflow.Context) -> int:
        await anyio.sleep(1)
        raise KeyError("no")

    async def slow(ctx: trioflow.Context) -> int:
        await anyio.sleep(5)
        return 1

    workflow = trioflow.Workflow("w")
    workflow.step("fails", fails)
    workflow.step("slow", slow)
    result = await trioflow.run_workflow(workflow)
    assert not result.ok
    run = telemetry.span("trioflow.workflow")
    assert (run.attributes or {})["trioflow.outcome"] == "failed"
    assert run.status.status_code is StatusCode.ERROR
    steps = {
        (s.attributes or {})["trioflow.step.name"]: s for s in telemetry.spans("trioflow.step")
    }
    slow_span = steps["slow"].attributes or {}
    assert (slow_span["trioflow.outcome"], slow_span["trioflow.step.status"]) == (
        "cancelled",
        "cancelled",
    )


# --- requests -------------------------------------------------------------------------------


async def _answer(request: Request) -> str:
    await anyio.sleep(1)
    if request.payload == "bad":
        raise ValueError("bad payload")
    return "done"


def _pipeline() -> Pipeline:
    return Pipeline([Stage(name, state, _answer) for name, state in SEVEN_STAGES])


async def test_requests_and_stages_are_spans_and_metrics_match_statistics(
    telemetry: Telemetry,
) -> None:
    router = Router(lambda r: RequestKind.SIMPLE_QUERY, {RequestKind.SIMPLE_QUERY: _pipeline()})
    async with open_coordinator({"enable_metrics": False}, router=router) as coordinator:
        trioflow.telemetry.observe(coordinator, name="main")
        good = await coordinator.process(Request(payload="ok", user_id="ada"))
        bad = await coordinator.process(Request(payload="bad", user_id="ada"))
        stats = coordinator.statistics()
        gauges = telemetry.values("trioflow.coordinator.in_flight", "strategy.name")
        assert gauges == {"main": stats.in_flight}
    assert (good.ok, bad.category) == (True, ErrorCategory.VALIDATION)
    requests = telemetry.spans("trioflow.request")
    assert [(s.attributes or {})["trioflow.request.state"] for s in requests] == [
        "completed",
        "failed",
    ]
    assert all("enduser.id" not in (s.attributes or {}) for s in requests)
    failed = requests[1]
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})["trioflow.request.error_category"] == "validation"
    stages = telemetry.spans("trioflow.stage")
    # The bad request fails in its first stage: the others never run.
    assert [parent_of(s) for s in stages] == [own_id(requests[0])] * 7 + [own_id(failed)]
    outcomes = [(s.attributes or {})["trioflow.outcome"] for s in stages]
    assert outcomes == ["succeeded"] * 7 + ["failed"]
    names = [(s.attributes or {})["trioflow.stage.name"] for s in stages]
    assert names == [name for name, _ in SEVEN_STAGES] + ["receive"]
    assert (stages[1].attributes or {})["trioflow.stage.state"] == "validated"
    by_state = telemetry.values("trioflow.requests", "trioflow.request.state")
    assert by_state == {"completed": stats.completed, "failed": stats.failed}
    by_category = telemetry.values("trioflow.requests", "error.category")
    expected: dict[str | None, int] = {None: stats.completed}
    expected.update({category.value: n for category, n in stats.failures.items() if n})
    assert by_category == expected
    durations = telemetry.points("trioflow.request.duration")
    assert sum(point.count for point in durations) == stats.finished


async def test_the_user_is_on_request_spans_only_when_asked() -> None:
    recorded = Telemetry(include_user=True)
    try:
        router = Router(lambda r: "k", {"k": _pipeline()})
        async with open_coordinator({"enable_metrics": False}, router=router) as coordinator:
            await coordinator.process(Request(payload="ok", user_id="ada"))
        span = recorded.span("trioflow.request")
        assert (span.attributes or {})["enduser.id"] == "ada"
        assert (span.attributes or {})["pipeline.name"] == "k"
    finally:
        recorded.close()


# --- observed statistics --------------------------------------------------------------------


async def test_observed_limiters_breakers_and_rate_limiters_mirror_statistics(
    telemetry: Telemetry,
) -> None:
    manager = trioflow.ResourceManager(limit=1, pools={"db": 1})
    bucket = trioflow.TokenBucket(rate=1, burst=1)
    breaker = trioflow.CircuitBreaker(failure_threshold=1, reset_timeout=60)
    for obj, name in ((manager, "limits"), (bucket, "api"), (breaker, "svc")):
        trioflow.telemetry.observe(obj, name=name)

    async def held() -> None:
        async with manager.slot("db"):
            await anyio.sleep(1)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(held)
    await bucket.acquire()
    assert not bucket.try_acquire()
    with pytest.raises(ValueError, match="boom"):
        await breaker.call(boom)
    with pytest.raises(trioflow.CircuitOpenError):
        await breaker.call(ok)

    stats = manager.statistics()
    throttled = telemetry.values("trioflow.limiter.throttled", "trioflow.pool")
    assert throttled == {None: stats.throttled, "db": stats.pools["db"].throttled}
    executed = telemetry.values("trioflow.limiter.executed", "strategy.name")
    assert executed == {"limits": stats.executed}
    rates = bucket.statistics()
    assert telemetry.values("trioflow.rate_limiter.rejected", "strategy.name") == {
        "api": rates.rejected
    }
    assert telemetry.values("trioflow.rate_limiter.acquired", "strategy.name") == {
        "api": rates.acquired
    }
    circuit = breaker.statistics()
    assert telemetry.values("trioflow.breaker.opened", "event.name") == {
        "OnCircuitOpened": circuit.opened
    }
    assert telemetry.values("trioflow.breaker.state", "strategy.name") == {"svc": 2}
    assert telemetry.values("trioflow.breaker.rejected", "strategy.name") == {
        "svc": circuit.rejected
    }


async def test_a_cancelled_request_is_cancelled_whether_by_cancel_or_from_outside(
    telemetry: Telemetry,
) -> None:
    router = Router(lambda r: "k", {"k": _pipeline()})
    async with open_coordinator({"enable_metrics": False}, router=router) as coordinator:
        by_id = Request(payload="ok")
        async with anyio.create_task_group() as tg:
            tg.start_soon(coordinator.process, by_id)
            await anyio.sleep(2.5)
            assert coordinator.cancel(by_id.id)
        with anyio.move_on_after(2.5):
            await coordinator.process(Request(payload="ok"))
        stats = coordinator.statistics()
    spans = telemetry.spans("trioflow.request")
    assert [(s.attributes or {})["trioflow.outcome"] for s in spans] == ["cancelled"] * 2
    assert [s.status.status_code for s in spans] == [StatusCode.UNSET] * 2
    cancelled = telemetry.values("trioflow.requests", "trioflow.request.state")
    assert cancelled == {"cancelled": stats.cancelled}
    # Stages cut short are cancelled too, and never failed.
    stages = [(s.attributes or {})["trioflow.outcome"] for s in telemetry.spans("trioflow.stage")]
    assert "failed" not in stages
    assert stages.count("cancelled") == 2


# --- MCP tool calls -------------------------------------------------------------------------


async def test_each_mcp_tool_call_is_a_span_around_its_request(telemetry: Telemetry) -> None:
    import trioflow.mcp
    from mcp import Client
    from trioflow.lifecycle import ToolRegistry

    registry = ToolRegistry()

    @registry.tool
    async def add(a: int, b: int = 1) -> int:
        """Add two numbers."""
        return a + b

    async with Client(trioflow.mcp.create_server(registry)) as client:
        assert not (await client.call_tool("add", {"a": 2})).is_error
        assert (await client.call_tool("add", {"a": "two"})).is_error
    calls = telemetry.spans("tools/call add")
    assert [(s.attributes or {})["trioflow.outcome"] for s in calls] == ["succeeded", "failed"]
    assert dict(calls[0].attributes or {}) == {
        "mcp.method.name": "tools/call",
        "gen_ai.tool.name": "add",
        "trioflow.outcome": "succeeded",
    }
    assert calls[1].status.status_code is StatusCode.ERROR
    requests = telemetry.spans("trioflow.request")
    assert [parent_of(s) for s in requests] == [own_id(s) for s in calls]


# --- trioflow run --trace -------------------------------------------------------------------


def _run_traced(project: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (project / "wf.toml").write_text(
        '[steps.build]\nshell = "echo built"\n\n'
        '[steps.test]\nshell = "exit 3"\nafter = ["build"]\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "trioflow", "run", "wf.toml", "--trace", "--json"],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(SRC), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.real_time
def test_run_trace_prints_the_run_and_step_spans_with_the_console_exporter(
    tmp_path: Path,
) -> None:
    done = _run_traced(tmp_path, OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="ci")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["status"] == "failed"  # stdout stays the JSON document
    spans = [json.loads(text) for text in _json_objects(done.stderr)]
    by_name = {span["attributes"].get("trioflow.step.name", span["name"]): span for span in spans}
    run = by_name["trioflow.workflow"]
    assert run["attributes"]["trioflow.outcome"] == "failed"
    assert run["resource"]["attributes"]["service.name"] == "ci"
    for step, outcome in (("build", "succeeded"), ("test", "failed")):
        assert by_name[step]["parent_id"] == run["context"]["span_id"]
        assert by_name[step]["attributes"]["trioflow.outcome"] == outcome


@pytest.mark.real_time
def test_run_trace_says_what_to_install_for_a_missing_exporter(tmp_path: Path) -> None:
    done = _run_traced(tmp_path, OTEL_TRACES_EXPORTER="otlp")
    assert done.returncode == 2
    assert "opentelemetry-exporter-otlp" in done.stderr
    assert "OTEL_TRACES_EXPORTER=console" in done.stderr
    assert not (tmp_path / ".trioflow").exists()  # refused before anything ran


def _json_objects(text: str) -> Iterator[str]:
    """The JSON objects the console exporter printed, among the run's progress lines."""
    lines: list[str] = []
    for line in text.splitlines():
        if line == "{":
            lines = [line]
        elif lines:
            lines.append(line)
            if line == "}":
                yield "\n".join(lines)
                lines = []


async def test_a_workflow_cancelled_from_outside_ends_its_spans_cancelled(
    telemetry: Telemetry,
) -> None:
    async def slow(ctx: trioflow.Context) -> int:
        await anyio.sleep(10)
        return 1

    workflow = trioflow.Workflow("w")
    workflow.step("slow", slow)
    with anyio.move_on_after(1):
        await trioflow.run_workflow(workflow)
    spans = telemetry.spans()
    assert [s.name for s in spans] == ["trioflow.step", "trioflow.workflow"]
    assert [(s.attributes or {})["trioflow.outcome"] for s in spans] == ["cancelled"] * 2
    assert [s.status.status_code for s in spans] == [StatusCode.UNSET] * 2
