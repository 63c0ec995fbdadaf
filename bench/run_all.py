"""Run every benchmark in ``bench/`` and write one markdown report to ``bench/results.md``.

Usage: ``nox -s bench`` (or ``python bench/run_all.py [NAME ...]`` to run only some scripts, e.g.
``executor``). Set ``BENCH_REPEATS`` to change the repetitions per case (default 5).
"""

from __future__ import annotations

import pathlib
import platform
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).parent
SCRIPTS = [
    "executor",
    "workflow",
    "resilience",
    "logs",
    "lifecycle",
    "limits",
    "pools",
    "mcp",
    "dask",
    "redis",
    "telemetry",
    "imports",
    "cli_projects",
    "cli",
]


def main() -> None:
    wanted = sys.argv[1:] or SCRIPTS
    parts = [
        "# trioflow benchmark report",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} · Python {platform.python_version()} · "
        f"{platform.machine()}",
        "",
    ]
    for name in wanted:
        script = HERE / f"{name}.py"
        if not script.exists():
            print(f"skipping {name}: {script} does not exist yet", file=sys.stderr)
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        out = subprocess.run(
            [sys.executable, str(script)], check=True, stdout=subprocess.PIPE, text=True
        )
        parts.append(out.stdout)
        print(out.stdout)
    report = HERE / "results.md"
    report.write_text("\n".join(parts))
    print(f"report written to {report}", file=sys.stderr)


if __name__ == "__main__":
    main()
