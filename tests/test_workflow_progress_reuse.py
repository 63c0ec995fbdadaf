"""A workflow's progress reports stay what they were, however the callback keeps them.

The run reuses its last report when nobody else can reach it; these tests keep reports in
every way a callback can (a list, a weak reference only, another thread, nothing) and check
that each one kept still says what it said when it was given, fields and all.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioflow import Context, Workflow, WorkflowProgress, run_workflow
from trioflow._workflow._run import Run
from trioflow.testing import virtual_time_backends

BACKENDS = [0, 1]  # index into virtual_time_backends(): trio, asyncio
KEEP = ("drop", "keep", "weak", "read and drop", "read and keep")


def fields(progress: WorkflowProgress) -> dict[str, Any]:
    return attrs.asdict(progress)


@st.composite
def runs(draw: st.DrawFn) -> tuple[list[list[int]], list[int], list[str]]:
    """Dependencies of each step (earlier ones), durations, and how each report is kept."""
    n = draw(st.integers(1, 10))
    deps = [
        sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(n)
    ]
    durations = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    keep = draw(st.lists(st.sampled_from(KEEP), min_size=2 * n + 1, max_size=2 * n + 1))
    return deps, durations, keep


def sleeping_workflow(name: str, deps: list[list[int]], durations: list[int]) -> Workflow:
    """Steps ``s0``, ``s1``... each after the earlier ones listed, each sleeping its duration."""
    wf = Workflow(name)

    def make(i: int) -> Any:
        async def fn(ctx: Context) -> None:
            await anyio.sleep(durations[i])

        return fn

    for i, before in enumerate(deps):
        wf.step(f"s{i}", make(i), after=[f"s{d}" for d in before])
    return wf


def run_keeping(
    backend: int, deps: list[list[int]], durations: list[int], keep: list[str]
) -> tuple[list[tuple[WorkflowProgress, dict[str, Any]]], list[dict[str, Any]]]:
    wf = sleeping_workflow("kept", deps, durations)
    kept: list[tuple[WorkflowProgress, dict[str, Any]]] = []
    weak: list[tuple[weakref.ref[WorkflowProgress], dict[str, Any]]] = []
    every: list[dict[str, Any]] = []

    def check_weak() -> None:
        for ref, was in weak:
            progress = ref()
            if progress is not None:
                assert fields(progress) == was

    def on_progress(progress: WorkflowProgress) -> None:
        check_weak()
        how = keep[len(every) % len(keep)]
        now = fields(progress)  # reads running too
        every.append(now)
        if how.startswith("read"):
            assert progress.running == now["running"]
        if how.endswith("keep"):
            kept.append((progress, now))
        elif how == "weak":
            weak.append((weakref.ref(progress), now))

    async def main() -> None:
        assert (await run_workflow(wf, on_progress=on_progress)).ok
        check_weak()

    name, options = virtual_time_backends()[backend]
    anyio.run(main, backend=name, backend_options=options)
    return kept, every


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(run=runs())
def test_a_kept_report_keeps_every_field(
    backend: int, run: tuple[list[list[int]], list[int], list[str]]
) -> None:
    deps, durations, keep = run
    kept, every = run_keeping(backend, deps, durations, keep)
    assert len(every) == 2 * len(deps) + 1  # the first report, then a start and an end a step
    for progress, was in kept:
        assert fields(progress) == was
    # What the reports said, in order: the counts only grow, and the last one is the end.
    completed = [report["completed"] for report in every]
    assert completed == sorted(completed)
    assert every[-1]["completed"] == every[-1]["succeeded"] == len(deps)
    assert every[-1]["running"] == ()


@pytest.mark.anyio
@pytest.mark.real_time
async def test_reports_given_to_another_thread_stay_the_same() -> None:
    wf = Workflow("threads")

    async def step(ctx: Context) -> None:
        pass

    for i in range(200):
        wf.step(f"s{i}", step, after=[f"s{i // 2}"] if i else [])
    handed: list[tuple[WorkflowProgress, dict[str, Any]]] = []
    lock = threading.Lock()

    def on_progress(progress: WorkflowProgress) -> None:
        with lock:
            handed.append((progress, fields(progress)))

    def reader(stop: threading.Event) -> None:
        while not stop.is_set():
            with lock:
                now = list(handed)
            for progress, was in now:
                assert fields(progress) == was

    stop = threading.Event()
    thread = threading.Thread(target=reader, args=(stop,))
    thread.start()
    try:
        assert (await run_workflow(wf, on_progress=on_progress)).ok
    finally:
        stop.set()
        thread.join()
    assert len({id(progress) for progress, _ in handed}) == len(handed) == 401
    for progress, was in handed:
        assert fields(progress) == was


@pytest.mark.anyio
async def test_a_report_dropped_at_once_reads_like_a_new_one() -> None:
    # What a progress bar does: read the counts, keep nothing. Each report says the truth of
    # its moment, as a new one would.
    wf = Workflow("bar")

    async def step(ctx: Context) -> None:
        await anyio.sleep(1)

    for i in range(20):
        wf.step(f"s{i}", step, after=[f"s{i - 1}"] if i else [])
    seen: list[tuple[int, int, tuple[str, ...], float]] = []

    def on_progress(progress: WorkflowProgress) -> None:
        seen.append((progress.completed, progress.total, progress.running, progress.elapsed))

    assert (await run_workflow(wf, on_progress=on_progress)).ok
    expected: list[tuple[int, int, tuple[str, ...], float]] = [(0, 20, (), 0.0)]
    for i in range(20):
        expected.append((i, 20, (f"s{i}",), float(i)))
        expected.append((i + 1, 20, (), float(i + 1)))
    assert seen == expected


HOW = ("ignore", "read", "keep", "weak")


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(run=runs(), how=st.lists(st.sampled_from(HOW), min_size=1, max_size=12))
def test_each_report_names_the_steps_running_at_its_moment(
    backend: int, run: tuple[list[list[int]], list[int], list[str]], how: list[str]
) -> None:
    # Reports read at once, kept unread and read at the end, held by a weak reference only and
    # read while the run goes on, or never read: however the run reuses, shares, freezes or
    # builds them, each report's running steps are the run's steps in flight when it was given
    # (read from the run itself, eagerly, as each report is made).
    deps, durations, _ = run
    wf = sleeping_workflow("moments", deps, durations)
    in_flight: list[tuple[str, ...]] = []
    completed: list[int] = []
    read: dict[int, tuple[str, ...]] = {}
    kept: dict[int, WorkflowProgress] = {}
    weak: dict[int, weakref.ref[WorkflowProgress]] = {}

    def on_progress(progress: WorkflowProgress) -> None:
        k = len(completed)
        completed.append(progress.completed)  # the counts only: the view stays unread
        chosen = how[k % len(how)]
        if chosen == "read":
            read[k] = progress.running
        elif chosen == "keep":
            kept[k] = progress
        elif chosen == "weak":
            weak[k] = weakref.ref(progress)
            for j, ref in list(weak.items()):
                report = ref()
                if report is not None and j != k:
                    read.setdefault(j, report.running)  # read later, while the run goes on

    report = Run._report

    def observed(run: Run, now: float) -> None:
        in_flight.append(tuple(run.steps[i].name for i in run.running))
        report(run, now)

    async def main() -> None:
        assert (await run_workflow(wf, on_progress=on_progress)).ok

    name, options = virtual_time_backends()[backend]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Run, "_report", observed)
        anyio.run(main, backend=name, backend_options=options)
    assert len(in_flight) == len(completed) == 2 * len(deps) + 1
    assert in_flight[-1] == ()
    for k, running in read.items():
        assert running == in_flight[k], k
    for k, progress in kept.items():
        assert progress.running == in_flight[k], k
        assert progress.completed == completed[k]
