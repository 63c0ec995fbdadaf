"""Regressions of workflow runs: fail-fast with pools, never-started steps, the context's view of
earlier steps, pools per attempt. In virtual time on trio and asyncio."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioflow import (
    Context,
    MemoryStore,
    ResourceManager,
    RetryPolicy,
    StepStatus,
    Workflow,
    WorkflowResult,
    run_workflow,
)
from trioflow.testing import virtual_time_backends

pytestmark = pytest.mark.anyio

Fn = Callable[[Context], Awaitable[Any]]


class Boom(Exception):
    pass


def sleeper(log: list[tuple[str, str, float]], seconds: float, *, fail: bool = False) -> Fn:
    async def step(ctx: Context) -> str:
        assert ctx.step is not None
        log.append(("start", ctx.step, anyio.current_time()))
        await anyio.sleep(seconds)
        if fail:
            log.append(("fail", ctx.step, anyio.current_time()))
            raise Boom(ctx.step)
        return ctx.step

    return step


# --- fail fast: nothing starts once a failure is seen ----------------------------------------
@pytest.mark.parametrize("store", [False, True])
async def test_fail_fast_starts_no_step_waiting_for_its_slot(store: bool) -> None:
    log: list[tuple[str, str, float]] = []
    wf = Workflow("ff")
    wf.step("a", sleeper(log, 10, fail=True))
    wf.step("b", sleeper(log, 10))
    result = await run_workflow(
        wf, limit=ResourceManager(1), store=MemoryStore() if store else None
    )
    assert log == [("start", "a", 0), ("fail", "a", 10)]
    assert result.steps["b"].status is StepStatus.NOT_RUN
    assert result.steps["b"].attempts == 0


@pytest.mark.parametrize("backend", [0, 1])
@settings(max_examples=40)
@given(data=st.data())
def test_fail_fast_starts_nothing_after_the_first_failure(
    backend: int, data: st.DataObject
) -> None:
    n = data.draw(st.integers(2, 10))
    deps = [
        sorted(data.draw(st.sets(st.integers(0, i - 1), max_size=2))) if i else []
        for i in range(n)
    ]
    durations = data.draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    failing = data.draw(st.frozensets(st.integers(0, n - 1), min_size=1, max_size=3))
    pooled = data.draw(st.frozensets(st.integers(0, n - 1)))
    conditional = data.draw(st.frozensets(st.integers(0, n - 1)))
    kind = data.draw(st.sampled_from(["none", "int", "manager"]))
    store = data.draw(st.booleans())
    events: list[tuple[str, int]] = []

    def make(i: int) -> Fn:
        async def fn(ctx: Context) -> int:
            events.append(("start", i))
            await anyio.sleep(durations[i])
            if i in failing:
                events.append(("fail", i))
                raise Boom(i)
            return i

        return fn

    async def when(ctx: Context) -> bool:
        await anyio.sleep(0)
        return True

    wf = Workflow("random")
    for i in range(n):
        wf.step(
            f"s{i}",
            make(i),
            after=[f"s{d}" for d in deps[i]],
            pools=["p"] if i in pooled and kind == "manager" else (),
            when=when if i in conditional else None,
        )
    limit: Any = {
        "none": None,
        "int": 2,
        "manager": ResourceManager(2, pools={"p": 1}),
    }[kind]

    async def main() -> WorkflowResult:
        return await run_workflow(wf, limit=limit, store=MemoryStore() if store else None)

    name, options = virtual_time_backends()[backend]
    result = anyio.run(main, backend=name, backend_options=options)
    first = next(k for k, (what, _) in enumerate(events) if what == "fail")
    assert [e for e in events[first:] if e[0] == "start"] == []
    started = {i for what, i in events if what == "start"}
    for i in range(n):
        r = result.steps[f"s{i}"]
        if i not in started:
            assert r.status is StepStatus.NOT_RUN, (i, r)
            assert r.attempts == 0


# --- a step that never started is NOT_RUN, never CANCELLED ------------------------------------
@pytest.mark.parametrize("store", [False, True])
async def test_a_cancelled_run_records_steps_that_never_started_not_run(store: bool) -> None:
    log: list[tuple[str, str, float]] = []
    wf = Workflow("cancel")
    wf.step("a", sleeper(log, 10))
    wf.step("b", sleeper(log, 10))
    memory = MemoryStore()
    with anyio.move_on_after(5):
        await run_workflow(
            wf, limit=ResourceManager(1), store=memory if store else None, run_id="r"
        )
    assert log == [("start", "a", 0)]
    if store:
        record = await memory.load_run("r")
        assert record is not None
        assert record.steps["a"].status is StepStatus.CANCELLED
        assert record.steps["a"].attempts == 1
        assert record.steps["b"].status is StepStatus.NOT_RUN
        assert record.steps["b"].attempts == 0


async def test_a_step_cancelled_in_its_condition_did_not_start() -> None:
    async def slow_when(ctx: Context) -> bool:
        await anyio.sleep(10)
        return True

    async def fn(ctx: Context) -> None:
        pass

    store = MemoryStore()
    wf = Workflow("w").step("a", fn, when=slow_when)
    with anyio.move_on_after(5):
        await run_workflow(wf, store=store, run_id="r")
    record = await store.load_run("r")
    assert record is not None
    assert record.steps["a"].status is StepStatus.NOT_RUN
    assert record.steps["a"].attempts == 0


# --- the context tells failed from skipped ------------------------------------------------------
async def test_a_condition_sees_the_status_and_error_of_earlier_steps() -> None:
    seen: dict[str, Any] = {}

    async def bad(ctx: Context) -> None:
        raise Boom("lint found 3 problems")

    async def ok(ctx: Context) -> int:
        return 1

    def after_lint(ctx: Context) -> bool:
        seen["lint"] = (ctx.status("lint"), ctx.error("lint"))
        seen["fmt"] = (ctx.status("fmt"), ctx.error("fmt"))
        seen["build"] = (ctx.status("build"), ctx.error("build"))
        seen["later"] = ctx.status("report")
        return ctx.status("lint") is StepStatus.FAILED

    wf = Workflow("w")
    wf.step("lint", bad, optional=True)
    wf.step("fmt", ok, when=lambda ctx: False)
    wf.step("build", ok)
    wf.step("report", ok, after=["lint", "fmt", "build"], when=after_lint)
    result = await run_workflow(wf)
    assert result.ok
    status, error = seen["lint"]
    assert status is StepStatus.FAILED
    assert isinstance(error, Boom)
    assert str(error) == "lint found 3 problems"
    assert seen["fmt"] == (StepStatus.SKIPPED, None)
    assert seen["build"] == (StepStatus.SUCCEEDED, None)
    assert seen["later"] is None  # not ended yet
    assert result.steps["report"].status is StepStatus.SUCCEEDED
    assert result.context.status("report") is StepStatus.SUCCEEDED


async def test_a_resumed_run_gives_the_context_the_stored_statuses() -> None:
    store = MemoryStore()
    fail = [True]
    seen: dict[str, Any] = {}

    async def ok(ctx: Context) -> int:
        return 1

    async def flaky(ctx: Context) -> int:
        if fail[0]:
            raise Boom("down")
        return 2

    def look(ctx: Context) -> bool:
        seen.update(
            skipped=(ctx.status("skipped"), ctx.error("skipped")),
            built=(ctx.status("built"), ctx.error("built")),
        )
        return True

    wf = Workflow("w")
    wf.step("built", ok)
    wf.step("skipped", ok, when=lambda ctx: False)
    wf.step("flaky", flaky, after=["built", "skipped"])
    wf.step("last", ok, after="flaky", when=look)
    first = await run_workflow(wf, store=store, run_id="r")
    assert not first.ok
    fail[0] = False
    second = await run_workflow(wf, store=store, run_id="r")
    assert second.ok
    assert seen == {
        "skipped": (StepStatus.SKIPPED, None),
        "built": (StepStatus.SUCCEEDED, None),
    }


def test_a_context_built_directly_knows_no_statuses() -> None:
    ctx = Context(step="x", results={"a": 1})
    assert ctx.status("a") is None
    assert ctx.error("a") is None


# --- pools are held per attempt, not while waiting to retry ------------------------------------
async def test_a_step_releases_its_pools_while_it_waits_to_retry() -> None:
    log: list[tuple[str, str, float]] = []
    tries = [0]

    async def flaky(ctx: Context) -> str:
        tries[0] += 1
        log.append(("start", "a", anyio.current_time()))
        await anyio.sleep(1)
        if tries[0] == 1:
            raise ConnectionError("once")
        return "a"

    manager = ResourceManager(2, pools={"db": 1})
    wf = Workflow("pools")
    wf.step("a", flaky, pools=["db"], retry=RetryPolicy(attempts=2, initial_delay=10))
    wf.step("b", sleeper(log, 5), pools=["db"])
    result = await run_workflow(wf, limit=manager)
    assert result.ok
    # b takes the pool while a waits to retry (1..11), and a's second attempt starts at 11.
    assert log == [("start", "a", 0), ("start", "b", 1), ("start", "a", 11)]
    assert result.steps["a"].attempts == 2
    assert result.steps["a"].started_at == 0
    assert result.steps["a"].finished_at == 12
    assert anyio.current_time() == 12
    assert manager.statistics().pools["db"].executing == 0


# --- virtual time far from 0 ------------------------------------------------------------------
@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    # A hang would never end: turn it into a failure.
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s of real time")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("backend", [0, 1])
@pytest.mark.parametrize("seconds", [10**9, 10**12])
def test_a_step_sleeping_far_into_virtual_time_ends(backend: int, seconds: int) -> None:
    async def long(ctx: Context) -> int:
        await anyio.sleep(seconds)
        return 1

    async def main() -> tuple[WorkflowResult, float]:
        result = await run_workflow(Workflow("w").step("a", long).step("b", long, after="a"))
        return result, anyio.current_time()

    name, options = virtual_time_backends()[backend]
    with watchdog(20):
        result, end = anyio.run(main, backend=name, backend_options=options)
    assert result.ok
    assert end == 2 * seconds
    assert result.steps["b"].started_at == seconds
