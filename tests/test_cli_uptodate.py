"""Up-to-date checks: ``sources``/``generates``, the key of a step, ``--force``, real runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_cli import json_out, project, statuses, trioflow, write
from trioflow.cli._spec import parse_spec
from trioflow.cli._uptodate import (
    all_generated,
    matched_files,
    sources_digest,
    step_key,
    success_value,
    was_up_to_date,
)

__all__ = ("project",)  # the fixture, used by name


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_globs_match_files_recursively_and_leave_directories_out(tmp_path: Path) -> None:
    _tree(tmp_path, {"src/a.py": "", "src/pkg/b.py": "", "src/pkg/c.txt": "", "top.py": ""})
    (tmp_path / "src" / "dir.py").mkdir()
    assert matched_files(tmp_path, ["src/**/*.py", "src/pkg/*.py"]) == [
        tmp_path / "src/a.py",
        tmp_path / "src/pkg/b.py",
    ]
    assert matched_files(tmp_path, ["nothing/**"]) == []
    assert matched_files(tmp_path, [str(tmp_path / "*.py")]) == [tmp_path / "top.py"]


def test_the_digest_follows_contents_and_names_not_times(tmp_path: Path) -> None:
    empty = sources_digest(tmp_path, ["src/**/*.py"])
    assert empty == sources_digest(tmp_path, [])  # nothing matched: the digest of no files
    _tree(tmp_path, {"src/a.py": "one"})
    first = sources_digest(tmp_path, ["src/**/*.py"])
    assert first != empty
    (tmp_path / "src/a.py").write_text("one")  # rewritten, same content
    assert sources_digest(tmp_path, ["src/**/*.py"]) == first
    (tmp_path / "src/a.py").write_text("two")
    assert sources_digest(tmp_path, ["src/**/*.py"]) != first
    (tmp_path / "src/a.py").write_text("one")
    (tmp_path / "src/a.py").rename(tmp_path / "src/b.py")
    assert sources_digest(tmp_path, ["src/**/*.py"]) != first  # same content, other name


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "c/d", "c/e"]), st.binary(max_size=64)))
def test_the_digest_is_a_function_of_the_files(files: dict[str, bytes]) -> None:
    import tempfile

    digests = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as directory:
            root = Path(directory)
            for name, data in files.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
            digests.append(sources_digest(root, ["**/*"]))
    assert digests[0] == digests[1]


def test_generates_must_each_match_something(tmp_path: Path) -> None:
    assert all_generated(tmp_path, [])
    assert not all_generated(tmp_path, ["dist/*.whl"])
    _tree(tmp_path, {"dist/x-1.whl": ""})
    assert all_generated(tmp_path, ["dist/*.whl", "dist"])
    assert not all_generated(tmp_path, ["dist/*.whl", "build/"])


def test_the_key_covers_command_env_directory_and_sources(tmp_path: Path) -> None:
    base = step_key(("make",), {"A": "1"}, tmp_path, "s")
    assert base == step_key(("make",), {"A": "1"}, tmp_path, "s")
    assert base != step_key("make", {"A": "1"}, tmp_path, "s")
    assert base != step_key(("make", "all"), {"A": "1"}, tmp_path, "s")
    assert base != step_key(("make",), {"A": "2"}, tmp_path, "s")
    assert base != step_key(("make",), {"A": "1"}, tmp_path / "x", "s")
    assert base != step_key(("make",), {"A": "1"}, tmp_path, "t")


def test_the_stored_value_says_whether_the_command_ran() -> None:
    assert was_up_to_date(success_value("k", up_to_date=True))
    assert not was_up_to_date(success_value("k", up_to_date=False))
    assert not was_up_to_date(None)
    assert not was_up_to_date({"up_to_date": "yes"})


def test_sources_and_generates_are_checked_lists() -> None:
    spec = parse_spec(
        '[steps.a]\nrun = ["x"]\nsources = ["src/**"]\ngenerates = ["out"]\n', path="wf.toml"
    )
    assert spec.steps["a"].sources == ("src/**",)
    assert spec.steps["a"].generates == ("out",)
    from trioflow.cli._spec import SpecError

    with pytest.raises(SpecError) as info:
        parse_spec('[steps.a]\nrun = ["x"]\nsources = "src"\ngenerates = [""]\n', path="wf.toml")
    assert info.value.problems == (
        ("steps.a.sources", "expected a list of glob patterns, got a string ('src')"),
        ("steps.a.generates[0]", "expected a non-empty glob pattern"),
    )


# --- real runs ------------------------------------------------------------------------------

_WORKFLOW = """
[steps.build]
shell = "cat src/*.txt > out.txt && echo x >> build.count"
sources = ["src/**/*.txt"]
generates = ["out.txt"]

