"""A coordinator process for the shared-admission tests; not a test module.

Usage::

    python shared_admission_child.py serve URL BACKEND NAME REQUESTS
    python shared_admission_child.py hold URL BACKEND NAME
    python shared_admission_child.py unreachable - BACKEND
    python shared_admission_child.py lost - BACKEND

Each opens a coordinator whose configuration is :func:`config` (``max_concurrency=3``,
``per_user_limit=2``, shared through ``URL`` under ``NAME``, 1-second leases), prints
``ready`` and waits for a line on stdin before it starts, so that the parent can start them
all at once.

``serve`` processes ``REQUESTS`` requests of users ``u0``..``u3`` at once; their stage counts
the requests inside it, of every process, in the Redis keys ``inside`` and ``inside:<user>``
and prints the most it saw of each (``most N u0 N u1 N ...``).

``hold`` processes three requests whose stage never ends; it prints ``holding`` once all
three are inside (the parent kills it).

``unreachable`` opens a coordinator on a URL nothing listens on and prints the error.
``lost`` starts a ``redis-server`` of its own and a coordinator on it (one request at
once), holds the slot with one request while another waits, stops the server, and prints
how the waiting request, a new one and the holder ended; then starts the server again and
prints ``back`` once a request is admitted again. These two run in a process of their own:
coredis 6.9 leaves the memory streams of a connection that failed unclosed (a ResourceWarning
when they are collected), which would otherwise be reported against another test.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import structlog

import trioflow.redis
from _lifecycle_stages import SEVEN_STAGES
from _redis_server import free_port, start_redis
from trioflow.lifecycle import (
    OrchestrationConfig,
    Pipeline,
    ProcessingResult,
    ProcessingStatus,
    Request,
    Router,
    Stage,
    load_config,
    open_coordinator,
)

LOG = structlog.wrap_logger(structlog.PrintLogger(sys.stderr))  # stdout is for the results


def config(url: str, name: str) -> OrchestrationConfig:
    """The configuration every process of a test shares."""
    return load_config(
        {
            "max_concurrency": 3,
            "per_user_limit": 2,
            "default_timeout": None,
            "enable_metrics": False,
            "shared": {"url": url, "name": name, "lease": 1.0},
        }
    )


def router(stage: Any) -> Router:
    async def done(request: Request) -> str:
        return "ok"

    stages = [Stage(n, s, stage if n == "process" else done) for n, s in SEVEN_STAGES]
    return Router(lambda r: "q", {"q": Pipeline(stages)})


async def ready() -> None:
    print("ready", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)


async def serve(url: str, name: str, requests: int) -> None:
    most: Counter[str] = Counter()
    async with trioflow.redis.connect(url) as redis:
        client = redis.client

        async def stage(request: Request) -> str:
            keys = ("inside", f"inside:{request.user_id}")
            for key in keys:
                most[key] = max(most[key], await client.incr(key))
            await anyio.sleep(0.01)
            for key in keys:
                await client.decr(key)
            return "ok"

        cfg = config(url, name)
        async with open_coordinator(cfg, router=router(stage), logger=LOG) as coordinator:
            await ready()
            batch = [Request(i, user_id=f"u{i % 4}") for i in range(requests)]
            results = await coordinator.process_many(batch)
    assert all(r.status is ProcessingStatus.SUCCEEDED for r in results), results
    users = " ".join(f"u{i} {most[f'inside:u{i}']}" for i in range(4))
    print(f"most {most['inside']} {users}", flush=True)


async def hold(url: str, name: str) -> None:
    inside = 0

    async def stage(request: Request) -> str:
        nonlocal inside
        inside += 1
        if inside == 3:
            print("holding", flush=True)
        await anyio.sleep_forever()
        return "never"  # pragma: no cover

    cfg = config(url, name)
    async with open_coordinator(cfg, router=router(stage), logger=LOG) as coordinator:
        await ready()
        await coordinator.process_many([Request(i, user_id=f"u{i}") for i in range(3)])


async def unreachable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    async def never(request: Request) -> str:
        raise AssertionError("admitted without Redis")  # pragma: no cover

    try:
        async with open_coordinator(config(url, "x"), router=router(never), logger=LOG):
            print("opened")
    except trioflow.redis.RedisStateError as exc:
        print(f"{type(exc).__name__}: {': '.join(str(exc).split(': ')[:2])}", flush=True)


def _ended(result: ProcessingResult) -> str:
    error = "" if result.error is None else f" {type(result.error).__name__}"
    category = None if result.category is None else result.category.value
    return f"{result.request_id} {result.status.value} {category}{error}"


async def until(condition: Any) -> None:
    with anyio.fail_after(20):
        while not condition():
            await anyio.sleep(0.005)


async def lost() -> None:
    release = anyio.Event()

    async def stage(request: Request) -> str:
        if request.payload == "hold":
            await release.wait()
        return "ok"

    results: list[ProcessingResult] = []
    with tempfile.TemporaryDirectory() as directory, start_redis(Path(directory)) as server:
        cfg = load_config(
            {
                "max_concurrency": 1,
                "default_timeout": None,
                "enable_metrics": False,
                "shared": {"url": server.url, "lease": 1.0},
            }
        )
        async with open_coordinator(cfg, router=router(stage), logger=LOG) as c:
            async with anyio.create_task_group() as tg:

                async def run(request: Request) -> None:
                    results.append(await c.process(request))

                tg.start_soon(run, Request("hold", id="holder"))
                await until(lambda: c.statistics().in_flight == 1)
                tg.start_soon(run, Request("wait", id="waiter"))
                await until(lambda: c.statistics().queue_depth == 1)
                server.stop()
                await until(lambda: len(results) == 1)  # never a hang
                print(_ended(results[0]), flush=True)
                print(_ended(await c.process(Request("new", id="new"))), flush=True)
                release.set()
            print(_ended(results[1]), flush=True)
            stats = c.statistics()
            print(
                f"in_flight {stats.in_flight} queue_depth {stats.queue_depth} users {stats.users}"
            )
            server.start()
            with anyio.fail_after(30):
                while (await c.process(Request("again"), timeout=5)).category is not None:
                    await anyio.sleep(0.2)
            print("back", flush=True)


def main() -> None:
    mode, url, backend, *rest = sys.argv[1:]
    if mode == "serve":
        anyio.run(serve, url, rest[0], int(rest[1]), backend=backend)
    elif mode == "hold":
        anyio.run(hold, url, rest[0], backend=backend)
    elif mode == "unreachable":
        anyio.run(unreachable, backend=backend)
    else:
        anyio.run(lost, backend=backend)


if __name__ == "__main__":
    main()
