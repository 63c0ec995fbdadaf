"""``python -m trioflow demo``: a small batch you can watch run.

Twelve simulated downloads run with at most four in flight and a one-second timeout each; one
server hangs (and times out), one resets the connection. A progress line is printed as each
download ends, then every outcome and the totals. It takes about two seconds of real time;
``--virtual`` runs it on a virtual clock instead (instant, with the same output).
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

import anyio

from trioflow import OutcomeStatus, Progress, run_batch

# (name, seconds it takes, what goes wrong)
_DOWNLOADS: tuple[tuple[str, float, str | None], ...] = (
    ("alpha.csv", 0.4, None),
    ("beta.csv", 0.7, None),
    ("gamma.csv", 0.3, None),
    ("delta.csv", 0.9, None),
    ("epsilon.csv", 5.0, "hangs"),
    ("zeta.csv", 0.5, None),
    ("eta.csv", 0.2, "reset"),
    ("theta.csv", 0.6, None),
    ("iota.csv", 0.8, None),
    ("kappa.csv", 0.4, None),
    ("lambda.csv", 0.3, None),
    ("mu.csv", 0.5, None),
)
_DESCRIPTION = """\
A small batch you can watch run: twelve simulated downloads with at most four in flight and a
one-second timeout each; one server hangs (and times out), one resets the connection. A
progress line is printed as each download ends, then every outcome and the totals. It takes
about two seconds of real time; --virtual runs it on a virtual clock instead (instant, with
the same output)."""
_LIMIT = 4
_TIMEOUT = 1.0
_BAR = 24


async def _download(name: str, seconds: float, trouble: str | None) -> int:
    await anyio.sleep(seconds)
    if trouble == "reset":
        raise ConnectionResetError(f"{name}: connection reset by peer")
    return len(name) * 1000 + int(seconds * 100)  # a made-up size in bytes


async def _main() -> None:
    start = anyio.current_time()

    def say(line: str) -> None:
        print(line, flush=True)

    def on_progress(progress: Progress) -> None:
        done = progress.completed * _BAR // (progress.total or 1)
        bar = "#" * done + "." * (_BAR - done)
        say(
            f"[{anyio.current_time() - start:4.1f}s] [{bar}] {progress.percent or 0:5.1f}%  "
            f"done {progress.completed:2}/{progress.total}  running {progress.running}  "
            f"failed {progress.failed}"
        )

    sequential = sum(min(seconds, _TIMEOUT) for _, seconds, _ in _DOWNLOADS)
    say(
        f"trioflow demo: {len(_DOWNLOADS)} downloads, at most {_LIMIT} at once, "
        f"timeout {_TIMEOUT:g} s each"
    )
    operations = [functools.partial(_download, *spec) for spec in _DOWNLOADS]
    result = await run_batch(operations, limit=_LIMIT, timeout=_TIMEOUT, on_progress=on_progress)
    say("")
    for outcome in result.outcomes:
        name = _DOWNLOADS[outcome.index][0]
        if outcome.status is OutcomeStatus.SUCCEEDED:
            detail = f"{outcome.value:,} bytes"
        else:
            error: Any = outcome.error
            detail = f"{type(error).__name__}: {error}"
        say(f"  {name:<12} {outcome.status.value:<9} {outcome.duration:4.1f}s  {detail}")
    say("")
    say(
        f"{result.succeeded} succeeded, {result.failed} failed, {result.cancelled} cancelled "
        f"in {result.duration:.1f} s (one at a time: {sequential:.1f} s)"
    )


def main(argv: list[str]) -> int:
    """Run the demo and return an exit status.

    Args:
        argv: Command-line arguments after ``demo``: ``--virtual`` runs on a virtual clock
            (instant), ``--backend asyncio`` runs on asyncio instead of trio.

    Returns:
        The exit status: 0.
    """
    parser = argparse.ArgumentParser(prog="trioflow demo", description=_DESCRIPTION)
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    parser.add_argument("--virtual", action="store_true", help="run on a virtual clock")
    args = parser.parse_args(argv)
    options: dict[str, Any] = {}
    if args.virtual:
        from trioflow.testing import virtual_time_backends

        options = dict(virtual_time_backends())[args.backend]
    anyio.run(_main, backend=args.backend, backend_options=options)
    return 0