[steps.package]
shell = "echo x >> package.count"
after = ["build"]
"""


def _count(project: Path, name: str) -> int:
    path = project / f"{name}.count"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _run(project: Path, *args: str) -> dict[str, str]:
    completed = trioflow("run", "wf.toml", "--json", *args, cwd=project)
    assert completed.returncode == 0, completed.stderr
    return statuses(json_out(completed))


@pytest.mark.real_time
def test_a_step_is_up_to_date_until_a_source_the_command_or_an_output_changes(
    project: Path,
) -> None:
    _tree(project, {"src/a.txt": "a\n", "src/sub/b.txt": "b\n"})
    write(project, _WORKFLOW)
    assert _run(project) == {"build": "succeeded", "package": "succeeded"}
    # Unchanged: skipped, and what comes after it runs as usual.
    assert _run(project) == {"build": "up_to_date", "package": "succeeded"}
    assert (_count(project, "build"), _count(project, "package")) == (1, 2)

    dry = trioflow("run", "wf.toml", "--dry-run", cwd=project)
    assert "  build (up to date): cat src/*.txt" in dry.stdout
    plan = json.loads(trioflow("run", "wf.toml", "--dry-run", "--json", cwd=project).stdout)
    assert plan["steps"]["build"]["up_to_date"] is True
    assert plan["steps"]["package"]["up_to_date"] is False

    (project / "src/a.txt").write_text("a, changed\n")
    assert _run(project)["build"] == "succeeded"
    assert _count(project, "build") == 2
    assert _run(project)["build"] == "up_to_date"

    write(project, _WORKFLOW.replace("echo x >>", "echo y >>", 1))  # the command changed
    assert _run(project)["build"] == "succeeded"
    (project / "out.txt").unlink()  # an output is missing
    assert _run(project)["build"] == "succeeded"
    assert (project / "out.txt").read_text() == "a, changed\n"
    assert _count(project, "build") == 4


@pytest.mark.real_time
def test_force_runs_up_to_date_steps_and_the_summary_says_up_to_date(project: Path) -> None:
    _tree(project, {"src/a.txt": "a\n"})
    write(
        project,
        _WORKFLOW
        + """
[steps.docs]
shell = "echo x >> docs.count"
sources = ["src/*.txt"]
""",
    )
    _run(project)
    assert _run(project, "--force", "docs") == {
        "build": "up_to_date",
        "package": "succeeded",
        "docs": "succeeded",
    }
    assert _run(project, "--force") == {
        "build": "succeeded",
        "package": "succeeded",
        "docs": "succeeded",
    }
    plain = trioflow("run", "wf.toml", cwd=project)
    assert plain.returncode == 0
    assert "build: up to date\n" in plain.stdout
    assert "build    up to date  0" in plain.stdout
    assert (_count(project, "build"), _count(project, "docs")) == (2, 3)
    unknown = trioflow("run", "wf.toml", "--force", "dcos", cwd=project)
    assert unknown.returncode == 2
    assert (
        unknown.stderr == "trioflow: error: wf.toml: unknown step 'dcos'; did you mean 'docs'?\n"
    )


def test_the_live_view_and_the_summary_say_up_to_date() -> None:
    import io

    from trioflow.cli._render import LiveReporter, RunSummary, StepRow, print_summary, rich_console

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    console = rich_console(out)
    assert console is not None
    reporter = LiveReporter(console)
    reporter.run_started(run_id="r1", workflow="ci", total=1, resumed=0)
    reporter.step_finished("build", "up_to_date", detail="", elapsed=0.0)
    reporter.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # without the colours
    assert "up to date build\n" in text
    assert "1/1 steps" in text
    summary = RunSummary(
        run_id="r1",
        workflow="ci",
        status="succeeded",
        duration=0.1,
        steps=(StepRow(name="build", status="up_to_date"),),
    )
    plain = io.StringIO()
    print_summary(summary, plain)
    assert plain.getvalue().splitlines()[1].split("  ")[:2] == ["build", "up to date"]
    assert summary.to_json()["steps"][0]["status"] == "up_to_date"
