"""Slots of a ResourceManager, uncontended: a plain slot, one with a priority, and the floors.

Every row runs N times ``async with <limit>: await noop()`` in one task, so no slot ever waits:
the fast path every call of a service pays. Floors: the bare call, and anyio's
``CapacityLimiter`` (what the manager's limiters replaced; it serves waiters first come, first
served only). Rows: ``rm.slot()``, ``rm.slot(priority=5)`` (the goal: at most 1.1x the plain
slot), ``rm.slot(priority=5)`` on a manager with ``aging``, a slot with a keyed pool, and a
plain slot on a manager with one listener (``rm.add_listener(fn)``: each slot that ends builds a
``SlotReleased`` event and calls ``fn``; with none the cost is one truth test).

Usage: ``python bench/limits.py`` (or ``nox -s bench``); ``BENCH_REPEATS`` sets the repetitions
per case (default 5), each in a fresh process.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import anyio

import trioflow
from _harness import Bench, Row

bench = Bench(__file__)

N = 100_000
GOAL = 1.1


async def noop() -> None:
    return None


@bench.case
def bare(n: int, backend: str) -> int:
    async def main() -> None:
        for _ in range(n):
            await noop()

    anyio.run(main, backend=backend)
    return n


@bench.case
def anyio_limiter(n: int, backend: str) -> int:
    async def main() -> None:
        limiter = anyio.CapacityLimiter(8)
        for _ in range(n):
            async with limiter:
                await noop()

    anyio.run(main, backend=backend)
    return n


@bench.case
def slot(
    n: int, backend: str, priority: int, aging: float | None, keyed: bool, listeners: int = 0
) -> int:
    async def main() -> None:
        rm = trioflow.ResourceManager(8, keyed={"user": 2}, aging=aging)
        seen: list[trioflow.ResourceManagerEvent] = []
        for _ in range(listeners):
            rm.add_listener(lambda event: seen.append(event) if len(seen) < 1 else None)
        keys = {"user": "alice"} if keyed else None
        for _ in range(n):
            async with rm.slot(keys=keys, priority=priority):
                await noop()

    anyio.run(main, backend=backend)
    return n


def plan(run: Callable[..., Row]) -> None:
    checks: list[str] = []
    for backend in ("trio", "asyncio"):
        group = f"uncontended slots, {N:,} calls, {backend}"
        run("bare", label="bare call", group=group, floor=True, n=N, backend=backend)
        run("anyio_limiter", label="anyio CapacityLimiter", group=group, n=N, backend=backend)
        common = {"group": group, "n": N, "backend": backend}
        plain = run("slot", label="rm.slot()", priority=0, aging=None, keyed=False, **common)
        ranked = run(
            "slot", label="rm.slot(priority=5)", priority=5, aging=None, keyed=False, **common
        )
        run(
            "slot",
            label="rm.slot(priority=5), aging=1",
            priority=5,
            aging=1.0,
            keyed=False,
            **common,
        )
        run(
            "slot",
            label="rm.slot(keys={'user': ...}, priority=5)",
            priority=5,
            aging=None,
            keyed=True,
            **common,
        )
        heard = run(
            "slot",
            label="rm.slot(), one listener",
            priority=0,
            aging=None,
            keyed=False,
            listeners=1,
            **common,
        )
        ratio = ranked.cpu_us / plain.cpu_us
        verdict = "met" if ratio <= GOAL else "MISSED"
        checks.append(
            f"- {backend}: slot(priority=5)/slot() = {ranked.cpu_us:.2f}/{plain.cpu_us:.2f} us "
            f"CPU = {ratio:.2f}x (goal <= {GOAL}x): {verdict}"
        )
        checks.append(
            f"- {backend}: one listener costs {heard.cpu_us - plain.cpu_us:.2f} us CPU per slot "
            f"({heard.cpu_us:.2f} vs {plain.cpu_us:.2f} us, {heard.cpu_us / plain.cpu_us:.2f}x)"
        )
    bench.checks = checks  # type: ignore[attr-defined]


if __name__ == "__main__":
    bench.main(plan, title="Resource limits: an uncontended slot")
    if len(sys.argv) < 2 or sys.argv[1] != "--child":
        print("### Targets\n")
        print("\n".join(bench.checks))  # type: ignore[attr-defined]
        print()
