"""Durable runs across processes: SIGKILL in the middle then resume, and two processes at once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from _redis_server import store_at, store_location
from trioflow import RunStatus, StepStatus

CHILD = Path(__file__).with_name("workflow_child.py")


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def runs(markers: Path) -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) for p in sorted(markers.iterdir())}


@pytest.fixture(params=["sqlite", "redis"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_location(request, tmp_path / "state" / "runs.db")


async def load(path: str, run_id: str) -> dict[str, StepStatus]:
    async with store_at(path) as store:
        record = await store.load_run(run_id)
    assert record is not None
    return {name: step.status for name, step in record.steps.items()}


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_killed_run_resumes_without_rerunning_finished_steps(
    tmp_path: Path, backend: str, location: str
) -> None:
    store, markers = location, tmp_path / "markers"
    markers.mkdir()
    with child("crash", str(store), "run-1", str(markers), backend, "hang") as first:
        assert first.stdout is not None
        try:
            line = first.stdout.readline()
        finally:
            first.send_signal(signal.SIGKILL)
            _, err = first.communicate(timeout=30)
        assert line == "started c\n", err  # c is in the middle of its work
    assert first.returncode == -signal.SIGKILL
    assert runs(markers) == {"a": 1, "b": 1, "c": 1, "p1": 1, "p2": 1}
    # Everything c comes after was recorded before c started, with its state.
    assert anyio.run(load, store, "run-1") == dict.fromkeys(
        ["a", "b", "p1", "p2"], StepStatus.SUCCEEDED
    )

    with child("crash", str(store), "run-1", str(markers), backend, "finish") as second:
        out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert out.splitlines() == [
        "ok=True restored=a,b,p1,p2 state=did-a,did-b,did-c,did-d,did-e,did-p1,did-p2",
        "e=value-e",
    ]
    # No completed step ran twice; c, killed in the middle, ran again; the run finished.
    assert runs(markers) == {"a": 1, "b": 1, "c": 2, "d": 1, "e": 1, "p1": 1, "p2": 1}
    assert (markers / "c").read_text() == "run-1:c\nrun-1:c\n"
    assert set(anyio.run(load, store, "run-1").values()) == {StepStatus.SUCCEEDED}


def test_two_processes_share_one_store(location: str) -> None:
    store = location
    children = [
        child("many", str(store), "left", "300", "trio"),
        child("many", str(store), "right", "300", "asyncio"),
    ]
    try:
        for proc in children:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line != "ready\n":
                proc.kill()
                pytest.fail(f"child not ready ({line!r}): {proc.communicate()[1]}")
        for proc in children:  # both hold the file open; now both write at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=120) for proc in children]
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    for proc, (out, err) in zip(children, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out == "ok=True\n"

    async def check() -> None:
        async with store_at(store) as shared:
            listed = await shared.list_runs()
        assert sorted(r.run_id for r in listed) == ["left", "right"]
        for record in listed:
            assert record.status is RunStatus.SUCCEEDED
            assert record.step_counts == {StepStatus.SUCCEEDED: 301}

    anyio.run(check)
