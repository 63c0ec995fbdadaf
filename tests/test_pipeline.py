from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from _lifecycle_stages import SEVEN_STAGES
from trioflow import ResourceExhaustedError, ResourceManager, RetryPolicy
from trioflow.lifecycle import (
    REQUEST_TRANSITIONS,
    ErrorCategory,
    Pipeline,
    ProcessingResult,
    ProcessingStatus,
    Request,
    RequestState,
    Stage,
    StateChange,
    StateMachine,
    gather_partial,
)

pytestmark = pytest.mark.anyio

S = RequestState
StageFn = Callable[[Request], Awaitable[Any]]


def sleeper(seconds: float, value: Any = None) -> StageFn:
    async def fn(request: Request) -> Any:
        await anyio.sleep(seconds)
        return value

    return fn


def failer(exc: Exception, after: float = 0) -> StageFn:
    async def fn(request: Request) -> Any:
        await anyio.sleep(after)
        raise exc

    return fn


def seven(fns: dict[str, StageFn] | None = None, **options: Any) -> Pipeline:
    """The full request lifecycle: seven stages, one per non-terminal state."""
    fns = fns or {}
    return Pipeline(
        [Stage(name, state, fns.get(name, sleeper(1, name))) for name, state in SEVEN_STAGES],
        **options,
    )


async def test_runs_every_stage_in_its_state_and_completes() -> None:
    seen: list[tuple[str, RequestState]] = []

    def recording(name: str) -> StageFn:
        async def fn(request: Request) -> str:
            seen.append((name, request.state))
            await anyio.sleep(1)
            return f"{name}:{request.payload}"

        return fn

    names = ["receive", "validate", "plan", "context", "process", "tools", "format"]
    pipeline = seven({n: recording(n) for n in names})
    request = Request("q")
    result = await pipeline.run(request)
    assert result.status is ProcessingStatus.SUCCEEDED
    assert result.ok
    assert result.state is S.COMPLETED is request.state
    assert result.value == "format:q"
    assert request.results["plan"] == "plan:q"
    assert [state for _, state in seen] == [
        S.RECEIVED,
        S.VALIDATED,
        S.PLANNED,
        S.CONTEXT_GATHERING,
        S.PROCESSING,
        S.TOOL_EXECUTION,
        S.RESPONSE_FORMATTING,
    ]
    assert [c.to_state for c in result.history] == [
        S.VALIDATED,
        S.PLANNED,
        S.CONTEXT_GATHERING,
        S.PROCESSING,
        S.TOOL_EXECUTION,
        S.RESPONSE_FORMATTING,
        S.COMPLETED,
    ]
    assert result.history[-1].at == 7
    assert dict(result.stage_timings) == dict.fromkeys(names, 1.0)
    assert result.duration == 7
    assert result.error is None
    assert result.category is None
    stats = pipeline.statistics()
    assert (stats.runs, stats.completed, stats.failed) == (1, 1, 0)
    assert stats.stages["tools"].runs == 1
    assert stats.stages["tools"].mean_time == 1


async def test_first_failure_ends_failed_and_stops() -> None:
    ran: list[str] = []

    async def later(request: Request) -> None:
        ran.append("later")

    pipeline = seven({"plan": failer(ValueError("bad plan"), after=2), "context": later})
    request = Request()
    result = await pipeline.run(request)
    assert result.status is ProcessingStatus.FAILED
    assert not result.ok
    assert isinstance(result.error, ValueError)
    assert result.category is ErrorCategory.VALIDATION
    assert request.state is S.FAILED
    assert [c.to_state for c in result.history] == [S.VALIDATED, S.PLANNED, S.FAILED]
    assert ran == []
    assert result.stage_timings["plan"] == 2
    assert "context" not in result.stage_timings
    assert result.duration == 4
    assert pipeline.statistics().stages["plan"].failed == 1


