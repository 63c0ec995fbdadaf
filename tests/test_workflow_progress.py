"""Progress snapshots of workflow runs stay true when kept, however they are kept or read."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

import anyio
import attrs
import pytest

from trioflow import Context, Workflow, WorkflowProgress, run_workflow

pytestmark = pytest.mark.anyio


class Wide:
    """Steps of many lengths at once, and steps after them: the running set grows and shrinks.

    Each step notes how many reports were made when its function started and when it returned:
    every report made in between must name it, and none made after it returned may.
    """

    def __init__(self) -> None:
        self.count = 0  # reports made so far
        self.spans: dict[str, tuple[int, int]] = {}
        self.wf = Workflow("wide")
        for i in range(40):
            self.wf.step(f"s{i}", self.sleeper(i % 7))
        for i in range(40):
            self.wf.step(f"t{i}", self.sleeper(i % 3), after=[f"s{i}", f"s{(i * 7) % 40}"])

    def sleeper(self, seconds: int) -> Callable[[Context], Awaitable[None]]:
        async def fn(ctx: Context) -> None:
            began = self.count
            await anyio.sleep(seconds)
            self.spans[str(ctx.step)] = (began, self.count)

        return fn

    async def run(self, keep: Callable[[int, WorkflowProgress], None]) -> None:
        def on_progress(progress: WorkflowProgress) -> None:
            keep(self.count, progress)
            self.count += 1

        assert (await run_workflow(self.wf, on_progress=on_progress, limit=25)).ok

    def check(self, n: int, running: tuple[str, ...]) -> None:
        for name, (began, ended) in self.spans.items():
            if began <= n < ended:
                assert name in running, (n, name, running)
            elif n >= ended:
                assert name not in running, (n, name, running)
        assert len(set(running)) == len(running) <= 25


@pytest.mark.parametrize("every", [1, 2, 3, 7])
async def test_a_kept_snapshot_names_the_steps_running_when_it_was_made(every: int) -> None:
    wide = Wide()
    kept: dict[int, WorkflowProgress] = {}
    # Kept without being read; the others dropped at once.
    await wide.run(lambda n, p: kept.update({n: p}) if n % every == 0 else None)
    assert len(kept) >= 160 // every  # two reports a step
    assert max(len(p.running) for p in kept.values()) >= 20
    for n, p in kept.items():
        wide.check(n, p.running)


async def test_a_snapshot_read_in_the_callback_then_kept_stays_the_same() -> None:
    wide = Wide()
    seen: list[tuple[int, WorkflowProgress, tuple[str, ...]]] = []
    await wide.run(lambda n, p: seen.append((n, p, p.running)) if n % 2 else None)
    for n, p, names in seen:
        assert p.running == names
        wide.check(n, names)


async def test_a_snapshot_is_a_value() -> None:
    seen: list[WorkflowProgress] = []
    await Wide().run(lambda n, p: seen.append(p))
    some = next(p for p in seen if len(p.running) > 1)
    fields = {name: getattr(some, name) for name in ("total", "completed", "elapsed")}
    counts = {name: getattr(some, name) for name in ("succeeded", "failed", "skipped")}
    made = WorkflowProgress(running=some.running, **fields, **counts)
    assert some == made
    assert hash(some) == hash(made)
    assert repr(some) == repr(made)
    assert f"running={some.running!r}" in repr(some)
    assert attrs.evolve(some, completed=0).running == some.running
    assert attrs.asdict(some) == attrs.asdict(made)  # what attrs sees is the tuple
    assert isinstance(attrs.asdict(some)["running"], tuple)
    assert [field.name for field in attrs.fields(WorkflowProgress)] == [
        "total",
        "completed",
        "succeeded",
        "failed",
        "skipped",
        "running",
        "elapsed",
    ]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        some.completed = 3  # type: ignore[misc]


@pytest.mark.real_time
async def test_snapshots_read_on_another_thread_while_the_run_goes_on() -> None:
    # Snapshots handed to a thread are read there while the run changes its running set.
    wide = Wide()
    kept: list[tuple[int, WorkflowProgress]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for _, p in list(kept):
                assert isinstance(p.running, tuple)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        wide.wf = Workflow("quick")
        for i in range(300):
            wide.wf.step(f"s{i}", wide.sleeper(0), after=[f"s{i // 2}"] if i else [])
        await wide.run(lambda n, p: kept.append((n, p)))
    finally:
        stop.set()
        thread.join()
    for n, p in kept:
        wide.check(n, p.running)
