"""``matrix``: one step per combination, ``${matrix.KEY}``, ``after`` a matrix, real runs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from test_cli import json_out, project, statuses, trioflow, write
from trioflow.cli._graph import mermaid, plan, plan_json
from trioflow.cli._matrix import MAX_COMBINATIONS, combinations, step_name
from trioflow.cli._spec import SpecError, parse_spec

__all__ = ("project",)  # the fixture, used by name

_WORKFLOW = """
[steps.setup]
shell = "mkdir -p out"

[steps.test]
matrix = { python = ["3.11", "3.12"], shard = ["1/3", "2/3", "3/3"] }
after = ["setup"]
shell = "echo ${matrix.python} ${matrix.shard} {step} \
> out/test-${matrix.python}-$(echo ${matrix.shard} | tr / -)"

[steps.report]
shell = "ls out | wc -l > report.txt"
after = ["test"]
"""

_NAMES = [f"test[python={p},shard={s}]" for p in ("3.11", "3.12") for s in ("1/3", "2/3", "3/3")]


def _problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, path="wf.toml")
    return list(info.value.problems)


def test_a_matrix_expands_in_the_order_written() -> None:
    spec = parse_spec(_WORKFLOW, path="wf.toml")
    assert list(spec.steps) == ["setup", *_NAMES, "report"]
    assert spec.groups == {"test": tuple(_NAMES)}
    assert spec.steps["report"].after == tuple(_NAMES)
    first = spec.steps[_NAMES[0]]
    assert (first.group, dict(first.matrix), first.after) == (
        "test",
        {"python": "3.11", "shard": "1/3"},
        ("setup",),
    )
    resolved = spec.resolve(first, placeholders=lambda name: name.upper())
    assert resolved.command == ("echo 3.11 1/3 STEP > out/test-3.11-$(echo 1/3 | tr / -)")
    assert spec.waves() == [["setup"], _NAMES, ["report"]]
    assert list(spec.select(["test"], only=True).steps) == _NAMES


def test_graph_and_dry_run_show_the_expansion() -> None:
    spec = parse_spec(_WORKFLOW, path="wf.toml")
    chart = mermaid(spec)
    assert '    s1["test[python=3.11,shard=1/3]"]' in chart
    assert "    s6 --> s7" in chart
    text = plan(spec, max_parallel=2, show=lambda step: step.name)
    assert f"wave 2: {', '.join(_NAMES)}\n" in text
    data = plan_json(spec, max_parallel=2)
    assert data["steps"][_NAMES[5]]["matrix"] == {"python": "3.12", "shard": "3/3"}


def test_numbers_become_text_and_one_axis_works() -> None:
    found, problems = combinations({"n": [1, 2.5, "x"]}, "m")
    assert (found, problems) == ([{"n": "1"}, {"n": "2.5"}, {"n": "x"}], [])
    assert step_name("t", {"n": "1", "m": "a"}) == "t[n=1,m=a]"


@pytest.mark.parametrize(
    ("matrix", "problem"),
    [
        (
            "{}",
            ("steps.t.matrix", "expected a non-empty table of lists, e.g. { python = ['3.12'] }"),
        ),
        (
            '"x"',
            ("steps.t.matrix", "expected a non-empty table of lists, e.g. { python = ['3.12'] }"),
        ),
        ("{ a = [] }", ("steps.t.matrix.a", "expected a non-empty list of strings or numbers")),
        ('{ a = "x" }', ("steps.t.matrix.a", "expected a non-empty list of strings or numbers")),
        ("{ a = [true] }", ("steps.t.matrix.a", "expected strings or numbers, got bool True")),
        ("{ a = [[1]] }", ("steps.t.matrix.a", "expected strings or numbers, got list [1]")),
        (
            "{ a = [{ b = 1 }] }",
            ("steps.t.matrix.a", "expected strings or numbers, got dict {'b': 1}"),
        ),
        ('{ a = ["x", "x"] }', ("steps.t.matrix.a", "the values repeat: ['x', 'x']")),
        (
            '{ a = ["x,y"] }',
            (
                "steps.t.matrix.a",
                "a matrix value must be non-empty, without ',', '=', '[', ']' or NUL, got 'x,y'",
            ),
        ),
        (
            '{ "a-b" = ["x"] }',
            (
                "steps.t.matrix",
                "a matrix key is letters, digits and '_', not starting with a digit, got 'a-b'",
            ),
        ),
    ],
)
def test_bad_matrices(matrix: str, problem: tuple[str, str]) -> None:
    assert _problems(f'[steps.t]\nrun = ["x"]\nmatrix = {matrix}\n') == [problem]


def test_too_many_combinations() -> None:
    values = list(range(40))
    assert _problems(f'[steps.t]\nrun = ["x"]\nmatrix = {{ a = {values}, b = {values} }}\n') == [
        ("steps.t.matrix", f"makes 1600 steps, more than {MAX_COMBINATIONS}")
    ]


def test_an_unknown_matrix_key_is_reported_once() -> None:
    assert _problems(
        '[steps.t]\nshell = "echo ${matrix.pyhton}"\nmatrix = { python = ["3.11", "3.12"] }\n'
    ) == [("steps.t.shell", "${matrix.pyhton}: no such matrix key (the keys are python)")]


def test_a_matrix_cannot_come_after_itself() -> None:
    assert _problems('[steps.t]\nrun = ["x"]\nmatrix = { a = [1, 2] }\nafter = ["t"]\n') == [
        ("steps.t.after", "a step cannot come after itself")
    ]


@pytest.mark.real_time
def test_a_2x3_matrix_and_a_step_after_all_of_it(project: Path) -> None:
    write(project, _WORKFLOW)
    completed = trioflow("run", "wf.toml", "--json", cwd=project)
    assert completed.returncode == 0, completed.stderr
    data = json_out(completed)
    assert statuses(data) == {name: "succeeded" for name in ["setup", *_NAMES, "report"]}
    assert (project / "report.txt").read_text().strip() == "6"
    assert (
        project / "out" / "test-3.12-2-3"
    ).read_text() == "3.12 2/3 'test[python=3.12,shard=2/3]'\n".replace("'", "")
    # Each combination has a log of its own; '/' in a name is percent-encoded.
    logs = Path(project / data["log_dir"])
    assert (logs / "test[python=3.11,shard=1%2F3].log").exists()
    assert sum(1 for _ in logs.glob("test*.log")) == 6

    dry = trioflow(
        "run",
        "wf.toml",
        "test[python=3.12,shard=3/3]",
        "--dry-run",
        "--max-parallel",
        "2",
        cwd=project,
    )
    assert dry.stdout.splitlines() == [
        "workflow 'wf': 2 steps in 2 waves (max_parallel 2)",
        "wave 1: setup",
        "  setup: mkdir -p out",
        "wave 2: test[python=3.12,shard=3/3]",
        "  test[python=3.12,shard=3/3]: echo 3.12 3/3 'test[python=3.12,shard=3/3]' "
        "> out/test-3.12-$(echo 3/3 | tr / -)",
    ]


@given(
    st.dictionaries(
        st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True),
        st.lists(
            st.integers(-5, 5) | st.from_regex(r"[a-z0-9./]{1,4}", fullmatch=True),
            min_size=1,
            max_size=3,
            unique_by=str,
        ),
        min_size=1,
        max_size=3,
    )
)
def test_combinations_are_the_product_in_order(matrix: dict[str, list[int | str]]) -> None:
    found, problems = combinations(matrix, "m")
    assert problems == []
    assert len(found) == math.prod(len(v) for v in matrix.values())
    assert all(list(c) == list(matrix) for c in found)  # keys in the order written
    names = [step_name("t", c) for c in found]
    assert len(set(names)) == len(names)
    assert found[0] == {k: str(v[0]) for k, v in matrix.items()}
    assert found[-1] == {k: str(v[-1]) for k, v in matrix.items()}


def test_the_python_project_example_uses_env_sources_and_a_matrix() -> None:
    from trioflow.cli._spec import load_spec

    spec = load_spec(Path(__file__).resolve().parent.parent / "examples" / "python_project.toml")
    shards = ["test[shard=1]", "test[shard=2]", "test[shard=3]"]
    assert spec.groups == {"test": tuple(shards)}
    assert spec.steps["build"].after == ("lint", "types", *shards)
    assert spec.steps["build"].generates == ("dist/*.whl",)
    resolved = spec.resolve(spec.steps["test[shard=2]"], placeholders=lambda name: name)
    assert resolved.command == ("pytest", "-q", "--splits", "3", "--group", "2")
    assert resolved.env["PATH"].startswith(".venv-ci/bin:")
    assert spec.waves() == [["venv"], ["install"], ["lint", "types", *shards], ["build"]]
