"""No step process outlives the trioflow that started it: stopped groups, and kill -9 of trioflow.

Real ``python -m trioflow`` processes, real signals, on the real clock.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from test_cli import alive, project, start_run, step, wait_for, write

pytestmark = pytest.mark.real_time

__all__ = ("project",)  # the fixture, used by name

# A shell step whose background child ignores SIGTERM and writes its pid to NAME.pid.
GRANDCHILD = (
    "{python} -c 'import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    'open("{name}.pid", "w").write(str(os.getpid())); time.sleep(60)\' & wait'
)


def _gone(*pids: int, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _workflow(project: Path) -> None:
    write(
        project,
        f"""
        [steps.stubborn]
        run = {step("stubborn", "stubborn")}

        [steps.grand]
        shell = {json.dumps(GRANDCHILD.replace("{name}", "grand"))}
        """,
    )


def test_kill_9_of_trioflow_stops_its_steps_and_their_children(project: Path) -> None:
    _workflow(project)
    process = start_run(project, "--grace", "0.5")
    try:
        wait_for(project / "stubborn.pid")
        wait_for(project / "grand.pid")
        stubborn = int((project / "stubborn.pid").read_text())
        grandchild = int((project / "grand.pid").read_text())
        assert alive(stubborn)
        assert alive(grandchild)
        process.kill()  # SIGKILL: trioflow cannot stop anything itself
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # Both ignore SIGTERM: the watchdog kills them after the 0.5 s grace period.
    assert _gone(stubborn, grandchild)


def test_a_step_timeout_kills_the_grandchild_and_the_log_says_so(project: Path) -> None:
    write(
        project,
        f"""
        [steps.grand]
        shell = {json.dumps(GRANDCHILD.replace("{name}", "grand"))}
        timeout = 1
        """,
    )
    process = start_run(project, "--grace", "0.3", "--json")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    assert not alive(int((project / "grand.pid").read_text()))
    logs = list((project / ".trioflow").rglob("grand.log"))
    assert len(logs) == 1
    assert logs[0].read_text().splitlines()[-1] == (
        "--- timed out after 1s: killed after 0.3 s grace"
    )
    assert json.loads(out)["status"] == "failed"
