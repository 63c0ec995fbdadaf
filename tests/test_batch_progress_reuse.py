"""A batch's progress reports stay what they were, however the callback keeps them.

A bounded batch fills in its worker's last report again when nobody else can reach it; these
tests keep reports in every way a callback can (a list, a weak reference only, a closure,
another thread, nothing) and check that each one kept still says what it said when it was
given, and that the reports, read as they come, count exactly as new ones would.
"""

from __future__ import annotations

import queue
import threading
import weakref
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _helpers import run_in_virtual_time
from trioflow import Progress, run_batch

BACKENDS = [0, 1]  # index into virtual_time_backends(): trio, asyncio
KEEP = ("drop", "keep", "weak", "last", "read and drop")


def fields(progress: Progress) -> dict[str, Any]:
    return attrs.asdict(progress)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[int], set[int], int, list[str]]:
    """Durations of the operations, the failing ones, the limit, how each report is kept."""
    n = draw(st.integers(1, 12))
    durations = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    failing = draw(st.sets(st.integers(0, n - 1), max_size=n))
    limit = draw(st.integers(1, 5))
    keep = draw(st.lists(st.sampled_from(KEEP), min_size=n, max_size=n))
    return durations, failing, limit, keep


def run_keeping(
    backend: int, durations: list[int], failing: set[int], limit: int, keep: list[str]
) -> tuple[list[tuple[Progress, dict[str, Any]]], list[dict[str, Any]]]:
    def make(i: int) -> Any:
        async def op() -> int:
            await anyio.sleep(durations[i])
            if i in failing:
                raise ValueError(i)
            return i

        return op

    kept: list[tuple[Progress, dict[str, Any]]] = []
    weak: list[tuple[weakref.ref[Progress], dict[str, Any]]] = []
    every: list[dict[str, Any]] = []
    last: list[tuple[Progress, dict[str, Any]]] = []  # a closure's one report, replaced

    def check_kept() -> None:
        for ref, was in weak:
            progress = ref()
            if progress is not None:
                assert fields(progress) == was
        for progress, was in kept + last:
            assert fields(progress) == was

    def on_progress(progress: Progress) -> None:
        check_kept()
        how = keep[len(every) % len(keep)]
        now = fields(progress)
        every.append(now)
        if how == "keep":
            kept.append((progress, now))
        elif how == "weak":
            weak.append((weakref.ref(progress), now))
        elif how == "last":
            last[:] = [(progress, now)]

    async def main() -> None:
        await run_batch(
            [make(i) for i in range(len(durations))], limit=limit, on_progress=on_progress
        )
        check_kept()

    run_in_virtual_time(main, backend)
    return kept, every


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(batch=batches())
def test_a_kept_report_keeps_every_field(
    backend: int, batch: tuple[list[int], set[int], int, list[str]]
) -> None:
    durations, failing, limit, keep = batch
    kept, every = run_keeping(backend, durations, failing, limit, keep)
    for progress, was in kept:
        assert fields(progress) == was
    n = len(durations)
    # One report per operation, in order, each counting what a new report would.
    assert [report["completed"] for report in every] == list(range(1, n + 1))
    failed = [report["failed"] for report in every]
    assert failed == sorted(failed)
    assert failed[-1] == len(failing)
    for report in every:
        assert report["cancelled"] == 0
        assert 0 <= report["running"] <= min(limit, n) - 1
        assert report["total"] in (None, n)
        assert report["completed"] + report["running"] <= n
    assert every[-1]["total"] == n
    assert every[-1]["running"] == 0


@pytest.mark.anyio
@pytest.mark.real_time
async def test_reports_given_to_another_thread_stay_the_same() -> None:
    handed: queue.Queue[tuple[Progress, dict[str, Any]] | None] = queue.Queue()
    checked: list[int] = []

    def reader() -> None:
        seen: list[tuple[Progress, dict[str, Any]]] = []
        while (item := handed.get()) is not None:
            seen.append(item)
            for progress, was in seen:
                assert fields(progress) == was
        checked.append(len({id(progress) for progress, _ in seen}))

    async def op() -> None:
        await anyio.lowlevel.checkpoint()

    def on_progress(progress: Progress) -> None:
        handed.put((progress, fields(progress)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        result = await run_batch([op] * 300, limit=8, on_progress=on_progress)
    finally:
        handed.put(None)
        thread.join()
    assert result.succeeded == 300
    assert checked == [300]  # every report handed over was a report of its own


@pytest.mark.anyio
async def test_a_report_nobody_keeps_is_filled_in_again() -> None:
    # The point of the reuse: a callback that keeps nothing sees one report per worker. (A new
    # report is made while the last one is still held, so new ones would take two addresses.)
    seen: set[int] = set()

    def on_progress(progress: Progress) -> None:
        seen.add(id(progress))

    async def op() -> None:
        await anyio.lowlevel.checkpoint()

    await run_batch([op] * 200, limit=1, on_progress=on_progress)
    assert len(seen) == 1
