"""Bad workflows and bad arguments are refused with clear errors before anything runs."""

from __future__ import annotations

import math
import re
from typing import Any

import anyio
import pytest

from trioflow import (
    Context,
    MemoryStore,
    ResourceManager,
    RetryPolicy,
    Workflow,
    WorkflowDefinitionError,
    WorkOptions,
    run_workflow,
)

pytestmark = pytest.mark.anyio

ran: list[str] = []


async def step(ctx: Context) -> None:
    ran.append(str(ctx.step))


def sync_step(ctx: Context) -> None:
    pass


async def run_invalid(wf: Workflow, **kwargs: Any) -> MemoryStore:
    """Run a workflow that must be refused; check nothing ran and nothing was stored."""
    ran.clear()
    store = MemoryStore()
    try:
        await run_workflow(wf, store=store, run_id="r", **kwargs)
    finally:
        assert ran == []
        assert await store.list_runs() == ()
    return store


def test_duplicate_step_names() -> None:
    wf = Workflow("dup").step("a", step)
    with pytest.raises(WorkflowDefinitionError, match="duplicate step name 'a' in workflow 'dup'"):
        wf.step("a", step)
    with pytest.raises(WorkflowDefinitionError, match="duplicate step name 'a'"):
        wf.step("a")(step)


async def test_unknown_dependency() -> None:
    wf = Workflow("unknown").step("a", step).step("b", step, after=["a", "nope"])
    with pytest.raises(
        WorkflowDefinitionError,
        match=r"step 'b' comes after unknown step 'nope' in workflow 'unknown'; "
        r"known steps: 'a', 'b'",
    ):
        await run_invalid(wf)
    with pytest.raises(ValueError, match="unknown step"):  # it is a ValueError too
        wf.validate()


async def test_cycle_names_its_steps_in_order() -> None:
    wf = Workflow("loop")
    wf.step("start", step)
    wf.step("a", step, after=["start", "c"])
    wf.step("b", step, after="a")
    wf.step("c", step, after="b")
    wf.step("end", step, after="c")
    with pytest.raises(
        WorkflowDefinitionError, match=r"workflow 'loop' has a cycle: 'a' -> 'b' -> 'c' -> 'a'$"
    ):
        await run_invalid(wf)


def test_a_step_after_itself_is_a_cycle() -> None:
    wf = Workflow("self").step("a", step, after="a")
    with pytest.raises(WorkflowDefinitionError, match=r"cycle: 'a' -> 'a'$"):
        wf.validate()


def test_non_async_step_functions_are_refused() -> None:
    wf = Workflow("sync")
    with pytest.raises(TypeError, match="step 'a' must be an async function"):
        wf.step("a", sync_step)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="step 'b' must be an async function"):
        wf.step("b", lambda ctx: None)  # type: ignore[arg-type,return-value]

    class SyncCall:
        def __call__(self, ctx: Context) -> None:
            pass

    with pytest.raises(TypeError, match="step 'c' must be an async function"):
        wf.step("c", SyncCall())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="step 'd' must be an async function"):
        wf.step("d")(sync_step)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="compensate of step 'e' must be an async function"):
        wf.step("e", step, compensate=sync_step)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="when of step 'f' must be callable"):
        wf.step("f", step, when=True)  # type: ignore[call-overload]
    assert list(wf.steps) == []


