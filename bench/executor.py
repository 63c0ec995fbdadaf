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

The modes group runs every option a real batch sets (a timeout, a progress callback, both, a
``ResourceManager`` limit, ``as_completed``) at ``limit=16`` on each backend, against that
backend's raw worker pool in the same run, in turns (11 rounds: ``2 * BENCH_REPEATS + 1``):
each round runs the floor, every mode and the peers once, in a shuffled order of its own,
so that the drift of a shared machine's speed over the minutes the group takes moves them all
alike (and no case always runs first, or right after the same case). The memory group runs
a lazy 1,000,000-operation generator at ``limit=64`` against a raw worker pool that keeps the
same results list. The scaling groups check that the cost per operation stays flat from
N=1,000 to 1,000,000 and from L=1 to 10,000 (the L group runs in turns too).

Usage: ``python bench/executor.py`` (or ``nox -s bench``); ``python bench/executor.py
--instructions`` prints instead the instructions per operation of the floor and of each mode at
``limit=16`` on both backends, and their ratios, counted under valgrind (the same from one run
to the next, whatever the load: see ``Bench.instructions``). The targets are checked at the end
(ratios to the floor in the same run, on CPU time, which the load of a shared machine moves
far less than wall time; both are in the tables).
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
from _harness import REPEATS, Bench, Case, Row

# Everything is imported above, outside the timed region and before the RSS baseline.
bench = Bench(__file__)

N = 100_000
N_PEER = 10_000  # aiometer: 30 to 150 us per operation
N_STREAM = 1_000_000
N_MEMORY = 1_000_000
LIMIT = 16
# Goals, as ratios to the floor in the same run (CPU time per operation).
TARGETS = {
    "bare": 1.3,
    "timeout": 1.5,
    "progress": 1.5,
    "both": 1.6,
    "manager": 2.0,
    "as_completed": 1.5,
}
TARGET_UNBOUNDED = 1.0  # x the raw nursery (trio) / raw TaskGroup (asyncio)
TARGET_UNBOUNDED_ASYNCIO = 1.2
TARGET_PEER = 10.0  # aiometer at least this many times slower
TARGET_MEMORY_MB = 10.0  # over the floor's RSS growth
SCALING = 1.5  # the costliest size per op at most this many times the cheapest


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


@bench.case
def asyncio_worker_pool(n: int, limit: int) -> int:
    results: list[Any] = [None] * n

    async def worker(items: Iterator[tuple[int, Callable[[], Awaitable[int]]]]) -> None:
        for i, op in items:
            results[i] = await op()

    async def main() -> None:
        items = enumerate(operations(n, "asyncio"))
        async with asyncio.TaskGroup() as group:
            for _ in range(limit):
                group.create_task(worker(items))

    asyncio.run(main())
    return n


@bench.case
def asyncio_task_group(n: int) -> int:
    results: list[Any] = [None] * n

    async def one(i: int, op: Callable[[], Awaitable[int]]) -> None:
        results[i] = await op()

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            for i, op in enumerate(operations(n, "asyncio")):
                group.create_task(one(i, op))

    asyncio.run(main())
    return n


@bench.case
def trio_worker_pool_appending(n: int, limit: int) -> int:
    # The memory floor: a worker pool over the lazy input that keeps every result in a list.
    results: list[Any] = []

    async def worker(items: Iterator[Callable[[], Awaitable[int]]]) -> None:
        for op in items:
            results.append(await op())

    async def main() -> None:
        items = iter(operations(n, "trio"))
        async with trio.open_nursery() as nursery:
            for _ in range(limit):
                nursery.start_soon(worker, items)

    trio.run(main)
    assert len(results) == n
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
def _ignore(progress: trioflow.Progress) -> None:
    pass


