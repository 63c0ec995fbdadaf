"""Group commit of step records: what ended since the last write goes in one transaction, and
a step starts only once every step it comes after is durable (in virtual time, and across a
SIGKILL of a real process with a real SQLite file).

This module is also its own child process for the SIGKILL test::

    python test_workflow_group_commit.py STORE MARKERS BACKEND KILL_AT|finish
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _helpers import ForwardingStore
from trioflow import (
    Context,
    SQLiteStore,
    StepRecord,
    StoredValue,
    Workflow,
    run_workflow,
)
from trioflow.testing import virtual_time_backends


class GroupingStore(ForwardingStore):
    """Records each transaction's step names; a write takes ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.groups: list[list[str]] = []
        self.durable: dict[str, int] = {}  # step -> index of the transaction that saved it

    async def save_steps(
        self, run_id: str, steps: Sequence[StepRecord], state: Mapping[str, StoredValue]
    ) -> None:
        if self.delay:
            await anyio.sleep(self.delay)
        await super().save_steps(run_id, steps, state)
        for record in steps:
            self.durable[record.name] = len(self.groups)
        self.groups.append([record.name for record in steps])


async def instant(ctx: Context) -> None:
    pass


async def wait(kind: int, seconds: float) -> None:
    # kind 0: returns at once; 1: one checkpoint; 2: sleeps.
    if kind == 1:
        await anyio.lowlevel.checkpoint()
    elif kind == 2:
        await anyio.sleep(seconds)


def workflow(name: str, deps: list[list[int]], make: Callable[[int], Any]) -> Workflow:
    wf = Workflow(name)
    for i, before in enumerate(deps):
        wf.step(f"s{i}", make(i), after=[f"s{d}" for d in before])
    return wf


@pytest.mark.anyio
async def test_steps_that_end_before_the_writer_runs_share_one_transaction() -> None:
    store = GroupingStore()
    wf = Workflow("fan").step("root", instant)
    for i in range(100):
        wf.step(f"s{i}", instant, after="root")
    result = await run_workflow(wf, store=store)
    assert result.ok
    # The root alone (its steps wait for it), then the hundred, which ended without waiting.
    assert store.groups == [["root"], [f"s{i}" for i in range(100)]]


@pytest.mark.anyio
async def test_a_chain_commits_each_step_before_the_next_starts() -> None:
    store = GroupingStore(delay=1)
    wf = Workflow("chain").step("s0", instant)
    for i in range(1, 5):
        wf.step(f"s{i}", instant, after=f"s{i - 1}")
    start = anyio.current_time()
    assert (await run_workflow(wf, store=store)).ok
    assert store.groups == [[f"s{i}"] for i in range(5)]
    assert anyio.current_time() - start == 5  # one write after another


@pytest.mark.anyio
async def test_a_slow_step_does_not_hold_back_the_records_of_others() -> None:
    # "quick" ends while its worker could go on with "slow": its record is written (by the
    # write-behind task) while "slow" runs, and "after-quick" starts long before "slow" ends.
    started: dict[str, float] = {}

    def track(name: str, seconds: float) -> Callable[[Context], Awaitable[None]]:
        async def fn(ctx: Context) -> None:
            started[name] = anyio.current_time()
            await anyio.sleep(seconds)

        return fn

    store = GroupingStore(delay=1)
    wf = Workflow("w")
    wf.step("quick", track("quick", 0)).step("slow", track("slow", 100))
    wf.step("after-quick", track("after-quick", 0), after="quick")
    t0 = anyio.current_time()
    assert (await run_workflow(wf, store=store, limit=2)).ok
    assert started["after-quick"] - t0 == 1  # one write after "quick" ended at 0
    assert store.durable["quick"] < store.durable["after-quick"]


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[list[int]], list[int]]:
    n = draw(st.integers(1, 30))
    deps = [
        sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(n)
    ]
    kinds = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    return deps, kinds


@pytest.mark.parametrize("backend", [0, 1])
@settings(max_examples=40)
@given(
    dag=dags(),
    limit=st.one_of(st.none(), st.integers(1, 4)),
    delay=st.sampled_from([0.0, 0.5, 2.0]),
)
def test_a_step_starts_only_after_the_steps_it_comes_after_are_durable(
    backend: int, dag: tuple[list[list[int]], list[int]], limit: int | None, delay: float
) -> None:
    deps, kinds = dag
    store = GroupingStore(delay)
    ran: list[int] = []
    early: list[tuple[int, int]] = []

    def make(i: int) -> Callable[[Context], Awaitable[int]]:
        async def fn(ctx: Context) -> int:
            ran.append(i)
            early.extend((i, d) for d in deps[i] if f"s{d}" not in store.durable)
            await wait(kinds[i], 1)
            return i

        return fn

    wf = workflow("random", deps, make)
    name, options = virtual_time_backends()[backend]
    result = anyio.run(
        lambda: run_workflow(wf, store=store, limit=limit), backend=name, backend_options=options
    )
    assert result.ok
    assert early == []  # no step saw a step it comes after not yet durable
    assert sorted(ran) == list(range(len(deps)))  # each ran once
    assert sorted(store.durable) == sorted(f"s{i}" for i in range(len(deps)))
    for i, before in enumerate(deps):
        for d in before:
            assert store.durable[f"s{d}"] < store.durable[f"s{i}"]
    assert len(store.groups) <= len(deps)


# --- SIGKILL at any moment of a wide run -----------------------------------------------------
STEPS = 1200


def _graph() -> list[list[int]]:
    rng = random.Random(7)
    return [sorted(rng.sample(range(i), min(i, rng.randint(0, 3)))) for i in range(STEPS)]