async def test_stage_timeout_is_a_timeout_failure() -> None:
    pipeline = Pipeline(
        [
            Stage("validate", S.VALIDATED, sleeper(1)),
            Stage("plan", S.PLANNED, sleeper(10), timeout=3),
            Stage("context", S.CONTEXT_GATHERING, sleeper(1)),
            Stage("process", S.PROCESSING, sleeper(1)),
            Stage("format", S.RESPONSE_FORMATTING, sleeper(1)),
        ]
    )
    result = await pipeline.run(Request())
    assert result.status is ProcessingStatus.FAILED
    assert isinstance(result.error, TimeoutError)
    assert result.category is ErrorCategory.TIMEOUT
    assert result.stage_timings["plan"] == 3
    assert anyio.current_time() == 4


async def test_run_timeout_covers_the_whole_run() -> None:
    result = await seven().run(Request(), timeout=4.5)
    assert result.status is ProcessingStatus.FAILED
    assert result.category is ErrorCategory.TIMEOUT
    assert result.state is S.FAILED
    # receive, validate, plan and context take 1 s each: the deadline hits "process".
    assert result.history[-2].to_state is S.PROCESSING
    assert result.stage_timings["context"] == 1
    assert result.stage_timings["process"] == 0.5
    assert "tools" not in result.stage_timings
    assert anyio.current_time() == 4.5


async def test_optional_stage_failure_degrades() -> None:
    pipeline = seven(
        {
            "context": failer(ConnectionError("index down")),
        }
    )
    result = await pipeline.run(Request(), optional={"context"})
    assert result.status is ProcessingStatus.DEGRADED
    assert result.ok
    assert result.state is S.COMPLETED
    assert isinstance(result.degraded["context"], ConnectionError)
    assert result.value == "format"
    stats = pipeline.statistics()
    assert (stats.degraded, stats.completed) == (1, 0)
    # Optional stages may also be marked on the stage; a timeout degrades too.
    marked = Pipeline(
        [
            Stage("validate", S.VALIDATED, sleeper(1)),
            Stage("plan", S.PLANNED, sleeper(1)),
            Stage("context", S.CONTEXT_GATHERING, sleeper(9), timeout=0.5, optional=True),
            Stage("process", S.PROCESSING, sleeper(1, "answer")),
            Stage("format", S.RESPONSE_FORMATTING, sleeper(1, "formatted")),
        ]
    )
    request = Request()
    result = await marked.run(request)
    assert result.status is ProcessingStatus.DEGRADED
    assert isinstance(result.degraded["context"], TimeoutError)
    assert "context" not in request.results
    assert result.stage_timings["context"] == 0.5


async def test_cancellation_ends_cancelled_and_propagates() -> None:
    machine = StateMachine(REQUEST_TRANSITIONS, S.RECEIVED)
    entered: list[float] = []

    @machine.on_enter(S.CANCELLED)
    async def slow_cleanup(request: Request, f: RequestState, t: RequestState) -> None:
        await anyio.sleep(2)  # shielded: finishes although the scope is cancelled
        entered.append(anyio.current_time())

    pipeline = seven(machine=machine)
    request = Request()
    observed: list[StateChange[RequestState]] = []
    with anyio.move_on_after(2.5) as scope:
        await pipeline.run(request, on_transition=lambda r, c: observed.append(c))
    assert scope.cancelled_caught
    assert request.state is S.CANCELLED
    assert entered == [4.5]
    assert [c.to_state for c in request.history] == [S.VALIDATED, S.PLANNED, S.CANCELLED]
    assert observed == request.history
    assert pipeline.statistics().cancelled == 1


async def test_a_failing_hook_on_a_stage_transition_fails_the_request() -> None:
    machine = StateMachine(REQUEST_TRANSITIONS, S.RECEIVED)

    @machine.before
    async def guard(request: Request, f: RequestState, t: RequestState) -> None:
        if t is S.PLANNED:
            raise PermissionError("not allowed to plan")

    result = await seven(machine=machine).run(Request())
    assert result.status is ProcessingStatus.FAILED
    assert isinstance(result.error, PermissionError)
    assert [c.to_state for c in result.history] == [S.VALIDATED, S.FAILED]


async def test_a_failing_hook_on_the_final_transition_is_raised_after_forcing_it() -> None:
    machine = StateMachine(REQUEST_TRANSITIONS, S.RECEIVED)

    @machine.on_enter(S.FAILED)
    async def broken(request: Request, f: RequestState, t: RequestState) -> None:
        raise RuntimeError("hook bug")

    request = Request()
    with pytest.raises(RuntimeError, match="hook bug") as info:
        await seven({"plan": failer(ValueError("x"))}, machine=machine).run(request)
    assert request.state is S.FAILED
    assert isinstance(info.value.__context__, ValueError)


