"""What telemetry costs: run_batch and coordinator.process with it off, on (no-op API), on (SDK).

Two groups, on trio (the primary backend), each row in fresh processes (see ``_harness.py``):

* ``run_batch``: 100,000 no-op operations (``await trio.lowlevel.checkpoint()``) at
  ``limit=16``. Floor: raw trio's worker pool (16 tasks pulling from one iterator).
* ``coordinator.process``: 20,000 requests one after the other through seven no-op stages
  (as in ``bench/lifecycle.py``). Floor: the seven functions called directly.

Rows of each group:

* ``before the hooks``: trioflow as it was before telemetry existed (the source of commit
  ``BASELINE``, extracted with ``git archive``; set ``TRIOFLOW_BENCH_BASELINE`` to another
  commit), so that "off" is measured against the same code without its ``if``;
* ``telemetry off``: today's code, ``enable()`` never called (the goal: within 2% of the row
  above);
* ``on, no-op API``: ``enable()`` with OpenTelemetry's default (no-op) global providers;
* ``on, SDK``: ``enable()`` with an SDK ``TracerProvider`` (no exporter: spans are made,
  timed and dropped) and an SDK ``MeterProvider`` with an in-memory reader;
* ``on, SDK, operation_durations=False``: the same without the per-operation histogram
  (batch group only);
* ``on, SDK, trace_operations``: a span per operation too (batch group only, at 10,000
  operations: a span costs tens of microseconds).

Usage: ``python bench/telemetry.py`` (or ``nox -s bench``). The summary compares CPU time per
operation (``time.process_time()``, median of ``BENCH_REPEATS``), which the other load of a
shared machine moves far less than the wall clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

# A row that measures the code before the hooks imports trioflow from that code's source: the
# parent passes its path in the case's parameters, and it must be on sys.path before trioflow
# is imported below.
if len(sys.argv) >= 4 and sys.argv[1] == "--child":
    _source = json.loads(sys.argv[3]).get("source")
    if _source:
        sys.path.insert(0, _source)

import anyio
import trio
import trio.lowlevel

import trioflow
from _harness import Bench, Row

bench = Bench(__file__)

N = 100_000
N_TRACED = 10_000
N_REQUESTS = 20_000
LIMIT = 16
GOAL = 1.02  # telemetry off: at most 2% over the code before the hooks
BASELINE = os.environ.get("TRIOFLOW_BENCH_BASELINE", "6e9e9bbbd487aef75d339158925f821fea3dd2cf")
ROOT = Path(__file__).resolve().parent.parent


def _operations(n: int) -> Iterator[Callable[[], Awaitable[None]]]:
    checkpoint = trio.lowlevel.checkpoint
    return (checkpoint for _ in range(n))


def _enable(mode: str) -> None:
    if mode == "off":
        return
    import trioflow.telemetry

    if mode == "noop":
        trioflow.telemetry.enable()
        return
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    trioflow.telemetry.enable(
        TracerProvider(),
        MeterProvider(metric_readers=[InMemoryMetricReader()]),
        trace_operations=mode == "sdk+operations",
        operation_durations=mode != "sdk-durations",
    )


@bench.case
def raw_worker_pool(n: int, limit: int) -> int:
    async def worker(items: Iterator[Callable[[], Awaitable[None]]]) -> None:
        for op in items:
            await op()

    async def main() -> None:
        items = _operations(n)
        async with trio.open_nursery() as nursery:
            for _ in range(limit):
                nursery.start_soon(worker, items)

    trio.run(main)
    return n


@bench.case
def batch(n: int, limit: int, mode: str, source: str | None = None) -> int:
    _enable(mode)

    async def main() -> None:
        result = await trioflow.run_batch(_operations(n), limit=limit)
        assert result.succeeded == n

    trio.run(main)
    return n


async def _noop(request: Any) -> None:
    return None


@bench.case
def direct_calls(n: int) -> int:
    async def main() -> None:
        for i in range(n):
            for _ in range(7):
                await _noop(i)

    trio.run(main)
    return n


@bench.case
def coordinator(n: int, mode: str, source: str | None = None) -> int:
    import logging

    import structlog

    from trioflow.lifecycle import (
        Pipeline,
        ProcessingStatus,
        Request,
        RequestState,
        Router,
        Stage,
        open_coordinator,
    )

    _enable(mode)
    states = [
        RequestState.RECEIVED,
        RequestState.VALIDATED,
        RequestState.PLANNED,
        RequestState.CONTEXT_GATHERING,
        RequestState.PROCESSING,
        RequestState.TOOL_EXECUTION,
        RequestState.RESPONSE_FORMATTING,
    ]
    pipeline = Pipeline([Stage(f"stage{i}", state, _noop) for i, state in enumerate(states)])
    router = Router(lambda request: "query", {"query": pipeline})
    logger = structlog.wrap_logger(
        structlog.PrintLogger(open(os.devnull, "w")),  # noqa: SIM115 - lives with the process
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )

    async def main() -> None:
        async with open_coordinator(router=router, logger=logger) as c:
            for i in range(n):
                result = await c.process(Request(i))
                assert result.status is ProcessingStatus.SUCCEEDED

    anyio.run(main, backend="trio")
    return n


def _baseline_source(into: str) -> str | None:
    """Extract ``src/`` of the commit before the hooks; None when git cannot."""
    archive = Path(into) / "baseline.tar"
    done = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "-o", str(archive), BASELINE, "src"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        print(f"no baseline row: {done.stderr.strip()}", file=sys.stderr)
        return None
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return str(Path(into) / "src")


def _summary(groups: dict[str, dict[str, Row]]) -> None:
    print("### Summary (CPU time per operation, median)\n")
    print("| group | row | CPU us/op | x before the hooks |")
    print("|---|---|---:|---:|")
    for group, rows in groups.items():
        before = rows.get("before")
        for row in rows.values():
            ratio = f"{row.cpu_us / before.cpu_us:.3f}" if before and before.cpu_us else "-"
            print(f"| {group} | {row.label} | {row.cpu_us:.3f} | {ratio} |")
    for group, rows in groups.items():
        before, off = rows.get("before"), rows["off"]
        if before is not None and before.cpu_us:
            ratio = off.cpu_us / before.cpu_us
            verdict = "met" if ratio <= GOAL else "NOT met"
            print(
                f"\n{group}: telemetry off is {ratio:.3f}x the code before the hooks "
                f"(goal <= {GOAL}): {verdict}"
            )
    print()


def plan(run: Callable[..., Row]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = _baseline_source(tmp)
        group = f"run_batch: {N:,} no-op operations, limit={LIMIT} (trio)"
        rows: dict[str, Row] = {}
        rows["floor"] = run(
            "raw_worker_pool", n=N, limit=LIMIT, floor=True, group=group, label="raw trio"
        )
        if source is not None:
            rows["before"] = run(
                "batch",
                n=N,
                limit=LIMIT,
                mode="off",
                source=source,
                group=group,
                label="before the hooks",
            )
        for mode, label in (
            ("off", "telemetry off"),
            ("noop", "on, no-op API"),
            ("sdk", "on, SDK"),
            ("sdk-durations", "on, SDK, operation_durations=False"),
        ):
            rows[mode] = run("batch", n=N, limit=LIMIT, mode=mode, group=group, label=label)
        rows["sdk+operations"] = run(
            "batch",
            n=N_TRACED,
            limit=LIMIT,
            mode="sdk+operations",
            group=group,
            label=f"on, SDK, trace_operations ({N_TRACED:,} ops)",
        )
        requests_group = f"coordinator.process: {N_REQUESTS:,} requests, seven no-op stages (trio)"
        requests: dict[str, Row] = {}
        requests["floor"] = run(
            "direct_calls",
            n=N_REQUESTS,
            floor=True,
            group=requests_group,
            label="raw trio: seven direct calls",
        )
        if source is not None:
            requests["before"] = run(
                "coordinator",
                n=N_REQUESTS,
                mode="off",
                source=source,
                group=requests_group,
                label="before the hooks",
            )
        for mode, label in (
            ("off", "telemetry off"),
            ("noop", "on, no-op API"),
            ("sdk", "on, SDK"),
        ):
            requests[mode] = run(
                "coordinator", n=N_REQUESTS, mode=mode, group=requests_group, label=label
            )
    GROUPS.update({"run_batch": rows, "coordinator.process": requests})


GROUPS: dict[str, dict[str, Row]] = {}

if __name__ == "__main__":
    bench.main(plan, title="Telemetry: the cost of off, no-op and SDK")
    if GROUPS:  # the parent, after the tables
        _summary(GROUPS)
