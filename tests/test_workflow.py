"""Scheduling semantics of run_workflow, in virtual time on trio and asyncio."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from trioflow import (
    Context,
    MemoryStore,
    ResourceManager,
    RetryPolicy,
    RunStatus,
    StepStatus,
    Workflow,
    WorkflowProgress,
    run_workflow,
)

pytestmark = pytest.mark.anyio

Fn = Callable[[Context], Awaitable[Any]]


class Boom(Exception):
    pass


class Timeline:
    """Step functions that sleep and record (name, start, end) in virtual time."""

    def __init__(self) -> None:
        self.spans: dict[str, tuple[float, float]] = {}
        self.starts: list[str] = []
        self.running: set[str] = set()
        self.max_running = 0
        self.overlaps: list[tuple[str, frozenset[str]]] = []

    def sleep(self, seconds: float, value: Any = None, *, fail: bool = False) -> Fn:
        async def step(ctx: Context) -> Any:
            assert ctx.step is not None
            name = ctx.step
            start = anyio.current_time()
            self.starts.append(name)
            if self.running:
                self.overlaps.append((name, frozenset(self.running)))
            self.running.add(name)
            self.max_running = max(self.max_running, len(self.running))
            try:
                await anyio.sleep(seconds)
            finally:
                self.running.discard(name)
                self.spans[name] = (start, anyio.current_time())
            if fail:
                raise Boom(name)
            return value

        return step


def build_and_test(t: Timeline) -> Workflow:
    wf = Workflow("build-and-test")
    wf.step("restore", t.sleep(5, "restored"))
    wf.step("build", t.sleep(10, "built"), after="restore")
    wf.step("unit", t.sleep(10, 120), after="build")
    wf.step("integration", t.sleep(15, 30), after=["build"])
    wf.step("report", t.sleep(5, "report"), after=["unit", "integration"])
    return wf


async def test_build_and_test_takes_exactly_35_seconds() -> None:
    t = Timeline()
    result = await run_workflow(build_and_test(t))
    assert anyio.current_time() == 35
    assert result.ok
    assert result.duration == 35
    assert t.spans == {
        "restore": (0, 5),
        "build": (5, 15),
        "unit": (15, 25),
        "integration": (15, 30),
        "report": (30, 35),
    }
    assert {n: r.status for n, r in result.steps.items()} == dict.fromkeys(
        t.spans, StepStatus.SUCCEEDED
    )
    assert result.steps["integration"].started_at == 15
    assert result.steps["integration"].finished_at == 30
    assert result.steps["integration"].duration == 15
    assert result.steps["unit"].attempts == 1
    assert result.values == {
        "restore": "restored",
        "build": "built",
        "unit": 120,
        "integration": 30,
        "report": "report",
    }
    assert list(result.steps) == ["restore", "build", "unit", "integration", "report"]


async def test_context_results_state_run_id_and_step() -> None:
    seen: dict[str, Any] = {}
    wf = Workflow("ctx")

    @wf.step("a")
    async def a(ctx: Context) -> int:
        ctx.set("token", "t-1")
        seen["a"] = (ctx.run_id, ctx.step, dict(ctx.results))
        return 1

    @wf.step("b", after="a")
    async def b(ctx: Context) -> int:
        seen["b"] = (ctx.step, dict(ctx.results), ctx.get("token"), ctx.get("nope", 7))
        ctx.set("token", "t-2")
        return int(ctx.results["a"]) + 1

    result = await run_workflow(wf, context={"initial": True}, run_id="run-1")
    assert result.run_id == "run-1"
    assert seen["a"] == ("run-1", "a", {})
    assert seen["b"] == ("b", {"a": 1}, "t-1", 7)
    assert result.context.results == {"a": 1, "b": 2}
    assert result.context.state == {"initial": True, "token": "t-2"}
    assert result.context.step is None
    with pytest.raises(TypeError):
        result.context.results["x"] = 1  # type: ignore[index]


async def test_a_fresh_run_id_is_generated() -> None:
    wf = Workflow("ids").step("a", Timeline().sleep(0))
    first = await run_workflow(wf)
    second = await run_workflow(wf)
    assert len(first.run_id) == 32
    assert first.run_id != second.run_id


async def test_limit_caps_steps_in_flight() -> None:
    t = Timeline()
    wf = Workflow("limit")
    for name in "abcde":
        wf.step(name, t.sleep(10))
    result = await run_workflow(wf, limit=2)
    assert result.ok
    assert anyio.current_time() == 30
    assert t.max_running == 2
    assert [t.spans[n][0] for n in "abcde"] == [0, 0, 10, 10, 20]


async def test_without_limit_independent_steps_all_run_together() -> None:
    t = Timeline()
    wf = Workflow("wide")
    for i in range(50):
        wf.step(f"s{i}", t.sleep(3))
    await run_workflow(wf)
    assert anyio.current_time() == 3
    assert t.max_running == 50


async def test_exclusive_step_runs_alone_and_holds_back_later_starts() -> None:
    t = Timeline()
    wf = Workflow("exclusive")
    wf.step("a", t.sleep(10))
    wf.step("x", t.sleep(5), exclusive=True)
    wf.step("b", t.sleep(10))
    wf.step("c", t.sleep(1), after="x")
    result = await run_workflow(wf)
    assert result.ok
    # x is ready at 0 behind a: it waits for a, runs alone, then b (behind it) and c start.
    assert t.spans == {"a": (0, 10), "x": (10, 15), "b": (15, 25), "c": (15, 16)}
    assert all("x" not in others and name != "x" for name, others in t.overlaps)
    assert anyio.current_time() == 25


async def test_exclusive_steps_in_parallel_branches_never_overlap() -> None:
    t = Timeline()
    wf = Workflow("exclusive-branches")
    wf.step("root", t.sleep(1))
    for i in range(4):
        wf.step(f"x{i}", t.sleep(2), after="root", exclusive=True)
        wf.step(f"y{i}", t.sleep(2), after="root")
    result = await run_workflow(wf, limit=3)
    assert result.ok
    exclusive = {f"x{i}" for i in range(4)}
    for name, others in t.overlaps:
        assert name not in exclusive
        assert not (others & exclusive)
    assert t.max_running <= 3


async def test_when_skips_and_skipped_steps_count_as_done() -> None:
    t = Timeline()
    asked: list[tuple[str | None, float]] = []

    def never(ctx: Context) -> bool:
        asked.append((ctx.step, anyio.current_time()))
        return False

    async def if_built(ctx: Context) -> bool:
        await anyio.lowlevel.checkpoint()
        asked.append((ctx.step, anyio.current_time()))
        return ctx.results.get("build") == "ok"

    wf = Workflow("when")
    wf.step("build", t.sleep(4, "ok"))
    wf.step("deploy", t.sleep(5), after="build", when=never)
    wf.step("notify", t.sleep(1, "sent"), after="deploy", when=if_built)
    result = await run_workflow(wf)
    assert result.ok
    assert result.steps["deploy"].status is StepStatus.SKIPPED
    assert result.steps["deploy"].attempts == 0
    assert result.steps["notify"].status is StepStatus.SUCCEEDED
    assert "deploy" not in result.context.results
    assert asked == [("deploy", 4), ("notify", 4)]
    assert anyio.current_time() == 5


async def test_a_failing_condition_fails_the_step() -> None:
    def broken(ctx: Context) -> bool:
        raise Boom("condition")

    wf = Workflow("bad-when").step("a", Timeline().sleep(1), when=broken)
    result = await run_workflow(wf)
    assert result.steps["a"].status is StepStatus.FAILED
    assert isinstance(result.steps["a"].error, Boom)
    assert not result.ok


def saga(t: Timeline, undone: list[str], *, fail_after: float = 5) -> Workflow:
    def undo(name: str) -> Fn:
        async def compensate(ctx: Context) -> None:
            assert ctx.step == name
            await anyio.sleep(1)  # shielded: runs to the end despite the cancellation
            undone.append(name)

        return compensate

    wf = Workflow("saga")
    wf.step("reserve", t.sleep(1, "r"), compensate=undo("reserve"))
    wf.step("charge", t.sleep(2, "c"), after="reserve", compensate=undo("charge"))
    wf.step("email", t.sleep(1, "e"), after="reserve")  # no compensation
    wf.step("ship", t.sleep(fail_after, fail=True), after="charge", compensate=undo("ship"))
    wf.step("audit", t.sleep(100), after="reserve", compensate=undo("audit"))
    wf.step("close", t.sleep(1), after=["ship", "audit"], compensate=undo("close"))
    return wf


async def test_fail_fast_cancels_running_steps_and_compensates_in_reverse() -> None:
    t = Timeline()
    undone: list[str] = []
    result = await run_workflow(saga(t, undone))
    assert not result.ok
    status = {n: r.status for n, r in result.steps.items()}
    assert status == {
        "reserve": StepStatus.COMPENSATED,
        "charge": StepStatus.COMPENSATED,
        "email": StepStatus.SUCCEEDED,
        "ship": StepStatus.FAILED,
        "audit": StepStatus.CANCELLED,
        "close": StepStatus.NOT_RUN,
    }
    # reserve ends at 1, email at 2, charge at 3: compensation goes charge, then reserve.
    assert undone == ["charge", "reserve"]
    assert isinstance(result.steps["ship"].error, Boom)
    assert result.steps["audit"].finished_at == 8
    assert result.steps["close"].attempts == 0
    assert result.steps["charge"].value == "c"
    assert anyio.current_time() == 10  # failure at 8, then two shielded 1 s compensations
    with pytest.RaisesGroup(Boom, match="failed: step 'ship'"):
        result.raise_for_errors()


async def test_a_failing_compensation_is_recorded_and_does_not_hide_the_failure() -> None:
    t = Timeline()
    calls: list[str] = []

    async def undo_a(ctx: Context) -> None:
        calls.append("a")

    async def undo_b(ctx: Context) -> None:
        calls.append("b")
        raise ValueError("cannot undo b")

    wf = Workflow("bad-undo")
    wf.step("a", t.sleep(1), compensate=undo_a)
    wf.step("b", t.sleep(1), after="a", compensate=undo_b)
    wf.step("c", t.sleep(1, fail=True), after="b")
    result = await run_workflow(wf)
    assert calls == ["b", "a"]  # each once, the failing one does not stop the others
    b = result.steps["b"]
    assert b.status is StepStatus.SUCCEEDED
    assert isinstance(b.compensation_error, ValueError)
    assert result.steps["a"].status is StepStatus.COMPENSATED
    assert result.steps["a"].compensation_error is None
    assert isinstance(result.steps["c"].error, Boom)
    assert list(result.errors) == ["c"]


async def test_raise_for_errors_leaves_out_tolerated_failures() -> None:
    t = Timeline()
    wf = Workflow("mixed")
    wf.step("lint", t.sleep(1, fail=True), optional=True)
    wf.step("build", t.sleep(2, fail=True))
    result = await run_workflow(wf)
    assert set(result.errors) == {"lint", "build"}
    with pytest.RaisesGroup(Boom, match="failed: step 'build'$"):
        result.raise_for_errors()


async def test_without_fail_fast_independent_branches_go_on() -> None:
    t = Timeline()
    undone: list[str] = []
    result = await run_workflow(saga(t, undone), fail_fast=False)
    status = {n: r.status for n, r in result.steps.items()}
    assert status == {
        "reserve": StepStatus.COMPENSATED,
        "charge": StepStatus.COMPENSATED,
        "email": StepStatus.SUCCEEDED,
        "ship": StepStatus.FAILED,
        "audit": StepStatus.COMPENSATED,  # went on to the end (101), then was undone
        "close": StepStatus.NOT_RUN,
    }
    assert undone == ["audit", "charge", "reserve"]
    assert anyio.current_time() == 104


async def test_fail_fast_false_collects_every_failure() -> None:
    t = Timeline()
    wf = Workflow("many")
    wf.step("a", t.sleep(1, fail=True))
    wf.step("b", t.sleep(2, fail=True))
    wf.step("c", t.sleep(3, "ok"))
    wf.step("d", t.sleep(1), after=["a", "c"])
    result = await run_workflow(wf, fail_fast=False)
    assert [r.status for r in result.steps.values()] == [
        StepStatus.FAILED,
        StepStatus.FAILED,
        StepStatus.SUCCEEDED,
        StepStatus.NOT_RUN,
    ]
    assert result.count(StepStatus.FAILED) == 2
    with pytest.RaisesGroup(Boom, Boom, match="steps 'a', 'b'"):
        result.raise_for_errors()


async def test_an_optional_step_lets_the_run_go_on() -> None:
    t = Timeline()
    undone: list[str] = []

    async def undo(ctx: Context) -> None:
        undone.append(str(ctx.step))

    wf = Workflow("lenient")
    wf.step("lint", t.sleep(2, fail=True), optional=True)
    wf.step("build", t.sleep(3, "b"), compensate=undo)
    wf.step("test", t.sleep(1, "t"), after=["lint", "build"])
    result = await run_workflow(wf)
    assert result.ok
    assert result.steps["lint"].status is StepStatus.FAILED
    assert isinstance(result.errors["lint"], Boom)
    assert result.steps["test"].status is StepStatus.SUCCEEDED
    assert result.steps["lint"].optional
    assert not result.steps["test"].optional
    assert undone == []
    result.raise_for_errors()  # nothing to raise
    assert anyio.current_time() == 4


async def test_caller_cancellation_compensates_then_propagates() -> None:
    t = Timeline()
    undone: list[str] = []
    store = MemoryStore()
    reached_end = False
    with anyio.move_on_after(4) as scope:
        await run_workflow(saga(t, undone), store=store, run_id="r")
        reached_end = True
    assert scope.cancelled_caught
    assert not reached_end
    assert undone == ["charge", "reserve"]
    assert anyio.current_time() == 6  # cancelled at 4, then two shielded 1 s compensations
    record = await store.load_run("r")
    assert record is not None
    assert record.status is RunStatus.CANCELLED
    assert {n: s.status for n, s in record.steps.items()} == {
        "reserve": StepStatus.COMPENSATED,
        "charge": StepStatus.COMPENSATED,
        "email": StepStatus.SUCCEEDED,
        "ship": StepStatus.CANCELLED,
        "audit": StepStatus.CANCELLED,
        "close": StepStatus.NOT_RUN,
    }


class Fatal(BaseException):
    pass


async def test_a_base_exception_in_a_step_propagates_after_compensation() -> None:
    undone: list[str] = []

    async def ok(ctx: Context) -> None:
        await anyio.sleep(1)

    async def undo(ctx: Context) -> None:
        undone.append("a")

    async def fatal(ctx: Context) -> None:
        await anyio.sleep(1)
        raise Fatal

    wf = Workflow("fatal").step("a", ok, compensate=undo).step("b", fatal, after="a")
    with pytest.RaisesGroup(Fatal):
        await run_workflow(wf)
    assert undone == ["a"]


async def test_retry_counts_attempts_and_waits_between_them() -> None:
    calls: list[float] = []

    async def flaky(ctx: Context) -> str:
        calls.append(anyio.current_time())
        if len(calls) < 3:
            raise ConnectionError("try again")
        return "done"

    policy = RetryPolicy(attempts=4, initial_delay=1, multiplier=2)
    wf = Workflow("retry").step("fetch", flaky, retry=policy)
    result = await run_workflow(wf)
    assert result.ok
    step = result.steps["fetch"]
    assert (step.value, step.attempts) == ("done", 3)
    assert calls == [0, 1, 3]
    assert (step.started_at, step.finished_at) == (0, 3)


async def test_retry_gives_up_after_its_attempts() -> None:
    async def down(ctx: Context) -> None:
        raise ConnectionError("down")

    policy = RetryPolicy(attempts=3, initial_delay=2, multiplier=1)
    result = await run_workflow(Workflow("r").step("x", down, retry=policy))
    step = result.steps["x"]
    assert step.status is StepStatus.FAILED
    assert step.attempts == 3
    assert isinstance(step.error, ConnectionError)
    assert anyio.current_time() == 4


async def test_timeout_applies_to_each_attempt() -> None:
    t = Timeline()
    wf = Workflow("slow").step("hang", t.sleep(10), timeout=2)
    result = await run_workflow(wf)
    step = result.steps["hang"]
    assert step.status is StepStatus.FAILED
    assert type(step.error) is TimeoutError
    assert anyio.current_time() == 2

    durations = iter([10.0, 10.0, 1.0])

    async def faster_each_time(ctx: Context) -> str:
        await anyio.sleep(next(durations))
        return "in time"

    policy = RetryPolicy(attempts=3, initial_delay=0.5, multiplier=1)
    wf = Workflow("slow2").step("s", faster_each_time, timeout=3, retry=policy)
    start = anyio.current_time()
    result = await run_workflow(wf)
    assert result.steps["s"].value == "in time"
    assert result.steps["s"].attempts == 3
    assert anyio.current_time() - start == 3 + 0.5 + 3 + 0.5 + 1


async def test_progress_reports_running_steps_and_counts() -> None:
    t = Timeline()
    seen: list[WorkflowProgress] = []
    wf = build_and_test(t)
    wf.step("lint", t.sleep(1, fail=True), optional=True)
    wf.step("docs", t.sleep(1), when=lambda ctx: False)
    await run_workflow(wf, on_progress=seen.append)
    assert seen[0] == WorkflowProgress(
        total=7, completed=0, succeeded=0, failed=0, skipped=0, running=(), elapsed=0
    )
    at_20 = [p for p in seen if p.elapsed == 15]
    assert at_20[-1].running == ("unit", "integration")
    assert at_20[-1].completed == 4
    assert seen[-1] == WorkflowProgress(
        total=7, completed=7, succeeded=5, failed=1, skipped=1, running=(), elapsed=35
    )
    assert any(p.running == ("restore", "lint", "docs") for p in seen)


async def test_a_resource_manager_limit_and_pools() -> None:
    # Steps that become ready together reach the manager in an order the backend may shuffle:
    # the times asserted here hold for every order (the w steps are interchangeable, and so
    # are m1 and m2).
    t = Timeline()
    manager = ResourceManager(limit=3, pools={"db": 1})
    wf = Workflow("pools")
    wf.step("start", t.sleep(1))
    wf.step("m1", t.sleep(10), pools=["db"])
    wf.step("m2", t.sleep(10), pools=["db"])
    for i in range(4):
        wf.step(f"w{i}", t.sleep(10), after="start")
    result = await run_workflow(wf, limit=manager)
    assert result.ok
    # One db token: m1 and m2 run one after the other. The one waiting for it holds a general
    # slot meanwhile (the manager takes the general slot first), so from 1 to 10 only one w
    # runs beside the first m: w 1-11, m 10-20 with w 10-20, w 11-21, w 20-30.
    assert sorted(t.spans[m] for m in ("m1", "m2")) == [(0, 10), (10, 20)]
    assert sorted(t.spans[f"w{i}"] for i in range(4)) == [(1, 11), (10, 20), (11, 21), (20, 30)]
    assert t.max_running == 3
    assert anyio.current_time() == 30
    assert manager.statistics().executed == 7


async def test_steps_may_be_async_callable_objects_and_partials() -> None:
    import functools

    class Double:
        async def __call__(self, ctx: Context) -> int:
            return 2 * int(ctx.results["one"])

    async def constant(value: int, ctx: Context) -> int:
        return value

    wf = Workflow("callables")
    wf.step("one", functools.partial(constant, 1)).step("two", Double(), after="one")
    result = await run_workflow(wf)
    assert result.values == {"one": 1, "two": 2}


async def test_an_empty_workflow_succeeds_at_once() -> None:
    result = await run_workflow(Workflow("empty"))
    assert result.ok
    assert result.steps == {}
    assert anyio.current_time() == 0


async def test_many_instant_steps_in_a_row_still_yield_to_other_tasks() -> None:
    wf = Workflow("instant")
    for i in range(4000):
        wf.step(f"s{i}", instant, after=after(i))
    ticks = 0
    async with anyio.create_task_group() as tg:

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.lowlevel.checkpoint()

        tg.start_soon(ticker)
        result = await run_workflow(wf)
        tg.cancel_scope.cancel()
    assert result.ok
    assert ticks >= 4000 // 256  # the worker yields every 256 steps that did not wait


async def instant(ctx: Context) -> None:
    pass


def after(i: int) -> list[str]:
    return [f"s{i - 1}"] if i else []


async def test_decorator_chaining_and_graph_views() -> None:
    wf = Workflow("views")

    @wf.step("b", after=["a"])
    async def b(ctx: Context) -> None:
        pass

    assert wf.step("a", instant) is wf
    wf.step("c", instant, after=["a", "b", "a"])
    assert b.__name__ == "b"  # the decorator returns the function
    assert list(wf.steps) == ["b", "a", "c"]
    assert wf.steps["c"].after == ("a", "b")
    assert wf.edges() == (("a", "b"), ("a", "c"), ("b", "c"))
    assert wf.waves() == (("a",), ("b",), ("c",))
    assert wf.name == "views"
    assert "3 steps" in repr(wf)
    result = await run_workflow(wf)
    assert result.ok


def test_an_exclusive_step_gets_a_wave_of_its_own() -> None:
    wf = Workflow("waves").step("a", instant).step("b", instant, after="a")
    wf.step("d", instant, after="a", exclusive=True).step("e", instant, after="a")
    wf.step("f", instant, exclusive=True).step("c", instant, after=["b", "d"])
    assert wf.waves() == (("a",), ("f",), ("b", "e"), ("d",), ("c",))


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


async def test_context_variables_set_by_a_step_or_compensation_stay_in_it() -> None:
    # As with a task per step: each step and each compensation starts from the caller's
    # context variables and sees none set by another (a chain of steps may share one worker
    # task, and compensations run after the run's task group has ended).
    seen: dict[str, str] = {}

    async def tag(ctx: Context) -> None:
        seen[str(ctx.step)] = request_id.get()
        request_id.set(f"set by {ctx.step}")

    async def undo(ctx: Context) -> None:
        seen[f"undo {ctx.step}"] = request_id.get()
        request_id.set(f"set by undo {ctx.step}")

    async def boom(ctx: Context) -> None:
        raise Boom

    wf = Workflow("vars").step("a", tag, compensate=undo).step("b", tag, after="a")
    wf.step("c", tag, after="b", compensate=undo).step("d", boom, after="c")
    token = request_id.set("caller")
    try:
        result = await run_workflow(wf)
        assert request_id.get() == "caller"
    finally:
        request_id.reset(token)
    assert result.steps["d"].status is StepStatus.FAILED
    assert seen == dict.fromkeys(["a", "b", "c", "undo c", "undo a"], "caller")


async def test_cancelled_steps_can_finish_shielded_cleanup() -> None:
    cleaned: list[float] = []

    async def careful(ctx: Context) -> None:
        try:
            await anyio.sleep(100)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(2)  # e.g. tell a remote service to stop
                cleaned.append(anyio.current_time())

    async def failing(ctx: Context) -> None:
        await anyio.sleep(3)
        raise Boom("stop")

    wf = Workflow("shielded").step("careful", careful).step("failing", failing)
    result = await run_workflow(wf)
    assert cleaned == [5]
    assert result.steps["careful"].status is StepStatus.CANCELLED
    assert result.steps["careful"].finished_at == 5
    assert anyio.current_time() == 5
