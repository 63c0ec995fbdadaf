"""Request lifecycle overhead: a seven-stage no-op pipeline through the coordinator.

Each request goes through seven no-op async stages (one per non-terminal request state) and
ends COMPLETED. Rows, per backend, all in one run (each row in a fresh process, see
``_harness.py``):

* floor: the seven functions called directly, one request after the other;
* ``Pipeline.run``: a ``Request`` created and run through the pipeline (eight validated
  transitions with history, per-stage timings, a ``ProcessingResult``);
* ``coordinator.process``: the same through ``open_coordinator`` with the default
  configuration (global and per-user limits, the 30 s request timeout, statistics, structlog
  with debug events filtered out), one request after the other;
* ``coordinator.process, 100 at once``: 100 concurrent requests at a time, from 10 users, under
  the default limits (50 at once, 10 per user), so requests also queue for admission;
* the two coordinator rows again with an ``SQLiteRequestStore`` (``requests=``) recording every
  request in a file of a fresh temporary directory: the target is at most 20% over the same
  row without a store, in the same run.

The request store, last measured (2026-12-01) as an A/B of the writer before and after it kept
finished requests as rows only (so they are freed at once, instead of being promoted by the
garbage collector while they wait for their batch) and wrote batches as multi-row INSERTs:
4,000 requests a row, each in a fresh process, medians, on 2 cores shared with other work
(wall times were noise; CPU time of both threads is the figure). One request at a time, CPU
time with the store over without, two runs: trio 2.36x -> 1.56x and 2.10x -> 2.04x; asyncio
1.81x -> 1.78x and 2.10x -> 1.39x. 100 at once: trio 1.56x -> 1.51x and 1.22x -> 1.20x,
asyncio 1.26x -> 1.38x and 1.43x -> 1.56x. The 20% target is not met on no-op stages: SQLite
alone costs about 9 us of CPU per row (five B-tree inserts and a share of a commit, measured
by itself) and the writer's notes a few more, against a 50 us request; a stored request costs
20-50 us more CPU, within 20% of a request whose own work takes 100-250 us or more.

A last table times the parts of a request on trio, each by itself in a loop of its own
(``part``: ``Request()``, a cancel scope with and without a deadline, the checkpoint, the seven
transitions, the clock reads, the result, the admission), and says how much of the
``Pipeline.run`` and ``coordinator.process`` rows is left for the code around them.

The CPU summary also checks the goals of the request lifecycle on trio: ``Pipeline.run`` at most
15 us, ``coordinator.process`` at most 25 us one at a time and at most 2x that per request 100
at once, and gives the cost of a coordinator whose logger has debug on (structlog unconfigured,
which renders every event), against the default row.

The request object is created inside the timed loop (a server creates one per request).
Besides the harness's wall-clock table, the summary gives each row's CPU time per request
(``time.process_time()`` in a fresh process, median of ``BENCH_REPEATS``), which other load on
the machine inflates far less than the wall clock.
Usage: ``python bench/lifecycle.py`` (or ``nox -s bench``). The target, checked at the end:
at most 50 us of coordination overhead per request on trio (coordinator row minus floor row).

On a shared machine even CPU time varies by 5-10% from one process to the next, more than one
change to the hot path saves. ``python bench/lifecycle.py --instructions [CASE ...]`` counts
instead the instructions each request costs on trio, under valgrind's callgrind (the same
count from one run to the next): each case runs with 1,000 and with 3,000 requests, and the
difference over 2,000 leaves out the start-up. The cases: ``pipeline``, ``coordinator``,
``coordinator-no-timeout`` (``timeout=None``: what the request's deadline costs) and the parts
above (``request``, ``scope``, ...); all of them by default (about 25 s each). Compare two
versions in one session with ``PYTHONPATH`` set to each one's ``src``.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Imported here, not in the cases: the harness times the case function only, and importing
# trio and trioflow takes longer than thousands of requests.
import anyio
import structlog
import trio  # noqa: F401 - imported up front like asyncio, so neither row pays for an import

from _harness import REPEATS, Bench, Row
from trioflow.lifecycle import (
    Pipeline,
    ProcessingStatus,
    Request,
    RequestState,
    Router,
    Stage,
    open_coordinator,
)

try:
    from trioflow.lifecycle import SQLiteRequestStore
except ImportError:  # a version before request stores, measured by bench/compare.py
    SQLiteRequestStore = None  # type: ignore[assignment,misc]

bench = Bench(__file__)

N = 20_000
TARGET_US = 50.0
STORE_TARGET = 1.20  # a request store may slow a request by 20% at most
# The goals of "fast in every mode", in CPU time per request on trio.
PIPELINE_GOAL_US = 15.0
COORDINATOR_GOAL_US = 25.0
CONCURRENT_GOAL = 2.0  # 100 at once, per request, over one at a time


def _stages() -> list[Any]:
    async def noop(request: Any) -> Any:
        return None

    return [noop] * 7


@bench.case
def floor(n: int, backend: str) -> int:
    fns = _stages()

    async def main() -> None:
        for i in range(n):
            payload: Any = i
            for fn in fns:
                await fn(payload)

    anyio.run(main, backend=backend)
    return n


_PATH = [
    RequestState.RECEIVED,
    RequestState.VALIDATED,
    RequestState.PLANNED,
    RequestState.CONTEXT_GATHERING,
    RequestState.PROCESSING,
    RequestState.TOOL_EXECUTION,
    RequestState.RESPONSE_FORMATTING,
    RequestState.COMPLETED,
]


def _pipeline() -> Any:
    states = _PATH[:-1]  # each stage's state; the run ends in the last
    fns = _stages()
    return Pipeline(
        [Stage(f"stage{i}", s, fn) for i, (s, fn) in enumerate(zip(states, fns, strict=True))]
    )


@bench.case
def pipeline(n: int, backend: str) -> int:
    pipe = _pipeline()

    async def main() -> None:
        for i in range(n):
            result = await pipe.run(Request(i))
            assert result.status is ProcessingStatus.SUCCEEDED

    anyio.run(main, backend=backend)
    return n


def _quiet_logger() -> Any:
    return structlog.wrap_logger(
        structlog.PrintLogger(open("/dev/null", "w")),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )


@bench.case
def coordinator(
    n: int,
    backend: str,
    concurrent: int,
    store: bool = False,
    debug: bool = False,
    timeout: bool = True,
) -> int:
    router = Router(lambda request: "query", {"query": _pipeline()})

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            options: dict[str, Any] = {}  # none by default: an older version takes them too
            if store:
                path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "requests.db"
                assert SQLiteRequestStore is not None, "this version has no SQLiteRequestStore"
                options["requests"] = await stack.enter_async_context(SQLiteRequestStore(path))
            c = await stack.enter_async_context(
                open_coordinator(
                    router=router,
                    # debug: structlog as it comes, unconfigured (it prints every event)
                    logger=structlog.get_logger("trioflow") if debug else _quiet_logger(),
                    **options,
                )
            )
            if concurrent == 1:
                # The configured 30 s (process's default), or no deadline: the call as a
                # user writes it (an older version has no timeout=).
                if timeout:
                    for i in range(n):
                        result = await c.process(Request(i))
                        assert result.status is ProcessingStatus.SUCCEEDED
                else:
                    for i in range(n):
                        result = await c.process(Request(i), timeout=None)
                        assert result.status is ProcessingStatus.SUCCEEDED
                return
            done = 0
            while done < n:
                batch = [Request(i, user_id=f"user{i % 10}") for i in range(concurrent)]
                results = await c.process_many(batch)
                assert all(r.status is ProcessingStatus.SUCCEEDED for r in results)
                done += concurrent

    anyio.run(main, backend=backend)
    return n


# What each part of a request costs by itself, timed in a loop of its own (trio): the parts
# of the coordinator row, so that what is left over is the code around them.
PARTS = {
    "request": "`Request()`",
    "scope": "one trio cancel scope (no deadline)",
    "deadline": "one trio cancel scope with a deadline",
    "checkpoint": "the coordinator's checkpoint (trio's own)",
    "transitions": "seven transitions along a route, with history and statistics",
    "clock": "nine clock reads (eight in Pipeline.run, one in the coordinator)",
    "result": "the `ProcessingResult`",
    "admission": "the admission (taken and given back, nobody waiting)",
}


@bench.case
def part(n: int, backend: str, what: str) -> int:
    # The parts use the modules' own building blocks (private names, on purpose).
    from trioflow._backend import cancel_scope, current_backend, current_clock
    from trioflow._lifecycle._admission import Admission, Ticket
    from trioflow._lifecycle._machine import Route
    from trioflow._lifecycle._request import make_result
    from trioflow.lifecycle import REQUEST_TRANSITIONS, OrchestrationConfig, StateMachine

    async def main() -> None:
        now = current_clock()
        machine = StateMachine(REQUEST_TRANSITIONS, RequestState.RECEIVED)
        route = Route(machine, [None, *itertools.pairwise(_PATH)])
        admission = Admission(OrchestrationConfig(), None)
        checkpoint = current_backend().checkpoint
        # A few requests, used over and over: thousands alive at once would make the garbage
        # collector cost more than it does for requests that end one after the other.
        requests = [Request(i) for i in range(100)]
        done = Request("done")  # a request that went through every state
        for index in range(1, 8):
            route.move(done, index, _PATH[index], 1.0)
        done.timings.update(dict.fromkeys("abcdefg", 0.0))
        gc.collect()
        start = time.process_time()
        if what == "request":
            for i in range(n):
                Request(i)
        elif what == "scope":
            for _ in range(n):
                with cancel_scope():
                    pass
        elif what == "deadline":
            for _ in range(n):
                with cancel_scope(now() + 30):
                    pass
        elif what == "checkpoint":
            for _ in range(n):
                await checkpoint()
        elif what == "clock":
            for _ in range(n):
                now(), now(), now(), now(), now(), now(), now(), now(), now()
        elif what == "admission":
            for i in range(n):
                ticket = Ticket(requests[i % 100])
                admission.try_now(ticket)
                admission.release(ticket)
        elif what == "transitions":
            for i in range(n):
                request = requests[i % 100]
                request.state = RequestState.RECEIVED  # back to the start, history emptied
                request.history.clear()
                for index in range(1, 8):  # RECEIVED -> ... -> COMPLETED
                    route.move(request, index, _PATH[index], 1.0)
        else:
            for _ in range(n):
                make_result(done, ProcessingStatus.SUCCEEDED, 1.0)
        _PART_US.append((time.process_time() - start) / n * 1e6)

    anyio.run(main, backend=backend)
    return n


_PART_US: list[float] = []  # what part() timed itself, without its setup (see _cpu_child)


def _cpu_us(name: str, **params: Any) -> float:
    """Median CPU time per op of a case, each repetition in a fresh process.

    ``time.process_time()`` counts only this process's CPU time, so it is far less sensitive
    than the wall clock to other work on the machine (shared CI runners, parallel jobs).
    """
    samples = []
    for _ in range(REPEATS):
        out = subprocess.run(
            [sys.executable, __file__, "--cpu", name, json.dumps(params)],
            check=True,
            capture_output=True,
            text=True,
        )
        samples.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(samples)


def _cpu_child(name: str, params: str) -> None:
    kwargs = json.loads(params)
    gc.collect()
    start = time.process_time()
    ops = bench.cases[name](**kwargs)
    print(_PART_US[0] if _PART_US else (time.process_time() - start) / ops * 1e6)


def plan(run: Any) -> None:
    rows: dict[str, dict[str, Row]] = {}
    cpu: dict[str, dict[str, float]] = {}
    for backend in ("trio", "asyncio"):
        group = f"{backend}: seven no-op stages"
        rows[backend] = {
            "floor": run(
                "floor",
                n=N,
                backend=backend,
                floor=True,
                group=group,
                label=f"raw {backend}: seven direct calls",
            ),
            "pipeline": run("pipeline", n=N, backend=backend, group=group, label="Pipeline.run"),
            "coordinator": run(
                "coordinator",
                n=N,
                backend=backend,
                concurrent=1,
                group=group,
                label="coordinator.process",
            ),
            "concurrent": run(
                "coordinator",
                n=N,
                backend=backend,
                concurrent=100,
                group=group,
                label="coordinator.process, 100 at once",
            ),
            "stored": run(
                "coordinator",
                n=N,
                backend=backend,
                concurrent=1,
                store=True,
                group=group,
                label="coordinator.process, SQLite request store",
            ),
            "stored concurrent": run(
                "coordinator",
                n=N,
                backend=backend,
                concurrent=100,
                store=True,
                group=group,
                label="coordinator.process, 100 at once, SQLite request store",
            ),
        }
        cpu[backend] = {
            "floor": _cpu_us("floor", n=N, backend=backend),
            "pipeline": _cpu_us("pipeline", n=N, backend=backend),
            "coordinator": _cpu_us("coordinator", n=N, backend=backend, concurrent=1),
            "concurrent": _cpu_us("coordinator", n=N, backend=backend, concurrent=100),
            "debug": _cpu_us("coordinator", n=N // 10, backend=backend, concurrent=1, debug=True),
            "stored": _cpu_us("coordinator", n=N, backend=backend, concurrent=1, store=True),
        }
    parts = {what: _cpu_us("part", n=N, backend="trio", what=what) for what in PARTS}
    lines = ["", "### Target: coordination overhead per request", ""]
    for backend, r in rows.items():
        overhead = r["coordinator"].per_op_us - r["floor"].per_op_us
        lines.append(
            f"- {backend}: {r['coordinator'].per_op_us:.1f} us per request through the "
            f"coordinator, {overhead:.1f} us over the direct calls "
            f"({r['pipeline'].per_op_us - r['floor'].per_op_us:.1f} us of it in Pipeline.run)"
        )
    for backend, c in cpu.items():
        lines.append(
            f"- {backend}, CPU time (process_time, median of {REPEATS}): "
            f"{c['coordinator']:.1f} us per request through the coordinator, "
            f"{c['coordinator'] - c['floor']:.1f} us over the direct calls "
            f"({c['pipeline'] - c['floor']:.1f} us of it in Pipeline.run)"
        )
    trio_overhead = rows["trio"]["coordinator"].per_op_us - rows["trio"]["floor"].per_op_us
    trio_cpu = cpu["trio"]["coordinator"] - cpu["trio"]["floor"]
    verdict = "met" if trio_overhead <= TARGET_US else "MISSED"
    lines.append(
        f"- target <= {TARGET_US:.0f} us on trio (wall clock): {verdict} ({trio_overhead:.1f} us;"
        f" {trio_cpu:.1f} us of CPU time; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs while measuring)"
    )
    lines += ["", "### Goals of the request lifecycle (CPU time per request)", ""]
    for backend, c in cpu.items():
        ratio = c["concurrent"] / c["coordinator"]
        lines.append(
            f"- {backend}: Pipeline.run {c['pipeline']:.1f} us (goal <= {PIPELINE_GOAL_US:.0f} "
            f"us on trio); coordinator.process {c['coordinator']:.1f} us one at a time (goal <= "
            f"{COORDINATOR_GOAL_US:.0f} us on trio), {c['concurrent']:.1f} us 100 at once "
            f"({ratio:.2f}x, goal <= {CONCURRENT_GOAL:.0f}x); with structlog unconfigured (debug "
            f"events rendered): {c['debug']:.1f} us, {c['debug'] / c['coordinator']:.1f}x"
        )
    lines += [
        "",
        "### Where a request's time goes (trio, CPU time, each part timed by itself)",
        "",
        "| part | us |",
        "|---|---:|",
        f"| the seven stage calls (the floor row) | {cpu['trio']['floor']:.1f} |",
    ]
    lines += [f"| {PARTS[what]} | {us:.1f} |" for what, us in parts.items()]
    # Pipeline.run has no checkpoint, no admission and no deadline (one clock read fewer).
    in_pipeline = sum(parts[w] for w in ("request", "scope", "transitions", "result"))
    in_pipeline += parts["clock"] * 8 / 9 + cpu["trio"]["floor"]
    in_coordinator = sum(parts[w] for w in ("request", "deadline", "checkpoint", "transitions"))
    in_coordinator += sum(parts[w] for w in ("clock", "result", "admission"))
    in_coordinator += cpu["trio"]["floor"]
    lines += [
        "",
        f"- Pipeline.run: {cpu['trio']['pipeline']:.1f} us, of which the parts above make "
        f"{in_pipeline:.1f} (the floor, Request(), a scope, the transitions, eight clock reads "
        f"and the result): {cpu['trio']['pipeline'] - in_pipeline:.1f} us for the code around "
        "them (per-stage counters and timings, results, checks, the run's bookkeeping)",
        f"- coordinator.process: {cpu['trio']['coordinator']:.1f} us, of which the parts make "
        f"{in_coordinator:.1f} (a scope with a deadline, the checkpoint, the admission): "
        f"{cpu['trio']['coordinator'] - in_coordinator:.1f} us for the code around them",
    ]
    lines += ["", "### Target: an SQLite request store slows a request by 20% at most", ""]
    for backend, r in rows.items():
        one = r["stored"].per_op_us / r["coordinator"].per_op_us
        many = r["stored concurrent"].per_op_us / r["concurrent"].per_op_us
        cpu_ratio = cpu[backend]["stored"] / cpu[backend]["coordinator"]
        verdict = "met" if max(one, many) <= STORE_TARGET else "MISSED"
        added = cpu[backend]["stored"] - cpu[backend]["coordinator"]
        lines.append(
            f"- {backend}: {one:.2f}x one at a time ({r['stored'].per_op_us:.1f} against "
            f"{r['coordinator'].per_op_us:.1f} us), {many:.2f}x 100 at once; CPU time of both "
            f"threads {cpu_ratio:.2f}x ({added:.1f} us more per request: within 20% of a "
            f"request whose own work takes {added / (STORE_TARGET - 1):.0f} us or more); "
            f"target <= {STORE_TARGET:.2f}x on no-op stages: {verdict}"
        )
    SUMMARY.extend(lines)


SUMMARY: list[str] = []

# The cases --instructions counts: (case, its parameters but n), on trio.
INSTRUCTION_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "pipeline": ("pipeline", {}),
    "coordinator": ("coordinator", {"concurrent": 1}),
    "coordinator-no-timeout": ("coordinator", {"concurrent": 1, "timeout": False}),
    **{what: ("part", {"what": what}) for what in PARTS},
}


def _instructions(name: str, params: dict[str, Any]) -> float:
    """Instructions per request of a case on trio, counted by callgrind (see the docstring)."""
    counts = []
    for n in (1_000, 3_000):
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                __file__,
                "--cpu",
                name,
                json.dumps({**params, "n": n, "backend": "trio"}),
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts every run
        )
        found = re.search(r"Collected : (\d+)", out.stderr)
        assert found is not None, out.stderr
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / 2_000


def _count_instructions(names: list[str]) -> None:
    unknown = sorted(set(names) - set(INSTRUCTION_CASES))
    if unknown:
        sys.exit(f"unknown cases {unknown}; known: {sorted(INSTRUCTION_CASES)}")
    print("| case (trio) | instructions per request |\n|---|---:|")
    for name in names or INSTRUCTION_CASES:
        case, params = INSTRUCTION_CASES[name]
        print(f"| {name} | {_instructions(case, params):,.0f} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--cpu":
        _cpu_child(sys.argv[2], sys.argv[3])
        sys.exit(0)
    if len(sys.argv) >= 2 and sys.argv[1] == "--instructions":
        _count_instructions(sys.argv[2:])
        sys.exit(0)
    bench.main(plan, title="Request lifecycle: coordination overhead per request")
    if SUMMARY:
        print("\n".join(SUMMARY))
        sys.stdout.flush()
