"""``trioflow run FILE STEP...``: the steps named and what they come after, or ``--only`` them."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_cli import in_parallel, json_out, project, statuses, trioflow, write
from trioflow.cli._spec import SpecError, parse_spec

__all__ = ("project",)  # the fixture, used by name

_WORKFLOW = """
[steps.fetch]
shell = "echo x >> fetch.count"

[steps.build]
shell = "echo x >> build.count"
after = ["fetch"]

[steps.test]
shell = "echo x >> test.count"
after = ["build"]

[steps.lint]
shell = "echo x >> lint.count"
after = ["fetch"]

[steps.docs]
shell = "echo x >> docs.count"
"""


def test_select_keeps_the_targets_and_their_ancestors() -> None:
    spec = parse_spec(_WORKFLOW, path="wf.toml")
    assert list(spec.select(["test"]).steps) == ["fetch", "build", "test"]
    assert list(spec.select(["lint", "docs"]).steps) == ["fetch", "lint", "docs"]
    assert spec.select([]) is spec
    only = spec.select(["test", "lint"], only=True)
    assert list(only.steps) == ["test", "lint"]
    assert [s.after for s in only.steps.values()] == [(), ()]
    # What stays keeps its edges among the steps kept.
    assert only.waves() == [["test", "lint"]]
    assert spec.select(["test", "build"], only=True).steps["test"].after == ("build",)


def test_an_unknown_target_suggests_the_closest() -> None:
    spec = parse_spec(_WORKFLOW, path="wf.toml")
    with pytest.raises(SpecError) as info:
        spec.select(["tset", "zzz"])
    assert info.value.problems == (
        ("", "unknown step 'tset'; did you mean 'test'?"),
        ("", "unknown step 'zzz'"),
    )


@pytest.mark.real_time
def test_targets_with_their_dependencies_and_only(tmp_path: Path) -> None:
    projects = [tmp_path / name for name in ("deps", "only", "unknown", "bare-only")]
    for directory in projects:
        directory.mkdir()
        write(directory, _WORKFLOW)
    deps, only, unknown, bare_only = in_parallel(
        lambda: trioflow("run", "wf.toml", "test", "--json", cwd=projects[0]),
        lambda: trioflow("run", "wf.toml", "test", "docs", "--only", "--json", cwd=projects[1]),
        lambda: trioflow("run", "wf.toml", "tets", cwd=projects[2]),
        lambda: trioflow("run", "wf.toml", "--only", cwd=projects[3]),
    )
    assert deps.returncode == 0, deps.stderr
    assert statuses(json_out(deps)) == {
        "fetch": "succeeded",
        "build": "succeeded",
        "test": "succeeded",
    }
    assert sorted(p.name for p in projects[0].glob("*.count")) == [
        "build.count",
        "fetch.count",
        "test.count",
    ]
    assert only.returncode == 0, only.stderr
    assert statuses(json_out(only)) == {"test": "succeeded", "docs": "succeeded"}
    assert sorted(p.name for p in projects[1].glob("*.count")) == ["docs.count", "test.count"]
    assert unknown.returncode == 2
    assert (
        unknown.stderr == "trioflow: error: wf.toml: unknown step 'tets'; did you mean 'test'?\n"
    )
    assert not (projects[2] / ".trioflow").exists()
    assert bare_only.returncode == 2
    assert bare_only.stderr == "trioflow: error: --only needs the names of the steps to run\n"


@pytest.mark.real_time
def test_a_failed_target_run_resumes_with_the_same_targets(project: Path) -> None:
    write(project, _WORKFLOW.replace('shell = "echo x >> test.count"', 'shell = "test -f ok"'))
    failed = trioflow("run", "wf.toml", "test", "--json", cwd=project)
    assert failed.returncode == 1
    data = json_out(failed)
    assert data["resume_command"].endswith(f" run wf.toml test --resume {data['run_id']}")
    (project / "ok").touch()
    resumed = trioflow("run", "wf.toml", "test", "--resume", data["run_id"], "--json", cwd=project)
    assert resumed.returncode == 0, resumed.stderr
    assert (project / "fetch.count").read_text() == "x\n"  # done in the first attempt