@pytest.mark.parametrize(
    ("timeout", "error", "message"),
    [
        (
            -1,
            ValueError,
            "step 'a': timeout must be a number of seconds >= 0 or None (no deadline), "
            "got -1 (int)",
        ),
        (math.nan, ValueError, "got nan"),
        (-math.inf, ValueError, "got -inf"),
        ("5", TypeError, "got '5'"),
        (True, TypeError, "got True"),
    ],
)
def test_bad_timeouts(timeout: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        Workflow("t").step("a", step, timeout=timeout)


def test_good_timeouts() -> None:
    wf = Workflow("t").step("a", step, timeout=0).step("b", step, timeout=2.5)
    assert wf.step("c", step, timeout=None).steps["b"].timeout == 2.5


async def test_an_infinite_timeout_means_no_deadline() -> None:
    async def slow(ctx: Context) -> int:
        await anyio.sleep(86_400)
        return 1

    wf = Workflow("t").step("a", slow, timeout=math.inf)
    assert wf.steps["a"].timeout is None
    assert wf.steps["a"].options == WorkOptions()
    result = await run_workflow(wf)
    assert result.ok
    assert result.steps["a"].duration == 86_400


def test_step_options_are_one_work_options_value() -> None:
    policy = RetryPolicy(attempts=2)
    wf = Workflow("o").step("a", step, timeout=5, retry=policy, pools=["db"], optional=True)
    a = wf.steps["a"]
    assert a.options == WorkOptions(timeout=5, retry=policy, pools=("db",), optional=True)
    assert (a.timeout, a.retry, a.pools, a.optional) == (5, policy, ("db",), True)
    assert wf.step("b", step).steps["b"].options == WorkOptions()


def test_continue_on_error_is_a_deprecated_name_of_optional() -> None:
    wf = Workflow("o")
    with pytest.warns(DeprecationWarning, match=r"Workflow.step\(optional=...\)"):
        wf.step("a", step, continue_on_error=True)
    with pytest.warns(DeprecationWarning, match="continue_on_error"):
        wf.step("b", continue_on_error=True)(step)
    assert wf.steps["a"].optional
    assert wf.steps["b"].optional
    with pytest.warns(DeprecationWarning, match="use Step.optional instead"):
        assert wf.steps["a"].continue_on_error
    with (
        pytest.warns(DeprecationWarning, match="continue_on_error"),
        pytest.raises(TypeError, match="give optional or its deprecated name"),
    ):
        wf.step("c", step, optional=True, continue_on_error=True)


async def test_step_result_continue_on_error_is_a_deprecated_name_of_optional() -> None:
    async def fail(ctx: Context) -> None:
        raise ValueError("no")

    result = await run_workflow(Workflow("o").step("a", fail, optional=True))
    assert result.ok
    assert result.steps["a"].optional
    with pytest.warns(DeprecationWarning, match="use StepResult.optional instead"):
        assert result.steps["a"].continue_on_error


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"after": 3}, TypeError, "after of step 'a' must be a step name or a sequence"),
        ({"after": ["b", ""]}, TypeError, "each name in after of step 'a' must be a non-empty"),
        (
            {"pools": "db"},
            TypeError,
            r"step 'a': pools must be a sequence of pool names, got 'db' \(str\)",
        ),
        ({"pools": ["db", "db"]}, ValueError, "step 'a': pools must not name a pool twice"),
        ({"pools": [1]}, TypeError, r"step 'a': pools must hold non-empty pool names \(str\)"),
        ({"retry": 3}, TypeError, "step 'a': retry must be a RetryPolicy or None, got 3"),
        ({"exclusive": 1}, TypeError, "exclusive of step 'a' must be a bool, got 1"),
        ({"optional": "yes"}, TypeError, "step 'a': optional must be a bool, got 'yes'"),
    ],
)
def test_bad_step_options(options: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Workflow("o").step("a", step, **options)


def test_bad_names() -> None:
    with pytest.raises(TypeError, match="workflow name must be a non-empty string, got ''"):
        Workflow("")
    with pytest.raises(TypeError, match="step name must be a non-empty string, got 3"):
        Workflow("w").step(3, step)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="step name must be a non-empty string"):
        Workflow("w").step("")


@pytest.mark.parametrize(
    ("limit", "error", "message"),
    [
        (0, ValueError, "limit must be an int >= 1, got 0"),
        (-3, ValueError, "limit must be an int >= 1, got -3"),
        (
            True,
            TypeError,
            "limit must be an int >= 1, a ResourceManager, a Capacity or None, got True",
        ),
        (2.5, TypeError, "got 2.5"),
    ],
)
async def test_bad_limits(limit: Any, error: type[Exception], message: str) -> None:
    wf = Workflow("w").step("a", step)
    with pytest.raises(error, match=message):
        await run_invalid(wf, limit=limit)


async def test_pools_need_a_resource_manager_with_those_pools() -> None:
    wf = Workflow("w").step("a", step).step("b", step, pools=["db", "gpu"])
    with pytest.raises(
        WorkflowDefinitionError, match=r"step 'b' takes tokens of pools \['db', 'gpu'\], but limit"
    ):
        await run_invalid(wf, limit=4)
    with pytest.raises(
        WorkflowDefinitionError,
        match="step 'b' takes tokens of unknown pool 'gpu'; the ResourceManager has pools: 'db'",
    ):
        await run_invalid(wf, limit=ResourceManager(4, pools={"db": 1}))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fail_fast": "yes"}, "fail_fast must be a bool"),
        ({"context": [1]}, "context must be a mapping"),
        ({"run_id": ""}, "run_id must be a non-empty string"),
        ({"on_progress": 3}, "on_progress must be callable"),
    ],
)
async def test_bad_run_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        await run_workflow(Workflow("w").step("a", step), **kwargs)


async def test_bad_workflow_and_store_arguments() -> None:
    with pytest.raises(TypeError, match="workflow must be a Workflow"):
        await run_workflow("w")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="store must implement WorkflowStore"):
        await run_workflow(Workflow("w"), store=object())  # type: ignore[arg-type]


def test_retry_policy_and_async_callable_objects_are_accepted() -> None:
    class Call:
        async def __call__(self, ctx: Context) -> None:
            pass

    wf = Workflow("ok").step("a", Call(), retry=RetryPolicy(attempts=2), compensate=Call())
    assert wf.steps["a"].retry == RetryPolicy(attempts=2)
