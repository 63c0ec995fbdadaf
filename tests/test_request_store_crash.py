"""recover() after a SIGKILL: a real process dies mid-request; another process recovers it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _lifecycle_stages import SEVEN_STAGES
from request_store_child import open_store
from trioflow.lifecycle import (
    ErrorCategory,
    Pipeline,
    Request,
    RequestState,
    Router,
    Stage,
    open_coordinator,
)

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]

CHILD = Path(__file__).with_name("request_store_child.py")


def run_child(kind: str, where: str, backend: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHILD.parent), *sys.path])}
    return subprocess.Popen(
        [sys.executable, str(CHILD), kind, where, backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )


def wait_for_ready(child: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    """Read the child's output until it says ``ready``; False if it ends or takes too long."""
    assert child.stdout is not None
    fd = child.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while b"ready\n" not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return False
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        seen += chunk
    return True


async def retry(request: Request) -> str:
    return "done again"


@pytest.mark.parametrize(("kind", "backend"), [("sqlite", "trio"), ("redis", "asyncio")])
async def test_the_requests_of_a_killed_process_are_recovered_once(
    kind: str, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    where = (
        str(tmp_path / "requests.db") if kind == "sqlite" else request.getfixturevalue("redis_url")
    )
    child = run_child(kind, where, backend)
    try:
        ready = wait_for_ready(child)
    finally:
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
    assert ready, (out or b"").decode()
    async with open_store(kind, where) as store:
        hanging = await store.list(state=RequestState.PROCESSING)
        assert sorted(r.request_id for r in hanging) == ["hang0", "hang1", "hang2"]
        pipeline = Pipeline([Stage(name, state, retry) for name, state in SEVEN_STAGES])
        router = Router(lambda r: "q", {"q": pipeline})
        async with open_coordinator(router=router, requests=store) as coordinator:
            recovered = await coordinator.recover()
            assert await coordinator.recover() == ()
            # The application retries them (under new ids: the old ones stay as they ended).
            for record in recovered:
                again = Request(id=f"{record.request_id}-retry", user_id=record.user_id)
                assert (await coordinator.process(again)).ok
        assert sorted(r.request_id for r in recovered) == ["hang0", "hang1", "hang2"]
        for record in recovered:
            assert record.state is RequestState.FAILED
            assert record.category is ErrorCategory.INTERNAL
            assert record.reason == "interrupted"
            assert record.stages == ("receive", "validate", "plan", "context")
            assert record.user_id == "dora"
            assert record.owner is not None
            assert record.owner.pid == child.pid
            assert await store.load(record.request_id) == record
        done = await store.load("done")
        assert done is not None
        assert done.state is RequestState.COMPLETED
        assert await store.list(state=RequestState.PROCESSING) == ()
        assert len(await store.list(state=RequestState.COMPLETED)) == 4
