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

Usage: ``python bench/workflow.py`` (or ``nox -s bench``); ``BENCH_WORKFLOW=modes python
bench/workflow.py`` runs the modes rows only. Targets checked at the end: trioflow within 1.3x
of its backend's floor, at least 2,000 persisted completions per second, and the goal of each
mode (on_progress <= 1.2x, MemoryStore <= 1.3x, SQLiteStore <= 2x the plain run; >= 5,000
persisted steps/s on a chain).
"""

from __future__ import annotations

import asyncio
import graphlib
import math
import os
import random
import sys
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any

from _harness import Bench, Row

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


PREPARED: dict[str, Any] = {}


def _prepare() -> None:
    """In a child: import everything and build the case's input before the timed region.

    The floors get their dependency dict, trioflow its ``Workflow`` (the graph as the user
    describes it); building ``graphlib.TopologicalSorter`` (floors) and validating the workflow
    (trioflow, on its first run) stay in the timed region. ``trioflow_define_and_run`` times
    the definition too.
    """
    if len(sys.argv) < 4 or sys.argv[1] != "--child":
        return
    import json

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


if __name__ == "__main__":
    _prepare()
    bench.main(plan, title="Workflows: scheduling overhead per step and durable completions")
    if CHECKS:
        print("### Targets\n")
        print("\n".join(CHECKS))
        print()
