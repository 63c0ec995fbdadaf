"""Workflow scheduling overhead against graphlib driving raw tasks, and SQLite throughput.

Graphs of 10,000 steps: a random DAG (each step after up to 3 random earlier steps, seeded), a
chain, and a fan-out (one root, every other step after it). Steps are no-ops, or await one
checkpoint of the backend (so every step really suspends).

Floors: ``graphlib.TopologicalSorter`` driving raw tasks (a trio nursery or an asyncio
TaskGroup, completions reported on a memory channel / queue). The graph's description (the
floor's dependency dict, trioflow's ``Workflow``) is built before the timed region; the timed
region builds the ``TopologicalSorter`` (floor) or validates the workflow (trioflow) and runs
it. The "define + run_workflow" rows also time the ``Workflow`` definition (``wf.step`` calls).
Every row runs in a fresh process, 5 times (see ``_harness.py``).

SQLite rows: the same graphs (5,000 steps) run with ``SQLiteStore`` (WAL,
``synchronous=NORMAL``), every step's record written before the steps after it start;
1e6 / (us per step) is the number of persisted step completions per second.

Modes rows (first): the same 10,000-step random DAG run plainly, with an ``on_progress``
callback that reads the counts (as a progress bar does), with ``MemoryStore`` and with
``SQLiteStore``, each against the plain run in the same bench run; and a 5,000-step chain
with ``SQLiteStore``, where every step waits for its own transaction (persisted steps/s).

Floors of the modes (last): what each mode's contract makes the run build per step (two
progress reports, refilled when nobody keeps them or built when kept; a step's record as a
row, or as a StepRecord for a store of another library; its SQLite row, in key order and in
the random DAG's completion order, and in that order into the steps table keyed by run and
step name that SQLiteStore used before), timed alone in CPU time.

Usage: ``python bench/workflow.py`` (or ``nox -s bench``); ``python bench/workflow.py
--instructions`` prints the instructions per step of a plain run and of each mode instead
(under valgrind: the same from one run to the next, whatever the load); ``BENCH_WORKFLOW=modes
python bench/workflow.py`` runs the modes rows only. Targets checked at the end: trioflow
within 1.3x of its backend's floor, at least 2,000 persisted completions per second, and the
goal of each mode (on_progress <= 1.2x, MemoryStore <= 1.3x, SQLiteStore <= 2x the plain run;
>= 5,000 persisted steps/s on a chain).
"""

from __future__ import annotations

import asyncio
import gc
import graphlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from _harness import REPEATS, Bench, Row

bench = Bench(__file__)

N = 10_000
N_PERSISTED = 5_000  # a durable chain waits for one transaction per step: keep the run short
SHAPES = ("random DAG", "chain", "fan-out")
TARGET_RATIO = 1.3
TARGET_COMPLETIONS = 2_000


def graph(shape: str, n: int) -> dict[int, tuple[int, ...]]:
    if shape == "chain":
        return {i: (i - 1,) if i else () for i in range(n)}
    if shape == "fan-out":
        return {i: (0,) if i else () for i in range(n)}
    rng = random.Random(20240601)
    return {i: tuple(rng.sample(range(i), rng.randint(0, min(3, i)))) for i in range(n)}


# --- floors ----------------------------------------------------------------------------------
@bench.case
def floor_trio(shape: str, n: int, step: str) -> int:
    import trio

    deps = PREPARED.get("deps") or graph(shape, n)

    async def main() -> None:
        sorter = graphlib.TopologicalSorter(deps)
        sorter.prepare()
        send, receive = trio.open_memory_channel[int](math.inf)
        checkpoint = step == "checkpoint"

        async def run(node: int) -> None:
            if checkpoint:
                await trio.lowlevel.checkpoint()
            send.send_nowait(node)

        async with trio.open_nursery() as nursery:
            for node in sorter.get_ready():
                nursery.start_soon(run, node)
            while sorter.is_active():
                node = await receive.receive()
                sorter.done(node)
                for ready in sorter.get_ready():
                    nursery.start_soon(run, ready)

    trio.run(main)
    return n


