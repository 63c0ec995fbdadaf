"""Workflow steps on a Dask cluster: stored like any other, skipped on resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from trioflow import SQLiteStore, StepStatus

# The session cluster (one for every test module: a plugin is registered once).
pytest_plugins = ["_dask_cluster"]

TESTS = Path(__file__).resolve().parent
CHILD = TESTS / "dask_workflow_child.py"


def child(*args: str) -> subprocess.Popen[str]:
    path = os.pathsep.join([str(TESTS), str(TESTS.parent / "src")])
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )


def runs(markers: Path) -> dict[str, list[str]]:
    return {p.name: p.read_text().splitlines() for p in sorted(markers.iterdir())}


async def load(path: Path, run_id: str) -> dict[str, StepStatus]:
    async with SQLiteStore(path) as store:
        record = await store.load_run(run_id)
    assert record is not None
    return {name: step.status for name, step in record.steps.items()}


@pytest.mark.real_time
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_killed_driver_resumes_without_rerunning_steps_done_on_the_cluster(
    tmp_path: Path,
    backend: str,
    dask_address: str,
) -> None:
    store, markers = tmp_path / "runs.db", tmp_path / "markers"
    markers.mkdir()
    args = (str(store), "run-1", str(markers), dask_address, backend)
    with child(*args, "hang") as first:
        assert first.stdout is not None
        try:
            line = first.stdout.readline()
        finally:
            first.send_signal(signal.SIGKILL)
            _, err = first.communicate(timeout=30)
        assert line == "waiting\n", err
    assert first.returncode == -signal.SIGKILL
    assert runs(markers) == {"prepare": ["p"], "analyse": ["P-a"]}
    steps = anyio.run(load, store, "run-1")
    assert steps["prepare"] == steps["analyse"] == StepStatus.SUCCEEDED

    with child(*args, "finish") as second:
        out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    # The values done on the cluster came back from the store; nothing done ran twice.
    assert out.splitlines() == ["ok=True restored=analyse,prepare report=P-A-R"]
    assert runs(markers) == {"prepare": ["p"], "analyse": ["P-a"], "report": ["P-A-r"]}
    assert set(anyio.run(load, store, "run-1").values()) == {StepStatus.SUCCEEDED}
