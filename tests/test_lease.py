"""Run leases: one process executes a stored run at a time; a dead owner's run is interrupted."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from _helpers import ForwardingStore
from _redis_server import STORE_KINDS, open_store, store_at, store_location
from trioflow import (
    Context,
    MemoryStore,
    RunLeasedError,
    RunOwner,
    RunRecord,
    RunStatus,
    SQLiteStore,
    StepStatus,
    TrioflowError,
    Workflow,
    WorkflowShapeChangedError,
    WorkflowStore,
    run_workflow,
)

pytestmark = pytest.mark.anyio

CHILD = Path(__file__).with_name("workflow_child.py")
HOST = socket.gethostname()
OWNER_MESSAGE = (
    r"run 'r' is being run by pid \d+ on host '.*' since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
)


@pytest.fixture(params=STORE_KINDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: object
) -> AsyncIterator[WorkflowStore]:
    async with open_store(request, tmp_path / "state.db") as opened:
        yield opened


async def noop(ctx: Context) -> None:
    pass


def elsewhere(**changes: object) -> RunOwner:
    fields: dict[str, object] = {
        "host": "build-7.elsewhere",
        "pid": 4242,
        "since": datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
        "token": "f00d",
        "process_started": 1.0,
    }
    fields.update(changes)
    return RunOwner(**fields)  # type: ignore[arg-type]


async def begun(store: WorkflowStore, wf: Workflow) -> None:
    # A run stored RUNNING that never finished: its process died (or runs elsewhere).
    graph = wf.graph()
    await store.begin_run("r", workflow=wf.name, fingerprint=graph.fingerprint, shape=graph.shape)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- in one process -------------------------------------------------------------------------
async def test_a_second_run_of_a_running_run_is_refused_before_any_step(
    store: WorkflowStore,
) -> None:
    started: list[str] = []
    release = anyio.Event()
    running = anyio.Event()

    async def wait(ctx: Context) -> None:
        started.append(str(ctx.step))
        running.set()
        await release.wait()

    wf = Workflow("w").step("wait", wait).step("after", noop, after="wait")
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run_workflow(wf, store=store, run_id="r"))
        await running.wait()
        record = await store.load_run("r")
        assert record is not None
        assert record.owner is not None
        assert (record.owner.host, record.owner.pid) == (HOST, os.getpid())
        assert not record.interrupted
        with pytest.raises(RunLeasedError, match=OWNER_MESSAGE) as caught:
            await run_workflow(wf, store=store, run_id="r")
        assert isinstance(caught.value, TrioflowError)
        assert caught.value.run_id == "r"
        assert caught.value.owner == record.owner
        assert f"pid {os.getpid()} on host {HOST!r}" in str(caught.value)
        release.set()
    assert started == ["wait"]  # the refused run started nothing
    record = await store.load_run("r")
    assert record is not None
    assert record.status is RunStatus.SUCCEEDED
    assert record.owner is None  # released at the end
    assert not record.interrupted


@pytest.mark.parametrize("how", ["succeeds", "fails", "is cancelled", "changed shape"])
async def test_the_lease_is_released_however_the_run_ends(store: WorkflowStore, how: str) -> None:
    async def step(ctx: Context) -> None:
        if how == "fails":
            raise ValueError("no")
        if how == "is cancelled":
            await anyio.sleep_forever()

    wf = Workflow("w").step("a", step)
    if how == "changed shape":
        await run_workflow(Workflow("w").step("a", step).step("b", step), store=store, run_id="r")
        with pytest.raises(WorkflowShapeChangedError):
            await run_workflow(wf, store=store, run_id="r")
    else:
        with anyio.move_on_after(1):
            await run_workflow(wf, store=store, run_id="r")
    assert await store.acquire_lease("r", elsewhere(), 60) is None  # free


async def test_another_hosts_lease_binds_until_it_expires(store: WorkflowStore) -> None:
    wf = Workflow("w").step("a", noop)
    await begun(store, wf)
    other = elsewhere()
    assert await store.acquire_lease("r", other, 3600) is None
    record = await store.load_run("r")
    assert record is not None
    assert record.owner == other
    assert not record.interrupted
    with pytest.raises(RunLeasedError) as caught:
        await run_workflow(wf, store=store, run_id="r")
    assert caught.value.owner == other
    assert str(caught.value) == (
        "run 'r' is being run by pid 4242 on host 'build-7.elsewhere' since 2026-12-01 "
        "12:00:00 UTC"
    )
    # Its owner vanished: a renewal of 0 seconds stands for a lease that ran out.
    assert await store.renew_lease("r", other, 0) is None
    [listed] = await store.list_runs()
    assert listed.owner is None
    assert listed.interrupted
    result = await run_workflow(wf, store=store, run_id="r")
    assert result.ok


@pytest.mark.parametrize("pid", ["dead", "reused"])
async def test_a_dead_owner_on_this_host_frees_the_lease_at_once(
    store: WorkflowStore, pid: str
) -> None:
    wf = Workflow("w").step("a", noop)
    await begun(store, wf)
    if pid == "dead":
        ghost = elsewhere(host=HOST, pid=dead_pid())
    else:  # this process's pid, but a process that started at another time
        ghost = elsewhere(host=HOST, pid=os.getpid(), process_started=12345.0)
    assert not ghost.alive()
    assert await store.acquire_lease("r", ghost, 3600) is None
    record = await store.load_run("r")
    assert record is not None
    assert record.owner is None  # although its lease has an hour to go
    assert record.interrupted
    assert (await run_workflow(wf, store=store, run_id="r")).ok


def test_an_owner_of_this_process_is_alive() -> None:
    me = RunOwner.current()
    assert (me.host, me.pid) == (HOST, os.getpid())
    assert me.since.tzinfo is UTC
    assert me.alive()
    assert me.token != RunOwner.current().token
    assert elsewhere().alive()  # another host: only expiry tells


class Wrapper(ForwardingStore):
    """Counts renewals and finishes; a ``thief`` takes the lease at the next renewal."""

    def __init__(self) -> None:
        super().__init__()
        self.renewals = 0
        self.finished: list[RunStatus] = []
        self.thief: RunOwner | None = None

    async def finish_run(self, run_id: str, status: RunStatus, *, elapsed: float) -> None:
        self.finished.append(status)
        await super().finish_run(run_id, status, elapsed=elapsed)

    async def renew_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None:
        self.renewals += 1
        if self.thief is not None:
            return self.thief
        return await super().renew_lease(run_id, owner, ttl)


async def test_the_heartbeat_renews_every_third_of_the_ttl_compensation_included() -> None:
    store = Wrapper()

    async def slow(ctx: Context) -> None:
        await anyio.sleep(100)

    async def undo(ctx: Context) -> None:
        await anyio.sleep(30)

    async def fail(ctx: Context) -> None:
        await anyio.sleep(101)
        raise ValueError("late")

    wf = Workflow("w").step("slow", slow, compensate=undo).step("fail", fail)
    result = await run_workflow(wf, store=store, run_id="r", lease_ttl=30)
    assert not result.ok
    assert anyio.current_time() == 131
    assert store.renewals == 13  # at 10, 20, ... 130: during the compensation too


async def test_a_run_whose_lease_was_taken_stops_and_writes_nothing_more() -> None:
    store = Wrapper()
    store.thief = elsewhere()
    undone: list[str] = []

    async def slow(ctx: Context) -> None:
        await anyio.sleep(100)

    async def undo(ctx: Context) -> None:
        undone.append("undo")

    wf = Workflow("w").step("quick", noop, compensate=undo).step("slow", slow)
    with pytest.raises(RunLeasedError, match="lease expired") as caught:
        await run_workflow(wf, store=store, run_id="r", lease_ttl=15)
    assert caught.value.owner == store.thief
    assert anyio.current_time() == 5  # stopped at the first renewal
    assert store.finished == []  # the new owner writes the run now
    assert undone == []
    record = await store.load_run("r")
    assert record is not None
    assert record.steps["quick"].status is StepStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("ttl", "error", "message"),
    [
        ("5", TypeError, r"lease_ttl must be a number in \[0.1, 3.1536e\+07\], got '5' \(str\)"),
        (0, ValueError, r"lease_ttl must be a number in \[0.1, 3.1536e\+07\], got 0 \(int\)"),
        (float("nan"), ValueError, "lease_ttl"),
        (float("inf"), ValueError, "lease_ttl"),
        (10.0**9, ValueError, r"lease_ttl must be a number in \[0.1, .*got 1000000000.0"),
    ],
)
async def test_lease_ttl_is_checked(ttl: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        await run_workflow(Workflow("w").step("a", noop), store=MemoryStore(), lease_ttl=ttl)  # type: ignore[arg-type]


# --- real processes on one SQLite file ------------------------------------------------------
def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(params=["sqlite", "redis"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_location(request, tmp_path / "state.db")


async def load(path: str, run_id: str) -> RunRecord:
    async with store_at(path) as store:
        record = await store.load_run(run_id)
    assert record is not None
    return record


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_second_process_is_refused_the_run_naming_its_owner(
    tmp_path: Path, backend: str, location: str
) -> None:
    store, markers = location, tmp_path / "markers"
    markers.mkdir()
    with child("lease", str(store), "r", str(markers), backend) as first:
        assert first.stdout is not None
        assert first.stdin is not None
        try:
            line = first.stdout.readline()
            assert line == f"started {first.pid}\n", first.stderr.read() if first.stderr else ""
            record = anyio.run(load, store, "r")
            assert record.owner is not None
            assert (record.owner.pid, record.owner.host) == (first.pid, HOST)
            assert not record.interrupted
            with child("lease", str(store), "r", str(markers), backend) as second:
                out, err = second.communicate(timeout=60)
            assert second.returncode == 3, err
            assert out.startswith(f"leased {first.pid} {HOST} "), out
            assert re.search(OWNER_MESSAGE, out), out
            first.stdin.write("go\n")
            first.stdin.flush()
            out, err = first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
    assert first.returncode == 0, err
    assert out == "ok=True\n"
    # The step ran once, in the first process only.
    assert [p.name for p in markers.iterdir()] == [str(first.pid)]
    record = anyio.run(load, store, "r")
    assert record.status is RunStatus.SUCCEEDED
    assert record.owner is None


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_killed_owner_leaves_its_run_interrupted_at_once_and_resumable(
    tmp_path: Path, backend: str, location: str
) -> None:
    store, markers = location, tmp_path / "markers"
    markers.mkdir()
    with child("lease", str(store), "r", str(markers), backend) as first:
        assert first.stdout is not None
        try:
            assert first.stdout.readline() == f"started {first.pid}\n"
        finally:
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL

    async def listed() -> RunRecord:
        async with store_at(store) as shared:
            [record] = await shared.list_runs()
        return record

    # At once: the lease has most of its 15 seconds to go, but its process is gone.
    record = anyio.run(listed)
    assert record.status is RunStatus.RUNNING
    assert record.owner is None
    assert record.interrupted
    with child("lease", str(store), "r", str(markers), backend) as second:
        out, err = second.communicate("go\n", timeout=60)
    assert second.returncode == 0, err
    assert out == f"started {second.pid}\nok=True\n"
    record = anyio.run(load, store, "r")
    assert record.status is RunStatus.SUCCEEDED
    assert not record.interrupted


@pytest.mark.real_time
async def test_an_expired_lease_of_another_host_in_the_file_is_free(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    wf = Workflow("w").step("a", noop)
    async with SQLiteStore(path) as store:
        await begun(store, wf)
        soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        with sqlite3.connect(path) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO leases VALUES ('r', 'far.away', 99, 'tok', 5.0, ?, ?)",
                (datetime(2026, 12, 1, 12, tzinfo=UTC).isoformat(), soon),
            )
        conn.close()
        with pytest.raises(RunLeasedError, match=r"pid 99 on host 'far\.away' since 2026-12-01"):
            await run_workflow(wf, store=store, run_id="r")
        record = await store.load_run("r")
        assert record is not None
        assert record.owner is not None
        assert record.owner.host == "far.away"
        assert not record.interrupted
        past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE leases SET expires_at = ?", (past,))
        conn.close()
        [listed] = await store.list_runs()
        assert listed.owner is None
        assert listed.interrupted
        assert (await run_workflow(wf, store=store, run_id="r")).ok


async def test_a_run_cancelled_as_its_heartbeat_starts_ends_at_once() -> None:
    # The cancellation lands inside the start of the (shielded) heartbeat: the run must still
    # stop it, or its task group would wait on it forever, renewing the lease of a dead run.
    renewals: list[float] = []

    class CancelAfterAcquire(ForwardingStore):
        async def acquire_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None:
            holder = await self.inner.acquire_lease(run_id, owner, ttl)
            scope.cancel()  # delivered at the run's next checkpoint: starting the heartbeat
            return holder

        async def renew_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None:
            renewals.append(anyio.current_time())
            if len(renewals) == 3:
                raise OSError("gave up")  # ends the heartbeat, so the bug cannot hang the test
            return await self.inner.renew_lease(run_id, owner, ttl)

    wf = Workflow("w").step("a", noop)
    with anyio.CancelScope() as scope:
        await run_workflow(wf, store=CancelAfterAcquire(), run_id="r")
    assert scope.cancelled_caught
    assert renewals == []