async def test_pools_and_retries() -> None:
    resources = ResourceManager(limit=10, pools={"llm": 1})
    attempts: list[float] = []

    async def flaky(request: Request) -> str:
        attempts.append(anyio.current_time())
        assert resources.statistics().pools["llm"].executing == 1
        await anyio.sleep(1)
        if len(attempts) < 3:
            raise ConnectionError("flaky")
        return "ok"

    pipeline = Pipeline(
        [
            Stage("validate", S.VALIDATED, sleeper(0)),
            Stage("plan", S.PLANNED, sleeper(0)),
            Stage("context", S.CONTEXT_GATHERING, sleeper(0)),
            Stage("process", S.PROCESSING, flaky, pools=["llm"], operation="llm"),
            Stage("format", S.RESPONSE_FORMATTING, sleeper(0)),
        ]
    )
    policy = RetryPolicy(attempts=3, initial_delay=2, multiplier=1, max_delay=2)
    result = await pipeline.run(Request(), resources=resources, retry={"llm": policy})
    assert result.status is ProcessingStatus.SUCCEEDED
    assert attempts == [0, 3, 6]
    assert resources.statistics().pools["llm"].executed == 3
    assert result.stage_timings["process"] == 7


async def test_pools_serialize_requests() -> None:
    resources = ResourceManager(limit=10, pools={"llm": 2})
    pipeline = Pipeline(
        [
            Stage("validate", S.VALIDATED, sleeper(0)),
            Stage("plan", S.PLANNED, sleeper(0)),
            Stage("context", S.CONTEXT_GATHERING, sleeper(0)),
            Stage("process", S.PROCESSING, sleeper(5), pools=("llm",)),
            Stage("format", S.RESPONSE_FORMATTING, sleeper(0)),
        ]
    )

    async def one() -> None:
        await pipeline.run(Request(), resources=resources)

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(one)
    assert anyio.current_time() == 15


async def test_run_arguments_are_checked_before_anything_runs() -> None:
    ran: list[int] = []

    async def mark(request: Request) -> None:
        ran.append(1)

    pipeline = Pipeline(
        [
            Stage("validate", S.VALIDATED, mark),
            Stage("plan", S.PLANNED, mark),
            Stage("context", S.CONTEXT_GATHERING, mark, pools=["context"], operation="storage"),
            Stage("process", S.PROCESSING, mark),
            Stage("format", S.RESPONSE_FORMATTING, mark),
        ]
    )
    with pytest.raises(ValueError, match="uses pools \\['context'\\] but no resources"):
        await pipeline.run(Request())
    with pytest.raises(ValueError, match="unknown pools \\['context'\\]"):
        await pipeline.run(Request(), resources=ResourceManager(pools={"llm": 1}))
    rm = ResourceManager(pools={"context": 1})
    with pytest.raises(ValueError, match="names retry policy 'storage'"):
        await pipeline.run(Request(), resources=rm, retry={})
    with pytest.raises(
        ValueError,
        match=r"timeout must be a number of seconds >= 0 or None \(no deadline\), got -1 \(int\)",
    ):
        await pipeline.run(Request(), resources=rm, timeout=-1)
    with pytest.raises(TypeError, match="request must be a Request"):
        await pipeline.run("hello")  # type: ignore[arg-type]
    done = Request(state=S.COMPLETED)
    with pytest.raises(ValueError, match="already in the terminal state"):
        await pipeline.run(done)
    assert ran == []


