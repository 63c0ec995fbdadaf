"""Coordinator processes, one on trio and one on asyncio, sharing one admission through Redis."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

import trioflow.redis
from _helpers import go, ready_children
from shared_admission_child import LOG, config, router
from trioflow.lifecycle import ProcessingStatus, Request, open_coordinator

CHILD = Path(__file__).with_name("shared_admission_child.py")
BACKENDS = ("trio", "asyncio")


@contextmanager
def children(
    mode: str, url: str, *args: str, backends: Sequence[str] = BACKENDS
) -> Iterator[Sequence[subprocess.Popen[str]]]:
    """Start one child per backend; yield them once all are ready and told to go."""
    with ready_children(CHILD, backends, mode, url, *args) as procs:
        go(procs)
        yield procs


def test_coordinator_processes_never_exceed_the_shared_limits_together(redis_url: str) -> None:
    with children("serve", redis_url, "together", "40") as procs:
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            outputs.append(out.split())
    # "most N u0 N u1 N u2 N u3 N", as each process saw the counters of both.
    most = [int(words[1]) for words in outputs]
    per_user = [int(n) for words in outputs for n in words[3::2]]
    assert max(most) <= 3  # max_concurrency=3 over both processes, not 3 each
    assert max(per_user) <= 2  # per_user_limit=2 over both processes
    assert max(most) >= 2  # and the processes did run at once


def test_the_slots_of_a_killed_coordinator_come_back_after_the_lease(redis_url: str) -> None:
    with children("hold", redis_url, "killed", backends=("trio",)) as (holder,):
        assert holder.stdout is not None
        assert holder.stdout.readline() == "holding\n"  # all 3 global slots held
        cfg = config(redis_url, "killed")

        async def stage(request: Request) -> str:
            return "ok"

        async def after_the_kill() -> None:
            async with trioflow.redis.connect(redis_url) as redis:
                key = redis.key("cap", "killed:admission:all", "h")
                holder.send_signal(signal.SIGKILL)
                await anyio.to_thread.run_sync(holder.wait)
                reply: Any = await redis.client.zcard(key)
                assert reply == 3  # its leases have not expired yet
                async with open_coordinator(
                    cfg, router=router(stage), shared=redis, logger=LOG
                ) as coordinator:
                    with anyio.fail_after(10):  # at most a lease (1 s) later, all 3 came back
                        results = await coordinator.process_many(
                            [Request(i, user_id=f"v{i}") for i in range(3)]
                        )
            assert [r.status for r in results] == [ProcessingStatus.SUCCEEDED] * 3

        anyio.run(after_the_kill)
    assert holder.returncode == -signal.SIGKILL
