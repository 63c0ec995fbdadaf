"""Start-up of the ``trioflow`` command, in fresh processes, against ``import trio``.

What a user waits for is the whole process: the interpreter's start, the imports, the work,
the exit. Each row is the median over ``BENCH_REPEATS`` x 4 fresh processes of the wall time
the parent measures around ``subprocess.run``, and of the CPU time the child used (user +
system, from ``getrusage``: steadier than wall time on a busy machine). Rows, all in one run:

* ``python -c pass``: the interpreter alone;
* floor: ``python -c "import trio"`` (what any trio program pays);
* ``trioflow --version``;
* ``trioflow runs`` on a state file of 20 runs;
* ``trioflow show latest`` on the same file;
* ``trioflow run`` of a one-step workflow (the step runs ``true``), which starts the run's
  engine, writes the state file and the step's log.

Usage: ``python bench/cli.py`` (or ``nox -s bench``). The goal, checked at the end:
``trioflow --version`` at most 1.5x the floor.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPEATS = int(os.environ.get("BENCH_REPEATS", "5")) * 4
SRC = Path(__file__).resolve().parent.parent / "src"
GOAL = 1.5


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{path}" if path else str(SRC)}


def measure(args: list[str], cwd: Path) -> tuple[float, float]:
    """Median wall and CPU milliseconds of a fresh process running ``args``."""
    walls, cpus = [], []
    env = _env()
    for _ in range(REPEATS):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(args, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
        walls.append((time.perf_counter() - start) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        cpus.append(cpu * 1000)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    python = sys.executable
    trioflow = [python, "-m", "trioflow"]
    with tempfile.TemporaryDirectory() as directory:
        cwd = Path(directory)
        (cwd / "one.toml").write_text('[steps.only]\nrun = ["true"]\n', encoding="utf-8")
        for _ in range(20):
            subprocess.run(
                [*trioflow, "run", "one.toml"],
                cwd=cwd,
                env=_env(),
                check=True,
                stdout=subprocess.DEVNULL,
            )
        measure([*trioflow, "--version"], cwd)  # warm the bytecode cache
        cases = [
            ("python -c pass", [python, "-c", "pass"], False),
            ('python -c "import trio" (floor)', [python, "-c", "import trio"], True),
            ("trioflow --version", [*trioflow, "--version"], False),
            ("trioflow runs (20 runs)", [*trioflow, "runs"], False),
            ("trioflow show latest", [*trioflow, "show", "latest"], False),
            ("trioflow run (one step: true)", [*trioflow, "run", "one.toml"], False),
        ]
        rows = [(label, *measure(args, cwd), floor) for label, args, floor in cases]
    floor_wall, floor_cpu = next((w, c) for _, w, c, floor in rows if floor)
    print("## Command start-up (fresh processes)")
    print()
    print(f'median of {REPEATS} processes each; ratios to the floor, `python -c "import trio"`')
    print()
    print("| command | wall ms | x floor | CPU ms | x floor |")
    print("|---|---:|---:|---:|---:|")
    for label, wall, cpu, _ in rows:
        print(
            f"| {label} | {wall:.1f} | {wall / floor_wall:.2f}x | {cpu:.1f} | "
            f"{cpu / floor_cpu:.2f}x |"
        )
    version_cpu = next(c for label, _, c, _ in rows if label == "trioflow --version")
    ratio = version_cpu / floor_cpu
    verdict = "met" if ratio <= GOAL else "NOT met"
    print()
    print(f"goal: `trioflow --version` CPU at most {GOAL}x the floor: {ratio:.2f}x, {verdict}")
    print()


if __name__ == "__main__":
    main()