def test_pipeline_construction_is_checked() -> None:
    async def fn(request: Request) -> None:
        pass

    with pytest.raises(ValueError, match="at least one Stage"):
        Pipeline([])
    with pytest.raises(TypeError, match="only Stage values"):
        Pipeline([fn])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"unique, got duplicates \['a'\]"):
        Pipeline([Stage("a", S.VALIDATED, fn), Stage("a", S.PLANNED, fn)])
    with pytest.raises(ValueError, match=r"stage 'p' enters <RequestState\.PROCESSING"):
        Pipeline([Stage("p", S.PROCESSING, fn)])
    with pytest.raises(ValueError, match=r"must be able to move to <RequestState\.COMPLETED"):
        Pipeline([Stage("v", S.VALIDATED, fn)])
    with pytest.raises(
        ValueError,
        match=r"timeout must be a number of seconds >= 0 or None \(no deadline\), got nan",
    ):
        Stage("v", S.VALIDATED, fn, timeout=math.nan)
    with pytest.raises(
        TypeError, match=r"stage 'v': pools must be a sequence of pool names, got 'llm' \(str\)"
    ):
        Stage("v", S.VALIDATED, fn, pools="llm")
    with pytest.raises(TypeError, match="retry must be a RetryPolicy"):
        Stage("v", S.VALIDATED, fn, retry=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="state must be a RequestState"):
        Stage("v", "validated", fn)  # type: ignore[arg-type]
    # A machine of your own may allow a shorter path.
    short = {**REQUEST_TRANSITIONS, S.VALIDATED: frozenset({S.COMPLETED, S.FAILED, S.CANCELLED})}
    Pipeline([Stage("v", S.VALIDATED, fn)], machine=StateMachine(short, S.RECEIVED))


async def test_stages_sharing_a_state_do_not_transition() -> None:
    async def step(request: Request) -> int:
        return len(request.results)

    pipeline = Pipeline(
        [
            Stage("validate", S.VALIDATED, step),
            Stage("plan", S.PLANNED, step),
            Stage("context", S.CONTEXT_GATHERING, step),
            Stage("draft", S.PROCESSING, step),
            Stage("refine", S.PROCESSING, step),
            Stage("format", S.RESPONSE_FORMATTING, step),
        ]
    )
    result = await pipeline.run(Request())
    assert result.value == 5
    assert len(result.history) == 6


# --- gather_partial ------------------------------------------------------------------------------
async def test_gather_partial_returns_what_arrived_within_the_budget() -> None:
    cancelled: list[str] = []

    def source(delay: float, value: Any) -> Callable[[], Awaitable[Any]]:
        async def fn() -> Any:
            try:
                await anyio.sleep(delay)
            except anyio.get_cancelled_exc_class():
                cancelled.append(str(value))
                raise
            return value

        return fn

    async def broken() -> Any:
        await anyio.sleep(0.1)
        raise ConnectionError("down")

    gathered = await gather_partial(
        {"fast": source(0.1, 1), "slow": source(5, 2), "broken": broken, "ok": source(0.4, 3)},
        budget=0.5,
    )
    assert anyio.current_time() == 0.5
    assert dict(gathered.values) == {"fast": 1, "ok": 3}
    assert list(gathered.values) == ["fast", "ok"]
    assert isinstance(gathered.errors["broken"], ConnectionError)
    assert gathered.missing == ("slow",)
    assert not gathered.complete
    assert cancelled == ["2"]


async def test_gather_partial_without_a_budget_waits_for_all() -> None:
    async def one() -> int:
        await anyio.sleep(3)
        return 1

    gathered = await gather_partial({"a": one, "b": one}, budget=None)
    assert gathered.complete
    assert dict(gathered.values) == {"a": 1, "b": 1}
    assert anyio.current_time() == 3


async def test_gather_partial_propagates_outside_cancellation() -> None:
    async def slow() -> int:
        await anyio.sleep(10)
        return 1

    with anyio.move_on_after(1) as scope:
        await gather_partial({"a": slow}, budget=5)
        pytest.fail("not reached")
    assert scope.cancelled_caught
    assert anyio.current_time() == 1


async def test_gather_partial_in_a_stage() -> None:
    async def docs() -> str:
        await anyio.sleep(0.2)
        return "docs"

    async def history() -> str:
        await anyio.sleep(3)
        return "history"

    async def context(request: Request) -> dict[str, str]:
        gathered = await gather_partial({"docs": docs, "history": history}, budget=0.5)
        return dict(gathered.values)

    result = await seven({"context": context}).run(Request())
    assert result.status is ProcessingStatus.SUCCEEDED
    assert result.stage_timings["context"] == 0.5


