"""Import time: ``import trioflow`` in a fresh interpreter, against ``import trio, anyio, attrs``.

A command-line run and every short-lived worker process pays for the import, so it is measured
like an operation: each row is the median of ``BENCH_REPEATS`` x 4 fresh interpreters, each
timing its own import with ``time.perf_counter`` (the interpreter's start-up is not counted).
Rows:

* floor: ``import trio, anyio, attrs`` (what any trio program built like trioflow imports);
* ``import trioflow`` with trio already imported, from the bytecode cache (the usual case);
* the same with no bytecode cache (``-B`` and ``PYTHONDONTWRITEBYTECODE``, after the cache of
  trioflow's own modules is deleted: the first run after an install or an edit);
* ``import trioflow`` and a use of every public name (each name's module is imported when the
  name is first used), with trio already imported, cached and with no bytecode cache;
* ``import trioflow.lifecycle`` on top (the request layer is imported only when used).

Usage: ``python bench/imports.py`` (or ``nox -s bench``). The goal, checked at the end:
``import trioflow`` and a use of every public name (trio already imported) at most 1.5x the
floor measured the same way: from the bytecode cache, and without one (trioflow's cache is
deleted; the floor's packages are copied without theirs, see ``_uncached_floor``).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import statistics
import subprocess
import sys

REPEATS = int(os.environ.get("BENCH_REPEATS", "5")) * 4
PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "src" / "trioflow"
GOAL = 1.5

FLOOR = (
    "import time; t = time.perf_counter(); import trio, anyio, attrs; "
    "print(time.perf_counter() - t)"
)
TRIOFLOW = (
    "import time, trio; t = time.perf_counter(); import trioflow; print(time.perf_counter() - t)"
)
# trioflow imports a name's module when the name is first used: this loads every one.
EVERY_NAME = (
    "import time, trio; t = time.perf_counter(); import trioflow; "
    "[getattr(trioflow, n) for n in trioflow.__all__ if n != 'lifecycle']; "
    "print(time.perf_counter() - t)"
)
LIFECYCLE = (
    "import time, trio; t = time.perf_counter(); import trioflow, trioflow.lifecycle; "
    "print(time.perf_counter() - t)"
)


def _uncached_floor() -> float:
    """The floor with no bytecode cache: trio, anyio and attrs compiled from their source.

    Their installed packages are copied, without their caches, to a directory put first on
    the path (the installed ones keep their caches); their own dependencies stay cached.
    """
    import importlib.util
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("trio", "anyio", "attrs", "attr"):
            spec = importlib.util.find_spec(name)
            assert spec is not None
            assert spec.submodule_search_locations
            source = pathlib.Path(next(iter(spec.submodule_search_locations)))
            shutil.copytree(
                source, pathlib.Path(tmp) / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        return measure(FLOOR, cached=False, path=tmp)


def _clear_cache() -> None:
    for cache in PACKAGE.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


def measure(code: str, *, cached: bool = True, path: str | None = None) -> float:
    """The median import time in ms of ``code`` over fresh interpreters."""
    samples = []
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = path
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a cached row writes (and then reads) the cache
    flags = []
    if not cached:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        flags = ["-B"]
    for _ in range(REPEATS):
        if not cached:
            _clear_cache()
        out = subprocess.run(
            [sys.executable, *flags, "-c", code],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
        samples.append(float(out.strip()) * 1000)
    return statistics.median(samples)


def main() -> None:
    measure(TRIOFLOW)  # write the cache once
    floor = measure(FLOOR)
    cached = measure(TRIOFLOW)
    lifecycle = measure(LIFECYCLE)
    every_name = measure(EVERY_NAME)
    uncached = measure(TRIOFLOW, cached=False)
    every_uncached = measure(EVERY_NAME, cached=False)
    floor_uncached = _uncached_floor()
    measure(TRIOFLOW)  # leave a cache behind
    rows = [
        ("import trio, anyio, attrs (floor)", floor),
        ("import trioflow, trio imported, cached", cached),
        ("import trioflow and use every public name, trio imported, cached", every_name),
        ("import trioflow + trioflow.lifecycle, trio imported, cached", lifecycle),
        ("import trioflow, trio imported, no bytecode cache", uncached),
        (
            "import trioflow and use every public name, trio imported, no bytecode cache",
            every_uncached,
        ),
        ("import trio, anyio, attrs, no bytecode cache", floor_uncached),
    ]
    print("## Import time\n")
    print(f"Median of {REPEATS} fresh interpreters per row.\n")
    print("| import | median ms | x floor |")
    print("|---|---:|---:|")
    for label, ms in rows:
        print(f"| {label} | {ms:.1f} | {ms / floor:.2f} |")
    # Measured with every name used: `import trioflow` alone imports next to nothing.
    print("\n### Targets\n")
    # Each against the floor measured the same way (with its cache, without it).
    for label, ms, base in (
        ("cached", every_name, floor),
        ("no bytecode cache", every_uncached, floor_uncached),
    ):
        ratio = ms / base
        verdict = "met" if ratio <= GOAL else "MISSED"
        print(
            f"- import trioflow and use every public name ({label}) / floor ({label}) = "
            f"{ms:.1f}/{base:.1f} ms = {ratio:.2f}x (goal <= {GOAL}x): {verdict}"
        )
    print(
        f"- the same with no bytecode cache / the cached floor = {every_uncached:.1f}/"
        f"{floor:.1f} ms = {every_uncached / floor:.2f}x\n"
    )


if __name__ == "__main__":
    main()
