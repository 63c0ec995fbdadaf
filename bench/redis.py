"""Shared limits and the run store on Redis: the cost of each operation against raw round trips.

Side by side, in one run, against one local ``redis-server`` (started here, no persistence):

* ``try_acquire`` on the shared token bucket against one raw coredis round trip (``GET``),
  the floor: the bucket is one Lua script, so the goal is at most 1.5x the floor;
* ``async with cap:`` on the shared capacity against two raw round trips (it takes a slot and
  gives it back: two scripts);
* ``coordinator.process`` (seven no-op stages, one request after the other) with its admission
  in the process against the same with a ``[shared]`` admission (``config.shared.url``): what
  sharing adds per request, against two raw round trips (a user's slot and a global one);
* persisted step completions per second: a chain of steps (each completion written before the
  next step starts) with the Redis store against the SQLite store, the embedded default.

Rows run on trio and on asyncio; each case in a fresh process (``BENCH_REPEATS``, default 5).
The Redis figures include the loopback network stack; there is no peer library to compare
with on trio (redis-py's asyncio client and ``limits`` do not run on trio).

Usage: ``python bench/redis.py`` (or ``nox -s bench``); needs ``redis-server`` on the PATH.

Last figures (2026-12-01, ``BENCH_REPEATS=5``, a 2-core machine shared with other work, so
the loopback round trip itself is 230-290 us and noisy): ``try_acquire`` 1.47x one round trip
on trio, 1.70x on asyncio (the bucket script's own work on the server: an ``EVALSHA`` of the
script costs the same as ``try_acquire``); ``async with cap:`` 1.47x / 1.66x two round trips;
step completions per second 994 (Redis) against 2,536 (SQLite) on trio, 973 against 2,723 on
asyncio.

A ``[shared]`` admission (2026-12-01, ``BENCH_REPEATS=3``, same machine, two raw round trips
867 us on trio, 593 us on asyncio): ``coordinator.process`` one request after the other, 85 ->
1,606 us on trio (1,522 us added = 1.76x two round trips), 62 -> 1,832 us on asyncio (1,770 us
= 2.99x). It is four coredis commands per request, the CPU of which dominates here: two scripts
on the request's path (its user's slot, then a global one) and two give-backs in the
background. Before give-backs were sent together, a caller faster than one round trip outran
them and the global slots ran out (5.3 ms added per request on trio, RSS growing by 16 MB).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import structlog

import trioflow
import trioflow.lifecycle
import trioflow.redis
from _harness import Bench, Row

bench = Bench(__file__)

N = 5_000
N_REQUESTS = 2_000
STEPS = 300
GOAL = 1.5


def _run(backend: str, body: Callable[[], Awaitable[None]]) -> None:
    anyio.run(body, backend=backend)


@bench.case
def raw_round_trip(n: int, backend: str, url: str, trips: int = 1) -> int:
    async def main() -> None:
        async with trioflow.redis.connect(url) as redis:
            client = redis.client
            for _ in range(n):
                for _ in range(trips):
                    await client.get("bench:nothing")

    _run(backend, main)
    return n


@bench.case
def bucket_try_acquire(n: int, backend: str, url: str) -> int:
    async def main() -> None:
        async with trioflow.redis.connect(url) as redis:
            bucket = redis.rate_limiter("bench", rate=1e9, burst=1e9)
            for _ in range(n):
                await bucket.try_acquire()

    _run(backend, main)
    return n


@bench.case
def capacity_async_with(n: int, backend: str, url: str) -> int:
    async def main() -> None:
        async with trioflow.redis.connect(url) as redis:
            cap = redis.capacity("bench", total=1_000_000)
            for _ in range(n):
                async with cap:
                    pass

    _run(backend, main)
    return n


def _chain(steps: int) -> trioflow.Workflow:
    async def step(ctx: trioflow.Context) -> int:
        return 1

    wf = trioflow.Workflow("chain")
    previous: str | None = None
    for i in range(steps):
        name = f"s{i}"
        wf.step(name, step, after=previous or ())
        previous = name
    return wf


@bench.case
def steps_sqlite(steps: int, backend: str, url: str) -> int:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as directory:
            async with trioflow.SQLiteStore(Path(directory) / "state.db") as store:
                result = await trioflow.run_workflow(_chain(steps), store=store, run_id="r")
                assert result.ok

    _run(backend, main)
    return steps


@bench.case
def steps_redis(steps: int, backend: str, url: str) -> int:
    async def main() -> None:
        async with trioflow.redis.connect(url, prefix=f"bench{time.monotonic_ns()}:") as redis:
            result = await trioflow.run_workflow(_chain(steps), store=redis.store(), run_id="r")
            assert result.ok

    _run(backend, main)
    return steps


async def _no_op(request: trioflow.lifecycle.Request) -> str:
    return "ok"


@bench.case
def coordinator(n: int, backend: str, url: str, shared: bool = False) -> int:
    from trioflow.lifecycle import (
        Pipeline,
        ProcessingStatus,
        Request,
        RequestState,
        Router,
        Stage,
        load_config,
        open_coordinator,
    )

    states = [s for s in RequestState if s.value not in ("completed", "failed", "cancelled")]
    pipeline = Pipeline([Stage(f"s{i}", state, _no_op) for i, state in enumerate(states)])
    router = Router(lambda request: "q", {"q": pipeline})
    settings: dict[str, object] = {"enable_metrics": False}
    if shared:
        settings["shared"] = {"url": url, "name": f"bench{time.monotonic_ns()}"}
    config = load_config(settings)
    logger = structlog.wrap_logger(
        structlog.PrintLogger(open(os.devnull, "w")),  # noqa: SIM115 - for the process's life
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )

    async def main() -> None:
        async with open_coordinator(config, router=router, logger=logger) as c:
            for i in range(n):
                result = await c.process(Request(i, user_id=f"user{i % 10}"))
                assert result.status is ProcessingStatus.SUCCEEDED

    _run(backend, main)
    return n


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


CHECKS: list[str] = []


def plan(url: str) -> Callable[[Callable[..., Row]], None]:
    def run_all(run: Callable[..., Row]) -> None:
        for backend in ("trio", "asyncio"):
            group = f"bucket, {backend}"
            floor = run("raw_round_trip", label="one coredis round trip", floor=True,
                        group=group, n=N, backend=backend, url=url)  # fmt: skip
            row = run("bucket_try_acquire", label="await bucket.try_acquire()",
                      group=group, n=N, backend=backend, url=url)  # fmt: skip
            ratio = row.per_op_us / floor.per_op_us
            verdict = "meets" if ratio <= GOAL else "misses"
            CHECKS.append(
                f"- {backend}: try_acquire {row.per_op_us:.1f} us = {ratio:.2f}x one round trip "
                f"({verdict} the {GOAL}x goal)"
            )
            group = f"capacity, {backend}"
            floor = run("raw_round_trip", label="two coredis round trips", floor=True,
                        group=group, n=N, backend=backend, url=url, trips=2)  # fmt: skip
            row = run("capacity_async_with", label="async with cap:",
                      group=group, n=N, backend=backend, url=url)  # fmt: skip
            CHECKS.append(
                f"- {backend}: async with cap {row.per_op_us:.1f} us = "
                f"{row.per_op_us / floor.per_op_us:.2f}x two round trips"
            )
            group = f"coordinator admission, {backend}"
            floor = run("raw_round_trip", label="two coredis round trips", floor=True,
                        group=group, n=N_REQUESTS, backend=backend, url=url, trips=2)  # fmt: skip
            local = run("coordinator", label="coordinator.process, admission in the process",
                        group=group, n=N_REQUESTS, backend=backend, url=url)  # fmt: skip
            shared = run("coordinator", label="coordinator.process, [shared] admission",
                         group=group, n=N_REQUESTS, backend=backend, url=url,
                         shared=True)  # fmt: skip
            added = shared.per_op_us - local.per_op_us
            CHECKS.append(
                f"- {backend}: a shared admission adds {added:.1f} us per request "
                f"({local.per_op_us:.1f} -> {shared.per_op_us:.1f} us) = "
                f"{added / floor.per_op_us:.2f}x two round trips (user slot, global slot)"
            )
            group = f"persisted step completions, {backend}"
            floor = run("steps_sqlite", label="SQLiteStore", floor=True,
                        group=group, steps=STEPS, backend=backend, url=url)  # fmt: skip
            row = run("steps_redis", label="redis.store()",
                      group=group, steps=STEPS, backend=backend, url=url)  # fmt: skip
            CHECKS.append(
                f"- {backend}: step completions per second: SQLite {1e6 / floor.per_op_us:,.0f}, "
                f"Redis {1e6 / row.per_op_us:,.0f}"
            )

    return run_all


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":
        bench.main(lambda run: None, title="")
        return
    executable = shutil.which("redis-server")
    if executable is None:
        sys.exit("bench/redis.py needs redis-server on the PATH")
    port = _free_port()
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(
            [executable, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            bench.main(plan(f"redis://127.0.0.1:{port}/0"), title="Redis: shared limits, runs")
            print("### Targets\n")
            print("\n".join(CHECKS))
            print()
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
