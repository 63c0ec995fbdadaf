"""trioflow.dask: CPU-bound tasks on a 2-worker local cluster, and the cost per task of the bridge.

Two groups, each measured in this one process, each case repeated (the median is reported):

* 16 CPU-bound tasks of about 0.2 s (a pure-Python loop, calibrated first): run one after the
  other here; with ``trioflow.in_process`` at ``limit=2``; with ``trioflow.dask.on_dask`` on a
  ``LocalCluster(n_workers=2, threads_per_worker=1)`` (no limit: the scheduler queues the
  tasks, so a worker never waits for a round trip between two); and with
  ``multiprocessing.Pool(2)``, the floor. Pools and clusters are started (and warmed up)
  before the clock starts. On a busy machine all the rows move together: read the ratios to
  the Pool row.
* The overhead per task: N no-op tasks through ``on_dask`` (``run_batch``, no limit, on trio)
  against a raw ``client.submit`` of each then one ``client.gather``, the floor, on the same
  cluster. The target is ``on_dask`` <= 1.3x the raw client.

Usage: ``python bench/dask.py`` (or ``nox -s bench``); ``BENCH_REPEATS`` sets the repetitions
(default 5).
"""

from __future__ import annotations

import logging
import multiprocessing
import pathlib
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

# This file is named dask.py: its folder must not be on the path when the dask package loads.
_HERE = str(pathlib.Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p and pathlib.Path(p).resolve() != pathlib.Path(_HERE)]

import anyio  # noqa: E402
import distributed  # noqa: E402

import trioflow  # noqa: E402
from trioflow.dask import on_dask, open_cluster  # noqa: E402

sys.path.append(_HERE)
from _harness import REPEATS, Bench, Row  # noqa: E402

TASKS = 16
SECONDS = 0.2
N_NOOP = 500
TARGET = 1.3


def burn(rounds: int) -> int:
    total = 0
    for i in range(rounds):
        total += i * i % 7
    return total


def noop() -> None:
    return None


def _calibrate() -> int:
    rounds = 200_000
    while True:
        start = time.perf_counter()
        burn(rounds)
        took = time.perf_counter() - start
        if took > 0.05:
            return int(rounds * SECONDS / took)
        rounds *= 2


def _median(fn: Callable[[], float], repeats: int) -> tuple[float, tuple[float, float]]:
    samples = [fn() for _ in range(repeats)]
    return statistics.median(samples), (min(samples), max(samples))


def _row(
    group: str,
    label: str,
    ops: int,
    seconds: tuple[float, tuple[float, float]],
    *,
    floor: bool = False,
) -> Row:
    median, (low, high) = seconds
    return Row(
        group=group,
        label=label,
        per_op_us=median / ops * 1e6,
        spread_us=(low / ops * 1e6, high / ops * 1e6),
        rss_growth_mb=0.0,
        ops=ops,
        floor=floor,
    )


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


