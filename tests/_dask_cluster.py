"""The Dask cluster of the test session: one LocalCluster of 2 worker processes on 127.0.0.1.

Test modules import the fixture (``from _dask_cluster import dask_address``). The cluster
lives in a process of its own, as a real scheduler does: a scheduler in the test process would
share its GIL with the event loop under test. It stops when its stdin closes (the end of the
session, or the test process dying). A test that kills a worker starts a cluster of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_PROGRAM = """
import logging, sys
import distributed

if __name__ == "__main__":
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.CRITICAL,
        # Its HTTP routes on a free port: 8787 may be taken by another cluster on the machine.
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    print(cluster.scheduler_address, flush=True)
    sys.stdin.read()
    cluster.close()
"""

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def dask_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The scheduler address of the session's ``LocalCluster(processes=True, n_workers=2)``."""
    script = tmp_path_factory.mktemp("dask") / "cluster.py"
    script.write_text(_PROGRAM)
    src = TESTS.parent / "src"
    # The workers import the test tasks (tests/_dask_tasks.py) and trioflow.
    path = os.pathsep.join([str(TESTS), str(src), os.environ.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path},
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        address = process.stdout.readline().strip()
        assert address.startswith("tcp://127.0.0.1:"), address
        yield address
    finally:
        process.stdin.close()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:  # pragma: no cover - a cluster that hangs on close
            process.kill()
            process.wait()
        process.stdout.close()
