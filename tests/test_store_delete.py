"""The stores' ``delete_run``: a run goes with its steps, state and lease; a running one never."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio
import pytest

from _redis_server import STORE_KINDS, open_store
from trioflow import (
    Context,
    RunLeasedError,
    RunOwner,
    RunStatus,
    Workflow,
    WorkflowStore,
    run_workflow,
)

pytestmark = pytest.mark.anyio


@runtime_checkable
class DeletingStore(WorkflowStore, Protocol):
    async def delete_run(self, run_id: str) -> bool: ...


@pytest.fixture(params=STORE_KINDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: object
) -> AsyncIterator[DeletingStore]:
    async with open_store(request, tmp_path / "state.db") as opened:
        assert isinstance(opened, DeletingStore)
        yield opened


async def noop(ctx: Context) -> None:
    pass


async def remember(ctx: Context) -> None:
    ctx.set("seen", ctx.run_id)


async def test_a_deleted_run_is_gone_with_its_steps_and_state(store: DeletingStore) -> None:
    wf = Workflow("w").step("a", remember).step("b", noop, after="a")
    await run_workflow(wf, store=store, run_id="old")
    await run_workflow(wf, store=store, run_id="new")
    assert await store.delete_run("old") is True
    assert await store.load_run("old") is None
    assert [r.run_id for r in await store.list_runs()] == ["new"]
    assert await store.delete_run("old") is False
    assert await store.delete_run("never") is False
    kept = await store.load_run("new")
    assert kept is not None
    assert set(kept.steps) == {"a", "b"}
    assert kept.state["seen"].data() == "new"

    # The id can be used again: a fresh run, nothing of the deleted one in it.
    calls: list[str] = []

    async def count(ctx: Context) -> None:
        calls.append("a")

    result = await run_workflow(Workflow("w2").step("a", count), store=store, run_id="old")
    assert result.ok
    assert calls == ["a"]
    again = await store.load_run("old")
    assert again is not None
    assert (again.workflow, set(again.steps), dict(again.state)) == ("w2", {"a"}, {})


async def test_a_running_run_is_never_deleted(store: DeletingStore) -> None:
    started = anyio.Event()
    release = anyio.Event()

    async def wait(ctx: Context) -> None:
        started.set()
        await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: run_workflow(Workflow("w").step("a", wait), store=store, run_id="live")
        )
        await started.wait()
        with pytest.raises(RunLeasedError) as caught:
            await store.delete_run("live")
        assert caught.value.run_id == "live"
        assert caught.value.owner.pid == os.getpid()
        record = await store.load_run("live")
        assert record is not None
        assert record.status is RunStatus.RUNNING
        release.set()
    assert await store.delete_run("live") is True  # its lease was released at the end


async def test_the_lease_of_a_dead_owner_does_not_keep_a_run(store: DeletingStore) -> None:
    await run_workflow(Workflow("w").step("a", noop), store=store, run_id="r")
    # This host, this pid, but a process that started at another time: that process is gone.
    current = RunOwner.current()
    dead = RunOwner(
        host=current.host, pid=current.pid, since=current.since, token="dead", process_started=1.0
    )
    assert await store.acquire_lease("r", dead, 3600.0) is None
    assert await store.delete_run("r") is True
    assert await store.load_run("r") is None
    # The lease went with the run: anyone may take it now.
    assert await store.acquire_lease("r", RunOwner.current(), 60.0) is None
