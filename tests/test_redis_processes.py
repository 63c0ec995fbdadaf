"""Several real processes, some on trio and some on asyncio, sharing limits through one Redis."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anyio

import trioflow.redis
from _helpers import go, ready_children

CHILD = Path(__file__).with_name("redis_child.py")
BACKENDS = ("trio", "asyncio", "trio")


def children(
    mode: str, url: str, *args: str
) -> AbstractContextManager[Sequence[subprocess.Popen[str]]]:
    """Start one child per backend in ``BACKENDS``; yield them once all are ready."""
    return ready_children(CHILD, BACKENDS, mode, url, *args)


def outputs(procs: Sequence[subprocess.Popen[str]]) -> list[str]:
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(out)
    return results


def server_time(url: str) -> float:
    async def read() -> float:
        async with trioflow.redis.connect(url) as redis:
            reply: Any = await redis.client.eval("return redis.call('TIME')")
            return int(reply[0]) + int(reply[1]) / 1e6

    return anyio.run(read)


def test_processes_share_one_bucket_exactly(redis_url: str) -> None:
    seconds = 1.0
    with children("bucket", redis_url, str(seconds)) as procs:
        start = server_time(redis_url)
        go(procs)
        got = [int(out.split()[1]) for out in outputs(procs)]
        window = server_time(redis_url) - start
    # Every acquisition happened within the window (of the server's clock): at most
    # burst + rate * window of them, over all processes; and the bucket was kept busy.
    assert sum(got) <= 5 + 20 * window
    assert sum(got) >= 20 * seconds / 2
    assert all(got), got  # every process had its share


def test_processes_never_exceed_one_capacity(redis_url: str) -> None:
    with children("capacity", redis_url, "12") as procs:
        go(procs)
        most = [int(out.split()[1]) for out in outputs(procs)]
    assert max(most) == 2  # two at once, over the three processes, and never more


def test_the_slots_of_a_killed_holder_come_back_after_their_lease(redis_url: str) -> None:
    with children("hold", redis_url) as procs:
        holder, *others = procs
        for proc in others:
            proc.kill()
        go([holder])
        assert holder.stdout is not None
        assert holder.stdout.readline() == "holding\n"

        async def after_the_kill() -> None:
            async with trioflow.redis.connect(redis_url) as redis:
                cap = redis.capacity("c", total=2, lease=1)
                assert (await cap.statistics()).borrowed == 2
                holder.send_signal(signal.SIGKILL)
                await anyio.to_thread.run_sync(holder.wait)
                with anyio.move_on_after(0.2) as scope:  # its leases have not expired yet
                    await cap.acquire_on_behalf_of("early")
                assert scope.cancelled_caught
                with anyio.fail_after(10):  # at most a lease (1 s) later: both come back
                    await cap.acquire_on_behalf_of("a")
                    await cap.acquire_on_behalf_of("b")
                stats = await cap.statistics()
                assert (stats.borrowed, stats.held, stats.waiting) == (2, 2, 0)
                cap.release_on_behalf_of("a")
                cap.release_on_behalf_of("b")

        anyio.run(after_the_kill)
    assert holder.returncode == -signal.SIGKILL
