"""Pools: the cost of ``async with pool.acquire()`` of an idle object, against simpler floors.

Every row takes and gives back one thing N times in one task, never waiting (one idle object,
nobody else asking), which is the hot path the target is about: at most 2 us per
``pool.acquire()`` round trip on trio, judged on CPU time over the floor (the wall clock of a
shared machine is noisy). The floors, in the same run: a deque pop/append (what
the pool does with its idle objects, without any checkpoint), ``anyio.Lock`` and
``anyio.CapacityLimiter`` acquire-release (what a task pays for the cheapest async guard). The
peer, on asyncio only, is asyncio's own ``Queue`` used as a pool (``get_nowait``/``put_nowait``
around an awaited checkpoint).

Usage: ``python bench/pools.py`` (or ``nox -s bench``); ``BENCH_REPEATS`` sets the
repetitions per case (default 5), each in a fresh process.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel

import trioflow
from _harness import Bench, Row

bench = Bench(__file__)

N = 200_000
TARGET_US = 2.0


def _run(backend: str, body: Callable[[], Awaitable[None]]) -> None:
    anyio.run(body, backend=backend)


async def _make() -> object:
    return object()


async def _ok(obj: object) -> bool:
    return True


@bench.case
def deque_pop_append(n: int, backend: str) -> int:
    async def main() -> None:
        idle = collections.deque([object()])
        for _ in range(n):
            obj = idle.pop()
            idle.append(obj)

    _run(backend, main)
    return n


def _guarded(n: int, backend: str, make: Callable[[], Any]) -> int:
    async def main() -> None:
        guard = make()
        for _ in range(n):
            async with guard:
                pass

    _run(backend, main)
    return n


@bench.case
def anyio_lock(n: int, backend: str) -> int:
    return _guarded(n, backend, anyio.Lock)


@bench.case
def anyio_lock_fast(n: int, backend: str) -> int:
    return _guarded(n, backend, lambda: anyio.Lock(fast_acquire=True))


@bench.case
def capacity_limiter(n: int, backend: str) -> int:
    return _guarded(n, backend, lambda: anyio.CapacityLimiter(1))


def _pooled(n: int, backend: str, **options: Any) -> int:
    async def main() -> None:
        async with trioflow.Pool(_make, max_size=1, **options) as pool:
            async with pool.acquire():
                pass  # one idle object from now on
            for _ in range(n):
                async with pool.acquire():
                    pass

    _run(backend, main)
    return n


@bench.case
def pool_acquire(n: int, backend: str) -> int:
    return _pooled(n, backend)


@bench.case
def pool_acquire_checked(n: int, backend: str) -> int:
    return _pooled(n, backend, check=_ok, max_idle=3600)


@bench.case
def peer_asyncio_queue(n: int, backend: str) -> int:
    async def main() -> None:
        import asyncio

        idle: asyncio.Queue[object] = asyncio.Queue()
        idle.put_nowait(object())
        for _ in range(n):
            obj = await idle.get()
            idle.put_nowait(obj)

    _run(backend, main)
    return n


ROWS = [
    ("anyio_lock", "async with anyio.Lock()"),
    ("anyio_lock_fast", "async with anyio.Lock(fast_acquire=True)"),
    ("capacity_limiter", "async with anyio.CapacityLimiter(1)"),
    ("pool_acquire", "async with pool.acquire() (idle object)"),
    ("pool_acquire_checked", "pool.acquire() with check= and max_idle= (idle object)"),
]

CHECKS: list[str] = []


def plan(run: Callable[..., Row]) -> None:
    for backend in ("trio", "asyncio"):
        group = f"{backend}: one take and give back, never waiting"
        floor = run(
            "deque_pop_append",
            label=f"floor: deque pop/append ({backend})",
            floor=True,
            group=group,
            n=N,
            backend=backend,
        )
        rows = {
            case: run(case, label=label, group=group, n=N, backend=backend) for case, label in ROWS
        }
        if backend == "asyncio":
            run(
                "peer_asyncio_queue",
                label="peer: await asyncio.Queue.get() / put_nowait()",
                group=group,
                n=N,
                backend=backend,
            )
        else:
            # CPU time: the wall clock of a shared machine is noisy. What the pool adds is its
            # row minus the floor (the loop itself), as in bench/resilience.py.
            adds = rows["pool_acquire"].cpu_us - floor.cpu_us
            verdict = "PASS" if adds <= TARGET_US else "MISS"
            CHECKS.append(
                f"- {verdict}: pool.acquire() of an idle object adds {adds:.2f} us of CPU per "
                f"round trip on trio (target <= {TARGET_US:g} us); anyio.Lock(fast_acquire) "
                f"adds {rows['anyio_lock_fast'].cpu_us - floor.cpu_us:.2f} us, anyio.Lock "
                f"{rows['anyio_lock'].cpu_us - floor.cpu_us:.2f} us, CapacityLimiter "
                f"{rows['capacity_limiter'].cpu_us - floor.cpu_us:.2f} us"
            )


if __name__ == "__main__":
    bench.main(plan, title="Pools: one acquire-release of an idle object")
    if CHECKS:
        print("### Targets\n")
        print("\n".join(CHECKS))
        print()