async def _ticking(work: Callable[[], Awaitable[object]]) -> list[float]:
    """The lateness of a 10 ms sleep on the loop while ``work`` runs, sorted."""
    lateness: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await anyio.sleep(0.01)
            lateness.append(time.perf_counter() - before - 0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        for _ in range(REPEATS):
            await work()
        done.set()
    return sorted(lateness)


async def _lateness(address: str) -> list[float]:
    """The ticker's lateness while 1,000 no-op tasks are in flight on the cluster."""
    async with open_cluster(address) as connected:
        return await _ticking(
            lambda: trioflow.run_batch([on_dask(connected, noop) for _ in range(1000)])
        )


async def _nap() -> None:
    await anyio.sleep(1.0)


async def _lateness_here() -> list[float]:
    """The same ticker while 1,000 local tasks nap: the machine's own noise (the control)."""
    return await _ticking(lambda: trioflow.run_batch([_nap] * 1000))


async def _isolated(address: str) -> float:
    async with open_cluster(address) as connected:
        start = time.perf_counter()
        for _ in range(REPEATS):
            await on_dask(connected, noop, isolate=True)()
        return (time.perf_counter() - start) / REPEATS


def main() -> None:
    bench = Bench(__file__)
    repeats = REPEATS
    rounds = _calibrate()
    cpu = f"{TASKS} CPU-bound tasks of {SECONDS:g} s"
    overhead = f"{N_NOOP} no-op tasks: cost per task"

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(burn, [1, 1])  # started and warm
        pool_row = _row(
            cpu,
            "multiprocessing.Pool(2).map",
            TASKS,
            _median(lambda: _timed(lambda: pool.map(burn, [rounds] * TASKS)), repeats),
            floor=True,
        )
    bench.rows.append(pool_row)
    bench.rows.append(
        _row(
            cpu,
            "sequential, in this process",
            TASKS,
            _median(
                lambda: _timed(lambda: [burn(rounds) for _ in range(TASKS)]), max(1, repeats // 2)
            ),
        )
    )

    async def with_in_process() -> list[float]:
        await trioflow.run_batch([trioflow.in_process(burn, 1)] * 2, limit=2)  # warm
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = await trioflow.run_batch(
                [trioflow.in_process(burn, rounds) for _ in range(TASKS)], limit=2
            )
            times.append(time.perf_counter() - start)
            result.raise_for_errors()
        return times

    samples = anyio.run(with_in_process, backend="trio")
    bench.rows.append(
        _row(
            cpu,
            "trioflow.in_process, limit=2",
            TASKS,
            (statistics.median(samples), (min(samples), max(samples))),
        )
    )

    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.CRITICAL,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    try:
        address = cluster.scheduler_address

        async def with_dask(
            ops: Callable[[trioflow.dask.Cluster], list[object]], limit: int | None
        ) -> list[float]:
            async with open_cluster(address) as connected:
                await trioflow.run_batch([on_dask(connected, noop) for _ in range(20)])  # warm
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    result = await trioflow.run_batch(ops(connected), limit=limit)  # type: ignore[arg-type]
                    times.append(time.perf_counter() - start)
                    result.raise_for_errors()
            return times

        samples = anyio.run(
            with_dask,
            lambda c: [on_dask(c, burn, rounds) for _ in range(TASKS)],
            None,
            backend="trio",
        )
        bench.rows.append(
            _row(
                cpu,
                "trioflow.dask.on_dask, 2 workers, no limit",
                TASKS,
                (statistics.median(samples), (min(samples), max(samples))),
            )
        )

        with distributed.Client(address, set_as_default=False) as client:
            client.gather([client.submit(noop, pure=False) for _ in range(20)])  # warm

            def raw() -> float:
                start = time.perf_counter()
                client.gather([client.submit(noop, pure=False) for _ in range(N_NOOP)])
                return time.perf_counter() - start

            raw_row = _row(
                overhead,
                "distributed: client.submit each, then gather",
                N_NOOP,
                _median(raw, repeats),
                floor=True,
            )
        bench.rows.append(raw_row)
        samples = anyio.run(
            with_dask,
            lambda c: [on_dask(c, noop) for _ in range(N_NOOP)],
            None,
            backend="trio",
        )
        dask_row = _row(
            overhead,
            "trioflow.dask.on_dask in run_batch (trio)",
            N_NOOP,
            (statistics.median(samples), (min(samples), max(samples))),
        )
        bench.rows.append(dask_row)
        lateness = anyio.run(_lateness, address, backend="trio")
        isolated = anyio.run(_isolated, address, backend="trio")
    finally:
        cluster.close()

    print(bench.table("trioflow.dask: CPU-bound work on a local cluster, and the bridge's cost"))
    print("### Targets\n")
    ratio = dask_row.per_op_us / raw_row.per_op_us
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(
        f"- on_dask per task / raw client per task: {ratio:.2f}x (target <= {TARGET}x): {verdict}"
    )
    control = anyio.run(_lateness_here, backend="trio")
    for what, late in (("on the cluster", lateness), ("here (control)", control)):
        p99 = late[len(late) * 99 // 100]
        print(
            f"- a 10 ms ticker on the loop with 1,000 tasks in flight {what}: late by "
            f"{p99 * 1e3:.1f} ms at the 99th percentile, {late[-1] * 1e3:.1f} ms at worst "
            "(target < 50 ms)"
        )
    print(f"- isolate=True: {isolated * 1e3:.0f} ms per call of a no-op (a child interpreter)")
    for row in bench.rows[1:4]:
        print(f"- {row.label}: {pool_row.per_op_us / row.per_op_us:.2f}x the speed of the Pool")
    print()


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":  # pragma: no cover - not used here
        raise SystemExit("bench/dask.py measures in one process")
    main()
