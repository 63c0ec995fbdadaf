"""Properties of workflow runs over random DAGs, in virtual time on both backends."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioflow import Context, MemoryStore, StepStatus, Workflow, WorkflowResult, run_workflow
from trioflow.testing import virtual_time_backends

BACKENDS = [0, 1]  # index into virtual_time_backends(): trio, asyncio


@st.composite
def dags(draw: st.DrawFn, max_steps: int = 12) -> tuple[list[list[int]], list[int], list[int]]:
    """Dependencies of each step (earlier indices), integer durations, a definition order."""
    n = draw(st.integers(1, max_steps))
    deps = [
        sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(n)
    ]
    durations = draw(st.lists(st.integers(0, 20), min_size=n, max_size=n))
    order = draw(st.permutations(range(n)))
    return deps, durations, list(order)


def run(
    backend: int,
    deps: list[list[int]],
    durations: list[int],
    order: list[int],
    *,
    failing: frozenset[int] = frozenset(),
    exclusive: frozenset[int] = frozenset(),
    **kwargs: Any,
) -> tuple[WorkflowResult, dict[int, tuple[float, float]], list[tuple[int, set[int]]], float]:
    spans: dict[int, tuple[float, float]] = {}
    starts: list[tuple[int, set[int]]] = []  # (step, steps running when it started)
    running: set[int] = set()

    def make(i: int) -> Any:
        async def fn(ctx: Context) -> int:
            start = anyio.current_time()
            starts.append((i, set(running)))
            running.add(i)
            await anyio.sleep(durations[i])
            running.discard(i)
            spans[i] = (start, anyio.current_time())
            if i in failing:
                raise ValueError(i)
            return i

        return fn

    wf = Workflow("random")
    for i in order:  # definition order differs from dependency order: forward references
        wf.step(f"s{i}", make(i), after=[f"s{d}" for d in deps[i]], exclusive=i in exclusive)

    async def main() -> tuple[WorkflowResult, float]:
        result = await run_workflow(wf, **kwargs)
        return result, anyio.current_time()

    name, options = virtual_time_backends()[backend]
    result, end = anyio.run(main, backend=name, backend_options=options)
    return result, spans, starts, end


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=50)
@given(dag=dags())
def test_random_dags_take_exactly_the_critical_path(
    backend: int, dag: tuple[list[list[int]], list[int], list[int]]
) -> None:
    deps, durations, order = dag
    result, spans, _, end = run(backend, deps, durations, order)
    finish: list[int] = []
    for i, before in enumerate(deps):
        finish.append(max((finish[d] for d in before), default=0) + durations[i])
    assert result.ok
    assert end == max(finish)
    for i, before in enumerate(deps):
        start, stop = spans[i]
        # Starts exactly when the last step it comes after finished: after it, and at once.
        assert start == max((spans[d][1] for d in before), default=0)
        assert stop == finish[i]


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30)
@given(
    dag=dags(),
    limit=st.integers(1, 4),
    exclusive=st.frozensets(st.integers(0, 11), max_size=3),
)
def test_limit_and_exclusive_hold_on_random_dags(
    backend: int,
    dag: tuple[list[list[int]], list[int], list[int]],
    limit: int,
    exclusive: frozenset[int],
) -> None:
    deps, durations, order = dag
    result, spans, starts, _ = run(
        backend, deps, durations, order, exclusive=exclusive, limit=limit
    )
    assert result.ok
    assert len(spans) == len(deps)
    for i, running in starts:
        assert len(running) < limit
        if i in exclusive:
            assert not running
        assert not (running & exclusive)
        for d in deps[i]:
            assert spans[d][1] <= spans[i][0]


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30)
@given(dag=dags(), data=st.data())
def test_without_fail_fast_exactly_the_steps_after_a_failure_do_not_run(
    backend: int, dag: tuple[list[list[int]], list[int], list[int]], data: st.DataObject
) -> None:
    deps, durations, order = dag
    failing = data.draw(st.frozensets(st.integers(0, len(deps) - 1), max_size=3))
    result, _, _, _ = run(backend, deps, durations, order, failing=failing, fail_fast=False)
    blocked: set[int] = set()
    for i, before in enumerate(deps):
        if any(d in failing or d in blocked for d in before):
            blocked.add(i)
    for i in range(len(deps)):
        status = result.steps[f"s{i}"].status
        if i in blocked:
            assert status is StepStatus.NOT_RUN
        elif i in failing:
            assert status is StepStatus.FAILED
        else:
            assert status is StepStatus.SUCCEEDED
    assert result.ok == (not failing)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30)
@given(dag=dags(), data=st.data())
def test_a_resumed_run_finishes_and_runs_each_step_to_success_once(
    backend: int, dag: tuple[list[list[int]], list[int], list[int]], data: st.DataObject
) -> None:
    deps, durations, order = dag
    n = len(deps)
    failing_once = set(data.draw(st.frozensets(st.integers(0, n - 1), max_size=3)))
    fail_fast = data.draw(st.booleans())
    successes = [0] * n
    store = MemoryStore()

    def make(i: int) -> Any:
        async def fn(ctx: Context) -> int:
            await anyio.sleep(durations[i])
            if i in failing_once:
                failing_once.discard(i)
                raise ConnectionError(i)
            successes[i] += 1
            return int(sum(ctx.results[f"s{d}"] for d in deps[i])) + i

        return fn

    wf = Workflow("resumable")
    for i in order:
        wf.step(f"s{i}", make(i), after=[f"s{d}" for d in deps[i]])

    async def main() -> list[WorkflowResult]:
        results = [await run_workflow(wf, store=store, run_id="r", fail_fast=fail_fast)]
        while not results[-1].ok and len(results) < 5:
            results.append(await run_workflow(wf, store=store, run_id="r", fail_fast=fail_fast))
        return results

    name, options = virtual_time_backends()[backend]
    results = anyio.run(main, backend=name, backend_options=options)
    final = results[-1]
    assert final.ok
    assert successes == [1] * n  # no step that succeeded ran again
    expected: list[int] = []
    for i, before in enumerate(deps):
        expected.append(sum(expected[d] for d in before) + i)
    assert [final.values[f"s{i}"] for i in range(n)] == expected