@bench.case
def trioflow_mode(n: int, limit: int | None, backend: str, mode: str) -> int:
    """run_batch (or as_completed) over ``n`` no-op operations in one of the modes."""

    async def main() -> None:
        ops = operations(n, backend)
        if mode == "as_completed":
            results: list[Any] = [None] * n if n <= N else []
            async with trioflow.as_completed(ops, limit=limit) as outcomes:
                if results:
                    async for outcome in outcomes:
                        results[outcome.index] = outcome.value
                else:  # the 1,000,000-operation run keeps nothing: O(limit) memory
                    count = 0
                    async for _ in outcomes:
                        count += 1
                    assert count == n
            return
        options: dict[str, Any] = {"limit": limit}
        if mode in ("timeout", "both"):
            options["timeout"] = 60
        if mode in ("progress", "both"):
            options["on_progress"] = _ignore
        if mode in ("manager", "manager_fail_fast"):
            assert limit is not None
            options["limit"] = trioflow.ResourceManager(limit)
        if mode == "manager_fail_fast":  # a slot handed on waits one checkpoint (docs/batches.md)
            options["fail_fast"] = True
        result = await trioflow.run_batch(ops, **options)
        assert result.succeeded == n
        if mode == "outcomes":
            assert len(result.outcomes) == n  # builds every Outcome object

    run_on(backend, main)
    return n


