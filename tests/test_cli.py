"""End to end: ``python -m trioflow`` in a subprocess, running real processes on the real clock.

Each step command is a tiny Python script (``helper.py`` below) that leaves marker files, so
the tests can prove what ran, how often, and that stopped processes are really gone.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from _helpers import alive

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

HELPER = r"""
import os, signal, sys, time
from pathlib import Path

action, name = sys.argv[1], sys.argv[2]


def mark(suffix):
    with open(f"{name}.{suffix}", "a") as f:
        f.write("x")


mark("started")
if action == "ok":
    print(f"{name}: ok")
elif action == "fail":  # fails, once the file argv[4] (if given) exists
    while len(sys.argv) > 4 and not Path(sys.argv[4]).exists():
        time.sleep(0.02)
    print(f"{name}: something broke", file=sys.stderr)
    sys.exit(int(sys.argv[3]))
elif action == "flaky":  # fails on the first attempt only
    if not Path(f"{name}.flaky").exists():
        Path(f"{name}.flaky").touch()
        sys.exit(1)
elif action == "sleep":
    time.sleep(float(sys.argv[3]))
elif action == "wait":  # runs until the file 'release' exists
    Path(f"{name}.pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + 30
    while not Path("release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
elif action == "stubborn":  # ignores SIGTERM: only SIGKILL stops it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(f"{name}.pid").write_text(str(os.getpid()))
    time.sleep(30)
mark("done")
"""


# What the command prints to repeat itself after `python -m trioflow` (the interpreter by
# name when PATH finds that same interpreter, else by path).
PROGRAM = shlex.join(
    [
        os.path.basename(sys.executable)
        if shutil.which(os.path.basename(sys.executable)) == sys.executable
        else sys.executable,
        "-m",
        "trioflow",
    ]
)


def trioflow(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioflow", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env or _env(),
    )


def in_parallel(*calls: Callable[[], subprocess.CompletedProcess[str]]) -> list[Any]:
    # Each command spends most of its time starting Python: run independent ones together.
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda call: call(), calls))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PUBLISH", "CI", "COLUMNS")}
    env.update(extra)
    return env


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "helper.py").write_text(HELPER, encoding="utf-8")
    return tmp_path


def write(directory: Path, text: str, name: str = "wf.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def step(action: str, name: str, *args: str) -> str:
    return json.dumps(["{python}", "helper.py", action, name, *args])


def marks(directory: Path, name: str, suffix: str = "done") -> int:
    path = directory / f"{name}.{suffix}"
    return len(path.read_text()) if path.exists() else 0


def json_out(completed: subprocess.CompletedProcess[str]) -> Any:
    assert "Traceback" not in completed.stderr, completed.stderr
    return json.loads(completed.stdout)


def statuses(data: Any) -> dict[str, str]:
    return {s["name"]: s["status"] for s in data["steps"]}


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def start_run(project: Path, *args: str) -> subprocess.Popen[str]:
    """Start ``trioflow run wf.toml ARGS`` in ``project`` with piped output."""
    return subprocess.Popen(
        [sys.executable, "-m", "trioflow", "run", "wf.toml", *args],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def interrupt(
    project: Path, pid_file: str, sig: signal.Signals, *args: str
) -> tuple[int, str, str]:
    """Run the workflow, send ``sig`` once ``pid_file`` appears; return (status, out, err)."""
    process = start_run(project, *args)
    try:
        wait_for(project / pid_file)
        process.send_signal(sig)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out, err


# --- runs that need no interaction: started all at once, checked one by one ----------------

SCENARIOS: dict[str, tuple[str | None, list[str], dict[str, str]]] = {
    # name: (workflow file text or None, arguments, extra environment)
    "example-build": (
        None,
        ["run", str(EXAMPLES / "build_and_test.toml"), "--json", "--state", "st/state.db"],
        {},
    ),
    "example-pools": (
        None,
        ["run", str(EXAMPLES / "pools_retries_conditions.toml"), "--json"],
        {"PUBLISH": "yes"},
    ),
    "continue-on-error": (
        f"""
        [steps.lint]
        run = {step("fail", "lint", "3")}
        continue_on_error = true

        [steps.missing]
        run = ["no-such-command-trioflow", "--flag"]
        continue_on_error = true

        [steps.build]
        run = {step("ok", "build")}
        after = ["lint", "missing"]

        [steps.lint-report]
        run = {step("ok", "lint-report")}
        after = ["lint"]
        when = "steps.lint.status == 'failed'"
        """,
        ["run", "wf.toml"],
        {},
    ),
    "failing": (
        f"""
        [steps.build]
        run = {step("fail", "build", "2", "docs.pid")}

        [steps.test]
        run = {step("ok", "test")}
        after = ["build"]

        [steps.docs]
        run = {step("wait", "docs")}
        """,
        ["run", "wf.toml", "--json"],
        {},
    ),
    "keep-going": (
        f"""
        [steps.build]
        run = {step("fail", "build", "1")}

        [steps.test]
        run = {step("ok", "test")}
        after = ["build"]

        [steps.docs]
        run = {step("sleep", "docs", "0.2")}
        """,
        ["run", "wf.toml", "--json", "--keep-going"],
        {},
    ),
    "timeout": (
        f"""
        [steps.hang]
        run = {step("stubborn", "hang")}
        timeout = 0.5
        """,
        ["run", "wf.toml", "--json", "--grace", "0.2"],
        {},
    ),
    "dry-run": (
        None,
        ["run", str(EXAMPLES / "build_and_test.toml"), "--dry-run", "--max-parallel", "2"],
        {},
    ),
    "graph": (None, ["graph", str(EXAMPLES / "build_and_test.toml")], {}),
    # Bad input: a message, exit status 2, never a traceback.
    "malformed-toml": ('[steps.a]\nrun = ["x" oops\n', ["run", "wf.toml"], {}),
    "unknown-key": ('[steps.a]\nrun = ["x"]\ntmieout = 5\n', ["run", "wf.toml"], {}),
    "cycle": (
        '[steps.a]\nrun = ["x"]\nafter = ["b"]\n[steps.b]\nrun = ["x"]\nafter = ["a"]\n',
        ["run", "wf.toml"],
        {},
    ),
    "unknown-after": ('[steps.a]\nrun = ["x"]\nafter = ["zz"]\n', ["run", "wf.toml"], {}),
    "broken-state": (
        f"[steps.a]\nrun = {step('ok', 'a')}\n",
        ["run", "wf.toml", "--state", "broken.db"],
        {},
    ),
    "missing-file": (None, ["graph", "nope.toml"], {}),
    "unknown-run": (
        f"[steps.a]\nrun = {step('ok', 'a')}\n",
        ["run", "wf.toml", "--resume", "nope"],
        {},
    ),
}


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """Run every scenario, each in its own directory, several at once.

    Each command spends most of its time starting Python, so running them together keeps this
    file fast; each scenario is still checked by its own test.
    """
    directories = {}
    for name, (text, _, _) in SCENARIOS.items():
        directory = tmp_path_factory.mktemp(name)
        (directory / "helper.py").write_text(HELPER, encoding="utf-8")
        if text is not None:
            write(directory, text)
        directories[name] = directory
    (directories["broken-state"] / "broken.db").write_bytes(b"not a database" * 100)

    def launch(name: str) -> subprocess.CompletedProcess[str]:
        _, args, env = SCENARIOS[name]
        return trioflow(*args, cwd=directories[name], env=_env(**env))

    with ThreadPoolExecutor(max_workers=4) as pool:
        done = dict(zip(SCENARIOS, pool.map(launch, SCENARIOS), strict=True))
    return {name: (directories[name], done[name]) for name in SCENARIOS}


Runs = dict[str, tuple[Path, subprocess.CompletedProcess[str]]]


def test_build_and_test_example_then_runs_and_show(runs: Runs) -> None:
    directory, completed = runs["example-build"]
    assert completed.returncode == 0, completed.stderr
    data = json_out(completed)
    assert data["ok"] is True
    assert data["status"] == "succeeded"
    assert statuses(data) == dict.fromkeys(
        ["restore", "build", "unit-tests", "integration-tests", "report"], "succeeded"
    )
    run_id = data["run_id"]
    # Progress went to stderr as plain lines (not a terminal), the summary to stdout as JSON.
    assert re.search(r"^\[\s*\d+\.\ds\] build: succeeded \(", completed.stderr, re.M)
    # One log file per step and run, beside the state file.
    logs = directory / "st" / "logs" / run_id
    assert sorted(p.name for p in logs.iterdir()) == [
        "build.log",
        "integration-tests.log",
        "report.log",
        "restore.log",
        "unit-tests.log",
    ]
    assert "unit-tests: done" in (logs / "unit-tests.log").read_text()
    assert f"report for run {run_id}" in (logs / "report.log").read_text()

    listed_run, shown = in_parallel(
        lambda: trioflow("runs", "--json", "--state", "st/state.db", cwd=directory),
        lambda: trioflow("show", run_id, "--state", "st/state.db", cwd=directory),
    )
    listed = json_out(listed_run)
    assert [(r["run_id"], r["workflow"], r["status"]) for r in listed] == [
        (run_id, "build-and-test", "succeeded")
    ]
    assert shown.returncode == 0
    assert f"run {run_id} of workflow 'build-and-test': succeeded" in shown.stdout
    assert re.search(r"^integration-tests\s+succeeded\s+1\s", shown.stdout, re.M)


def test_pools_retries_and_conditions_example(runs: Runs) -> None:
    directory, completed = runs["example-pools"]
    assert completed.returncode == 0, completed.stderr
    steps = {s["name"]: s for s in json_out(completed)["steps"]}
    # The flaky step failed once and succeeded on its second attempt.
    assert steps["fetch-fixtures"]["status"] == "succeeded"
    assert steps["fetch-fixtures"]["attempts"] == 2
    assert "fetch-fixtures: attempt failed: exit status 1; retrying in 0.2s" in completed.stderr
    # lint succeeded, so the step for a failed lint was skipped; PUBLISH=yes let publish run.
    assert steps["fix-lint-hint"]["status"] == "skipped"
    assert "fix-lint-hint: skipped: condition is false" in completed.stderr
    assert steps["publish"]["status"] == "succeeded"
    # The default state file is .trioflow/state.db in the current directory.
    assert (directory / ".trioflow" / "state.db").exists()


def test_continue_on_error_and_a_missing_command(runs: Runs) -> None:
    directory, completed = runs["continue-on-error"]
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    assert "missing: failed (ignored): command not found: no-such-command-trioflow" in out
    assert re.search(r"^lint\s+failed \(ignored\)\s+1\s+\S+\s+exit status 3$", out, re.M)
    assert re.search(r"^missing\s+failed \(ignored\)\s+1\s+\S+\s+command not found", out, re.M)
    # The steps after them ran, and the condition on lint's failure held.
    assert marks(directory, "build") == 1
    assert marks(directory, "lint-report") == 1
    # The failed step's last log lines are shown.
    assert "--- last lines of lint (" in out
    assert "  lint: something broke" in out
    assert re.search(r"^run \S+ succeeded in ", out, re.M)


def test_a_failing_step_fails_the_run_and_stops_the_rest(runs: Runs) -> None:
    directory, completed = runs["failing"]
    assert completed.returncode == 1
    data = json_out(completed)
    assert statuses(data) == {"build": "failed", "test": "not_run", "docs": "cancelled"}
    assert data["steps"][0]["error"] == "exit status 2"
    assert data["resume_command"] == f"{PROGRAM} run wf.toml --resume {data['run_id']}"
    assert marks(directory, "test", "started") == 0
    # The cancelled step's process is gone, and it never finished.
    assert not alive(int((directory / "docs.pid").read_text()))
    assert marks(directory, "docs") == 0


def test_keep_going_lets_independent_steps_finish(runs: Runs) -> None:
    _, completed = runs["keep-going"]
    assert completed.returncode == 1
    data = json_out(completed)
    assert statuses(data) == {"build": "failed", "test": "not_run", "docs": "succeeded"}


def test_a_timeout_stops_the_step(runs: Runs) -> None:
    directory, completed = runs["timeout"]
    assert completed.returncode == 1
    [hang] = json_out(completed)["steps"]
    assert (hang["status"], hang["error"]) == ("failed", "timed out after 0.5s")
    # It ignored SIGTERM, so it was killed after the grace period; it never finished.
    assert not alive(int((directory / "hang.pid").read_text()))
    assert marks(directory, "hang") == 0
    log = (directory / hang["log"]).read_text()
    assert log.endswith("--- timed out after 0.5s: killed after 0.2 s grace\n")


def test_dry_run_prints_the_waves_and_runs_nothing(runs: Runs) -> None:
    directory, completed = runs["dry-run"]
    assert completed.returncode == 0
    lines = completed.stdout.splitlines()
    assert lines[0] == "workflow 'build-and-test': 5 steps in 4 waves (max_parallel 2)"
    assert [line for line in lines if line.startswith("wave ")] == [
        "wave 1: restore",
        "wave 2: build",
        "wave 3: unit-tests, integration-tests",
        "wave 4: report",
    ]
    # {python} is the interpreter running trioflow.
    assert f"  restore: {shlex.quote(sys.executable)} scripts/work.py restore 0.3" in lines
    assert not (directory / ".trioflow").exists()


def test_graph_prints_mermaid(runs: Runs) -> None:
    _, completed = runs["graph"]
    assert completed.returncode == 0
    assert completed.stdout.splitlines()[:3] == [
        "flowchart TD",
        '    s0["restore"]',
        '    s1["build"]',
    ]
    assert "    s1 --> s2" in completed.stdout
    assert "    s3 --> s4" in completed.stdout


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("malformed-toml", "wf.toml:2:12: invalid TOML: Unclosed array\n"),
        ("unknown-key", "wf.toml: steps.a: unknown key 'tmieout'; did you mean 'timeout'?\n"),
        ("cycle", "wf.toml: steps: the steps form a cycle: a -> b -> a\n"),
        ("unknown-after", "wf.toml: steps.a.after: unknown step 'zz'\n"),
        ("missing-file", "nope.toml: no such file\n"),
        ("unknown-run", "no run 'nope' in the state file '.trioflow/state.db'\n"),
        ("broken-state", "cannot use the state file 'broken.db': "),
    ],
)
def test_bad_input(runs: Runs, case: str, message: str) -> None:
    directory, completed = runs[case]
    assert completed.returncode == 2
    assert completed.stderr.startswith(f"trioflow: error: {message}")
    assert "Traceback" not in completed.stderr
    assert completed.stdout == ""
    assert marks(directory, "a", "started") == 0  # nothing ran


# --- signals: interactive, so run on their own --------------------------------------------


def test_sigint_cancels_the_run_and_resume_finishes_it(project: Path) -> None:
    write(
        project,
        f"""
        [steps.first]
        run = {step("ok", "first")}

        [steps.slow]
        run = {step("wait", "slow")}
        after = ["first"]

        [steps.last]
        run = {step("ok", "last")}
        after = ["slow"]
        """,
    )
    returncode, out, err = interrupt(project, "slow.pid", signal.SIGINT, "--state", "state/s.db")
    assert returncode == 130, out + err
    assert "Traceback" not in err
    match = re.search(r"--resume (\S+)", out)
    assert match is not None, out
    run_id = match[1]
    lines = [line.strip() for line in out.splitlines()]
    printed = f"{PROGRAM} run wf.toml --resume {run_id} --state state/s.db"
    assert printed in lines
    assert re.search(r"^slow\s+cancelled\s+1", out, re.M)
    assert re.search(r"^last\s+not_run\s+0", out, re.M)
    # The step's process is gone, and it never finished.
    assert not alive(int((project / "slow.pid").read_text()))
    assert marks(project, "slow") == 0
    shown = json_out(trioflow("show", run_id, "--json", "--state", "state/s.db", cwd=project))
    assert shown["status"] == "cancelled"
    assert statuses(shown) == {"first": "succeeded", "slow": "cancelled", "last": "not_run"}

    (project / "release").touch()
    # The printed command is the exact one: run it as it is (plus --json).
    resumed = subprocess.run(
        [*shlex.split(printed), "--json"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_env(),
    )
    assert resumed.returncode == 0, resumed.stderr
    data = json_out(resumed)
    assert data["run_id"] == run_id
    assert statuses(data) == dict.fromkeys(["first", "slow", "last"], "succeeded")
    assert [s["restored"] for s in data["steps"]] == [True, False, False]
    # first ran once in all; slow started twice and finished once; last ran once.
    assert marks(project, "first", "started") == 1
    assert marks(project, "slow", "started") == 2
    assert marks(project, "slow") == 1
    assert marks(project, "last") == 1

    # Resuming with a workflow of another shape is refused before anything runs.
    write(
        project, (project / "wf.toml").read_text() + f"\n[steps.extra]\nrun = {step('ok', 'x')}\n"
    )
    changed = trioflow("run", "wf.toml", "--resume", run_id, "--state", "state/s.db", cwd=project)
    assert changed.returncode == 2
    assert "changed since the run was stored (steps added: 'extra')" in changed.stderr
    assert marks(project, "x", "started") == 0


def test_sigterm_kills_a_step_that_ignores_sigterm_after_the_grace_period(project: Path) -> None:
    write(project, f"[steps.stubborn]\nrun = {step('stubborn', 'stubborn')}\n")
    returncode, out, err = interrupt(
        project, "stubborn.pid", signal.SIGTERM, "--grace", "0.3", "--json"
    )
    assert returncode == 143, err
    data = json.loads(out)
    assert data["status"] == "cancelled"
    assert statuses(data) == {"stubborn": "cancelled"}
    assert data["resume_command"] == f"{PROGRAM} run wf.toml --resume {data['run_id']}"
    assert not alive(int((project / "stubborn.pid").read_text()))


def test_a_second_sigint_kills_the_steps_without_waiting_for_the_grace_period(
    project: Path,
) -> None:
    write(project, f"[steps.stubborn]\nrun = {step('stubborn', 'stubborn')}\n")
    process = start_run(project, "--grace", "120")
    try:
        wait_for(project / "stubborn.pid")
        process.send_signal(signal.SIGINT)
        assert process.stdout is not None
        for line in process.stdout:  # the plain reporter flushes each line
            if "SIGINT: stopping the running steps" in line:
                break
        process.send_signal(signal.SIGINT)
        # A hang guard, far below the 120 s grace period the first SIGINT alone would wait.
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    assert "SIGINT: killing the running steps" in out
    assert re.search(r"^stubborn\s+cancelled\s+1", out, re.M)
    assert not alive(int((project / "stubborn.pid").read_text()))


def test_sighup_stops_the_run_like_sigterm(project: Path) -> None:
    # The terminal closed: the steps, in sessions of their own, would not get its SIGHUP.
    write(project, f"[steps.slow]\nrun = {step('wait', 'slow')}\n")
    returncode, out, err = interrupt(project, "slow.pid", signal.SIGHUP, "--json")
    assert returncode == 129, err
    assert statuses(json.loads(out)) == {"slow": "cancelled"}
    assert not alive(int((project / "slow.pid").read_text()))


def test_the_run_goes_on_when_its_output_pipe_closes(project: Path) -> None:
    # `trioflow run wf.toml | head -1`: the progress lines are lost, not the steps.
    write(
        project,
        f"""
        [steps.slow]
        run = {step("wait", "slow")}

        [steps.after]
        run = {step("ok", "after")}
        after = ["slow"]
        """,
    )
    process = start_run(project)
    try:
        assert process.stdout is not None
        assert " run " in process.stdout.readline()
        process.stdout.close()  # the reader goes away
        wait_for(project / "slow.pid")
        (project / "release").touch()
        err = process.communicate(timeout=30)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 141, err
    assert "Traceback" not in err
    assert marks(project, "after") == 1
    runs = json_out(trioflow("runs", "--json", cwd=project))
    assert [r["status"] for r in runs] == ["succeeded"]
