"""``trioflow logs``, ``show latest``, run-id prefixes, ``show_output`` and the live view's rows.

End to end in real ``python -m trioflow`` processes on the real clock, plus the pieces that
decide (which run a text selects, the lines of an attempt's output) checked in process.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from test_cli import _env, in_parallel, json_out, trioflow, wait_for, write
from trioflow.cli._render import LiveReporter, PlainReporter, rich_console
from trioflow.cli._run import RunOptions, UsageError, execute_file
from trioflow.cli._select import select_run
from trioflow.cli._spec import load_spec
from trioflow.cli._steps import attempt_output, last_output_line, log_size

# A step that says hello, then waits for the file 'go' (at most 30 s), then says goodbye.
SLOW = (
    "echo hello; touch slow.started; "
    "i=0; while [ ! -e go ] && [ $i -lt 1500 ]; do sleep 0.02; i=$((i+1)); done; echo goodbye"
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _ids(directory: Path) -> list[str]:
    return [r["run_id"] for r in json_out(trioflow("runs", "--json", cwd=directory))]


@pytest.mark.real_time
def test_logs_show_latest_and_run_id_prefixes(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
        [steps.greet]
        shell = "echo hello from greet; echo to stderr >&2"

        [steps.fail]
        shell = "echo nope; exit 3"
        after = ["greet"]

        [steps.never]
        shell = "echo never"
        after = ["fail"]
        """,
    )
    first, second = in_parallel(
        lambda: trioflow("run", "wf.toml", cwd=tmp_path),
        lambda: trioflow("run", "wf.toml", cwd=tmp_path),
    )
    assert (first.returncode, second.returncode) == (1, 1)
    newest, oldest = _ids(tmp_path)
    common = next(i for i in range(len(newest)) if newest[i] != oldest[i])
    logs, latest, ambiguous, unknown, step, never, resumed = in_parallel(
        lambda: trioflow("logs", newest[: common + 1], "greet", cwd=tmp_path),
        lambda: trioflow("show", "latest", "--json", cwd=tmp_path),
        lambda: trioflow("logs", newest[:common], "greet", cwd=tmp_path),
        lambda: trioflow("show", "nosuchrun", cwd=tmp_path),
        lambda: trioflow("logs", "latest", "gret", cwd=tmp_path),
        lambda: trioflow("logs", "latest", "never", cwd=tmp_path),
        lambda: trioflow("run", "wf.toml", "--resume", oldest[: common + 1], cwd=tmp_path),
    )
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    assert lines[0].startswith("--- ")
    assert lines[0].endswith("attempt 1: echo hello from greet; echo to stderr >&2")
    assert lines[1:] == ["hello from greet", "to stderr", "--- exit status 0"]

    assert latest.returncode == 0, latest.stderr
    assert json.loads(latest.stdout)["run_id"] == newest

    assert ambiguous.returncode == 2
    assert f"run id prefix {newest[:common]!r} is ambiguous: it matches 2 runs" in (
        ambiguous.stderr
    )
    assert newest in ambiguous.stderr
    assert oldest in ambiguous.stderr

    assert unknown.returncode == 2
    assert "trioflow: error: no run 'nosuchrun' in the state file" in unknown.stderr

    assert step.returncode == 2
    assert f"run {newest} has no step 'gret'; did you mean 'greet'?" in step.stderr

    assert never.returncode == 2
    assert f"step 'never' of run {newest} has no log (not_run)" in never.stderr

    # --resume takes a prefix too: the resume of the older run ran only the failed step again.
    assert resumed.returncode == 1
    assert f"run {oldest}: workflow 'wf', 3 steps, 1 already done" in resumed.stdout
    assert "Traceback" not in logs.stderr + ambiguous.stderr + unknown.stderr + step.stderr


