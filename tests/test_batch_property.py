"""run_batch against a model: random durations, failures, timeouts and limits, on both backends."""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _helpers import Boom
from trioflow import BatchResult, OutcomeStatus, Progress, ResourceManager, run_batch
from trioflow.testing import virtual_time_backends


def makespan(durations: list[float], limit: int | None) -> float:
    """The schedule of a fixed pool of workers taking operations in input order."""
    if not durations:
        return 0
    if limit is None:
        return max(durations)
    free = [0.0] * min(limit, len(durations))
    end = 0.0
    for duration in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + duration)
        end = max(end, start + duration)
    return end


@st.composite
def batches(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 12))
    return {
        "durations": draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)),
        "failing": draw(st.sets(st.integers(0, max(n - 1, 0)))),
        "limit": draw(st.one_of(st.none(), st.integers(1, 5))),
        "shared": draw(st.booleans()),  # the limit as a ResourceManager
        # Half-seconds never tie with the integer durations.
        "timeout": draw(st.one_of(st.none(), st.integers(0, 5).map(lambda k: k + 0.5))),
        "progress": draw(st.booleans()),
    }


@pytest.mark.parametrize("backend", range(2), ids=["trio", "asyncio"])
@settings(max_examples=40)
@given(case=batches())
def test_run_batch_matches_the_model(backend: int, case: dict[str, Any]) -> None:
    durations: list[int] = case["durations"]
    failing: set[int] = case["failing"]
    timeout: float | None = case["timeout"]
    limit: int | None = case["limit"]
    running = peak = 0
    reports: list[Progress] = []

    def make(index: int, seconds: int) -> Callable[[], Awaitable[int]]:
        async def operation() -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                await anyio.sleep(seconds)
            finally:
                running -= 1
            if index in failing:
                raise Boom(index)
            return index * 10

        return operation

    results: list[tuple[BatchResult[int], float]] = []

    async def main() -> None:
        effective_limit: Any = limit
        if limit is not None and case["shared"]:
            effective_limit = ResourceManager(limit=limit)
        result = await run_batch(
            [make(i, d) for i, d in enumerate(durations)],
            limit=effective_limit,
            timeout=timeout,
            on_progress=reports.append if case["progress"] else None,
        )
        results.append((result, anyio.current_time()))

    name, options = virtual_time_backends()[backend]
    anyio.run(main, backend=name, backend_options=options)
    ((result, elapsed),) = results

    effective = [d if timeout is None else min(d, timeout) for d in durations]
    timed_out = [timeout is not None and d > timeout for d in durations]
    expected_status = [
        OutcomeStatus.FAILED if timed_out[i] or i in failing else OutcomeStatus.SUCCEEDED
        for i in range(len(durations))
    ]
    assert [o.status for o in result.outcomes] == expected_status
    assert [o.index for o in result.outcomes] == list(range(len(durations)))
    assert [o.duration for o in result.outcomes] == effective
    assert result.values == tuple(
        i * 10 for i, s in enumerate(expected_status) if s is OutcomeStatus.SUCCEEDED
    )
    for outcome in result.outcomes:
        if timed_out[outcome.index]:
            assert type(outcome.error) is TimeoutError
        elif outcome.index in failing:
            assert isinstance(outcome.error, Boom)
    assert result.failed == expected_status.count(OutcomeStatus.FAILED)
    assert result.cancelled == 0
    assert peak <= (limit or len(durations))
    assert elapsed == result.duration == makespan(effective, limit)
    if case["progress"]:
        assert [p.completed for p in reports] == list(range(1, len(durations) + 1))
        assert (
            reports[-1:]
            == [
                Progress(
                    total=len(durations), completed=len(durations), failed=result.failed, running=0
                )
            ][: len(reports)]
        )
