"""A tiny benchmark harness shared by the scripts in ``bench/``.

Each case runs in a fresh interpreter (``python SCRIPT --child CASE JSON-PARAMS``), several times;
the parent reports the median time per operation, the spread and the peak RSS growth of the
child. Usage in a bench script::

    from _harness import Bench

    bench = Bench(__file__)

    @bench.case
    def raw_trio(n: int, limit: int) -> int:   # returns the number of operations it ran
        ...

    if __name__ == "__main__":
        bench.main(lambda run: [
            run("raw_trio", n=100_000, limit=16, floor=True, group="limit=16"),
            ...
        ])

``run(...)`` returns a Row; rows in one group are printed as one markdown table, with the ratio
of each row to the group's floor row.
"""

from __future__ import annotations

import gc
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Row:
    group: str
    label: str
    per_op_us: float
    spread_us: tuple[float, float]
    rss_growth_mb: float
    ops: int
    floor: bool = False
    cpu_us: float = 0.0  # median CPU time per operation (time.process_time), less noisy
    extra: dict[str, Any] = field(default_factory=dict)


def _load_trioflow() -> None:
    """Import the modules of trioflow's public names before a case is timed.

    ``import trioflow`` imports a name's module on its first use: the case would otherwise
    pay for those imports (tens of milliseconds, a quarter of a microsecond per operation
    over 100,000 of them), which is start-up cost, not the cost per operation it measures.
    """
    module = sys.modules.get("trioflow")
    if module is not None:
        for public in module.__all__:
            getattr(module, public)


@dataclass
class Case:
    """One case of a group run in turns (:meth:`Bench.run_interleaved`)."""

    name: str
    params: dict[str, Any]
    label: str | None = None
    floor: bool = False