async def test_gather_partial_validates() -> None:
    with pytest.raises(TypeError, match="sources must be a mapping"):
        await gather_partial([], budget=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"sources\['a'\] must be an async callable"):
        await gather_partial({"a": 1}, budget=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="budget must be a number of seconds >= 0 or None"):
        await gather_partial({}, budget=-1)


def test_error_categories() -> None:
    of = ErrorCategory.of
    assert of(TimeoutError()) is ErrorCategory.TIMEOUT
    assert of(ResourceExhaustedError("x")) is ErrorCategory.RESOURCE_EXHAUSTION
    assert of(ConnectionError()) is ErrorCategory.DEPENDENCY
    assert of(ValueError()) is ErrorCategory.VALIDATION
    assert of(KeyError()) is ErrorCategory.INTERNAL
    assert of(ExceptionGroup("g", [TimeoutError(), ValueError()])) is ErrorCategory.TIMEOUT

    class Declared(Exception):
        error_category = ErrorCategory.DEPENDENCY

    assert of(Declared()) is ErrorCategory.DEPENDENCY


async def test_cancel_a_run_returns_a_cancelled_result() -> None:
    pipeline = seven()
    request = Request()
    results: list[Any] = []

    async def run() -> None:
        results.append(await pipeline.run(request))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await anyio.sleep(2.5)
        assert pipeline.cancel(request)
        with pytest.raises(ValueError, match="already being run"):
            await pipeline.run(request)
    (result,) = results
    assert result.status is ProcessingStatus.CANCELLED
    assert result.state is S.CANCELLED is request.state
    assert result.error is None
    assert [c.to_state for c in result.history] == [S.VALIDATED, S.PLANNED, S.CANCELLED]
    assert result.history[-1].at == 2.5
    assert not pipeline.cancel(request)  # no longer running
    assert pipeline.statistics().cancelled == 1


async def test_retry_policies_and_resolvers() -> None:
    from trioflow import RetryPolicies

    calls: list[tuple[str, int]] = []

    async def down(request: Request) -> None:
        calls.append((request.id, request.priority))
        raise ConnectionError("down")

    pipeline = seven({"process": down})
    pipeline = Pipeline(
        [
            Stage(s.name, s.state, s.fn, operation="llm" if s.name == "process" else None)
            for s in pipeline.stages
        ]
    )
    policies = RetryPolicies({"llm": RetryPolicy(attempts=2, initial_delay=0, max_delay=0)})
    normal, high = Request(), Request(priority=2)
    assert (await pipeline.run(normal, retry=policies)).category is ErrorCategory.DEPENDENCY
    await pipeline.run(high, retry=policies)
    assert sum(1 for rid, _ in calls if rid == normal.id) == 2
    assert sum(1 for rid, _ in calls if rid == high.id) == 4  # priority 2 adds two attempts
    resolved: list[str] = []

    def resolver(name: str, request: Request) -> RetryPolicy:
        resolved.append(name)
        return RetryPolicy(attempts=1)

    await pipeline.run(Request(), retry=resolver)
    assert resolved == ["llm"]
    with pytest.raises(ValueError, match="cannot resolve"):
        await pipeline.run(Request(), retry=RetryPolicies({"other": RetryPolicy()}))


async def test_cancel_is_honoured_even_if_no_checkpoint_notices_it() -> None:
    pipeline: Pipeline

    async def cancel_myself(request: Request) -> str:
        assert pipeline.cancel(request)
        return "done anyway"  # no await: the cancelled scope never raises

    async def instant(request: Request) -> None:
        pass

    pipeline = Pipeline(
        [
            Stage("validate", S.VALIDATED, instant),
            Stage("plan", S.PLANNED, instant),
            Stage("context", S.CONTEXT_GATHERING, instant),
            Stage("process", S.PROCESSING, instant),
            Stage("format", S.RESPONSE_FORMATTING, cancel_myself),
        ]
    )
    request = Request()
    result = await pipeline.run(request)
    assert result.status is ProcessingStatus.CANCELLED
    assert request.state is S.CANCELLED
    stats = pipeline.statistics()
    assert (stats.cancelled, stats.completed) == (1, 0)


