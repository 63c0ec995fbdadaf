"""A child process for the shared-limit tests (tests/test_redis_processes.py); not a test module.

Usage::

    python redis_child.py bucket URL BACKEND SECONDS
    python redis_child.py capacity URL BACKEND ROUNDS
    python redis_child.py hold URL BACKEND

Each connects, prints ``ready`` and waits for a line on stdin before it starts, so that the
parent can start them all at once.

``bucket``: takes tokens of the shared bucket ``b`` (20/s, burst 5) for ``SECONDS``, with
``try_acquire`` and ``acquire`` in turn, and prints how many it got.

``capacity``: ``ROUNDS`` times holds a slot of the shared capacity ``c`` (2 slots) for 10 ms,
counting the holders of every process in the Redis key ``inside``; prints the most it saw.

``hold``: takes both slots of ``c`` (lease 1 s), prints ``holding`` and waits forever (the
parent kills it).
"""

from __future__ import annotations

import sys

import anyio

import trioflow.redis


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


def main() -> None:
    mode, url, backend = sys.argv[1:4]
    if mode == "bucket":
        anyio.run(bucket, url, float(sys.argv[4]), backend=backend)
    elif mode == "capacity":
        anyio.run(capacity, url, int(sys.argv[4]), backend=backend)
    else:
        anyio.run(hold, url, backend=backend)


if __name__ == "__main__":
    main()