@bench.case
def floor_asyncio(shape: str, n: int, step: str) -> int:
    deps = PREPARED.get("deps") or graph(shape, n)

    async def main() -> None:
        sorter = graphlib.TopologicalSorter(deps)
        sorter.prepare()
        queue: asyncio.Queue[int] = asyncio.Queue()
        checkpoint = step == "checkpoint"

        async def run(node: int) -> None:
            if checkpoint:
                await asyncio.sleep(0)
            queue.put_nowait(node)

        async with asyncio.TaskGroup() as tg:
            for node in sorter.get_ready():
                tg.create_task(run(node))
            while sorter.is_active():
                node = await queue.get()
                sorter.done(node)
                for ready in sorter.get_ready():
                    tg.create_task(run(ready))

    asyncio.run(main())
    return n


# --- trioflow --------------------------------------------------------------------------------
def _step_function(step: str, backend: str) -> Callable[[Any], Coroutine[Any, Any, None]]:
    # The same user code as the floors: a no-op, or one checkpoint of the backend.
    if step == "noop":

        async def noop(ctx: Any) -> None:
            pass

        return noop
    if backend == "trio":
        import trio

        async def trio_checkpoint(ctx: Any) -> None:
            await trio.lowlevel.checkpoint()

        return trio_checkpoint

    async def asyncio_checkpoint(ctx: Any) -> None:
        await asyncio.sleep(0)

    return asyncio_checkpoint


def define(shape: str, n: int, step: str, backend: str) -> Any:
    """Build the trioflow Workflow of a graph (what a user writes once, before running it)."""
    import trioflow

    fn = _step_function(step, backend)
    deps = graph(shape, n)
    wf = trioflow.Workflow(shape)
    names = [f"s{i}" for i in range(n)]
    for i, before in deps.items():
        wf.step(names[i], fn, after=[names[d] for d in before])
    return wf


def _run_trioflow(shape: str, n: int, step: str, backend: str, store: str | None) -> int:
    import anyio

    import trioflow

    wf = PREPARED.get("workflow") or define(shape, n, step, backend)
    reports = [0]

    def on_progress(progress: trioflow.WorkflowProgress) -> None:
        # What a progress bar does: read the counts.
        reports[0] = progress.completed

    async def main() -> None:
        if store is None:
            result = await trioflow.run_workflow(wf)
        elif store == "progress":
            result = await trioflow.run_workflow(wf, on_progress=on_progress)
        elif store == "memory":
            result = await trioflow.run_workflow(wf, store=trioflow.MemoryStore())
        else:
            async with trioflow.SQLiteStore(store) as sqlite:
                result = await trioflow.run_workflow(wf, store=sqlite)
        assert result.ok

    anyio.run(main, backend=backend)
    return n


@bench.case
def trioflow_run(shape: str, n: int, step: str, backend: str) -> int:
    return _run_trioflow(shape, n, step, backend, None)


@bench.case
def trioflow_define_and_run(shape: str, n: int, step: str, backend: str) -> int:
    PREPARED.clear()  # the definition is timed too
    return _run_trioflow(shape, n, step, backend, None)


@bench.case
def trioflow_progress(shape: str, n: int, step: str, backend: str) -> int:
    return _run_trioflow(shape, n, step, backend, "progress")


@bench.case
def trioflow_memory_store(shape: str, n: int, step: str, backend: str) -> int:
    return _run_trioflow(shape, n, step, backend, "memory")


