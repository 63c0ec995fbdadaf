"""Pools: the cost of ``async with pool.acquire()`` of an idle object, against simpler floors.

Every row takes and gives back one thing N times in one task, never waiting (one idle object,
nobody else asking), which is the hot path the target is about: at most 2 us per
``pool.acquire()`` round trip on trio. The floors, in the same run: a deque pop/append (what
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


@bench.case
def anyio_lock(n: int, backend: str) -> int:
    async def main() -> None:
        lock = anyio.Lock()
        for _ in range(n):
            async with lock:
                pass

    _run(backend, main)
    return n


@bench.case
def anyio_lock_fast(n: int, backend: str) -> int:
    async def main() -> None:
        lock = anyio.Lock(fast_acquire=True)
        for _ in range(n):
            async with lock:
                pass

    _run(backend, main)
    return n


@bench.case
def capacity_limiter(n: int, backend: str) -> int:
    async def main() -> None:
        limiter = anyio.CapacityLimiter(1)
        for _ in range(n):
            async with limiter:
                pass

    _run(backend, main)
    return n


@bench.case
def pool_acquire(n: int, backend: str) -> int:
    async def main() -> None:
        async with trioflow.Pool(_make, max_size=1) as pool:
            async with pool.acquire():
                pass  # one idle object from now on
            for _ in range(n):
                async with pool.acquire():
                    pass

    _run(backend, main)
    return n


@bench.case
def pool_acquire_checked(n: int, backend: str) -> int:
    async def main() -> None:
        async with trioflow.Pool(_make, max_size=1, check=_ok, max_idle=3600) as pool:
            async with pool.acquire():
                pass
            for _ in range(n):
                async with pool.acquire():
                    pass

    _run(backend, main)
    return n


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
        run(
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
            figure = rows["pool_acquire"].per_op_us
            verdict = "PASS" if figure <= TARGET_US else "MISS"
            CHECKS.append(
                f"- {verdict}: pool.acquire() of an idle object takes {figure:.2f} us on trio "
                f"(target <= {TARGET_US:g} us); anyio.Lock takes "
                f"{rows['anyio_lock'].per_op_us:.2f} us, CapacityLimiter "
                f"{rows['capacity_limiter'].per_op_us:.2f} us"
            )


if __name__ == "__main__":
    bench.main(plan, title="Pools: one acquire-release of an idle object")
    if CHECKS:
        print("### Targets\n")
        print("\n".join(CHECKS))
        print()
