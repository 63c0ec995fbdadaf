"""The command line in-process: options, pictures, rendering, summaries (no long runs here)."""

from __future__ import annotations

import importlib.machinery
import io
import json
import re
import sys
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import trioflow
from trioflow.cli import main
from trioflow.cli._app import run
from trioflow.cli._graph import dot, mermaid
from trioflow.cli._render import (
    LiveReporter,
    PlainReporter,
    QuietOnError,
    RunSummary,
    StepRow,
    format_seconds,
    make_reporter,
    print_summary,
    print_table,
    rich_console,
)
from trioflow.cli._run import (
    RunOptions,
    _retry_policy,
    log_dir,
    new_run_id,
    program,
    resume_command,
    summary_from_record,
)
from trioflow.cli._spec import parse_spec
from trioflow.cli._steps import CommandFailed

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "build_and_test.toml"


class Terminal(io.StringIO):
    """A stream that says it is a terminal, to exercise the rich output."""

    def isatty(self) -> bool:
        return True


# --- the command line ---------------------------------------------------------------------


def test_dry_run_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["run", str(EXAMPLE), "--dry-run", "--json", "--max-parallel", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["max_parallel"] == 3
    assert data["steps"]["report"]["after"] == ["unit-tests", "integration-tests"]
    assert data["steps"]["report"]["shell"].startswith("echo ")
    assert data["steps"]["build"]["command"][0] == "{python}"
    assert data["steps"]["integration-tests"]["retries"] == 1


def test_graph_dot(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["graph", str(EXAMPLE), "--dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('digraph "build-and-test" {\n    rankdir=LR;\n')
    assert '    "unit-tests" -> "report";\n' in out
    assert out.endswith("}\n")


def test_a_bad_condition_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "wf.toml"
    path.write_text('[steps.a]\nrun = ["x"]\nwhen = "env.X = 1"\n[steps.b]\nrun = 3\n')
    assert run(["run", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"trioflow: error: {path}: steps.a.when: unexpected character '=' at column 7",
        f"trioflow: error: {path}: steps.b.run: expected a non-empty list of strings, "
        "got an integer (3)",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["run"], "the following arguments are required: FILE"),
        (["run", "x.toml", "--max-parallel", "0"], "must be an integer >= 1, got '0'"),
        (["run", "x.toml", "--max-parallel", "two"], "must be an integer >= 1, got 'two'"),
        (["run", "x.toml", "--grace", "-1"], "must be a number of seconds >= 0, got '-1'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["show"], "the following arguments are required: RUN_ID"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        run(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_main_exits_with_the_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"trioflow {trioflow.__version__}\n"
    with pytest.raises(SystemExit) as info:
        main(["graph", "does-not-exist.toml"])
    assert info.value.code == 2


def test_demo_passes_its_own_options_through(capsys: pytest.CaptureFixture[str]) -> None:
    # "--virtual" comes first: it must reach the demo, not be eaten by the parser.
    assert run(["demo", "--virtual"]) == 0
    out = capsys.readouterr().out
    assert "10 succeeded, 2 failed, 0 cancelled" in out


def test_runs_and_show_without_a_state_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "none.db"
    assert run(["runs", "--state", str(state)]) == 0
    assert capsys.readouterr().out == f"no runs recorded in {state}\n"
    assert run(["runs", "--json", "--state", str(state)]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert run(["show", "abc", "--state", str(state)]) == 2
    assert capsys.readouterr().err == (
        f"trioflow: error: no run 'abc': there is no state file at {state}\n"
    )
    assert not state.exists()


def test_runs_and_show_with_a_broken_state_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "broken.db"
    state.write_bytes(b"garbage" * 1000)
    assert run(["runs", "--state", str(state)]) == 2
    assert capsys.readouterr().err == (
        f"trioflow: error: cannot use the state file {str(state)!r}: "
        "cannot open (is it a trioflow store?): file is not a database\n"
    )
    assert run(["show", "x", "--state", str(state)]) == 2


# --- pieces of a run ----------------------------------------------------------------------


def test_run_ids_sort_by_time_and_resume_commands_quote() -> None:
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", new_run_id())
    options = RunOptions(file="my flows/ci.toml", state=Path("/tmp/x y/state.db"))
    assert resume_command(options, "r1") == (
        "trioflow run 'my flows/ci.toml' --resume r1 --state '/tmp/x y/state.db'"
    )
    assert resume_command(RunOptions(file="ci.toml"), "r1") == "trioflow run ci.toml --resume r1"
    assert log_dir(Path(".trioflow/state.db"), "r1") == Path(".trioflow/logs/r1")


def test_after_python_m_trioflow_the_resume_command_repeats_the_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main_module = types.ModuleType("__main__")
    main_module.__spec__ = importlib.machinery.ModuleSpec("trioflow.__main__", None)
    monkeypatch.setitem(sys.modules, "__main__", main_module)
    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert program() == [str(python), "-m", "trioflow"]  # not on PATH: by path
    assert resume_command(RunOptions(file="ci.toml"), "r1") == (
        f"{python} -m trioflow run ci.toml --resume r1"
    )
    monkeypatch.setenv("PATH", str(tmp_path))
    assert program() == ["python3", "-m", "trioflow"]  # PATH finds this very interpreter
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    assert program() == ["trioflow"]  # the console script


def test_retries_become_a_retry_policy_for_command_failures_only() -> None:
    spec = parse_spec(
        '[steps.a]\nrun = ["x"]\nretries = 3\nretry_delay = 0.5\nbackoff = 3\n'
        '[steps.b]\nrun = ["x"]\n',
        path="w.toml",
    )
    policy = _retry_policy(spec.steps["a"])
    assert policy is not None
    assert policy.attempts == 4
    assert policy.delays() == (0.5, 1.5, 4.5)
    assert _retry_policy(spec.steps["b"]) is None
    retried = policy.on
    assert callable(retried)
    assert retried(CommandFailed("exit status 1"))
    assert not retried(CommandFailed("command not found: x", retryable=False))
    assert not retried(ValueError("x"))


def test_summary_from_a_stored_run(tmp_path: Path) -> None:
    start = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    (tmp_path / "a.log").write_text("hello\n")
    record = trioflow.RunRecord(
        run_id="r1",
        workflow="ci",
        status=trioflow.RunStatus.FAILED,
        created_at=start,
        updated_at=start + timedelta(hours=2),  # interrupted, resumed the next morning
        active_seconds=90.0,
        fingerprint="f",
        shape={"a": (), "b": ("a",), "c": ("b",)},
        steps={
            "a": trioflow.StepRecord(
                name="a",
                status=trioflow.StepStatus.FAILED,
                attempts=2,
                duration=1.5,
                error="CommandFailed: exit status 2",
            ),
            "b": trioflow.StepRecord(name="b", status=trioflow.StepStatus.SKIPPED),
        },
    )
    summary = summary_from_record(record, tmp_path, continue_on_error={"a": True})
    assert summary.duration == 90  # the time spent running, not the idle gap
    assert summary.status == "failed"
    assert summary.log_dir == tmp_path
    assert summary.steps == (
        StepRow(
            name="a",
            status="failed",
            attempts=2,
            duration=1.5,
            error="exit status 2",
            log=tmp_path / "a.log",
            continue_on_error=True,
        ),
        StepRow(name="b", status="skipped"),
        StepRow(name="c", status="not_run"),
    )


# --- pictures -----------------------------------------------------------------------------


def test_mermaid_and_dot_escape_labels_and_mark_options() -> None:
    spec = parse_spec(
        """
        [workflow]
        name = 'say "hi"'
        pools = { db = 1 }
        [steps.end]
        run = ["x"]
        [steps.b]
        run = ["x"]
        after = ["end"]
        when = "env.X == '<a & b>'"
        exclusive = true
        pools = ["db"]
        """,
        path="w.toml",
    )
    assert mermaid(spec) == (
        "flowchart TD\n"
        '    s0["end"]\n'
        "    s1(\"b<br/><small>when env.X == '#lt;a #amp; b#gt;'; exclusive; "
        'pools: db</small>")\n'
        "    s0 --> s1\n"
    )
    text = dot(spec)
    assert text.startswith('digraph "say \\"hi\\"" {')
    assert (
        '"b" [label="b\\nwhen env.X == \'<a & b>\'; exclusive; pools: db", style=dashed];' in text
    )


# --- rendering ----------------------------------------------------------------------------


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (None, 0.3141, 12.46, 187)] == [
        "-",
        "0.31s",
        "12.5s",
        "3m07s",
    ]


def test_plain_reporter_lines() -> None:
    out = io.StringIO()
    reporter = PlainReporter(out, verbose=True)
    reporter.run_started(run_id="r1", workflow="ci", total=3, resumed=1)
    reporter.step_started("build", attempt=2, command="make")
    reporter.step_finished("build", "retrying", detail="exit status 1; retrying in 1s", elapsed=2)
    reporter.step_finished("lint", "skipped", detail="condition is false: env.CI", elapsed=0)
    reporter.message("SIGINT: stopping the running steps")
    reporter.close()
    lines = [re.sub(r"^\[\s*\d+\.\ds\] ", "", line) for line in out.getvalue().splitlines()]
    assert lines == [
        "run r1: workflow 'ci', 3 steps, 1 already done",
        "build: started (attempt 2)",
        "build: $ make",
        "build: attempt failed: exit status 1; retrying in 1s (2.0s)",
        "lint: skipped: condition is false: env.CI",
        "SIGINT: stopping the running steps",
    ]


class ClosedPipe(io.StringIO):
    """A stream whose reader went away after ``lines`` lines."""

    def __init__(self, lines: int = 0) -> None:
        super().__init__()
        self.lines = lines

    def write(self, text: str) -> int:
        if self.getvalue().count("\n") >= self.lines:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_progress_stops_quietly_when_its_output_goes_away() -> None:
    out = ClosedPipe(lines=1)
    reporter = QuietOnError(PlainReporter(out))
    reporter.run_started(run_id="r1", workflow="ci", total=2, resumed=0)
    # From here on every write fails; the steps that report must not fail with it.
    reporter.step_started("build", attempt=1, command="make")
    reporter.step_finished("build", "succeeded", detail="", elapsed=1.0)
    reporter.message("done")
    reporter.close()
    assert out.getvalue().endswith("run r1: workflow 'ci', 2 steps\n")


def test_a_closed_output_pipe_exits_141_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    workflow = tmp_path / "wf.toml"
    workflow.write_text('[steps.a]\nrun = ["true"]\n[steps.b]\nrun = ["true"]\nafter = ["a"]\n')
    assert run(["graph", str(workflow)]) == 141


def test_the_live_view_is_used_only_on_a_terminal() -> None:
    assert isinstance(make_reporter(io.StringIO(), verbose=False, live=True), PlainReporter)
    assert isinstance(make_reporter(Terminal(), verbose=False, live=False), PlainReporter)
    assert isinstance(make_reporter(Terminal(), verbose=False, live=True), LiveReporter)
    assert rich_console(io.StringIO()) is None


def test_live_reporter_prints_finished_steps_and_shows_running_ones() -> None:
    out = Terminal()
    console = rich_console(out)
    assert console is not None
    reporter = LiveReporter(console, verbose=True)
    reporter.run_started(run_id="r1", workflow="ci", total=2, resumed=0)
    reporter.step_started("build", attempt=1, command="make [all]")
    reporter.step_started("test", attempt=2, command="pytest")
    from rich.console import Console

    snapshot = Console(file=io.StringIO(), width=80)
    snapshot.print(reporter._renderable())
    view = snapshot.file.getvalue()  # type: ignore[attr-defined]
    assert "0/2 steps" in view
    assert "build" in view
    assert "attempt 2" in view
    reporter.step_finished("build", "succeeded", detail="", elapsed=1.0)
    reporter.step_finished("test", "failed", detail="exit status [1]", elapsed=1.0)
    reporter.message("done [ok]")
    reporter.close()
    text = out.getvalue()
    assert "make [all]" in text
    assert "exit status [1]" in text
    assert "done [ok]" in text
    # The view drawn right after a step's line is up to date: not the one from before.
    after_build = text.split("succeeded", 1)[1]
    assert re.search(r"(\d)/2 steps", after_build)[1] == "1"  # type: ignore[index]
    after_test = text.split("exit status [1]", 1)[1]
    assert re.search(r"(\d)/2 steps", after_test)[1] == "2"  # type: ignore[index]


def _summary() -> RunSummary:
    return RunSummary(
        run_id="r1",
        workflow="ci",
        status="failed",
        duration=3.5,
        steps=(
            StepRow(name="build", status="succeeded", attempts=1, duration=1.0, restored=True),
            StepRow(
                name="lint",
                status="failed",
                attempts=1,
                duration=0.5,
                error="exit status 1",
                continue_on_error=True,
            ),
            StepRow(name="test", status="failed", attempts=2, duration=2.0, error="exit status 2"),
            StepRow(name="report", status="not_run"),
        ),
        log_dir=Path("logs/r1"),
    )


def test_plain_summary_table() -> None:
    out = io.StringIO()
    print_summary(_summary(), out)
    assert out.getvalue().splitlines() == [
        "step    status               attempts  duration  error",
        "build   succeeded (earlier)  1         1.0s",
        "lint    failed (ignored)     1         0.50s     exit status 1",
        "test    failed               2         2.0s      exit status 2",
        "report  not_run              0         -",
        "run r1 failed in 3.5s (workflow 'ci')",
        "logs: logs/r1",
    ]


def test_failed_steps_show_their_last_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "test.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    summary = _summary()
    rows = tuple(
        StepRow(name=r.name, status=r.status, log=log if r.name == "test" else None)
        for r in summary.steps
    )
    out = io.StringIO()
    print_summary(
        RunSummary(run_id="r1", workflow="ci", status="failed", duration=1, steps=rows),
        out,
        tail_lines=3,
    )
    lines = out.getvalue().splitlines()
    assert lines[:4] == [
        f"--- last lines of test ({log}) ---",
        "  line 27",
        "  line 28",
        "  line 29",
    ]


def test_rich_summary_and_table() -> None:
    out = Terminal()
    print_summary(_summary(), out)
    text = out.getvalue()
    assert "succeeded (earlier)" in text
    assert "failed (ignored)" in text
    assert "run r1 failed in 3.5s" in text
    out = Terminal()
    print_table(("a", "b"), [("1", "[x]")], out)
    assert "[x]" in out.getvalue()


def test_summary_json() -> None:
    data = _summary().to_json()
    assert data["ok"] is False
    assert data["log_dir"] == "logs/r1"
    assert data["steps"][1] == {
        "name": "lint",
        "status": "failed",
        "attempts": 1,
        "duration": 0.5,
        "error": "exit status 1",
        "log": None,
        "continue_on_error": True,
        "restored": False,
    }


def test_without_rich_the_output_is_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich.console", None)  # import rich.console fails
    assert rich_console(Terminal()) is None
    assert isinstance(make_reporter(Terminal(), verbose=False, live=True), PlainReporter)
    out = Terminal()
    print_summary(_summary(), out)
    assert out.getvalue().splitlines()[0].startswith("step    status")


def test_a_signal_before_the_run_is_stored_reports_nothing_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ctrl-C lands after the command took over the signals but before run_workflow stored
    # the run: the run is cancelled, no step ran, and there is no run to resume.
    import signal

    import trio

    taking = trioflow.SQLiteStore.acquire_lease

    async def interrupted_first(
        self: trioflow.SQLiteStore, run_id: str, owner: trioflow.RunOwner, ttl: float
    ) -> trioflow.RunOwner | None:
        signal.raise_signal(signal.SIGINT)
        await trio.sleep(1)  # the signal cancels this wait
        return await taking(self, run_id, owner, ttl)

    monkeypatch.setattr(trioflow.SQLiteStore, "acquire_lease", interrupted_first)
    (tmp_path / "wf.toml").write_text('[steps.a]\nrun = ["true"]\n[steps.b]\nrun = ["true"]\n')
    monkeypatch.chdir(tmp_path)
    assert run(["run", "wf.toml", "--json"]) == 130
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "cancelled"
    assert data["resume_command"] is None
    assert {s["name"]: s["status"] for s in data["steps"]} == {"a": "not_run", "b": "not_run"}