async def test_a_failing_hook_on_the_cancelled_transition_is_raised_as_it_is() -> None:
    machine = StateMachine(REQUEST_TRANSITIONS, S.RECEIVED)

    @machine.on_enter(S.CANCELLED)
    async def broken(request: Request, f: RequestState, t: RequestState) -> None:
        raise RuntimeError("hook bug")

    pipeline = seven(machine=machine)
    request = Request()
    raised: list[BaseException] = []

    async def run() -> None:
        try:
            await pipeline.run(request)
        except RuntimeError as exc:
            raised.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await anyio.sleep(1.5)
        pipeline.cancel(request)
    assert [str(e) for e in raised] == ["hook bug"]
    assert request.state is S.CANCELLED  # forced without hooks, once
    assert [c.to_state for c in request.history] == [S.VALIDATED, S.CANCELLED]
    stats = pipeline.statistics()
    assert (stats.cancelled, stats.failed) == (1, 0)


# --- stage options: one WorkOptions value, one meaning per word --------------------------------
def test_a_stage_holds_its_options_as_one_work_options_value() -> None:
    from trioflow import WorkOptions

    async def fn(request: Request) -> None:
        pass

    policy = RetryPolicy(attempts=2)
    stage = Stage("s", S.VALIDATED, fn, timeout=2, pools=["llm"], retry=policy, optional=True)
    assert stage.options == WorkOptions(timeout=2, retry=policy, pools=("llm",), optional=True)
    assert (stage.timeout, stage.retry, stage.pools, stage.optional) == (2, policy, ("llm",), True)
    assert stage.operation is None
    assert Stage("s", S.VALIDATED, fn, timeout=math.inf).timeout is None  # no deadline
    given = WorkOptions(timeout=1)
    assert Stage("s", S.VALIDATED, fn, options=given).options is given
    with pytest.raises(TypeError, match="give options= or timeout/retry/pools/optional"):
        Stage("s", S.VALIDATED, fn, options=given, timeout=2)
    with pytest.raises(TypeError, match="options must be a WorkOptions"):
        Stage("s", S.VALIDATED, fn, options={"timeout": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="operation must be a non-empty str"):
        Stage("s", S.VALIDATED, fn, operation="")


def test_a_retry_name_is_the_deprecated_spelling_of_operation() -> None:
    async def fn(request: Request) -> None:
        pass

    with pytest.warns(DeprecationWarning, match="use Stage\\(operation='llm'\\) instead") as w:
        stage = Stage("s", S.VALIDATED, fn, retry="llm")  # type: ignore[arg-type]
    assert w[0].filename == __file__
    assert stage == Stage("s", S.VALIDATED, fn, operation="llm")
    assert stage.retry is None
    with pytest.raises(TypeError, match="give operation='tool' or the deprecated retry='llm'"):
        Stage("s", S.VALIDATED, fn, retry="llm", operation="tool")  # type: ignore[arg-type]


def five(process: Stage) -> Pipeline:
    return Pipeline(
        [
            Stage("validate", S.VALIDATED, sleeper(0)),
            Stage("plan", S.PLANNED, sleeper(0)),
            Stage("context", S.CONTEXT_GATHERING, sleeper(0)),
            process,
            Stage("format", S.RESPONSE_FORMATTING, sleeper(0)),
        ]
    )


async def test_a_stage_timeout_bounds_each_attempt_and_each_retry_gets_a_fresh_one() -> None:
    attempts: list[float] = []

    async def slow_twice(request: Request) -> str:
        attempts.append(anyio.current_time())
        await anyio.sleep(10 if len(attempts) < 3 else 2)
        return "ok"

    policy = RetryPolicy(attempts=3, initial_delay=1, multiplier=1, max_delay=1)
    stage = Stage("process", S.PROCESSING, slow_twice, timeout=3, retry=policy)
    result = await five(stage).run(Request())
    assert result.status is ProcessingStatus.SUCCEEDED
    # 3 s timed out, 1 s wait, 3 s timed out, 1 s wait, 2 s: 10 s, more than one timeout.
    assert attempts == [0, 4, 8]
    assert result.stage_timings["process"] == 10
    # Without a retry the first timeout fails the stage, as before.
    once = await five(Stage("process", S.PROCESSING, sleeper(10), timeout=3)).run(Request())
    assert isinstance(once.error, TimeoutError)
    assert "stage 'process' took longer than its timeout (3 s)" in str(once.error)


async def test_waiting_for_a_pool_is_not_counted_in_the_stage_timeout() -> None:
    resources = ResourceManager(limit=10, pools={"llm": 1})
    stage = Stage("process", S.PROCESSING, sleeper(2), timeout=3, pools=["llm"])
    pipeline = five(stage)
    results: list[ProcessingResult] = []

    async def one() -> None:
        results.append(await pipeline.run(Request(), resources=resources))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
    # Each waits up to 4 s for the pool, longer than its timeout, and then takes 2 s.
    assert [r.status for r in results] == [ProcessingStatus.SUCCEEDED] * 3
    assert sorted(r.stage_timings["process"] for r in results) == [2, 4, 6]


async def test_a_stage_retry_policy_of_its_own_wins_over_its_operation() -> None:
    calls: list[int] = []

    async def down(request: Request) -> None:
        calls.append(1)
        raise ConnectionError("down")

    own = RetryPolicy(attempts=2, initial_delay=0, max_delay=0)
    pipeline = five(Stage("process", S.PROCESSING, down, retry=own, operation="llm"))
    run_policies = {"llm": RetryPolicy(attempts=5, initial_delay=0, max_delay=0)}
    await pipeline.run(Request(), retry=run_policies)
    assert len(calls) == 2
    await pipeline.run(Request())  # its own policy needs none from the run
    assert len(calls) == 4


async def test_a_run_may_be_moved_by_another_machine_whose_hooks_then_see_it() -> None:
    other = StateMachine(REQUEST_TRANSITIONS, S.RECEIVED)
    seen: list[RequestState] = []

    @other.after
    async def record(request: Request, f: RequestState, t: RequestState) -> None:
        seen.append(t)

    pipeline = seven()
    result = await pipeline.run(Request(), machine=other)
    assert result.status is ProcessingStatus.SUCCEEDED
    assert seen == [c.to_state for c in result.history]
    assert pipeline.machine.statistics().transitions == 0
    assert other.statistics().transitions == 7
    short = StateMachine({S.RECEIVED: {S.FAILED, S.CANCELLED}}, S.RECEIVED)
    with pytest.raises(ValueError, match="must allow"):
        await pipeline.run(Request(), machine=short)
    with pytest.raises(TypeError, match="machine must be a StateMachine"):
        await pipeline.run(Request(), machine="m")  # type: ignore[arg-type]


# --- async callables only ------------------------------------------------------------------


def test_a_stage_refuses_a_plain_function_and_takes_an_async_generator() -> None:
    calls: list[Request] = []

    def sync(request: Request) -> int:
        calls.append(request)
        return 1

    async def streaming(request: Request) -> Any:
        yield 1

    with pytest.raises(TypeError, match=r"^fn must be an async callable taking the request, "):
        Stage("s", RequestState.VALIDATED, sync)  # type: ignore[arg-type]
    assert Stage("s", RequestState.VALIDATED, streaming).streaming  # tests/test_streaming.py
    assert calls == []


@pytest.mark.parametrize("optional", [False, True])
async def test_a_stage_whose_result_cannot_be_awaited_fails_once_never_excused(
    optional: bool,
) -> None:
    calls: list[str] = []

    def record(request: Request) -> int:
        calls.append(request.id)
        return 5

    async def fine(request: Request) -> None:
        pass

    (_, state), *rest = SEVEN_STAGES
    stage = Stage(
        "v",
        state,
        lambda request: record(request),  # type: ignore[arg-type]
        retry=RetryPolicy(attempts=3, initial_delay=1),
        optional=optional,
    )
    result = await Pipeline([stage, *(Stage(n, s, fine) for n, s in rest)]).run(Request("q"))
    assert result.status is ProcessingStatus.FAILED
    assert isinstance(result.error, TypeError)
    assert str(result.error) == "stage 'v' must return an awaitable, got 5 (int)"
    assert len(calls) == 1  # never retried
