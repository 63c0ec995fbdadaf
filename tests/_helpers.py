"""Helpers shared by the test files: failing and sleeping operations, a process probe."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from trioflow import (
    MemoryStore,
    OutcomeStatus,
    RunOwner,
    RunRecord,
    RunStatus,
    StepRecord,
    StoredValue,
    WorkflowStore,
)

SUCCEEDED = OutcomeStatus.SUCCEEDED
FAILED = OutcomeStatus.FAILED
CANCELLED = OutcomeStatus.CANCELLED


class Boom(Exception):
    """The failure the test operations raise."""


async def napping(seconds: float, value: int) -> int:
    await anyio.sleep(seconds)
    return value


class Tracker:
    """Makes operations that sleep, then return or raise; records what ran and how many at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.started: list[int] = []
        self.finished: list[int] = []
        self.cancelled: list[int] = []

    def op(
        self, index: int, seconds: float, *, fail: bool = False, value: Any = None
    ) -> Callable[[], Awaitable[Any]]:
        async def operation() -> Any:
            self.started.append(index)
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                await anyio.sleep(seconds)
            except anyio.get_cancelled_exc_class():
                self.cancelled.append(index)
                raise
            finally:
                self.running -= 1
            self.finished.append(index)
            if fail:
                raise Boom(f"op {index}")
            return index if value is None else value

        return operation

    def ops(self, durations: list[float], failing: tuple[int, ...] = ()) -> list[Any]:
        return [self.op(i, d, fail=i in failing) for i, d in enumerate(durations)]


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (waiting for a parent to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # it went between the two looks
        return False
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class ForwardingStore:
    """A workflow store forwarding to another (a MemoryStore by default); tests override one."""

    def __init__(self, inner: WorkflowStore | None = None) -> None:
        self.inner = MemoryStore() if inner is None else inner

    async def load_run(self, run_id: str) -> RunRecord | None:
        return await self.inner.load_run(run_id)

    async def list_runs(self) -> tuple[RunRecord, ...]:
        return await self.inner.list_runs()

    async def begin_run(
        self, run_id: str, *, workflow: str, fingerprint: str, shape: Mapping[str, Sequence[str]]
    ) -> None:
        await self.inner.begin_run(run_id, workflow=workflow, fingerprint=fingerprint, shape=shape)

    async def save_steps(
        self, run_id: str, steps: Sequence[StepRecord], state: Mapping[str, StoredValue]
    ) -> None:
        await self.inner.save_steps(run_id, steps, state)

    async def finish_run(self, run_id: str, status: RunStatus, *, elapsed: float) -> None:
        await self.inner.finish_run(run_id, status, elapsed=elapsed)

    async def acquire_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None:
        return await self.inner.acquire_lease(run_id, owner, ttl)

    async def renew_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None:
        return await self.inner.renew_lease(run_id, owner, ttl)

    async def release_lease(self, run_id: str, owner: RunOwner) -> None:
        await self.inner.release_lease(run_id, owner)


@contextmanager
def ready_children(
    script: Path, backends: Sequence[str], *args: str
) -> Iterator[Sequence[subprocess.Popen[str]]]:
    """Start ``script BACKEND...`` once per backend; yield them once each printed ``ready``.

    Each child gets ``args`` with its backend inserted after the first two (``mode url
    BACKEND rest...``), reads its instructions on stdin, and is killed if still running when
    the block ends.
    """
    head, rest = args[:2], args[2:]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *head, backend, *rest],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for backend in backends
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line != "ready\n":
                proc.kill()
                pytest.fail(f"child not ready ({line!r}): {proc.communicate()[1]}")
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def go(procs: Sequence[subprocess.Popen[str]]) -> None:
    """Tell every child started by :func:`ready_children` to go on."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def run_in_virtual_time(main: Callable[[], Awaitable[object]], backend: int) -> None:
    """Run ``main`` from a sync test on one of ``trioflow.testing.virtual_time_backends()``."""
    from trioflow.testing import virtual_time_backends

    name, options = virtual_time_backends()[backend]
    anyio.run(main, backend=name, backend_options=options)
