"""Two versions of trioflow on the same rows, in the same run: what a change bought.

``python bench/compare.py REV`` takes the ``src/`` of the git revision ``REV`` (``git archive``,
into a temporary directory) as "before" and the working tree's ``src/`` as "after", and runs the
rows of the performance table (every batch mode at ``limit=16`` and without a limit on both
backends, ``Pipeline.run`` and ``coordinator.process``, a 10,000-step workflow plainly and with
each option) through the same bench cases (``bench/executor.py``, ``bench/lifecycle.py``,
``bench/workflow.py``), each child importing one version or the other (``PYTHONPATH``).

Each round runs every case once in each version and every raw floor once (it runs no trioflow),
in a shuffled order of its own (seeded), so that the drift of a shared machine's speed moves
both versions alike; ``BENCH_REPEATS`` rounds (5). The table gives the median CPU time per
operation of each version, the ratio after/before, and each version's ratio to the row's floor
(the raw trio or asyncio floor of ``bench/executor.py`` and ``bench/lifecycle.py``, the same
figure for both; for a workflow option, the plain run of the same version). ``--only WORD``
keeps the rows whose label holds ``WORD``. Instruction counts of the two versions:
``PYTHONPATH=DIR/src python bench/executor.py --instructions`` (and the same for
``workflow.py`` and ``lifecycle.py``) with each version's ``src`` in ``DIR``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Any

import executor
import lifecycle
import workflow
from _harness import REPEATS

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Measure:
    """A bench case: the script that defines it, its name and its parameters."""

    script: str
    case: str
    params: dict[str, Any]
    # Whether the case runs trioflow: a raw trio or asyncio floor does not, and runs once a
    # round, its figure the floor of both versions.
    versioned: bool = True

    def key(self) -> str:
        return json.dumps([self.script, self.case, self.params], sort_keys=True)


@dataclass(frozen=True)
class Line:
    """One row of the comparison: the case measured in each version, and its floor."""

    label: str
    case: Measure
    floor: Measure


def _lines() -> list[Line]:
    # The rows, sizes and labels of the bench scripts themselves.
    lines: list[Line] = []
    n, limit = executor.N, executor.LIMIT
    for backend in ("trio", "asyncio"):
        pool = Measure("executor", f"{backend}_worker_pool", {"n": n, "limit": limit}, False)
        for mode, label in executor.MODES:
            params: dict[str, Any] = {"n": n, "limit": limit, "backend": backend, "mode": mode}
            case = Measure("executor", "trioflow_mode", params)
            lines.append(Line(f"{backend}, limit={limit}: {label}", case, pool))
        unbounded = (
            Measure("executor", "trio_nursery", {"n": n, "limit": None}, False)
            if backend == "trio"
            else Measure("executor", "asyncio_task_group", {"n": n}, False)
        )
        params = {"n": n, "limit": None, "backend": backend, "mode": "bare"}
        case = Measure("executor", "trioflow_mode", params)
        lines.append(Line(f"{backend}: run_batch(limit=None)", case, unbounded))
    for backend in ("trio", "asyncio"):
        params = {"n": lifecycle.N, "backend": backend}
        floor = Measure("lifecycle", "floor", params, False)
        case = Measure("lifecycle", "pipeline", params)
        lines.append(Line(f"{backend}: Pipeline.run, 7 no-op stages", case, floor))
        case = Measure("lifecycle", "coordinator", {**params, "concurrent": 1})
        lines.append(Line(f"{backend}: coordinator.process, 7 no-op stages", case, floor))
    for backend in ("trio", "asyncio"):
        dag = {"shape": "random DAG", "n": workflow.N, "step": "noop", "backend": backend}
        # The floor of a workflow mode is the plain run of the same version: "x floor" is the
        # mode's cost over a run without it, the table's own measure.
        plain = Measure("workflow", "trioflow_run", dag)
        for name, label in (("trioflow_run", "plain"), *((c, m) for c, m, _ in workflow.MODES)):
            case = Measure("workflow", name, dag)
            lines.append(
                Line(f"{backend}: run_workflow, {workflow.N:,}-step DAG, {label}", case, plain)
            )
    return lines


def _source(rev: str, into: pathlib.Path) -> pathlib.Path:
    """Extract ``src/`` of the git revision ``rev`` into ``into``; return that ``src``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as opened:
        opened.extractall(into, filter="data")
    return into / "src"


def _cpu_per_op(measure: Measure, src: pathlib.Path) -> float:
    """Run one case once in a fresh interpreter importing trioflow from ``src``."""
    out = subprocess.run(
        [sys.executable, str(HERE / f"{measure.script}.py"), "--child", measure.case,
         json.dumps(measure.params)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
    )  # fmt: skip
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return float(data["cpu"]) / max(int(data["ops"]), 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision measured as 'before'")
    parser.add_argument("--only", default="", help="keep the rows whose label holds this")
    args = parser.parse_args()
    lines = [line for line in _lines() if args.only in line.label]
    if not lines:
        parser.error(f"--only {args.only!r} keeps no row")
    measures = {m.key(): m for line in lines for m in (line.case, line.floor)}
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"before": _source(args.rev, pathlib.Path(tmp)), "after": ROOT / "src"}
        samples: dict[tuple[str, str], list[float]] = {}
        turns = [
            (version, key)
            for key, measure in measures.items()
            for version in (versions if measure.versioned else ["after"])
        ]
        order = random.Random(len(turns))
        for round_ in range(REPEATS):
            order.shuffle(turns)
            for version, key in turns:
                taken = _cpu_per_op(measures[key], versions[version])
                samples.setdefault((version, key), []).append(taken)
            print(f"round {round_ + 1} of {REPEATS} done", file=sys.stderr, flush=True)
    median = {k: statistics.median(v) for k, v in samples.items()}
    for key, measure in measures.items():
        if not measure.versioned:  # one floor for both versions
            median["before", key] = median["after", key]
    print(f"## trioflow {args.rev} (before) against the working tree (after)\n")
    print(
        f"Median CPU time per operation over {REPEATS} rounds, each case in a fresh process "
        "per round and version.\n"
    )
    print(
        "| row | before us/op | after us/op | after/before | before x floor | after x floor |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    for line in lines:
        case, floor = line.case.key(), line.floor.key()
        before, after = median["before", case], median["after", case]
        print(
            f"| {line.label} | {before:.2f} | {after:.2f} | {after / before:.2f} | "
            f"{before / median['before', floor]:.2f} | {after / median['after', floor]:.2f} |"
        )


if __name__ == "__main__":
    main()
