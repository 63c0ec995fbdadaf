"""The batch executor against raw trio / asyncio floors and aiometer.

Every operation is a no-op that suspends once: ``await checkpoint(); return i`` with the running
backend's own checkpoint (``trio.lowlevel.checkpoint`` or ``asyncio.sleep(0)``). Every row gets
the same input, a generator of 100,000 zero-argument callables (``functools.partial(op, i)``),
and keeps every result by index; each row runs in a fresh process, 5 times (``BENCH_REPEATS``),
and reports the median time per operation over the whole ``trio.run`` / ``asyncio.run``.

Floors: the raw trio worker pool (``limit`` tasks pulling from the shared iterator), a raw trio
nursery with one task per operation under a ``CapacityLimiter`` (the design the worker pool
replaces), and ``asyncio.gather`` with a ``Semaphore``; without a limit, a raw trio nursery and a
bare ``asyncio.gather``. Peer: aiometer's ``run_all`` and ``amap`` on trio and asyncio (run at
fewer operations, since they take tens of microseconds each; reported per operation; they need
a list, so their rows build one). ``as_completed`` rows consume every outcome as it arrives.
The last group runs ``as_completed`` over 1,000,000 operations at limit 64 and reports peak RSS
growth.

Usage: ``python bench/executor.py`` (or ``nox -s bench``). Targets checked at the end, on trio:
``run_batch`` at a bounded limit within 1.5x of the worker-pool floor and at least 8x faster
than aiometer; without a limit within 1.2x of the raw nursery; ``as_completed`` over 1,000,000
operations with peak RSS growth under 30 MB.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiometer
import trio
import trio.lowlevel

import trioflow
from _harness import Bench, Row

# Everything is imported above, outside the timed region and before the RSS baseline.
bench = Bench(__file__)

N = 100_000
N_PEER = 10_000  # aiometer: 30 to 150 us per operation
N_STREAM = 1_000_000
LIMITS = (16, 256, None)
TARGET_BOUNDED = 1.5
TARGET_UNBOUNDED = 1.2
TARGET_PEER = 8.0
TARGET_RSS_MB = 30.0


def operations(n: int, backend: str) -> Iterator[Callable[[], Awaitable[int]]]:
    checkpoint: Callable[[], Awaitable[None]]
    if backend == "trio":
        checkpoint = trio.lowlevel.checkpoint
    else:
        checkpoint = functools.partial(asyncio.sleep, 0)

    async def op(i: int) -> int:
        await checkpoint()
        return i

    return (functools.partial(op, i) for i in range(n))


def run_on(backend: str, main: Callable[[], Awaitable[None]]) -> None:
    if backend == "trio":
        trio.run(main)
    else:
        asyncio.run(main())  # type: ignore[arg-type]


# --- floors ------------------------------------------------------------------------------------
@bench.case
def trio_worker_pool(n: int, limit: int) -> int:
    results: list[Any] = [None] * n

    async def worker(items: Iterator[tuple[int, Callable[[], Awaitable[int]]]]) -> None:
        for i, op in items:
            results[i] = await op()

    async def main() -> None:
        items = enumerate(operations(n, "trio"))
        async with trio.open_nursery() as nursery:
            for _ in range(limit):
                nursery.start_soon(worker, items)

    trio.run(main)
    return n


@bench.case
def trio_nursery(n: int, limit: int | None) -> int:
    results: list[Any] = [None] * n
    limiter = trio.CapacityLimiter(limit) if limit else None

    async def one(i: int, op: Callable[[], Awaitable[int]]) -> None:
        if limiter is None:
            results[i] = await op()
        else:
            async with limiter:
                results[i] = await op()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i, op in enumerate(operations(n, "trio")):
                nursery.start_soon(one, i, op)

    trio.run(main)
    return n


@bench.case
def asyncio_gather(n: int, limit: int | None) -> int:
    async def main() -> None:
        semaphore = asyncio.Semaphore(limit) if limit else None

        async def one(op: Callable[[], Awaitable[int]]) -> int:
            if semaphore is None:
                return await op()
            async with semaphore:
                return await op()

        results = await asyncio.gather(*(one(op) for op in operations(n, "asyncio")))
        assert len(results) == n

    asyncio.run(main())
    return n


# --- the peer ----------------------------------------------------------------------------------
@bench.case
def aiometer_run_all(n: int, limit: int | None, backend: str) -> int:
    async def main() -> None:
        results = await aiometer.run_all(list(operations(n, backend)), max_at_once=limit)
        assert len(results) == n

    run_on(backend, main)
    return n


@bench.case
def aiometer_amap(n: int, limit: int | None, backend: str) -> int:
    async def main() -> None:
        results: list[Any] = [None] * n
        async with aiometer.amap(
            lambda op: op(), list(operations(n, backend)), max_at_once=limit, _include_index=True
        ) as outcomes:
            async for i, value in outcomes:
                results[i] = value

    run_on(backend, main)
    return n


# --- trioflow ----------------------------------------------------------------------------------
@bench.case
def trioflow_run_batch(n: int, limit: int | None, backend: str) -> int:
    async def main() -> None:
        result = await trioflow.run_batch(operations(n, backend), limit=limit)
        assert result.succeeded == n

    run_on(backend, main)
    return n


@bench.case
def trioflow_run_batch_outcomes(n: int, limit: int | None, backend: str) -> int:
    async def main() -> None:
        result = await trioflow.run_batch(operations(n, backend), limit=limit)
        assert len(result.outcomes) == n  # builds every Outcome object

    run_on(backend, main)
    return n


@bench.case
def trioflow_as_completed(n: int, limit: int | None, backend: str) -> int:
    async def main() -> None:
        results: list[Any] = [None] * n if n <= N else []
        async with trioflow.as_completed(operations(n, backend), limit=limit) as outcomes:
            if results:
                async for outcome in outcomes:
                    results[outcome.index] = outcome.value
            else:  # the 1,000,000-operation run keeps nothing, to measure O(limit) memory
                count = 0
                async for _ in outcomes:
                    count += 1
                assert count == n

    run_on(backend, main)
    return n


# --- the plan ----------------------------------------------------------------------------------
def plan(run: Callable[..., Row]) -> None:
    checks: list[str] = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    for limit in LIMITS:
        name = f"limit={limit}" if limit else "no limit"
        group = f"{name}, {N:,} no-op operations"
        # The floor and run_batch on trio run back to back, so that the load of the machine
        # drifts as little as possible between the two rows the target compares.
        if limit:
            floor = run(
                "trio_worker_pool",
                label="raw trio worker pool",
                group=group,
                floor=True,
                n=N,
                limit=limit,
            )
        else:
            floor = run(
                "trio_nursery", label="raw trio nursery", group=group, floor=True, n=N, limit=None
            )
        batch = run(
            "trioflow_run_batch",
            label="trioflow run_batch (trio)",
            group=group,
            n=N,
            limit=limit,
            backend="trio",
        )
        if limit:
            run(
                "trio_nursery",
                label="raw trio nursery + CapacityLimiter",
                group=group,
                n=N,
                limit=limit,
            )
        run(
            "asyncio_gather",
            label="asyncio.gather" + (" + Semaphore" if limit else ""),
            group=group,
            n=N,
            limit=limit,
        )
        run(
            "trioflow_as_completed",
            label="trioflow as_completed (trio)",
            group=group,
            n=N,
            limit=limit,
            backend="trio",
        )
        run(
            "trioflow_run_batch",
            label="trioflow run_batch (asyncio)",
            group=group,
            n=N,
            limit=limit,
            backend="asyncio",
        )
        run(
            "trioflow_as_completed",
            label="trioflow as_completed (asyncio)",
            group=group,
            n=N,
            limit=limit,
            backend="asyncio",
        )
        if limit == LIMITS[0]:
            run(
                "trioflow_run_batch_outcomes",
                label="trioflow run_batch + read .outcomes (trio)",
                group=group,
                n=N,
                limit=limit,
                backend="trio",
            )
        peers: dict[str, Row] = {}
        for backend in ("trio", "asyncio"):
            for case, api in (("aiometer_run_all", "run_all"), ("aiometer_amap", "amap")):
                peers[f"{api} {backend}"] = run(
                    case,
                    label=f"aiometer {api} ({backend}, {N_PEER:,} ops)",
                    group=group,
                    n=N_PEER,
                    limit=limit,
                    backend=backend,
                )

        ratio = batch.per_op_us / floor.per_op_us
        target = TARGET_BOUNDED if limit else TARGET_UNBOUNDED
        checks.append(
            f"- {name}: run_batch/{floor.label} = {batch.per_op_us:.2f}/{floor.per_op_us:.2f} us "
            f"= {ratio:.2f}x (target <= {target}x): {verdict(ratio <= target)}"
        )
        if limit:
            for api in ("run_all", "amap"):
                peer = peers[f"{api} trio"]
                speedup = peer.per_op_us / batch.per_op_us
                checks.append(
                    f"- {name}: aiometer {api}/run_batch on trio = {peer.per_op_us:.2f}/"
                    f"{batch.per_op_us:.2f} us = {speedup:.2f}x faster "
                    f"(target >= {TARGET_PEER:g}x): {verdict(speedup >= TARGET_PEER)}"
                )

    group = f"as_completed, {N_STREAM:,} no-op operations, limit=64"
    stream = run(
        "trioflow_as_completed",
        label="trioflow as_completed (trio)",
        group=group,
        floor=True,
        n=N_STREAM,
        limit=64,
        backend="trio",
    )
    checks.append(
        f"- as_completed over {N_STREAM:,} operations at limit 64: peak RSS growth "
        f"{stream.rss_growth_mb:.1f} MB (target < {TARGET_RSS_MB:g} MB): "
        f"{verdict(stream.rss_growth_mb < TARGET_RSS_MB)}; {stream.per_op_us:.2f} us/op"
    )
    bench.checks = checks  # type: ignore[attr-defined]


if __name__ == "__main__":
    bench.main(plan, title="Batch executor: overhead per operation")
    if len(sys.argv) < 2 or sys.argv[1] != "--child":
        print("### Targets (trio)\n")
        print("\n".join(bench.checks))  # type: ignore[attr-defined]
        print()
