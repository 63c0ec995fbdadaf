from __future__ import annotations

import collections
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import structlog
from structlog.testing import LogCapture

from _lifecycle_stages import SEVEN_STAGES
from trioflow import (
    HealthMonitor,
    OutcomeStatus,
    ResourceManager,
    RetryPolicy,
    ToolArgumentError,
)
from trioflow.lifecycle import (
    REQUEST_TRANSITIONS,
    Coordinator,
    ErrorCategory,
    OrchestrationConfig,
    Pipeline,
    ProcessingResult,
    ProcessingStatus,
    Request,
    RequestKind,
    RequestState,
    Router,
    Stage,
    StateMachine,
    ToolRegistry,
    open_coordinator,
    run_tools,
)

pytestmark = pytest.mark.anyio

S = RequestState
StageFn = Callable[[Request], Awaitable[Any]]


class Tracker:
    """Counts requests inside stages, overall and per user."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.per_user: collections.Counter[str] = collections.Counter()
        self.peak_per_user: collections.Counter[str] = collections.Counter()
        self.started: dict[str, float] = {}

    def stage(self, seconds: float = 1, result: Any = None) -> StageFn:
        async def fn(request: Request) -> Any:
            self.started.setdefault(request.id, anyio.current_time())
            self.now += 1
            self.per_user[request.user_id] += 1
            self.peak = max(self.peak, self.now)
            user = request.user_id
            self.peak_per_user[user] = max(self.peak_per_user[user], self.per_user[user])
            try:
                await anyio.sleep(seconds)
            finally:
                self.now -= 1
                self.per_user[request.user_id] -= 1
            return result if result is not None else request.payload

        return fn


def seven(fns: dict[str, StageFn] | None = None, **stage_options: Any) -> Pipeline:
    fns = fns or {}
    tracker = Tracker()
    return Pipeline(
        [
            Stage(name, state, fns.get(name) or tracker.stage(1), **stage_options.get(name, {}))
            for name, state in SEVEN_STAGES
        ]
    )


def capture() -> tuple[LogCapture, Any]:
    cap = LogCapture()
    return cap, structlog.wrap_logger(structlog.ReturnLogger(), processors=[cap])


@asynccontextmanager
async def coordinator(
    pipeline: Pipeline, logger: Any = None, **config: Any
) -> AsyncIterator[Coordinator]:
    router = Router(lambda r: RequestKind.SIMPLE_QUERY, {RequestKind.SIMPLE_QUERY: pipeline})
    if logger is None:
        logger = capture()[1]
    config.setdefault("enable_metrics", False)
    async with open_coordinator(config, router=router, logger=logger) as c:
        yield c


async def test_process_completes_and_logs_every_transition() -> None:
    cap, log = capture()
    async with coordinator(seven(), log) as c:
        request = Request("q", user_id="alice")
        result = await c.process(request)
    assert result.status is ProcessingStatus.SUCCEEDED
    assert result.value == "q"
    assert request.state is S.COMPLETED
    assert result.duration == 7
    assert len(result.stage_timings) == 7
    transitions = [e for e in cap.entries if e["event"] == "state transition"]
    assert [(e["from_state"], e["to_state"]) for e in transitions] == [
        ("received", "validated"),
        ("validated", "planned"),
        ("planned", "context_gathering"),
        ("context_gathering", "processing"),
        ("processing", "tool_execution"),
        ("tool_execution", "response_formatting"),
        ("response_formatting", "completed"),
    ]
    assert all(e["log_level"] == "debug" and e["request_id"] == request.id for e in transitions)
    assert [e["event"] for e in cap.entries if e["log_level"] == "info"] == [
        "coordinator opened",
        "coordinator closed",
    ]


async def test_nothing_is_printed_and_structlog_is_not_configured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = structlog.get_config()
    async with coordinator(seven()) as c:
        await c.process(Request())
    assert structlog.get_config() == before
    assert capsys.readouterr() == ("", "")


async def test_process_many_logs_the_batch_and_keeps_order() -> None:
    cap, log = capture()
    tracker = Tracker()
    pipeline = seven({name: tracker.stage(1) for name, _ in SEVEN_STAGES})
    async with coordinator(pipeline, log, max_concurrency=3, per_user_limit=3) as c:
        requests = [Request(i, user_id=f"u{i % 3}") for i in range(9)]
        results = await c.process_many(requests)
    assert [r.request_id for r in results] == [r.id for r in requests]
    assert [r.value for r in results] == list(range(9))
    assert tracker.peak == 3
    assert anyio.current_time() == 21
    started = next(e for e in cap.entries if e["event"] == "operations started")
    assert (started["count"], started["concurrency"]) == (9, 3)
    completed = next(e for e in cap.entries if e["event"] == "operations completed")
    assert (completed["succeeded"], completed["failed"], completed["duration"]) == (9, 0, 21)


async def test_per_user_limit_does_not_hold_back_other_users() -> None:
    tracker = Tracker()
    pipeline = seven({name: tracker.stage(1) for name, _ in SEVEN_STAGES})
    async with coordinator(pipeline, max_concurrency=10, per_user_limit=2) as c:
        requests = [Request(user_id="heavy") for _ in range(6)] + [Request(user_id="light")]
        async with anyio.create_task_group() as tg:
            for request in requests:
                tg.start_soon(c.process, request)
            await anyio.sleep(1)
            assert c.statistics().users == 2
            assert c.statistics().queue_depth == 4
        stats = c.statistics()
    assert tracker.peak_per_user["heavy"] == 2
    assert tracker.started[requests[-1].id] == 0  # "light" was not queued behind "heavy"
    assert anyio.current_time() == 21
    assert stats.users == 0  # per-user limiters are dropped once idle
    assert stats.throttled == 4
    # The first stage runs in RECEIVED (1 s) after the wait for admission (0, 7 or 14 s).
    assert stats.state_times[S.RECEIVED] == pytest.approx((1 * 3 + 8 * 2 + 15 * 2) / 7)


async def test_pools_and_named_retry_policies_from_config() -> None:
    tracker = Tracker()
    attempts: list[tuple[str, float]] = []

    async def flaky(request: Request) -> str:
        attempts.append((request.id, anyio.current_time()))
        if sum(1 for rid, _ in attempts if rid == request.id) < 3:
            raise ConnectionError("model overloaded")
        return "answer"

    pipeline = seven(
        {"process": flaky, "context": tracker.stage(2)},
        process={"operation": "llm"},
        context={"pools": ["context"]},
    )
    async with coordinator(pipeline, pools={"context": 1, "llm": 5}) as c:
        results = await c.process_many([Request(user_id="a"), Request(user_id="b")])
        stats = c.statistics()
    assert all(r.status is ProcessingStatus.SUCCEEDED for r in results)
    assert tracker.peak == 1  # the context pool holds one at a time
    # The llm policy of the default config: 3 tries, waits of 1 and 2 seconds.
    first = [t for rid, t in attempts if rid == results[0].request_id]
    assert [t - first[0] for t in first] == [0, 1, 3]
    assert stats.pools["context"].executed == 2


async def test_priority_buys_more_retries() -> None:
    async def always_fails(request: Request) -> None:
        raise ConnectionError("down")

    calls = collections.Counter[str]()

    async def counted(request: Request) -> None:
        calls[request.id] += 1
        await always_fails(request)

    async with coordinator(seven({"process": counted}, process={"operation": "llm"})) as c:
        normal, high = Request(), Request(priority=1)
        await c.process(normal)
        await c.process(high)
    assert calls[normal.id] == 3
    assert calls[high.id] == 4


async def test_failures_are_categorized() -> None:
    async def down(request: Request) -> None:
        raise ConnectionError("backend down")

    async with coordinator(seven({"tools": down})) as c:
        result = await c.process(Request())
        stats = c.statistics()
    assert result.status is ProcessingStatus.FAILED
    assert result.category is ErrorCategory.DEPENDENCY
    assert result.state is S.FAILED
    assert stats.failures[ErrorCategory.DEPENDENCY] == 1
    assert stats.success_ratio == 0


async def test_unknown_kind_fails_the_request_without_a_pipeline() -> None:
    router = Router(lambda r: "poetry", {"simple_query": seven()})
    cap, log = capture()
    async with open_coordinator({"enable_metrics": False}, router=router, logger=log) as c:
        request = Request()
        result = await c.process(request)
    assert result.status is ProcessingStatus.FAILED
    assert result.category is ErrorCategory.VALIDATION
    assert "known kinds: 'simple_query'" in str(result.error)
    assert [(h.from_state, h.to_state) for h in result.history] == [(S.RECEIVED, S.FAILED)]
    # A request refused before any pipeline still logs its one transition, and its end.
    logged = [(e["event"], e.get("to_state", e.get("status"))) for e in cap.entries]
    assert logged[1:-1] == [("state transition", "failed"), ("request finished", "failed")]


async def test_default_timeout_counts_admission_too() -> None:
    async with coordinator(seven(), max_concurrency=1, default_timeout=10) as c:
        results = await c.process_many([Request(), Request(), Request()])
    # Which request is admitted first is up to the scheduler: order by time of failure.
    first, second, third = sorted(results, key=lambda r: (r.ok, len(r.history)), reverse=True)
    assert first.status is ProcessingStatus.SUCCEEDED
    # Admitted at 7 with 3 s left: fails in its third stage (receive, validate, plan).
    assert second.category is ErrorCategory.TIMEOUT
    assert second.history[-1].at == 10
    assert second.history[-2].to_state is S.PLANNED
    assert second.stage_timings == {"receive": 1, "validate": 1, "plan": 1}
    # Never admitted within 10 s.
    assert third.category is ErrorCategory.TIMEOUT
    assert [(h.to_state, h.at) for h in third.history] == [(S.FAILED, 10)]
    assert "not admitted within default_timeout" in str(third.error)


async def test_optional_stages_from_config_degrade() -> None:
    async def no_context(request: Request) -> None:
        raise ConnectionError("index down")

    async with coordinator(seven({"context": no_context}), optional_stages=["context"]) as c:
        result = await c.process(Request())
        stats = c.statistics()
    assert result.status is ProcessingStatus.DEGRADED
    assert isinstance(result.degraded["context"], ConnectionError)
    assert (stats.degraded, stats.success_ratio) == (1, 1.0)


async def test_cancel_a_request_by_id() -> None:
    async with coordinator(seven(), max_concurrency=1) as c:
        running, waiting = Request(), Request()
        results: dict[str, ProcessingResult] = {}

        async def run(request: Request) -> None:
            results[request.id] = await c.process(request)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, running)
            await anyio.sleep(0.5)
            tg.start_soon(run, waiting)
            await anyio.sleep(2)
            assert c.cancel(running.id)
            assert c.cancel(waiting.id)  # still waiting for admission
            assert not c.cancel("no such request")
        stats = c.statistics()
    assert results[running.id].status is ProcessingStatus.CANCELLED
    assert running.state is S.CANCELLED
    assert running.history[-1].at == 2.5
    assert results[waiting.id].status is ProcessingStatus.CANCELLED
    assert [h.to_state for h in waiting.history] == [S.CANCELLED]
    assert (stats.cancelled, stats.in_flight, stats.queue_depth) == (2, 0, 0)


async def test_outer_cancellation_ends_the_request_and_propagates() -> None:
    async with coordinator(seven(), max_concurrency=1) as c:
        first, second = Request(), Request()
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.process, first)
            await anyio.sleep(0)
            with anyio.move_on_after(3) as scope:
                await c.process(second)  # waits for admission, then cancelled
            assert scope.cancelled_caught
            tg.cancel_scope.cancel()
        assert c.statistics().cancelled == 2
    assert (first.state, second.state) == (S.CANCELLED, S.CANCELLED)


async def test_rate_limits_wait_or_refuse() -> None:
    tracker = Tracker()
    pipeline = seven({"receive": tracker.stage(0)})
    limits = {"per_user": {"rate": 1, "burst": 2}}
    async with coordinator(pipeline, rate_limits=limits) as c:
        requests = [Request(user_id="alice") for _ in range(4)] + [Request(user_id="bob")]
        await c.process_many(requests)
        throttled = c.statistics().throttled
    # Scheduling order is not defined (trio randomizes it): compare the start times as a set.
    assert sorted(tracker.started[r.id] for r in requests[:4]) == [0, 0, 1, 2]
    assert tracker.started[requests[4].id] == 0
    assert throttled == 2
    async with coordinator(seven(), rate_limits={**limits, "when_limited": "fail"}) as c:
        results = await c.process_many([Request(user_id="alice") for _ in range(3)])
    assert [r.status for r in results].count(ProcessingStatus.FAILED) == 1
    refused = next(r for r in results if r.status is ProcessingStatus.FAILED)
    assert refused.category is ErrorCategory.RESOURCE_EXHAUSTION
    assert "rate limit of user 'alice'" in str(refused.error)


async def test_per_source_rate_limits() -> None:
    tracker = Tracker()
    pipeline = seven({"receive": tracker.stage(0)})
    limits = {"per_source": {"mcp": {"rate": 2, "burst": 1}}}
    async with coordinator(pipeline, rate_limits=limits) as c:
        mcp = [Request(user_id=f"u{i}", source="mcp") for i in range(3)]
        cli = [Request(user_id=f"v{i}", source="cli") for i in range(3)]
        await c.process_many(mcp + cli)
    assert sorted(tracker.started[r.id] for r in mcp) == [0, 0.5, 1]
    assert [tracker.started[r.id] for r in cli] == [0, 0, 0]


async def test_queue_depth_sheds_load() -> None:
    async with coordinator(seven(), max_concurrency=1, max_queue_depth=1) as c:
        results = await c.process_many([Request(), Request(), Request()])
    statuses = [r.status for r in results]
    assert statuses.count(ProcessingStatus.SUCCEEDED) == 2
    refused = results[statuses.index(ProcessingStatus.FAILED)]
    assert refused.category is ErrorCategory.RESOURCE_EXHAUSTION
    assert "max_queue_depth=1" in str(refused.error)


def scripted_health(unhealthy_for: float) -> HealthMonitor:
    until: list[float] = []

    def sample() -> tuple[float, float]:
        now = anyio.current_time()
        if not until:
            until.append(now + unhealthy_for)
        return (99.0, 10.0) if now < until[0] else (10.0, 10.0)

    return HealthMonitor(max_cpu_percent=80, interval=1, sampler=sample)


async def test_health_backpressure_waits_or_refuses() -> None:
    tracker = Tracker()
    pipeline = seven({"receive": tracker.stage(0)})
    router = Router(lambda r: "q", {"q": pipeline})
    health = scripted_health(unhealthy_for=5)
    config = OrchestrationConfig(enable_metrics=False)
    async with open_coordinator(config, router=router, health=health, logger=capture()[1]) as c:
        assert health.statistics().running  # the coordinator runs the monitor
        request = Request()
        result = await c.process(request)
    assert not health.statistics().running
    assert result.status is ProcessingStatus.SUCCEEDED
    assert tracker.started[request.id] == 5
    refusing = load_fail_config()
    async with open_coordinator(
        refusing, router=router, health=scripted_health(5), logger=capture()[1]
    ) as c:
        refused = await c.process(Request())
    assert refused.category is ErrorCategory.RESOURCE_EXHAUSTION
    assert "unhealthy" in str(refused.error)


def load_fail_config() -> OrchestrationConfig:
    from trioflow.lifecycle import load_config

    return load_config({"enable_metrics": False, "health": {"when_unhealthy": "fail"}})


async def test_metrics_are_logged_periodically_while_open() -> None:
    cap, log = capture()
    async with coordinator(seven(), log, enable_metrics=True, metrics_interval=5) as c:
        await c.process(Request())
        await anyio.sleep(4)
    metrics = [e for e in cap.entries if e["event"] == "coordinator statistics"]
    assert len(metrics) == 2  # at 5 and 10; the task ended with the block
    assert metrics[0]["success_ratio"] == 1.0
    assert anyio.current_time() == 11


async def test_statistics() -> None:
    async def boom(request: Request) -> None:
        raise TimeoutError("slow dependency")

    fail_on = {"bad"}

    async def maybe(request: Request) -> None:
        if request.payload in fail_on:
            await boom(request)
        await anyio.sleep(1)

    async with coordinator(seven({"format": maybe})) as c:
        await c.process_many([Request("ok"), Request("ok"), Request("ok"), Request("bad")])
        await anyio.sleep(2)
        stats = c.statistics()
    assert (stats.finished, stats.completed, stats.failed) == (4, 3, 1)
    assert stats.uptime == 9
    assert stats.requests_per_second == pytest.approx(4 / 9)
    assert stats.mean_time == pytest.approx((7 * 3 + 6) / 4)
    assert stats.success_ratio == 0.75
    assert stats.failures[ErrorCategory.TIMEOUT] == 1
    assert stats.state_times[S.PROCESSING] == 1
    assert stats.in_flight == stats.queue_depth == 0


async def test_tools_through_the_tool_pool() -> None:
    registry = ToolRegistry()
    running = [0, 0]

    @registry.tool
    async def lookup(term: str) -> str:
        running[0] += 1
        running[1] = max(running)
        await anyio.sleep(1)
        running[0] -= 1
        return term.upper()

    router = Router(lambda r: "q", {"q": seven()})
    config = {"enable_metrics": False, "pools": {"tool": 2}}
    async with open_coordinator(
        config, router=router, registry=registry, logger=capture()[1]
    ) as c:
        assert await c.call_tool("lookup", {"term": "a"}) == "A"
        batch = await c.run_tools([("lookup", {"term": t}) for t in "bcde"] + [("lookup", {})])
    assert batch.values == ("B", "C", "D", "E")
    assert isinstance(batch.outcomes[4].error, ToolArgumentError)
    assert running[1] == 2
    assert anyio.current_time() == 3


def lookup_registry() -> tuple[ToolRegistry, list[int], list[tuple[str, float]]]:
    """A tool that sleeps ``seconds``, failing with ConnectionError while ``fail`` > 0."""
    registry = ToolRegistry()
    running = [0, 0]
    calls: list[tuple[str, float]] = []
    failures: collections.Counter[str] = collections.Counter()

    @registry.tool
    async def lookup(term: str, seconds: float = 1, fail: int = 0) -> str:
        calls.append((term, anyio.current_time()))
        running[0] += 1
        running[1] = max(running)
        try:
            await anyio.sleep(seconds)
        finally:
            running[0] -= 1
        if failures[term] < fail:
            failures[term] += 1
            raise ConnectionError(f"{term} failed")
        return term.upper()

    return registry, running, calls


@asynccontextmanager
async def tool_coordinator(registry: ToolRegistry, **config: Any) -> AsyncIterator[Coordinator]:
    router = Router(lambda r: "q", {"q": seven()})
    config.setdefault("enable_metrics", False)
    async with open_coordinator(
        config, router=router, registry=registry, logger=capture()[1]
    ) as c:
        yield c


async def test_coordinator_tools_take_json_text() -> None:
    registry, _, calls = lookup_registry()
    async with tool_coordinator(registry) as c:
        assert await c.call_tool("lookup", '{"term": "a"}') == "A"
        with pytest.raises(ToolArgumentError, match=r"lookup.*not valid JSON: Expecting"):
            await c.call_tool("lookup", '{"term": ')
        batch = await c.run_tools([("lookup", '{"term": "b"}'), ("lookup", "[]")])
    assert batch.values == ("B",)
    error = batch.outcomes[1].error
    assert isinstance(error, ToolArgumentError)
    assert error.problems == (("$", "expected a JSON object of arguments, got []"),)
    assert [term for term, _ in calls] == ["a", "b"]


async def test_coordinator_run_tools_limit_within_the_tool_pool() -> None:
    registry, running, _ = lookup_registry()
    async with tool_coordinator(registry, pools={"tool": 3}) as c:
        start = anyio.current_time()
        batch = await c.run_tools([("lookup", {"term": t}) for t in "abcdef"], limit=2)
        assert batch.values == tuple("ABCDEF")
        assert running[1] == 2
        assert anyio.current_time() - start == 3
        # A limit above the pool's size: the pool still binds.
        running[1] = 0
        start = anyio.current_time()
        batch = await c.run_tools([("lookup", {"term": t}) for t in "abcdef"], limit=5)
        assert running[1] == 3
        assert anyio.current_time() - start == 2
        # A shared ResourceManager, as the free run_tools takes.
        running[1] = 0
        start = anyio.current_time()
        shared = ResourceManager(limit=1)
        batch = await c.run_tools([("lookup", {"term": t}) for t in "ab"], limit=shared)
        assert batch.values == ("A", "B")
        assert running[1] == 1
        assert anyio.current_time() - start == 2


async def test_coordinator_run_tools_timeout_per_call() -> None:
    registry, _, _ = lookup_registry()
    async with tool_coordinator(registry) as c:
        start = anyio.current_time()
        batch = await c.run_tools(
            [("lookup", {"term": "a", "seconds": 5}), ("lookup", {"term": "b", "seconds": 1})],
            timeout=2.5,
        )
        assert anyio.current_time() - start == 2.5
        assert batch.values == ("B",)
        assert type(batch.outcomes[0].error) is TimeoutError
        assert batch.outcomes[0].duration == 2.5


async def test_coordinator_run_tools_retry_and_fail_fast() -> None:
    registry, _, calls = lookup_registry()
    async with tool_coordinator(registry) as c:
        policy = RetryPolicy(attempts=3, initial_delay=2, multiplier=1)
        start = anyio.current_time()
        batch = await c.run_tools([("lookup", {"term": "a", "fail": 2})], retry=policy)
        assert batch.values == ("A",)
        # Three one-second tries, two seconds apart.
        assert [at - start for _, at in calls] == [0, 3, 6]
        assert anyio.current_time() - start == 7
        calls.clear()
        batch = await c.run_tools(
            [("lookup", {"term": "b", "fail": 1}), ("lookup", {"term": "c", "seconds": 9})],
            fail_fast=True,
        )
        assert [o.status for o in batch.outcomes] == [
            OutcomeStatus.FAILED,
            OutcomeStatus.CANCELLED,
        ]
        assert isinstance(batch.outcomes[0].error, ConnectionError)


async def test_coordinator_run_tools_checks_its_options_as_run_tools_does() -> None:
    registry, _, calls = lookup_registry()
    good = [("lookup", {"term": "a"})]
    bad: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"limit": 0}, ValueError, r"^limit must be an int >= 1, got 0 \(int\)$"),
        ({"limit": "2"}, TypeError, r"^limit must be"),
        ({"timeout": -1}, ValueError, r"^timeout must be"),
        ({"timeout": math.nan}, ValueError, r"^timeout must be"),
        ({"timeout": "1"}, TypeError, r"^timeout must be"),
        ({"retry": 3}, TypeError, r"^retry must be a RetryPolicy or None, got 3 \(int\)$"),
        ({"fail_fast": 1}, TypeError, r"^fail_fast must be"),
    ]
    async with tool_coordinator(registry) as c:
        for options, kind, message in bad:
            with pytest.raises(kind, match=message):
                await c.run_tools(good, **options)
            with pytest.raises(kind, match=message):
                await run_tools(registry, good, **options)
        assert calls == []
        # None is no limit and no deadline, as for run_tools; math.inf too for the timeout.
        batch = await c.run_tools(good, limit=None, timeout=math.inf, retry=None)
        assert batch.values == ("A",)


async def test_bad_input_is_refused_before_anything_runs() -> None:
    with pytest.raises(TypeError, match="router must be a Router"):
        async with open_coordinator(router=seven()):  # type: ignore[arg-type]
            pass
    async with coordinator(seven()) as c:
        with pytest.raises(TypeError, match="request must be a Request"):
            await c.process("hello")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="terminal state"):
            await c.process(Request(state=S.FAILED))
        twin = Request()
        with pytest.raises(ValueError, match="share the id"):
            await c.process_many([twin, twin])
        with pytest.raises(RuntimeError, match="without a tool registry"):
            await c.call_tool("x")
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.process, twin)
            await anyio.sleep(1)
            with pytest.raises(ValueError, match="already being processed"):
                await c.process(twin)
    with pytest.raises(RuntimeError, match="closed"):
        await c.process(Request())


async def test_cancel_while_routing_takes_effect_before_the_pipeline() -> None:
    ran: list[str] = []

    async def classify(request: Request) -> str:
        await anyio.sleep(2)
        return "q"

    async def stage(request: Request) -> None:
        ran.append(request.id)

    pipeline = seven(dict.fromkeys([name for name, _ in SEVEN_STAGES], stage))
    router = Router(classify, {"q": pipeline})
    async with open_coordinator(
        {"enable_metrics": False}, router=router, logger=capture()[1]
    ) as c:
        request = Request()
        results: list[ProcessingResult] = []

        async def run() -> None:
            results.append(await c.process(request))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await anyio.sleep(1)
            assert c.cancel(request.id)
    assert results[0].status is ProcessingStatus.CANCELLED
    assert [h.to_state for h in request.history] == [S.CANCELLED]
    assert request.history[0].at == 2
    assert ran == []


async def test_outer_cancellation_while_routing_ends_the_request_cancelled() -> None:
    async def classify(request: Request) -> str:
        await anyio.sleep(5)
        return "q"

    router = Router(classify, {"q": seven()})
    async with open_coordinator(
        {"enable_metrics": False}, router=router, logger=capture()[1]
    ) as c:
        request = Request()
        with anyio.move_on_after(1) as scope:
            await c.process(request)
        stats = c.statistics()
    assert scope.cancelled_caught
    assert [(h.to_state, h.at) for h in request.history] == [(S.CANCELLED, 1)]
    assert (stats.cancelled, stats.in_flight, stats.users) == (1, 0, 0)


@pytest.mark.real_time
def test_importing_trioflow_does_not_import_structlog() -> None:
    # structlog (with rich and pygments behind it) is imported when a coordinator opens
    # without a logger of its own, not by ``import trioflow``.
    code = "import sys, trioflow; assert 'structlog' not in sys.modules, 'structlog imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_hooks_registered_once_see_every_transition_of_every_request() -> None:
    pipeline = seven()
    router = Router(lambda r: r.payload, {"q": pipeline})
    config = {"enable_metrics": False}
    async with open_coordinator(config, router=router, logger=capture()[1]) as c:
        assert c.machine is pipeline.machine  # the one machine the router's pipelines share
        seen: list[tuple[str, RequestState]] = []

        @c.machine.after
        async def record(request: Request, f: RequestState, t: RequestState) -> None:
            seen.append((request.id, t))

        served, unknown = Request("q"), Request("poetry")
        await c.process(served)
        await c.process(unknown)  # refused before any pipeline: the same machine ends it
    assert seen == [(served.id, h.to_state) for h in served.history] + [(unknown.id, S.FAILED)]
    assert len(served.history) == 7


async def test_pipelines_with_machines_of_their_own_run_on_the_coordinators() -> None:
    first, second = seven(), seven()
    router = Router(lambda r: r.payload, {"a": first, "b": second})
    given = StateMachine(REQUEST_TRANSITIONS, S.RECEIVED)
    seen: list[RequestState] = []

    @given.after
    async def record(request: Request, f: RequestState, t: RequestState) -> None:
        seen.append(t)

    config = {"enable_metrics": False}
    async with open_coordinator(config, router=router, logger=capture()[1], machine=given) as c:
        assert c.machine is given
        await c.process_many([Request("a"), Request("b")])
    assert seen.count(S.COMPLETED) == 2
    assert len(seen) == 14
    assert first.machine.statistics().transitions == second.machine.statistics().transitions == 0
    # Without machine=, pipelines that do not share one run on a new machine of the coordinator.
    async with open_coordinator(config, router=router, logger=capture()[1]) as c:
        assert c.machine not in (first.machine, second.machine)
        await c.process(Request("a"))
        assert c.machine.statistics().transitions == 7
    with pytest.raises(TypeError, match="machine must be a StateMachine"):
        async with open_coordinator(config, router=router, machine="m"):  # type: ignore[arg-type]
            pass


async def test_an_exception_in_the_coordinator_block_comes_out_as_itself() -> None:
    async def ok_stage(request: Request) -> None:
        pass

    pipeline = Pipeline([Stage(name, state, ok_stage) for name, state in SEVEN_STAGES])
    with pytest.raises(KeyError, match="mine"):
        async with coordinator(pipeline):
            raise KeyError("mine")