@bench.case
def trioflow_sqlite_store(shape: str, n: int, step: str, backend: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return _run_trioflow(shape, n, step, backend, os.path.join(tmp, "state.db"))


@bench.case
def trioflow_defined(shape: str, n: int, step: str, backend: str) -> int:
    """Nothing but what the child prepares (the Workflow): what --instructions subtracts."""
    return n


PREPARED: dict[str, Any] = {}


def count_instructions() -> None:
    """Print the instructions per step of a plain run and of each mode, on both backends.

    Each case's count (see ``Bench.instructions``) less the count of the same child that only
    defines the workflow, at 5,000 and 15,000 steps of the random DAG.
    """
    sizes = (5_000, 15_000)
    cases = [("trioflow_run", "run_workflow"), *((case, label) for case, label, _ in MODES)]
    print("| mode | trio | x plain | asyncio | x plain |\n|---|---:|---:|---:|---:|")
    counts: dict[tuple[str, str], float] = {}
    for backend in ("trio", "asyncio"):
        params = {"shape": "random DAG", "step": "noop", "backend": backend}
        defined = bench.instructions("trioflow_defined", params, sizes)
        for case, _ in cases:
            counts[case, backend] = bench.instructions(case, params, sizes) - defined
    for case, label in cases:
        cells = [
            f"{counts[case, b]:,.0f} | {counts[case, b] / counts['trioflow_run', b]:.2f}"
            for b in ("trio", "asyncio")
        ]
        print(f"| {label} | {' | '.join(cells)} |", flush=True)


def _prepare() -> None:
    """In a child: import everything and build the case's input before the timed region.

    The floors get their dependency dict, trioflow its ``Workflow`` (the graph as the user
    describes it); building ``graphlib.TopologicalSorter`` (floors) and validating the workflow
    (trioflow, on its first run) stay in the timed region. ``trioflow_define_and_run`` times
    the definition too.
    """
    if len(sys.argv) < 4 or sys.argv[1] != "--child":
        return

    import anyio._backends._asyncio
    import anyio._backends._trio  # noqa: F401
    import trio  # noqa: F401

    import trioflow  # noqa: F401

    params = json.loads(sys.argv[3])
    if sys.argv[2].startswith("floor"):
        PREPARED["deps"] = graph(params["shape"], params["n"])
    elif sys.argv[2] != "trioflow_define_and_run":
        PREPARED["workflow"] = define(**params)


CHECKS: list[str] = []
# The goals of each mode against the same run without it: (case, label, most x the plain run).
MODES = (
    ("trioflow_progress", "with on_progress", 1.2),
    ("trioflow_memory_store", "with MemoryStore", 1.3),
    ("trioflow_sqlite_store", "with SQLiteStore", 2.0),
)
TARGET_PERSISTED = 5_000  # persisted steps per second on a 5,000-step chain with SQLiteStore


def check(what: str, ours: Row, base: Row, against: str, goal: float) -> None:
    """Note how ``ours`` compares with ``base`` (per step) against the goal, for the summary."""
    ratio = ours.per_op_us / base.per_op_us
    verdict = "ok" if ratio <= goal else "MISSED"
    CHECKS.append(
        f"- {what}: {ours.per_op_us:.2f} vs {against} {base.per_op_us:.2f} us/step "
        f"= {ratio:.2f}x (goal <= {goal}x): {verdict}"
    )


def check_persisted(what: str, row: Row, goal: float) -> None:
    """Note the persisted step completions per second of ``row`` against the goal."""
    per_second = 1e6 / row.per_op_us
    verdict = "ok" if per_second >= goal else "MISSED"
    CHECKS.append(
        f"- {what}: SQLiteStore {row.per_op_us:.1f} us/step = {per_second:,.0f} persisted "
        f"steps/s (goal >= {goal:,.0f}): {verdict}"
    )


def plan_modes(run: Callable[..., Row]) -> None:
    """The cost of each option on a 10,000-step random DAG, and durable chain throughput."""
    for backend in ("trio", "asyncio"):
        group = f"modes: random DAG, {N:,} noop steps, {backend}"
        dag = {"group": group, "shape": "random DAG", "n": N, "step": "noop"}
        run(f"floor_{backend}", label=f"graphlib + raw {backend} tasks", **dag)
        plain = run(
            "trioflow_run", label="trioflow run_workflow", floor=True, backend=backend, **dag
        )
        for case, label, goal in MODES:
            row = run(case, label=f"trioflow run_workflow {label}", backend=backend, **dag)
            check(f"{group}, {label}", row, plain, "without", goal)
        group = f"modes: chain, {N_PERSISTED:,} persisted noop steps, {backend}"
        chain = {"group": group, "shape": "chain", "n": N_PERSISTED, "step": "noop"}
        run("trioflow_run", label="trioflow, no store", floor=True, backend=backend, **chain)
        sqlite = run(
            "trioflow_sqlite_store", label="trioflow, SQLiteStore", backend=backend, **chain
        )
        check_persisted(group, sqlite, TARGET_PERSISTED)


def plan(run: Callable[..., Row]) -> None:
    plan_modes(run)
    if os.environ.get("BENCH_WORKFLOW") == "modes":
        return
    for step in ("noop", "checkpoint"):
        for shape in SHAPES:
            for backend in ("trio", "asyncio"):
                group = f"{shape}, {N:,} {step} steps, {backend}"
                floor = run(
                    f"floor_{backend}",
                    label=f"graphlib + raw {backend} tasks",
                    group=group,
                    floor=True,
                    shape=shape,
                    n=N,
                    step=step,
                )
                ours = run(
                    "trioflow_run",
                    label=f"trioflow run_workflow ({backend})",
                    group=group,
                    shape=shape,
                    n=N,
                    step=step,
                    backend=backend,
                )
                if step == "noop":
                    run(
                        "trioflow_define_and_run",
                        label=f"trioflow define + run_workflow ({backend})",
                        group=group,
                        shape=shape,
                        n=N,
                        step=step,
                        backend=backend,
                    )
                check(group, ours, floor, "floor", TARGET_RATIO)
    for shape in SHAPES:
        for backend in ("trio", "asyncio"):
            group = f"{shape}, {N_PERSISTED:,} persisted noop steps, {backend}"
            run(
                "trioflow_run",
                label="trioflow, no store",
                group=group,
                floor=True,
                shape=shape,
                n=N_PERSISTED,
                step="noop",
                backend=backend,
            )
            run(
                "trioflow_memory_store",
                label="trioflow, MemoryStore",
                group=group,
                shape=shape,
                n=N_PERSISTED,
                step="noop",
                backend=backend,
            )
            sqlite = run(
                "trioflow_sqlite_store",
                label="trioflow, SQLiteStore",
                group=group,
                shape=shape,
                n=N_PERSISTED,
                step="noop",
                backend=backend,
            )
            check_persisted(group, sqlite, TARGET_COMPLETIONS)


# --- the modes, interleaved ------------------------------------------------------------------
# On a shared machine the load changes between one case's processes and the next case's, and
# the ratios of the rows above with it. Here every fresh process runs each mode in turn, round
# after round, and the ratio of a mode is taken to the plain run of the same round; wall and
# CPU time (of every thread of the process) both.
ROUNDS = 5
INTERLEAVED = (  # mode, what it is, goal (most x the plain run), shape, steps
    ("plain", "run_workflow", None, "random DAG", N),
    ("progress", "with on_progress", 1.2, "random DAG", N),
    ("memory", "with MemoryStore", 1.3, "random DAG", N),
    ("sqlite", "with SQLiteStore", 2.0, "random DAG", N),
    ("plain", "chain, no store", None, "chain", N_PERSISTED),
    ("sqlite", "chain, SQLiteStore", None, "chain", N_PERSISTED),
)


def interleaved_child(backend: str) -> None:
    """In a fresh process: every mode in turn, ``ROUNDS`` times; print us/step as JSON."""
    import time

    workflows = {shape: define(shape, n, "noop", backend) for _, _, _, shape, n in INTERLEAVED}
    samples: list[list[tuple[float, float]]] = [[] for _ in INTERLEAVED]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(ROUNDS):
            for k, (mode, _, _, shape, n) in enumerate(INTERLEAVED):
                PREPARED["workflow"] = workflows[shape]
                store = {"plain": None, "progress": "progress", "memory": "memory"}.get(
                    mode, os.path.join(tmp, f"{r}-{k}.db")
                )
                gc.collect()
                wall, cpu = time.perf_counter(), time.process_time()
                _run_trioflow(shape, n, "noop", backend, store)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                samples[k].append((wall / n * 1e6, cpu / n * 1e6))
    print(json.dumps(samples))


def plan_interleaved() -> str:
    """Run ``interleaved_child`` in ``REPEATS`` fresh processes per backend; a markdown table."""
    lines = [
        "## Workflow modes, interleaved in each process",
        "",
        f"Medians over {REPEATS} fresh processes x {ROUNDS} rounds; each ratio is to the plain "
        "run of the same round (same shape). CPU: every thread of the process.",
        "",
        "| backend | mode | wall us/step | CPU us/step | x plain (wall) | x plain (CPU) | goal |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for backend in ("trio", "asyncio"):
        runs = []
        for _ in range(REPEATS):
            out = subprocess.run(
                [sys.executable, __file__, "--interleaved", backend],
                check=True,
                capture_output=True,
                text=True,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        for k, (mode, label, goal, shape, _) in enumerate(INTERLEAVED):
            plain = next(j for j, m in enumerate(INTERLEAVED) if m[0] == "plain" and m[3] == shape)
            rounds = [(got[k][r], got[plain][r]) for got in runs for r in range(ROUNDS)]
            wall = statistics.median(ours[0] for ours, _ in rounds)
            cpu = statistics.median(ours[1] for ours, _ in rounds)
            x_wall = statistics.median(ours[0] / base[0] for ours, base in rounds)
            x_cpu = statistics.median(ours[1] / base[1] for ours, base in rounds)
            target = "" if goal is None else f"<= {goal}"
            lines.append(
                f"| {backend} | {label} | {wall:.2f} | {cpu:.2f} | {x_wall:.2f} | {x_cpu:.2f} | "
                f"{target} |"
            )
            if goal is not None:
                verdict = "ok" if x_cpu <= goal else "MISSED"
                CHECKS.append(
                    f"- interleaved, {backend}, {label}: {x_cpu:.2f}x CPU, {x_wall:.2f}x wall "
                    f"the plain run (goal <= {goal}x, CPU): {verdict}"
                )
            elif mode == "sqlite":
                verdict = "ok" if 1e6 / cpu >= TARGET_PERSISTED else "MISSED"
                CHECKS.append(
                    f"- interleaved, {backend}, {label}: {1e6 / cpu:,.0f} persisted steps/s "
                    f"CPU, {1e6 / wall:,.0f} wall (goal >= {TARGET_PERSISTED:,}, CPU): {verdict}"
                )
    return "\n".join([*lines, ""])


# --- what each mode must build per step, whatever the engine does around it ----------------
# Each mode's contract fixes some work per step: with on_progress, two WorkflowProgress values
# (a report per start and per end; a report nobody kept is refilled rather than built again);
# with a store, one StepRecord per step; with SQLiteStore, also its row's insert and the share
# of its transaction's commit. These floors, timed alone, say how far below the plain run a
# mode's overhead can go.


def floors_of_modes() -> str:
    """Time what each mode's contract builds per step, alone; a markdown table."""
    import sqlite3
    import time
    import timeit

    from trioflow._workflow._result import (
        RunningSteps,
        progress_refill_elapsed,
        progress_snapshot,
    )
    from trioflow._workflow._sqlite import _SAVE_STEP, _SCHEMA, _STEPS
    from trioflow._workflow._step_status import StepStatus
    from trioflow._workflow._store import (
        StepRecord,
        StoredValue,
        step_record,
        step_times_text,
    )

    running = RunningSteps({0: None}, ())
    value = StoredValue(json="null")
    wall = time.time()
    report = progress_snapshot(N, 1, 1, 0, 0, running, 0.5)

    def two_snapshots() -> None:
        progress_snapshot(N, 1, 1, 0, 0, running, 0.5)
        progress_snapshot(N, 2, 2, 0, 0, running, 0.6)

    def two_refills() -> None:
        # What a run does for a report nobody kept: check, then for a start set what changed
        # (its time: the running steps are read through the same view), for an end build a
        # new report (most fields changed).
        nonlocal report
        if sys.getrefcount(report) > 0 and not weakref.getweakrefcount(report):
            progress_refill_elapsed(report, 0.5)
        if sys.getrefcount(report) > 0 and not weakref.getweakrefcount(report):
            report = progress_snapshot(N, 2, 2, 0, 0, (), 0.6)

    def one_record() -> StepRecord:
        return step_record(
            "s1", StepStatus.SUCCEEDED, 1, value, None, None, wall, wall + 1e-6, 1e-6, 1, None
        )

    def one_row() -> tuple[object, ...]:
        # What a run hands the journal per step: the record's fields as a tuple (StepRows).
        return tuple(
            ["s1", StepStatus.SUCCEEDED, 1, value, None, None, wall, wall + 1e-6, 1e-6, 1, None]
        )

    def per_call_us(fn: Callable[[], object], number: int = 20_000) -> float:
        times = timeit.repeat(fn, number=number, repeat=REPEATS, timer=time.process_time)
        return statistics.median(times) / number * 1e6

    # The random DAG's steps in an order a run completes them (ready steps first come, first
    # served), and its groups: the steps that become ready together are written together.
    deps = graph("random DAG", N)
    sorter = graphlib.TopologicalSorter(deps)
    sorter.prepare()
    waves: list[list[int]] = []
    while sorter.is_active():
        wave = list(sorter.get_ready())
        waves.append(wave)
        sorter.done(*wave)

    def insert_us(groups: list[list[int]], schema: str = _SCHEMA, per_statement: int = 1) -> float:
        # CPU per row of inserting the rows of one run, one transaction per group, into a new
        # file as SQLiteStore does (WAL, synchronous=NORMAL), rows built as save_steps does
        # (an absent text bound as 0, an absent number as ''); per_statement rows a statement
        # (INSERT ... VALUES (...), (...)), the rest of a group one a statement.
        head_sql, values_sql = _SAVE_STEP.split(" VALUES ")
        several = f"{head_sql} VALUES " + ", ".join([values_sql] * per_statement)
        with tempfile.TemporaryDirectory() as tmp:
            conn = sqlite3.connect(os.path.join(tmp, "floor.db"), isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            for statement in schema.split(";"):
                if statement.strip():
                    conn.execute(statement)
            record = one_record()
            times = step_times_text(record)
            head, middle = ("r",), ("succeeded", 1, "null", 0, 0, 0)
            rows = 0
            cpu = time.process_time()
            for group in groups:
                conn.execute("BEGIN IMMEDIATE")
                built = [(*head, f"s{k}", *middle, *times, 1e-6, k, 0) for k in group]
                whole = len(built) - len(built) % per_statement if per_statement > 1 else 0
                for start in range(0, whole, per_statement):
                    conn.execute(
                        several, [v for row in built[start : start + per_statement] for v in row]
                    )
                conn.executemany(_SAVE_STEP, built[whole:])
                conn.execute("COMMIT")
                rows += len(group)
            cpu = time.process_time() - cpu
            conn.close()
        return cpu / rows * 1e6

    def grouped_us(groups: list[list[int]]) -> float:
        # The same records, laid out one row per group: a table (run_id, seq, records) where
        # records is one JSON text of the group's records (a list of fields per step, its times
        # as text, made once as insert_us makes them). A layout the steps table's readers (one
        # row per step, read with SQL by other processes while the run goes on) rule out:
        # timed for its floor, to compare.
        with tempfile.TemporaryDirectory() as tmp:
            conn = sqlite3.connect(os.path.join(tmp, "floor.db"), isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(
                "CREATE TABLE step_groups (run_id TEXT NOT NULL, seq INTEGER NOT NULL, "
                "records TEXT NOT NULL, updated_at TEXT, PRIMARY KEY (run_id, seq))"
            )
            started, finished = step_times_text(one_record())  # made once, as insert_us does
            encode = json.JSONEncoder(separators=(",", ":")).encode
            rows = 0
            cpu = time.process_time()
            for seq, group in enumerate(groups):
                fields = []
                for k in group:
                    fields.append(
                        [f"s{k}", "succeeded", 1, "null", None, None, None, started, finished]
                    )
                    fields[-1] += (1e-6, k, None)
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO step_groups VALUES (?, ?, ?, ?)",
                    ("r", seq, encode(fields), fields[-1][8]),
                )
                conn.execute("COMMIT")
                rows += len(group)
            cpu = time.process_time() - cpu
            conn.close()
        return cpu / rows * 1e6

    by_key = sorted(range(N), key=lambda k: f"s{k}")
    in_key_order = [by_key[k : k + 1_000] for k in range(0, N, 1_000)]
    in_run_order = statistics.median(insert_us(waves) for _ in range(REPEATS))
    in_order = statistics.median(insert_us(in_key_order) for _ in range(REPEATS))
    # The steps table as SQLiteStore laid it out before its rows were appended in completion
    # order: the same columns, keyed by run and step name.
    keyed_steps = _STEPS.replace(
        "UNIQUE (run_id, name)\n)", "PRIMARY KEY (run_id, name)\n) WITHOUT ROWID"
    )
    assert keyed_steps != _STEPS
    keyed = _SCHEMA.replace(_STEPS, keyed_steps)
    keyed_run_order = statistics.median(insert_us(waves, keyed) for _ in range(REPEATS))
    grouped = statistics.median(grouped_us(waves) for _ in range(REPEATS))
    # Several rows a statement: fewer instructions a row (no statement begun and ended per
    # row), but a statement journal (its first rows are undone should a later one fail),
    # which SQLite spills to a temporary file past 64 KiB: measured in CPU time, interleaved
    # with one row a statement.
    single, several = [], []
    for _ in range(REPEATS):
        single.append(insert_us(waves))
        several.append(insert_us(waves, per_statement=32))
    lines = [
        "## What each mode must build per step (timed alone)",
        "",
        f"CPU, medians of {REPEATS} repeats in this process: the floor of each mode's overhead.",
        "",
        "| mode | work fixed by its contract, per step | us/step |",
        "|---|---|---:|",
        f"| with on_progress | two WorkflowProgress reports, nobody keeping them "
        f"(a start refilled, an end new) "
        f"| {per_call_us(two_refills):.2f} |",
        f"| with on_progress | two WorkflowProgress reports, kept (built) "
        f"| {per_call_us(two_snapshots):.2f} |",
        f"| with a store | the row of its record (what MemoryStore and SQLiteStore are given) "
        f"| {per_call_us(one_row):.2f} |",
        f"| with another store | a StepRecord built from it (times as timestamps) "
        f"| {per_call_us(one_record):.2f} |",
        f"| with SQLiteStore | its row, in groups of 1,000 rows in key order | {in_order:.2f} |",
        f"| with SQLiteStore | its row, in the random DAG's {len(waves)} waves of ready steps, "
        f"in completion order (rows appended; the index on run and name takes the rest) "
        f"| {in_run_order:.2f} |",
        f"| with SQLiteStore | the same, into the steps table keyed by run and step name "
        f"(WITHOUT ROWID, the layout before: each transaction rewrites pages all over the "
        f"run's rows) | {keyed_run_order:.2f} |",
        f"| with SQLiteStore | the same records, one row per group (one JSON text of the "
        f"group's records, encoding included): a layout the steps table's contract rules "
        f"out, for comparison | {grouped:.2f} |",
        f"| with SQLiteStore | its row as above, one a statement (what SQLiteStore does), "
        f"interleaved with the next row | {statistics.median(single):.2f} |",
        f"| with SQLiteStore | the same rows 32 a statement (INSERT ... VALUES (...), (...)): "
        f"about 8% fewer instructions a row, and a statement journal (spilled to a temporary "
        f"file past 64 KiB) | {statistics.median(several):.2f} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--instructions"]:
        count_instructions()
        sys.exit()
    if len(sys.argv) == 3 and sys.argv[1] == "--interleaved":
        interleaved_child(sys.argv[2])
        sys.exit()
    _prepare()
    bench.main(plan, title="Workflows: scheduling overhead per step and durable completions")
    if len(sys.argv) < 2:  # the parent
        print(plan_interleaved())
        print(floors_of_modes())
    if CHECKS:
        print("### Targets\n")
        print("\n".join(CHECKS))
        print()
