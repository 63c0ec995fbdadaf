"""``trioflow run FILE --dask ADDRESS``: steps with ``where = "dask"`` run on Dask workers.

Real ``python -m trioflow`` processes against the session's LocalCluster, on the real clock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _helpers import alive

# The session cluster (one for every test module: a plugin is registered once).
pytest_plugins = ["_dask_cluster"]

pytestmark = pytest.mark.real_time

SRC = Path(__file__).resolve().parent.parent / "src"

# Writes NAME.where: "worker" when its parent is a Dask worker process (spawned by
# multiprocessing), else "local"; prints a line and the value of $GREETING.
WHERE = (
    "import os, psutil, sys; name = sys.argv[1]; "
    "parent = ' '.join(psutil.Process(os.getppid()).cmdline()); "
    "open(name + '.where', 'w').write('worker' if 'multiprocessing' in parent else 'local'); "
    "print('hello from', name, os.environ.get('GREETING'))"
)
SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "COLUMNS")}
    env["PYTHONPATH"] = str(SRC)
    env.update(extra)
    return env


def _run(directory: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioflow", "run", "wf.toml", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_env(**env),
    )


def _python(code: str, *args: str) -> str:
    return json.dumps(["{python}", "-c", code, *args])


def _logs(directory: Path, run_id: str, name: str) -> str:
    return (directory / ".trioflow" / "logs" / run_id / f"{name}.log").read_text()


def test_remote_steps_run_on_workers_and_their_output_is_logged(
    tmp_path: Path,
    dask_address: str,
) -> None:
    (tmp_path / "wf.toml").write_text(
        f"""
        [steps.here]
        run = {_python(WHERE, "here")}

        [steps.there]
        run = {_python(WHERE, "there")}
        where = "dask"
        env = {{ GREETING = "hi" }}
        after = "here"

        [steps.broken]
        shell = "echo about to fail; exit 3"
        where = "dask"
        retries = 1
        retry_delay = 0
        after = "there"
        """.replace("\n        ", "\n")
    )
    done = _run(tmp_path, "--dask", dask_address, "--json")
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert {s["name"]: s["status"] for s in data["steps"]} == {
        "here": "succeeded",
        "there": "succeeded",
        "broken": "failed",
    }
    assert (tmp_path / "here.where").read_text() == "local"
    assert (tmp_path / "there.where").read_text() == "worker"
    run_id = data["run_id"]
    # The worker's output, in the step's log here; the step's own variables reached it.
    there = _logs(tmp_path, run_id, "there")
    assert "hello from there hi\n" in there
    assert there.splitlines()[-1] == "--- exit status 0"
    broken = _logs(tmp_path, run_id, "broken")
    assert broken.count("about to fail\n") == 2  # retried once, both attempts logged
    assert "attempt 2: echo about to fail; exit 3" in broken
    assert broken.splitlines()[-1] == "--- exit status 3"

    # Without --dask, the same file runs every step here.
    again = _run(tmp_path, "--json")
    assert json.loads(again.stdout)["steps"][1]["status"] == "succeeded", again.stderr
    assert (tmp_path / "there.where").read_text() == "local"


def test_a_remote_step_times_out_on_the_worker(tmp_path: Path, dask_address: str) -> None:
    (tmp_path / "wf.toml").write_text(
        f'[steps.slow]\nrun = {_python(SLEEPER, "slow.pid")}\nwhere = "dask"\ntimeout = 1\n'
    )
    done = _run(tmp_path, "--dask", dask_address, "--grace", "0.5", "--json")
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert "timed out after 1s" in json.dumps(data["steps"][0])
    assert not alive(int((tmp_path / "slow.pid").read_text()))
    assert "--- timed out after 1s: terminated" in _logs(tmp_path, data["run_id"], "slow")


def _start_long_remote_step(directory: Path, address: str) -> tuple[subprocess.Popen[str], int]:
    """Start a run whose remote step sleeps; return the run's process and the step's pid."""
    (directory / "wf.toml").write_text(
        f'[steps.long]\nrun = {_python(SLEEPER, "long.pid")}\nwhere = "dask"\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "trioflow", "run", "wf.toml", "--dask", address],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    pid_file = directory / "long.pid"
    deadline = time.monotonic() + 60  # a guard against hanging, not a timing assertion
    while not (pid_file.exists() and pid_file.read_text()):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise AssertionError(f"the remote step did not start: {process.communicate()}")
        time.sleep(0.02)
    pid = int(pid_file.read_text())
    assert alive(pid)
    return process, pid


def _gone(pid: int) -> None:
    # The worker stops the command's process group as soon as it sees the task released.
    deadline = time.monotonic() + 20
    while alive(pid):
        assert time.monotonic() < deadline, f"the remote process {pid} outlived the run"
        time.sleep(0.02)


def test_ctrl_c_stops_the_remote_process(tmp_path: Path, dask_address: str) -> None:
    process, pid = _start_long_remote_step(tmp_path, dask_address)
    try:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    resume = out.splitlines()[-1]
    assert "--resume" in resume
    assert resume.endswith(f"--dask {dask_address}")  # a resumed run goes to the cluster too
    _gone(pid)


def test_kill_9_of_trioflow_stops_the_remote_process(tmp_path: Path, dask_address: str) -> None:
    process, pid = _start_long_remote_step(tmp_path, dask_address)
    process.kill()  # its connection closes: the scheduler drops its tasks
    process.communicate()
    _gone(pid)


def test_a_where_that_is_not_known_is_refused(tmp_path: Path) -> None:
    (tmp_path / "wf.toml").write_text('[steps.x]\nshell = "true"\nwhere = "cloud"\n')
    done = _run(tmp_path)
    assert done.returncode == 2
    assert "steps.x.where: expected 'local' or 'dask', got a string ('cloud')" in done.stderr


def test_a_scheduler_that_cannot_be_reached_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "wf.toml").write_text('[steps.x]\nshell = "true"\nwhere = "dask"\n')
    done = _run(
        tmp_path, "--dask", "tcp://127.0.0.1:9", DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="1s"
    )
    assert done.returncode == 2, done.stderr
    assert "cannot use the Dask scheduler at 'tcp://127.0.0.1:9'" in done.stderr
    assert "Traceback" not in done.stderr
