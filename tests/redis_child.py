"""A child process for the shared-limit tests (tests/test_redis_processes.py); not a test module.

Usage::

    python redis_child.py bucket URL BACKEND SECONDS
    python redis_child.py capacity URL BACKEND ROUNDS
    python redis_child.py hold URL BACKEND
    python redis_child.py nothing - BACKEND
    python redis_child.py restart - BACKEND

Each connects, prints ``ready`` and waits for a line on stdin before it starts, so that the
parent can start them all at once.

``bucket``: takes tokens of the shared bucket ``b`` (20/s, burst 5) for ``SECONDS``, with
``try_acquire`` and ``acquire`` in turn, and prints how many it got.

``capacity``: ``ROUNDS`` times holds a slot of the shared capacity ``c`` (2 slots) for 10 ms,
counting the holders of every process in the Redis key ``inside``; prints the most it saw.

``nothing`` connects to a port nothing listens on and prints the error. ``restart`` starts
a ``redis-server`` of its own, stops it under a bucket, a capacity and a store, prints the
error of each (to the first detail), starts it again and prints that all three work.

``hold``: takes both slots of ``c`` (lease 1 s), prints ``holding`` and waits forever (the
parent kills it).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio

import trioflow.redis
from _redis_server import free_port, start_redis


async def ready() -> None:
    print("ready", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)


async def bucket(url: str, seconds: float) -> None:
    async with trioflow.redis.connect(url) as redis:
        shared = redis.rate_limiter("b", rate=20, burst=5)
        await ready()
        got = 0
        with anyio.move_on_after(seconds):
            while True:
                if await shared.try_acquire():
                    got += 1
                await shared.acquire()
                got += 1
        print(f"got {got}", flush=True)


async def capacity(url: str, rounds: int) -> None:
    async with trioflow.redis.connect(url) as redis:
        cap = redis.capacity("c", total=2, lease=5)
        await ready()
        most = 0

        async def one() -> None:
            nonlocal most
            async with cap:
                most = max(most, await redis.client.incr("inside"))
                await anyio.sleep(0.01)
                await redis.client.decr("inside")

        async with anyio.create_task_group() as tg:
            for _ in range(rounds):
                tg.start_soon(one)
        print(f"most {most}", flush=True)


async def hold(url: str) -> None:
    async with trioflow.redis.connect(url) as redis:
        cap = redis.capacity("c", total=2, lease=1)
        await ready()
        await cap.acquire_on_behalf_of("one")
        await cap.acquire_on_behalf_of("two")
        print("holding", flush=True)
        await anyio.sleep_forever()


def error_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).split(': ConnectionError')[0]}"


async def nothing() -> None:
    try:
        with anyio.fail_after(20):
            async with trioflow.redis.connect(f"redis://127.0.0.1:{free_port()}/0", timeout=1):
                print("connected")
    except trioflow.redis.RedisStateError as exc:
        print(error_line(exc))


async def restart() -> None:
    with tempfile.TemporaryDirectory() as directory, start_redis(Path(directory)) as server:
        async with trioflow.redis.connect(server.url, timeout=1) as redis:
            bucket = redis.rate_limiter("b", rate=10, burst=10)
            cap = redis.capacity("c", total=1, lease=2)
            store = redis.store()
            assert await bucket.try_acquire()
            server.stop()

            async def hold() -> None:
                async with cap:
                    print("acquired")

            with anyio.fail_after(15):
                for call in (bucket.try_acquire, hold, store.list_runs):
                    try:
                        await call()
                    except trioflow.TrioflowError as exc:
                        print(error_line(exc))
            server.start()  # empty: its scripts and keys are gone
            with anyio.fail_after(15):
                acquired = await bucket.try_acquire()
                async with cap:
                    held = (await cap.statistics()).borrowed
                runs = await store.list_runs()
            print(f"restarted: acquired {acquired}, slot held {held}, runs {runs}")


def main() -> None:
    mode, url, backend = sys.argv[1:4]
    if mode == "nothing":
        anyio.run(nothing, backend=backend)
    elif mode == "restart":
        anyio.run(restart, backend=backend)
    elif mode == "bucket":
        anyio.run(bucket, url, float(sys.argv[4]), backend=backend)
    elif mode == "capacity":
        anyio.run(capacity, url, int(sys.argv[4]), backend=backend)
    else:
        anyio.run(hold, url, backend=backend)


if __name__ == "__main__":
    main()