@pytest.mark.real_time
def test_logs_follow_a_running_step_until_it_ends(tmp_path: Path) -> None:
    write(tmp_path, f"[steps.slow]\nshell = {json.dumps(SLOW)}\n")
    run = subprocess.Popen(
        [sys.executable, "-m", "trioflow", "run", "wf.toml"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    follow: subprocess.Popen[str] | None = None
    try:
        wait_for(tmp_path / "slow.started")
        follow = subprocess.Popen(
            [sys.executable, "-m", "trioflow", "logs", "latest", "slow", "--follow"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        assert follow.stdout is not None
        assert follow.stdout.readline().startswith("--- ")  # the attempt's header
        assert follow.stdout.readline() == "hello\n"
        assert follow.poll() is None  # the step runs: it keeps following
        (tmp_path / "go").touch()
        rest, err = follow.communicate(timeout=30)
        assert follow.returncode == 0, err
        assert rest == "goodbye\n--- exit status 0\n"
        assert run.wait(timeout=30) == 0
    finally:
        for process in (run, follow):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()


@pytest.mark.real_time
def test_ctrl_c_stops_following_with_status_130_quietly(tmp_path: Path) -> None:
    write(tmp_path, f"[steps.slow]\nshell = {json.dumps(SLOW)}\n")
    run = subprocess.Popen(
        [sys.executable, "-m", "trioflow", "run", "wf.toml"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    follow: subprocess.Popen[str] | None = None
    try:
        wait_for(tmp_path / "slow.started")
        follow = subprocess.Popen(
            [sys.executable, "-m", "trioflow", "logs", "latest", "slow", "-f"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        assert follow.stdout is not None
        follow.stdout.readline()
        assert follow.stdout.readline() == "hello\n"  # it is following now
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=30)
        assert follow.returncode == 130
        assert err == ""
    finally:
        (tmp_path / "go").touch()
        for process in (run, follow):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
        run.wait(timeout=30)


@pytest.mark.real_time
def test_show_output_prints_a_steps_output_after_it_ends(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
        [workflow]
        max_parallel = 1

        [steps.shown]
        shell = "echo first line; echo second line"
        show_output = true

        [steps.quiet]
        shell = "echo only in the log"
        after = ["shown"]

        [steps.lint]
        shell = "echo lint says no; exit 1"
        after = ["quiet"]
        continue_on_error = true
        """,
    )
    plain, every, as_json, dry = in_parallel(
        lambda: trioflow("run", "wf.toml", cwd=tmp_path),
        lambda: trioflow("run", "wf.toml", "--show-output", cwd=tmp_path),
        lambda: trioflow("run", "wf.toml", "--show-output", "--json", cwd=tmp_path),
        lambda: trioflow("run", "wf.toml", "--dry-run", cwd=tmp_path),
    )
    assert plain.returncode == 0, plain.stderr
    out = plain.stdout
    assert "shown: output\n  first line\n  second line\n" in out
    assert out.index("second line") < out.index("shown: succeeded")
    assert "only in the log" not in out
    # A continue_on_error failure reads the same in the progress line and the summary.
    assert "lint: failed (ignored): exit status 1 (" in out
    assert "lint   failed (ignored)" in out

    assert every.returncode == 0, every.stderr
    assert "quiet: output\n  only in the log\n" in every.stdout
    assert "lint: output\n  lint says no\n" in every.stdout

    # With --json, stdout is the JSON alone; the output goes with the progress, to stderr.
    assert as_json.returncode == 0, as_json.stderr
    assert json_out(as_json)["ok"] is True
    assert "quiet: output\n  only in the log\n" in as_json.stderr

    assert dry.stdout.splitlines()[0] == "workflow 'wf': 3 steps in 3 waves (max_parallel 1)"
    single = write(tmp_path, '[steps.one]\nshell = "true"\n', "one.toml")
    one = trioflow("run", single.name, "--dry-run", "--max-parallel", "1", cwd=tmp_path)
    assert one.stdout.splitlines()[0] == "workflow 'one': 1 step in 1 wave (max_parallel 1)"


@pytest.mark.real_time
def test_demo_help_and_timeouts_read_as_plain_english(tmp_path: Path) -> None:
    helped, demo = in_parallel(
        lambda: trioflow("demo", "--help", cwd=tmp_path),
        lambda: trioflow("demo", "--virtual", cwd=tmp_path),
    )
    assert helped.returncode == 0
    assert "`" not in helped.stdout
    assert "twelve simulated downloads" in helped.stdout
    assert "TimeoutError: operation timed out after 1 second\n" in demo.stdout


# --- in process -----------------------------------------------------------------------------

_ID = st.text(alphabet="0123456789abcdef-", min_size=1, max_size=6)


@given(st.lists(_ID, unique=True, max_size=6), st.text(alphabet="0123456789abcdef-", max_size=6))
def test_a_text_selects_the_run_with_that_id_else_the_one_it_is_a_prefix_of(
    run_ids: list[str], text: str
) -> None:
    matches = [i for i in run_ids if i.startswith(text)] if text else []
    if text in run_ids:
        assert select_run(run_ids, text, where="w") == text
    elif len(matches) == 1:
        assert select_run(run_ids, text, where="w") == matches[0]
    else:
        with pytest.raises(UsageError, match="ambiguous" if matches else "no run"):
            select_run(run_ids, text, where="w")


def test_latest_is_the_newest_run_unless_a_run_is_called_latest() -> None:
    assert select_run(["b", "a"], "latest", where="w") == "b"
    assert select_run(["b", "latest"], "latest", where="w") == "latest"
    with pytest.raises(UsageError, match="there is no run in w yet"):
        select_run([], "latest", where="w")
    many = [f"r{i:02}" for i in range(12)]
    with pytest.raises(UsageError, match=r"matches 12 runs \(r00, .*, r09 and 2 more\)"):
        select_run(many, "r", where="w")


def test_an_attempts_output_is_its_lines_without_trioflows_own(tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    assert (log_size(log), attempt_output(log, 0), last_output_line(log)) == (0, [], "")
    log.write_text("--- t attempt 1: make\nold\n--- exit status 1\n")
    start = log_size(log)
    with log.open("a") as f:
        f.write("--- t attempt 2: make\n")
    assert last_output_line(log) == ""  # nothing written yet by this attempt
    with log.open("a") as f:
        f.write("compiling\n  linking  \n\n")
    assert last_output_line(log) == "linking"
    with log.open("a") as f:
        f.write("--- exit status 0\n")
    assert attempt_output(log, start) == ["compiling", "  linking  ", ""]


def test_the_live_view_shows_waiting_steps_and_each_running_steps_last_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "build.log").write_text("--- t attempt 1: make\n[50%] building [x]\n")
    console = rich_console(Terminal())
    assert console is not None
    reporter = LiveReporter(console, log_of=lambda run_id, step: tmp_path / run_id / f"{step}.log")
    reporter.run_started(run_id="r1", workflow="ci", total=3, resumed=0)
    reporter.step_started("build", attempt=1, command="make")
    reporter.steps_waiting(["test", "docs"])
    from rich.console import Console

    snapshot = Console(file=io.StringIO(), width=100)
    snapshot.print(reporter._renderable())
    view = snapshot.file.getvalue()  # type: ignore[attr-defined]
    reporter.close()
    assert "[50%] building [x]" in view  # the command's text, not rich markup
    assert view.index("test") < view.index("docs")
    assert view.count("waiting for a slot") == 2


def test_plain_lines_of_output_and_of_a_silent_step() -> None:
    out = io.StringIO()
    reporter = PlainReporter(out)
    reporter.steps_waiting(["a"])  # not shown in plain lines
    reporter.step_output("a", ["x", "y"])
    reporter.step_output("b", [])
    lines = [line.split("] ", 1)[-1] for line in out.getvalue().splitlines()]
    assert lines == ["a: output", "  x", "  y", "b: no output"]


class Recorder:
    """A reporter that keeps the events the live view is drawn from."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, ...]] = []
        self.events: list[str] = []

    def run_started(self, *, run_id: str, workflow: str, total: int, resumed: int) -> None:
        pass

    def step_started(self, name: str, *, attempt: int, command: str) -> None:
        self.events.append(f"started {name}")

    def step_finished(self, name: str, status: str, *, detail: str, elapsed: float) -> None:
        self.events.append(f"{status} {name}")

    def steps_waiting(self, names: Sequence[str]) -> None:
        self.waiting.append(tuple(names))
        self.events.append(f"waiting {','.join(names)}")

    def step_output(self, name: str, lines: Sequence[str]) -> None:
        self.events.append(f"output {name}: {lines}")

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.real_time
def test_steps_ready_but_without_a_slot_are_reported_waiting(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [workflow]
        pools = { db = 1 }

        [steps.first]
        shell = "echo one"
        pools = ["db"]

        [steps.second]
        shell = "echo two"
        pools = ["db"]
        show_output = true
        """,
    )
    recorder = Recorder()
    options = RunOptions(file=str(path), state=tmp_path / "state.db")
    outcome = anyio.run(execute_file, load_spec(path), options, recorder, backend="trio")
    assert outcome.exit_status == 0
    assert recorder.waiting[-1] == ()  # in the end, nothing waits
    events = recorder.events
    assert events.index("output second: ['two']") < events.index("succeeded second")
    assert not any(e.startswith("output first") for e in events)
    # Both were ready at once and the pool let one run: the other was shown waiting while it
    # ran; a step is never shown waiting while its own command runs.
    running: set[str] = set()
    waited_for_the_other = False
    for event in events:
        word, _, rest = event.partition(" ")
        if word == "started":
            running.add(rest)
        elif word == "succeeded":
            running.discard(rest)
        elif word == "waiting":
            names = set(filter(None, rest.split(",")))
            assert not running & names
            waited_for_the_other |= bool(running and names)
    assert waited_for_the_other, events
