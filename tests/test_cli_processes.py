"""No step process outlives the trioflow that started it: stopped groups, and kill -9 of trioflow.

Real ``python -m trioflow`` processes, real signals, on the real clock.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from _helpers import alive
from test_cli import project, start_run, step, wait_for, write

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


def _interrupt_at(project: Path, delay: float) -> tuple[int, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "trioflow", "run", "wf.toml"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    return process.returncode, err


def _before_trioflow_ran(err: str) -> bool:
    """Whether a traceback shows the signal landed before trioflow's first line could act.

    The interpreter's own start-up (importing runpy, then the package up to the moment
    ``trioflow._startup`` has installed its handler, a few lines in) comes before the command
    can do anything about a signal.
    """
    frames = [line for line in err.splitlines() if line.strip().startswith("File ")]
    ours = [line for line in frames if "trioflow" in line]
    return (
        all("trioflow/__init__.py" in line or "trioflow/_startup.py" in line for line in ours)
        and "_interrupted" not in err
    )  # not raised by the handler itself


def test_ctrl_c_at_any_moment_of_start_up_exits_130_without_a_traceback(project: Path) -> None:
    # The signal lands while trioflow imports, while the run starts, or during the run:
    # every time, status 130 and no traceback.
    write(project, f"[steps.slow]\nrun = {step('sleep', 'slow', '2')}\n")
    delays = [0.1 + i * 0.05 for i in range(16)]  # start-up takes about 0.3-0.7 s
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda delay: _interrupt_at(project, delay), delays))
    counted = 0
    for delay, (returncode, err) in zip(delays, results, strict=True):
        if "Traceback" in err and _before_trioflow_ran(err):
            continue  # a very loaded machine: the interpreter itself was still starting
        counted += 1
        assert "Traceback" not in err, f"after {delay:.2f} s:\n{err}"
        # -SIGINT: killed before Python installed its handler; a shell shows that as 130 too.
        assert returncode in (130, -signal.SIGINT), f"after {delay:.2f} s: {returncode}\n{err}"
    assert counted >= 8, f"only {counted} of {len(delays)} signals reached trioflow's code"


def test_importing_trioflow_in_an_application_leaves_sigint_alone() -> None:
    code = (
        "import signal, trioflow, trioflow.cli; "
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out == "True\n"


def test_json_with_stderr_closed_prints_only_the_json(project: Path) -> None:
    write(project, f"[steps.a]\nrun = {step('ok', 'a')}\n[steps.b]\nrun = {step('ok', 'b')}\n")
    completed = subprocess.run(
        ["sh", "-c", f"exec {shlex.quote(sys.executable)} -m trioflow run wf.toml --json 2>&-"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    data = json.loads(completed.stdout)  # nothing but the JSON
    assert data["status"] == "succeeded"
    assert {s["name"]: s["status"] for s in data["steps"]} == {"a": "succeeded", "b": "succeeded"}


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_terminal_that_cannot_show_the_output_still_gets_the_summary(
    project: Path, encoding: str
) -> None:
    # The step writes UTF-8 bytes (its own stdout would have the same narrow encoding).
    code = "import sys; sys.stdout.buffer.write(sys.argv[1].encode()); sys.exit(3)"
    command = ["{python}", "-c", code, "d\u00e9j\u00e0 \u2713 \u4e2d\n"]
    write(project, f"[steps.intl]\nrun = {json.dumps(command)}\n")
    completed = subprocess.run(
        [sys.executable, "-m", "trioflow", "run", "wf.toml"],
        cwd=project,
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONIOENCODING": encoding},
    )
    out = completed.stdout.decode(encoding)
    err = completed.stderr.decode(encoding, "replace")
    assert completed.returncode == 1, err
    assert "Traceback" not in err
    assert "UnicodeEncodeError" not in err
    # The failing step's last lines, with what the encoding cannot show replaced:
    shown = "d\u00e9j\u00e0 ? ?" if encoding == "latin-1" else "d?j? ? ?"
    assert shown in out
    assert "to run the steps that did not succeed again:" in out
    assert "--resume" in out


def _run_id(project: Path) -> str:
    listed = subprocess.run(
        [sys.executable, "-m", "trioflow", "runs", "--json"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [run] = json.loads(listed.stdout)
    return str(run["run_id"])


def _trioflow(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioflow", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_run_being_run_cannot_be_resumed_and_a_killed_one_shows_interrupted(
    project: Path,
) -> None:
    write(project, f"[steps.slow]\nrun = {step('wait', 'slow')}\n")
    process = start_run(project)
    try:
        wait_for(project / "slow.pid")
        run_id = _run_id(project)
        listed = json.loads(_trioflow(project, "runs", "--json").stdout)
        assert (listed[0]["status"], listed[0]["interrupted"]) == ("running", False)
        assert listed[0]["owner"]["pid"] == process.pid
        # A second trioflow resuming the same run is refused before anything runs.
        second = _trioflow(project, "run", "wf.toml", "--resume", run_id)
        assert second.returncode == 2, second.stderr
        assert f"run {run_id!r} is being run by pid {process.pid} on host" in second.stderr
        assert second.stdout == ""  # not even the start line
        assert (project / "slow.started").read_text() == "x"  # the step ran once
        process.kill()  # kill -9: trioflow cannot record anything
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    listed = json.loads(_trioflow(project, "runs", "--json").stdout)
    assert (listed[0]["status"], listed[0]["interrupted"]) == ("running", True)
    assert "interrupted" in _trioflow(project, "runs").stdout
    (project / "release").touch()
    resumed = _trioflow(project, "run", "wf.toml", "--resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "succeeded"


def test_a_resume_reruns_a_step_whose_command_changed(project: Path) -> None:
    text = """
        [steps.build]
        run = {build}

        [steps.test]
        run = {test}
        after = ["build"]
        """
    write(project, text.format(build=step("ok", "build"), test=step("fail", "test", "3")))
    first = _trioflow(project, "run", "wf.toml", "--json")
    assert first.returncode == 1
    run_id = json.loads(first.stdout)["run_id"]
    # Unchanged steps are not run again; a changed one is, and the run says so.
    write(project, text.format(build=step("ok", "build", "v2"), test=step("ok", "test")))
    second = _trioflow(project, "run", "wf.toml", "--resume", run_id)
    assert second.returncode == 0, second.stderr
    assert "build: its command, environment or directory changed since it succeeded" in (
        second.stdout
    )
    assert (project / "build.started").read_text() == "xx"
    assert (project / "test.started").read_text() == "xx"


def test_resuming_a_run_whose_steps_changed_fails_before_its_start_line(project: Path) -> None:
    write(project, f"[steps.a]\nrun = {step('fail', 'a', '1')}\n")
    run_id = json.loads(_trioflow(project, "run", "wf.toml", "--json").stdout)["run_id"]
    write(project, f"[steps.a]\nrun = {step('ok', 'a')}\n[steps.b]\nrun = {step('ok', 'b')}\n")
    resumed = _trioflow(project, "run", "wf.toml", "--resume", run_id)
    assert resumed.returncode == 2
    assert resumed.stdout == ""
    assert "changed since the run was stored (steps added: 'b')" in resumed.stderr