class Bench:
    def __init__(self, script: str) -> None:
        self.script = os.path.abspath(script)
        self.cases: dict[str, Callable[..., int]] = {}
        self.rows: list[Row] = []

    def case(self, fn: Callable[..., int]) -> Callable[..., int]:
        self.cases[fn.__name__] = fn
        return fn

    # --- child side -------------------------------------------------------------------------
    def _child(self, name: str, params: str) -> None:
        kwargs = json.loads(params)
        seed = os.environ.get("BENCH_TRIO_SEED")
        if seed is not None:
            # trio reverses the order of half its scheduling rounds at random: seeded, a count
            # of instructions is the same from one run to the next (only here, in the bench).
            import trio._core._run

            trio._core._run._r.seed(int(seed))
        _load_trioflow()
        gc.collect()
        before = _rss_kb()
        start = time.perf_counter()
        cpu = time.process_time()
        ops = self.cases[name](**kwargs)
        cpu = time.process_time() - cpu
        elapsed = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        growth = peak - before
        print(json.dumps({"elapsed": elapsed, "cpu": cpu, "ops": ops, "rss_growth_kb": growth}))

    # --- parent side ------------------------------------------------------------------------
    def _sample(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Run one case once in a fresh interpreter and return what the child measured."""
        out = subprocess.run(
            [sys.executable, self.script, "--child", name, json.dumps(params)],
            check=True,
            capture_output=True,
            text=True,
        )
        data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return data

    def _row(self, group: str, label: str, floor: bool, samples: list[dict[str, Any]]) -> Row:
        ops = int(samples[-1]["ops"])
        wall = [d["elapsed"] / max(ops, 1) * 1e6 for d in samples]
        row = Row(
            group=group,
            label=label,
            per_op_us=statistics.median(wall),
            spread_us=(min(wall), max(wall)),
            rss_growth_mb=statistics.median(d["rss_growth_kb"] / 1024 for d in samples),
            ops=ops,
            floor=floor,
            cpu_us=statistics.median(d.get("cpu", 0.0) / max(ops, 1) * 1e6 for d in samples),
        )
        self.rows.append(row)
        print(
            f"  {group:<28} {row.label:<44} {row.per_op_us:9.2f} us/op",
            file=sys.stderr,
            flush=True,
        )
        return row

    def run(
        self,
        name: str,
        *,
        group: str,
        label: str | None = None,
        floor: bool = False,
        repeats: int | None = None,
        **params: Any,
    ) -> Row:
        samples = [self._sample(name, params) for _ in range(repeats or REPEATS)]
        return self._row(group, label or name, floor, samples)

    def run_interleaved(
        self, group: str, cases: list[Case], *, repeats: int | None = None
    ) -> list[Row]:
        """Run the cases of one group in turns: each round runs every case once.

        On a shared machine whose speed drifts over the minutes a group takes, running each
        case's repeats back to back would compare a case measured in a fast minute with a floor
        measured in a slow one; in turns, every case sees the same minutes. Each round runs the
        cases in an order of its own (shuffled, seeded: the same from one bench run to the
        next), so that no case always runs first after the round before, nor always right after
        the same case. Returns the rows in the order of ``cases``; ``repeats`` rounds
        (``BENCH_REPEATS`` by default).
        """
        samples: list[list[dict[str, Any]]] = [[] for _ in cases]
        order = random.Random(len(cases))
        for _ in range(repeats or REPEATS):
            turns = list(range(len(cases)))
            order.shuffle(turns)
            for k in turns:
                samples[k].append(self._sample(cases[k].name, cases[k].params))
        return [
            self._row(group, case.label or case.name, case.floor, taken)
            for case, taken in zip(cases, samples, strict=True)
        ]

    def instructions(self, name: str, params: dict[str, Any], sizes: tuple[int, int]) -> float:
        """Count the instructions per operation of a case, under valgrind's cachegrind.

        The case runs at both ``sizes`` (its ``n``); the difference of the two counts over the
        difference of the sizes leaves out everything a run pays once (start-up, imports).
        No load of the machine moves the count, nor does trio's random scheduling, which is
        seeded: figures that a shared machine's CPU time cannot settle. Needs ``valgrind``.
        """
        counts = []
        for n in sizes:
            out = subprocess.run(
                [
                    "valgrind",
                    "--tool=cachegrind",
                    "--cache-sim=no",
                    "--cachegrind-out-file=/dev/null",
                    sys.executable,
                    self.script,
                    "--child",
                    name,
                    json.dumps({**params, "n": n}),
                ],
                check=True,
                capture_output=True,
                text=True,
                # The same dict layouts and the same scheduling every run.
                env={**os.environ, "PYTHONHASHSEED": "0", "BENCH_TRIO_SEED": "1"},
            )
            found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
            assert found is not None, out.stderr
            counts.append(int(found.group(1).replace(",", "")))
        return (counts[1] - counts[0]) / (sizes[1] - sizes[0])

    def table(self, title: str) -> str:
        lines = [f"## {title}", ""]
        groups: dict[str, list[Row]] = {}
        for row in self.rows:
            groups.setdefault(row.group, []).append(row)
        for group, rows in groups.items():
            floor = next((r for r in rows if r.floor), rows[0])
            lines += [
                f"### {group}",
                "",
                "| case | ops | median us/op | min-max us/op | x floor | CPU us/op | CPU x floor "
                "| peak RSS growth MB |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for r in rows:
                ratio = r.per_op_us / floor.per_op_us if floor.per_op_us else float("nan")
                cpu_ratio = r.cpu_us / floor.cpu_us if floor.cpu_us else float("nan")
                mark = " (floor)" if r.floor else ""
                lines.append(
                    f"| {r.label}{mark} | {r.ops:,} | {r.per_op_us:.2f} | "
                    f"{r.spread_us[0]:.2f}-{r.spread_us[1]:.2f} | {ratio:.2f} | "
                    f"{r.cpu_us:.2f} | {cpu_ratio:.2f} | {r.rss_growth_mb:.1f} |"
                )
            lines.append("")
        return "\n".join(lines)

    def main(self, plan: Callable[[Callable[..., Row]], object], *, title: str) -> None:
        if len(sys.argv) >= 2 and sys.argv[1] == "--child":
            self._child(sys.argv[2], sys.argv[3])
            return
        plan(self.run)
        print(self.table(title))