def child_main(store_path: str, markers: str, backend: str, mode: str) -> int:
    """Run (or resume) the wide workflow; each step checks, on a connection of its own, that
    the steps it comes after are committed, and appends its name to ``markers``."""
    deps = _graph()
    kill_at = -1 if mode == "finish" else int(mode)
    started = [0]
    check = sqlite3.connect(store_path, isolation_level=None)
    fd = os.open(markers, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def make(i: int) -> Callable[[Context], Awaitable[int]]:
        names = [f"s{d}" for d in deps[i]]

        async def fn(ctx: Context) -> int:
            if names:
                marks = ",".join("?" * len(names))
                (durable,) = check.execute(
                    f"SELECT count(*) FROM steps WHERE run_id = 'r' AND status = 'succeeded' "
                    f"AND name IN ({marks})",
                    names,
                ).fetchone()
                if durable != len(names):
                    os.write(fd, f"EARLY s{i}\n".encode())
            os.write(fd, f"s{i}\n".encode())  # one append: whole even if killed right after
            started[0] += 1
            if started[0] == kill_at:
                print("kill me", flush=True)
            await wait(i % 3, 0.0002)
            return i

        return fn

    wf = workflow("wide", deps, make)

    async def main() -> int:
        async with SQLiteStore(store_path) as store:
            result = await run_workflow(wf, store=store, run_id="r")
        print(f"ok={result.ok}", flush=True)
        return 0 if result.ok else 1

    return anyio.run(main, backend=backend)


def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _durable(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT name FROM steps WHERE run_id = 'r' AND status = 'succeeded'"
        ).fetchall()
    return {name for (name,) in rows}


@pytest.mark.real_time
@pytest.mark.parametrize(("backend", "kill_at"), [("trio", 400), ("asyncio", 800)])
def test_sigkill_amid_group_commits_resumes_without_rerunning_a_durable_step(
    tmp_path: Path, backend: str, kill_at: int
) -> None:
    store, markers = tmp_path / "runs.db", tmp_path / "markers"
    anyio.run(_create, store)
    first = _child(str(store), str(markers), backend, str(kill_at))
    line = first.stdout.readline() if first.stdout is not None else ""
    os.kill(first.pid, signal.SIGKILL)  # at once: the run goes on until the signal lands
    _, err = first.communicate(timeout=60)
    assert line == "kill me\n", err
    assert first.returncode == -signal.SIGKILL
    durable = _durable(store)
    ran_first = markers.read_text().splitlines()
    assert 0 < len(durable) < STEPS  # killed in the middle of the run
    assert set(durable) <= set(ran_first)

    with _child(str(store), str(markers), backend, "finish") as second:
        out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert out == "ok=True\n"
    lines = markers.read_text().splitlines()
    assert [line for line in lines if line.startswith("EARLY")] == []
    counts: dict[str, int] = {}
    for name in lines:
        counts[name] = counts.get(name, 0) + 1
    assert set(counts) == {f"s{i}" for i in range(STEPS)}  # every step ran
    assert {name for name in durable if counts[name] != 1} == set()  # durable: never again
    assert _durable(store) == set(counts)


async def _create(path: Path) -> None:
    async with SQLiteStore(path) as store:
        await store.list_runs()  # creates the file and its schema before the steps read it


def _main(argv: list[str]) -> Any:
    return child_main(*argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


# --- SQLiteStore: commits on the loop's thread, a busy file, checkpoints ----------------------
@pytest.mark.real_time
@pytest.mark.anyio
async def test_a_write_waits_for_another_connection_holding_the_file(tmp_path: Path) -> None:
    # Another connection takes the write lock while "a" runs: a's commit cannot be made at
    # once, so it waits (on a worker thread, within the busy timeout), and "b" waits for it.
    path = tmp_path / "busy.db"
    await _create(path)
    other = sqlite3.connect(path, isolation_level=None)
    started: list[tuple[str, bool]] = []

    async def a(ctx: Context) -> None:
        other.execute("BEGIN IMMEDIATE")
        started.append(("a", True))

    async def b(ctx: Context) -> None:
        started.append(("b", other.in_transaction))

    wf = Workflow("w").step("a", a).step("b", b, after="a")
    async with SQLiteStore(path) as store, anyio.create_task_group() as tg:
        result: list[bool] = []

        async def run() -> None:
            result.append((await run_workflow(wf, store=store, run_id="r")).ok)

        tg.start_soon(run)
        while not started:
            await anyio.sleep(0.01)
        await anyio.sleep(0.3)
        assert started == [("a", True)]  # a's record waits for the lock, and so does "b"
        other.execute("COMMIT")
    other.close()
    assert result == [True]
    assert started == [("a", True), ("b", False)]  # "b" started once the lock was free
    assert _durable(path) == {"a", "b"}


@pytest.mark.real_time
@pytest.mark.anyio
async def test_the_log_is_checkpointed_as_a_run_writes(tmp_path: Path) -> None:
    # A commit on the event loop's thread never checkpoints (that fsyncs): the store does it
    # on a worker thread every few MB, so the write-ahead log stays that size.
    path = tmp_path / "big.db"
    chunk = "x" * 15_000  # under the size committed at once: every commit on the loop

    async def big(ctx: Context) -> str:
        return chunk

    wf = Workflow("big").step("s0", big)
    for i in range(1, 800):  # 12 MB in all, each step after the one before: 800 commits
        wf.step(f"s{i}", big, after=f"s{i - 1}")
    async with SQLiteStore(path) as store:
        assert (await run_workflow(wf, store=store, run_id="r")).ok
        wal = path.with_name(path.name + "-wal")
        assert wal.stat().st_size < 8 * 1024 * 1024
