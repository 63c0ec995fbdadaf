"""The workflow file format and the ``when`` condition language (no processes run here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioflow.cli._condition import ConditionSyntaxError, parse_condition
from trioflow.cli._spec import SpecError, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, path="wf.toml")
    return list(info.value.problems)


def test_a_full_step_is_parsed() -> None:
    spec = parse_spec(
        """
        [workflow]
        name = "ci"
        max_parallel = 3
        pools = { db = 1 }

        [steps.build]
        run = ["make", "all"]

        [steps.test]
        shell = "pytest -q && echo ok"
        after = ["build"]
        timeout = 2.5
        retries = 2
        retry_delay = 0.5
        backoff = 3
        when = "env.CI == 'true' and steps.build.status == 'succeeded'"
        env = { MODE = "fast" }
        cwd = "sub"
        exclusive = true
        continue_on_error = true
        pools = ["db"]
        """,
        path="dir/ci.toml",
    )
    assert (spec.name, spec.max_parallel, dict(spec.pools)) == ("ci", 3, {"db": 1})
    assert list(spec.steps) == ["build", "test"]
    build, test = spec.steps["build"], spec.steps["test"]
    assert build.command == ("make", "all")
    assert not build.is_shell
    assert build.after == ()
    assert build.retries == 0
    assert build.timeout is None
    assert test.command == "pytest -q && echo ok"
    assert test.is_shell
    assert test.after == ("build",)
    assert (test.timeout, test.retries, test.retry_delay, test.backoff) == (2.5, 2, 0.5, 3.0)
    assert test.when is not None
    assert test.when.steps == {"build"}
    assert dict(test.env) == {"MODE": "fast"}
    assert (test.cwd, test.exclusive, test.continue_on_error, test.pools) == (
        "sub",
        True,
        True,
        ("db",),
    )


def test_defaults_name_the_workflow_after_the_file() -> None:
    spec = parse_spec('[steps.a]\nrun = ["true"]\n', path="some/dir/nightly.toml")
    assert spec.name == "nightly"
    assert spec.max_parallel is None
    assert dict(spec.pools) == {}
    assert spec.directory == Path("some/dir").resolve()


def test_after_accepts_a_single_name() -> None:
    spec = parse_spec('[steps.a]\nrun = ["x"]\n[steps.b]\nrun = ["y"]\nafter = "a"\n', path="w")
    assert spec.steps["b"].after == ("a",)


def test_malformed_toml_names_file_line_and_column() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec('[steps.a]\nrun = ["x" oops\n', path="ci/flow.toml")
    assert info.value.problems == (("", "invalid TOML: Unclosed array"),)
    assert str(info.value) == "ci/flow.toml:2:12: invalid TOML: Unclosed array"


def test_the_message_names_the_file() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec("[steps.a]\nrun = [1]\n", path="ci/flow.toml")
    assert str(info.value).startswith("ci/flow.toml: steps.a.run: expected a non-empty list")


def test_unknown_keys_are_rejected_with_their_table_path_and_a_hint() -> None:
    found = problems(
        """
        colour = 1
        [workflow]
        max_paralel = 2
        [steps.a]
        run = ["x"]
        retry = 3
        """
    )
    assert ("(top level)", "unknown key 'colour'") in found
    assert ("workflow", "unknown key 'max_paralel'; did you mean 'max_parallel'?") in found
    assert ("steps.a", "unknown key 'retry'; did you mean 'retries'?") in found


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        """
        [steps.a]
        run = "make"
        timeout = -1
        [steps.b]
        shell = "x"
        retries = 1.5
        exclusive = "yes"
        """
    )
    assert [where for where, _ in found] == [
        "steps.a.run",
        "steps.a.timeout",
        "steps.b.retries",
        "steps.b.exclusive",
    ]
    assert "use shell = '...'" in found[0][1]


def test_unknown_steps_in_after_are_reported_with_key_typos() -> None:
    found = problems(
        """
        [steps.a]
        run = ["x"]
        timout = 5
        [steps.b]
        run = ["x"]
        after = ["a", "c", "bulid"]
        [steps.build]
        run = ["x"]
        retries = -1
        """
    )
    assert found == [
        ("steps.a", "unknown key 'timout'; did you mean 'timeout'?"),
        ("steps.build.retries", "expected an integer from 0 to 1000, got an integer (-1)"),
        ("steps.b.after", "unknown step 'c'"),
        ("steps.b.after", "unknown step 'bulid'; did you mean 'build'?"),
    ]


@pytest.mark.parametrize(
    ("body", "where", "fragment"),
    [
        ("", "steps.a", "exactly one of run"),
        ('run = ["x"]\nshell = "x"', "steps.a", "exactly one of run"),
        ("run = []", "steps.a.run", "non-empty list of strings"),
        ('run = [""]', "steps.a.run", "non-empty list of strings"),
        ('shell = "  "', "steps.a.shell", "non-empty string"),
        ('run = ["x"]\ntimeout = 0', "steps.a.timeout", "> 0, got an integer (0)"),
        ('run = ["x"]\ntimeout = nan', "steps.a.timeout", "> 0, got a number (nan)"),
        ('run = ["x"]\ntimeout = "5s"', "steps.a.timeout", "got a string ('5s')"),
        ('run = ["x"]\nretries = -1', "steps.a.retries", "integer from 0 to 1000"),
        ('run = ["x"]\nretries = 100000000', "steps.a.retries", "from 0 to 1000, got an integer"),
        ('run = ["x"]\nretries = 9223372036854775807', "steps.a.retries", "from 0 to 1000"),
        ('run = ["x", "a\\u0000b"]', "steps.a.run[1]", "must not contain a NUL character"),
        ('shell = "echo \\u0000"', "steps.a.shell", "must not contain a NUL character"),
        ('run = ["x"]\nenv = { A = "1\\u0000" }', "steps.a.env.A", "NUL character"),
        ('run = ["x"]\nenv = { "A=B" = "1" }', "steps.a.env", "without '=' or NUL, got 'A=B'"),
        ('run = ["x"]\nenv = { "" = "1" }', "steps.a.env", "must be non-empty, without"),
        ('run = ["x"]\ncwd = "a\\u0000"', "steps.a.cwd", "NUL character"),
        ('run = ["x"]\nretries = true', "steps.a.retries", "got a boolean (True)"),
        ('run = ["x"]\nretry_delay = -1', "steps.a.retry_delay", ">= 0"),
        ('run = ["x"]\nbackoff = 0.5', "steps.a.backoff", "number >= 1"),
        ('run = ["x"]\nwhen = 3', "steps.a.when", "condition string"),
        ('run = ["x"]\nwhen = "env.A =="', "steps.a.when", "at column 9"),
        ('run = ["x"]\nenv = { A = 1 }', "steps.a.env.A", "expected a string"),
        ('run = ["x"]\nenv = "A=1"', "steps.a.env", "table of strings"),
        ('run = ["x"]\ncwd = ""', "steps.a.cwd", "non-empty string"),
        ('run = ["x"]\npools = ["gpu"]', "steps.a.pools", "unknown pool 'gpu'"),
        ('run = ["x"]\npools = "gpu"', "steps.a.pools", "list of pool names"),
        ('run = ["x"]\nafter = [1]', "steps.a.after", "step name or a list"),
    ],
)
def test_bad_step_values(body: str, where: str, fragment: str) -> None:
    found = problems(f"[steps.a]\n{body}\n")
    assert any(w == where and fragment in m for w, m in found), found


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        ("[workflow]\nname = 'x'\n", "", "no steps"),
        ("steps = 1\n", "steps", "expected tables"),
        ("workflow = 1\n[steps.a]\nrun=['x']", "workflow", "expected a table"),
        ("[workflow]\nmax_parallel = 0\n[steps.a]\nrun=['x']", "workflow.max_parallel", ">= 1"),
        ("[workflow]\nname = ''\n[steps.a]\nrun=['x']", "workflow.name", "non-empty"),
        ("[workflow]\npools = { db = 0 }\n[steps.a]\nrun=['x']", "workflow.pools.db", ">= 1"),
        ("[workflow]\npools = ['db']\n[steps.a]\nrun=['x']", "workflow.pools", "table of sizes"),
        ("[steps.'a b']\nrun=['x']", "steps.a b", "letters, digits"),
        ("[steps.a]\nrun=['x']\nafter=['zz']", "steps.a.after", "unknown step 'zz'"),
        ("[steps.a]\nrun=['x']\nafter=['a']", "steps.a.after", "cannot come after itself"),
    ],
)
def test_bad_workflow_values(text: str, where: str, fragment: str) -> None:
    found = problems(text)
    assert any(w == where and fragment in m for w, m in found), found


def test_a_cycle_names_its_steps_in_order() -> None:
    [(where, message)] = problems(
        """
        [steps.start]
        run = ["x"]
        [steps.a]
        run = ["x"]
        after = ["start", "c"]
        [steps.b]
        run = ["x"]
        after = ["a"]
        [steps.c]
        run = ["x"]
        after = ["b"]
        """
    )
    assert where == "steps"
    assert message.startswith("the steps form a cycle: ")
    cycle = message.removeprefix("the steps form a cycle: ").split(" -> ")
    assert cycle[0] == cycle[-1]
    assert sorted(cycle[:-1]) == ["a", "b", "c"]
    # Each step in the message comes after the one before it.
    after = {"a": "c", "b": "a", "c": "b"}
    assert all(after[cycle[i + 1]] == cycle[i] for i in range(len(cycle) - 1))


def test_when_may_only_read_steps_it_comes_after() -> None:
    found = problems(
        """
        [steps.a]
        run = ["x"]
        [steps.b]
        run = ["x"]
        when = "steps.a.status == 'failed'"
        """
    )
    assert found == [
        (
            "steps.b.when",
            "reads the status of step 'a', which is not among the steps it comes after "
            "(add it to after)",
        )
    ]
    # An indirect ancestor is fine.
    parse_spec(
        """
        [steps.a]
        run = ["x"]
        [steps.b]
        run = ["x"]
        after = ["a"]
        [steps.c]
        run = ["x"]
        after = ["b"]
        when = "steps.a.status == 'failed'"
        """,
        path="w",
    )


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.toml")
    with pytest.raises(SpecError, match="cannot read the file"):
        load_spec(tmp_path)  # a directory
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe[steps")
    with pytest.raises(SpecError, match="cannot read the file"):
        load_spec(tmp_path / "bad.toml")


def test_waves_follow_dependencies_and_isolate_exclusive_steps() -> None:
    spec = parse_spec(
        """
        [steps.restore]
        run = ["x"]
        [steps.build]
        run = ["x"]
        after = ["restore"]
        [steps.lint]
        run = ["x"]
        [steps.unit]
        run = ["x"]
        after = ["build"]
        [steps.migrate]
        run = ["x"]
        after = ["build"]
        exclusive = true
        [steps.integration]
        run = ["x"]
        after = ["build"]
        [steps.report]
        run = ["x"]
        after = ["unit", "integration", "migrate"]
        """,
        path="w",
    )
    assert spec.waves() == [
        ["restore", "lint"],
        ["build"],
        ["unit", "integration"],
        ["migrate"],
        ["report"],
    ]


def test_the_examples_are_valid() -> None:
    for path in sorted(EXAMPLES.glob("*.toml")):
        assert load_spec(path).steps


# --- the condition language ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "env", "statuses", "expected"),
    [
        ("env.CI", {"CI": "true"}, {}, True),
        ("env.CI", {"CI": "1"}, {}, True),
        ("env.CI", {}, {}, False),
        ("env.CI", {"CI": ""}, {}, False),
        ("env.CI", {"CI": "False"}, {}, False),
        ("env.CI", {"CI": " off "}, {}, False),
        ("env.CI", {"CI": "no"}, {}, False),
        ("env.CI", {"CI": "0"}, {}, False),
        ("not env.CI", {}, {}, True),
        ("not not env.CI", {}, {}, False),
        ("env.CI == 'true'", {"CI": "true"}, {}, True),
        ('env.CI == "true"', {"CI": "yes"}, {}, False),
        ("env.CI != 'true'", {}, {}, True),
        ("env.CI == ''", {}, {}, True),
        ("'x' == env.A", {"A": "x"}, {}, True),
        ("env.A == env.B", {"A": "x", "B": "x"}, {}, True),
        ("env.A and env.B", {"A": "1"}, {}, False),
        ("env.A or env.B", {"A": "1"}, {}, True),
        ("env.A or env.B and env.C", {"A": "1"}, {}, True),  # and binds tighter
        ("(env.A or env.B) and env.C", {"A": "1"}, {}, False),
        ("steps.build.status == 'succeeded'", {}, {"build": "succeeded"}, True),
        ("steps.build.status == 'failed'", {}, {"build": "succeeded"}, False),
        ("steps.my-step.status != 'skipped'", {}, {"my-step": "failed"}, True),
        ("not (steps.a.status == 'failed' or env.X)", {}, {"a": "succeeded"}, True),
    ],
)
def test_conditions_evaluate(
    source: str, env: dict[str, str], statuses: dict[str, str], expected: bool
) -> None:
    assert parse_condition(source).evaluate(env, statuses) is expected


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("", "empty condition"),
        ("   ", "empty condition"),
        (
            "env.CI ==",
            "expected env.NAME, steps.NAME.status, a 'string', 'not' or '(' at column 10",
        ),
        ("env.CI = 'x'", "unexpected character '=' at column 8"),
        ("(env.CI", "expected ')' at column 8, got end of condition"),
        ("env.CI env.X", "expected 'and', 'or' or the end of the condition at column 8"),
        ("os.system('x')", "unknown name 'os.system' at column 1"),
        ("env", "unknown name 'env'"),
        ("steps.a", "unknown name 'steps.a'"),
        ("steps.a.value == 'x'", "unknown name 'steps.a.value'"),
        ("'yes'", "a bare string 'yes' is not a condition"),
        ("steps.a.status", "compare steps.a.status with a status"),
        ("not steps.a.status", "compare steps.a.status with a status"),
        ("steps.a.status == 'sucess'", "unknown status 'sucess' for step 'a'"),
        ("__import__('os')", "unknown name '__import__' at column 1"),
    ],
)
def test_bad_conditions(source: str, fragment: str) -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        parse_condition(source)
    assert fragment in str(info.value)


def test_condition_unknown_step_check() -> None:
    with pytest.raises(ConditionSyntaxError, match="unknown step 'b'"):
        parse_condition("steps.b.status == 'failed'", is_step=lambda name: name == "a")


_names = st.sampled_from(["A", "B", "C"])
_leaf = st.one_of(
    _names.map(lambda n: f"env.{n}"),
    st.tuples(_names, st.sampled_from(["==", "!="]), st.sampled_from(["'1'", "''", "'x'"])).map(
        lambda t: f"env.{t[0]} {t[1]} {t[2]}"
    ),
)
_expr = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        inner.map(lambda e: f"not ({e})"),
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(
            lambda t: f"({t[0]}) {t[1]} ({t[2]})"
        ),
    ),
    max_leaves=8,
)


@settings(max_examples=60)
@given(source=_expr, env=st.dictionaries(_names, st.sampled_from(["1", "", "x", "0"])))
def test_conditions_agree_with_python_boolean_logic(source: str, env: dict[str, str]) -> None:
    # The grammar's and/or/not/==/!= mirror Python's, once env.X is a truth value or a string.
    def truthy(value: str) -> bool:
        return value.strip().lower() not in ("", "0", "false", "no", "off")

    python = source
    for name in ("A", "B", "C"):
        python = python.replace(f"env.{name} ==", f"E[{name!r}] ==")
        python = python.replace(f"env.{name} !=", f"E[{name!r}] !=")
        python = python.replace(f"env.{name}", f"T(E[{name!r}])")
    values = {n: env.get(n, "") for n in ("A", "B", "C")}
    expected = eval(python, {"E": values, "T": truthy})  # test oracle only
    assert parse_condition(source).evaluate(env, {}) is expected