@bench.case
def trioflow_repeated(n: int, limit: int, total: int) -> int:
    """``total`` operations as batches of ``n`` in one ``trio.run``: the cost per op at size n."""

    async def main() -> None:
        for _ in range(total // n):
            result = await trioflow.run_batch(operations(n, "trio"), limit=limit)
            assert result.succeeded == n

    trio.run(main)
    return total // n * n


# --- the plan ----------------------------------------------------------------------------------
MODES = (
    ("bare", "run_batch"),
    ("timeout", "run_batch(timeout=60)"),
    ("progress", "run_batch(on_progress=cb)"),
    ("both", "run_batch(timeout=60, on_progress=cb)"),
    ("manager", "run_batch(limit=ResourceManager(16))"),
    ("manager_fail_fast", "run_batch(limit=ResourceManager(16), fail_fast=True)"),
    ("as_completed", "as_completed"),
    ("outcomes", "run_batch + read .outcomes"),
)


# The modes' goals are ratios of 1.3-2x, and one process's figure moves by up to a fifth
# from the next one's on a shared machine: their medians take more processes.
MODE_REPEATS = 2 * REPEATS + 1


def plan(run: Callable[..., Row]) -> None:
    checks: list[str] = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def peer_bound(peer: Row, floor: Row) -> str:
        """What the goal asks of trioflow against the raw floor, given the peer's own cost."""
        over = peer.cpu_us / floor.cpu_us
        return (
            f"; aiometer costs {over:.1f}x the raw floor, so the goal asks trioflow for "
            f"<= {over / TARGET_PEER:.2f}x the floor"
        )

    def check(label: str, row: Row, floor: Row, target: float) -> None:
        ratio = row.cpu_us / floor.cpu_us
        checks.append(
            f"- {label}: {row.cpu_us:.2f}/{floor.cpu_us:.2f} us CPU = {ratio:.2f}x "
            f"(goal <= {target:g}x; wall {row.per_op_us / floor.per_op_us:.2f}x): "
            f"{verdict(ratio <= target)}"
        )

    # Every mode at limit=16, each backend against its own raw worker pool.
    for backend in ("trio", "asyncio"):
        group = f"modes at limit={LIMIT}, {N:,} no-op operations, {backend}"
        common = {"limit": LIMIT, "backend": backend}
        peers = (("aiometer_run_all", "run_all"), ("aiometer_amap", "amap"))
        # In turns: the floor, every mode and the peers each run once per round.
        measured = bench.run_interleaved(
            group,
            [
                Case(
                    f"{backend}_worker_pool",
                    {"n": N, "limit": LIMIT},
                    label=f"raw {backend} worker pool",
                    floor=True,
                ),
                *(
                    Case("trioflow_mode", {"n": N, **common, "mode": mode}, f"trioflow {label}")
                    for mode, label in MODES
                ),
                *(
                    Case(case, {"n": N_PEER, **common}, f"aiometer {api} ({N_PEER:,} ops)")
                    for case, api in peers
                ),
            ],
            repeats=MODE_REPEATS,
        )
        floor = measured[0]
        modes = measured[1 : 1 + len(MODES)]
        rows = {mode: row for (mode, _), row in zip(MODES, modes, strict=True)}
        for mode, target in TARGETS.items():
            check(f"{backend}, {dict(MODES)[mode]}", rows[mode], floor, target)
        for (_, api), peer in zip(peers, measured[1 + len(MODES) :], strict=True):
            ours = rows["bare" if api == "run_all" else "as_completed"]
            speedup = peer.cpu_us / ours.cpu_us
            checks.append(
                f"- {backend}, aiometer {api} / trioflow at limit={LIMIT}: {speedup:.1f}x slower "
                f"(goal >= {TARGET_PEER:g}x): {verdict(speedup >= TARGET_PEER)}"
                f"{peer_bound(peer, floor)}"
            )

    # limit=256 against trio's floor and aiometer.
    group = f"limit=256, {N:,} no-op operations"
    floor = run(
        "trio_worker_pool", label="raw trio worker pool", group=group, floor=True, n=N, limit=256
    )
    batch = run(
        "trioflow_mode",
        label="trioflow run_batch (trio)",
        group=group,
        n=N,
        limit=256,
        backend="trio",
        mode="bare",
    )
    run("trio_nursery", label="raw trio nursery + CapacityLimiter", group=group, n=N, limit=256)
    run("asyncio_gather", label="asyncio.gather + Semaphore", group=group, n=N, limit=256)
    check("trio, limit=256", batch, floor, TARGETS["bare"])
    peer = run(
        "aiometer_run_all",
        label=f"aiometer run_all (trio, {N_PEER:,} ops)",
        group=group,
        n=N_PEER,
        limit=256,
        backend="trio",
    )
    speedup = peer.cpu_us / batch.cpu_us
    checks.append(
        f"- trio, aiometer run_all / trioflow at limit=256: {speedup:.1f}x slower "
        f"(goal >= {TARGET_PEER:g}x): {verdict(speedup >= TARGET_PEER)}"
        f"{peer_bound(peer, floor)}"
    )

    # No limit: one task per operation, against the raw nursery / TaskGroup.
    for backend, floor_case, floor_label in (
        ("trio", "trio_nursery", "raw trio nursery"),
        ("asyncio", "asyncio_task_group", "raw asyncio.TaskGroup"),
    ):
        group = f"no limit, {N:,} no-op operations, {backend}"
        params: dict[str, Any] = {"n": N}
        if backend == "trio":
            params["limit"] = None
        floor = run(floor_case, label=floor_label, group=group, floor=True, **params)
        batch = run(
            "trioflow_mode",
            label="trioflow run_batch",
            group=group,
            n=N,
            limit=None,
            backend=backend,
            mode="bare",
        )
        if backend == "asyncio":
            run("asyncio_gather", label="asyncio.gather", group=group, n=N, limit=None)
        peer = run(
            "aiometer_run_all",
            label=f"aiometer run_all ({N_PEER:,} ops)",
            group=group,
            n=N_PEER,
            limit=None,
            backend=backend,
        )
        check(
            f"{backend}, no limit",
            batch,
            floor,
            TARGET_UNBOUNDED if backend == "trio" else TARGET_UNBOUNDED_ASYNCIO,
        )
        speedup = peer.cpu_us / batch.cpu_us
        checks.append(
            f"- {backend}, aiometer run_all / trioflow without a limit: {speedup:.1f}x slower "
            f"(goal >= {TARGET_PEER:g}x): {verdict(speedup >= TARGET_PEER)}"
            f"{peer_bound(peer, floor)}"
        )

    # Memory: a lazy 1,000,000-operation generator.
    group = f"memory, a lazy generator of {N_MEMORY:,} operations, limit=64, trio"
    floor = run(
        "trio_worker_pool_appending",
        label="raw trio worker pool keeping a results list",
        group=group,
        floor=True,
        n=N_MEMORY,
        limit=64,
    )
    batch = run(
        "trioflow_mode",
        label="trioflow run_batch",
        group=group,
        n=N_MEMORY,
        limit=64,
        backend="trio",
        mode="bare",
    )
    stream = run(
        "trioflow_mode",
        label="trioflow as_completed (keeps nothing)",
        group=group,
        n=N_MEMORY,
        limit=64,
        backend="trio",
        mode="as_completed",
    )
    over = batch.rss_growth_mb - floor.rss_growth_mb
    checks.append(
        f"- run_batch over {N_MEMORY:,} lazy operations: RSS growth {batch.rss_growth_mb:.1f} MB, "
        f"floor {floor.rss_growth_mb:.1f} MB, +{over:.1f} MB (goal <= +{TARGET_MEMORY_MB:g} MB): "
        f"{verdict(over <= TARGET_MEMORY_MB)}; as_completed keeping nothing: "
        f"{stream.rss_growth_mb:.1f} MB"
    )

    # Scaling: the cost per operation must not grow with N or with L.
    group = f"scaling with N, limit={LIMIT}, trio ({N_MEMORY:,} operations in batches of N)"
    by_n = [
        run(
            "trioflow_repeated",
            label=f"run_batch, N={n:,}",
            group=group,
            n=n,
            limit=LIMIT,
            total=N_MEMORY,
            floor=n == N,
        )
        for n in (1_000, 10_000, 100_000, 1_000_000)
    ]
    # Over L, trio's own cost per operation moves (L=1 runs one task per scheduling round, so
    # the run loop's cost per round falls on one operation), so each limit runs against the raw
    # pool of the same limit: trioflow must add no cost that grows with L.
    group = f"scaling with L, N={N:,}, trio (each x its own raw pool in the checks)"
    limits = (1, 16, 256, 10_000)
    measured = bench.run_interleaved(
        group,
        [
            case
            for limit in limits
            for case in (
                Case(
                    "trio_worker_pool",
                    {"n": N, "limit": limit},
                    label=f"raw trio worker pool, L={limit:,}",
                    floor=limit == LIMIT,
                ),
                Case(
                    "trioflow_mode",
                    {"n": N, "limit": limit, "backend": "trio", "mode": "bare"},
                    label=f"run_batch, L={limit:,}",
                ),
            )
        ],
    )
    floors_l, by_l = measured[0::2], measured[1::2]
    costs = [r.cpu_us for r in by_n]
    spread = max(costs) / min(costs)
    checks.append(
        f"- cost per op over N: {', '.join(f'{c:.2f}' for c in costs)} us CPU, "
        f"max/min {spread:.2f} (goal <= {SCALING:g}): {verdict(spread <= SCALING)}"
    )
    costs = [r.cpu_us for r in by_l]
    ratios = [r.cpu_us / f.cpu_us for r, f in zip(by_l, floors_l, strict=True)]
    spread = max(costs) / min(costs)
    checks.append(
        f"- cost per op over L=1..10,000: {', '.join(f'{c:.2f}' for c in costs)} us CPU, "
        f"max/min {spread:.2f} (goal <= {SCALING:g}): {verdict(spread <= SCALING)}; "
        f"x the raw pool of the same L: {', '.join(f'{r:.2f}' for r in ratios)} (at L=1 trio "
        f"runs one task per scheduling round, and the raw pool pays for it too)"
    )
    bench.checks = checks  # type: ignore[attr-defined]


def count_instructions() -> None:
    """Print the instructions per operation of the floor and each mode, on both backends."""
    sizes = (5_000, 15_000)
    print("| case | trio | x floor | asyncio | x floor |\n|---|---:|---:|---:|---:|")
    cases = [("raw worker pool (floor)", None), *((label, mode) for mode, label in MODES)]
    floors: dict[str, float] = {}
    for label, mode in cases:
        cells = []
        for backend in ("trio", "asyncio"):
            if mode is None:
                count = bench.instructions(f"{backend}_worker_pool", {"limit": LIMIT}, sizes)
                floors[backend] = count
            else:
                params = {"limit": LIMIT, "backend": backend, "mode": mode}
                count = bench.instructions("trioflow_mode", params, sizes)
            cells.append(f"{count:,.0f} | {count / floors[backend]:.2f}")
        print(f"| {label} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--instructions"]:
        count_instructions()
        sys.exit(0)
    bench.main(plan, title="Batch executor: overhead per operation")
    if len(sys.argv) < 2 or sys.argv[1] != "--child":
        print("### Targets\n")
        print("\n".join(bench.checks))  # type: ignore[attr-defined]
        print()
