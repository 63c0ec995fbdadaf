"""``[env]`` and ``${NAME}`` interpolation: the template parser, the file checks, a real run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from test_cli import project, trioflow, write
from trioflow.cli._interpolate import (
    PLACEHOLDERS,
    InterpolationError,
    Placeholder,
    Variable,
    escape,
    parse_template,
)
from trioflow.cli._spec import SpecError, parse_spec

__all__ = ("project",)  # the fixture, used by name


def _render(text: str, variables: dict[str, str], *, quote: bool = False) -> str:
    return parse_template(text).render(variables.get, lambda name: f"<{name}>", quote=quote)


def _no_variables(name: str) -> str | None:
    return None


# --- the parser -----------------------------------------------------------------------------


@given(st.text(alphabet=st.sampled_from("ab$ {}_:-.x1"), max_size=40) | st.text(max_size=20))
def test_escaped_text_renders_back_to_itself(text: str) -> None:
    template = parse_template(escape(text))
    assert template.render(_no_variables, lambda name: "?") == text
    assert list(template.variables()) == []


@given(st.text(alphabet=st.characters(blacklist_characters="${}"), max_size=20))
def test_a_double_dollar_is_one_dollar(text: str) -> None:
    assert _render(f"$${text}$$", {}) == f"${text}$"


@pytest.mark.parametrize(
    ("text", "variables", "expected"),
    [
        ("${A}", {"A": "1"}, "1"),
        ("x${A}y${B}z", {"A": "1", "B": "2"}, "x1y2z"),
        ("${A:-dflt}", {}, "dflt"),
        ("${A:-dflt}", {"A": ""}, "dflt"),  # empty counts as unset, as in the shell
        ("${A:-dflt}", {"A": "set"}, "set"),
        ("${A:-}", {}, ""),
        ("${A:-a b:c-d}", {}, "a b:c-d"),
        ("$HOME $1 $", {}, "$HOME $1 $"),  # a lone $ is the shell's
        ("$${A}", {"A": "1"}, "${A}"),
        ("{python} {run_id}/{step}.{logs}", {}, "<python> <run_id>/<step>.<logs>"),
        ("{{python}} {{other}}", {}, "{python} {other}"),
        ("awk '{print $1}' {a,b} {} { x }", {}, "awk '{print $1}' {a,b} {} { x }"),
        ("${matrix.py}", {"matrix.py": "3.12"}, "3.12"),
    ],
)
def test_rendering(text: str, variables: dict[str, str], expected: str) -> None:
    assert _render(text, variables) == expected


def test_a_shell_line_gets_each_value_as_one_word() -> None:
    assert _render("echo ${A} {step}", {"A": "a b; rm -rf /"}, quote=True) == (
        "echo 'a b; rm -rf /' '<step>'"
    )


def test_the_parts() -> None:
    assert parse_template("a${B:-c}{step}$$").parts == (
        "a",
        Variable("B", "c"),
        Placeholder("step"),
        "$",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${A", "unterminated ${ at character 1"),
        ("x ${", "unterminated ${ at character 3"),
        ("${A:-${B}}", "nested references are not supported"),
        ("${A:-$B}", "nested references are not supported"),
        ("${A:-{x}", "nested references are not supported"),
        ("${}", "expected ${NAME}"),
        ("${1A}", "expected ${NAME}"),
        ("${A-b}", "expected ${NAME}"),
        ("${A B}", "expected ${NAME}"),
        ("${matrix.}", "expected ${NAME}"),
        ("{pyhton}", "unknown placeholder {pyhton} (did you mean {python}?"),
        ("{name}", "write {{name}} for the text {name}"),
    ],
)
def test_bad_templates(text: str, message: str) -> None:
    with pytest.raises(InterpolationError, match=None) as info:
        parse_template(text)
    assert message in str(info.value)


def test_an_unset_variable_without_default_is_an_error() -> None:
    with pytest.raises(InterpolationError, match=r"\$\{NOPE\} is not set"):
        _render("${NOPE}", {})


def test_the_placeholders_are_the_run_s() -> None:
    assert PLACEHOLDERS == ("python", "run_id", "step", "logs")


# --- the file checks ------------------------------------------------------------------------


def _problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, path="wf.toml")
    return list(info.value.problems)


def test_unknown_variables_are_found_before_anything_runs_naming_step_and_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRIOFLOW_TEST_NOPE", raising=False)
    found = _problems(
        """
        [env]
        BASE = "${TRIOFLOW_TEST_NOPE}"

        [steps.a]
        run = ["echo", "${TRIOFLOW_TEST_NOPE}"]
        cwd = "${TRIOFLOW_TEST_NOPE}"
        env = { X = "${TRIOFLOW_TEST_NOPE}" }
        sources = ["{pyhton}"]

        [steps.b]
        shell = "echo ${TRIOFLOW_TEST_NOPE:-fine} ${matrix.x}"
        """
    )
    unset = "${TRIOFLOW_TEST_NOPE} is not set (and has no default)"
    assert found == [
        ("env.BASE", unset),
        ("steps.a.env.X", unset),
        ("steps.a.run[1]", unset),
        ("steps.a.cwd", unset),
        ("steps.a.sources[0]", found[4][1]),
        (
            "steps.b.shell",
            "${matrix.x}: no such matrix key (the keys are none: the step has no matrix)",
        ),
    ]
    assert "unknown placeholder {pyhton}" in found[4][1]


def test_env_tables_apply_in_order_and_each_value_sees_what_came_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin")
    spec = parse_spec(
        """
        [env]
        VENV = ".venv-ci"
        PATH = "${VENV}/bin:${PATH}"

        [steps.a]
        run = ["tool", "${PATH}", "{step}"]
        env = { PATH = "extra:${PATH}", MODE = "${MODE:-fast}" }
        cwd = "${VENV}"
        """,
        path="wf.toml",
    )
    resolved = spec.resolve(spec.steps["a"], placeholders=lambda name: name.upper())
    assert resolved.env == {
        "VENV": ".venv-ci",
        "PATH": "extra:.venv-ci/bin:/usr/bin",
        "MODE": "fast",
    }
    assert resolved.command == ("tool", "extra:.venv-ci/bin:/usr/bin", "STEP")
    assert resolved.cwd == spec.directory / ".venv-ci"


def test_a_bad_env_table() -> None:
    assert _problems('env = "x"\n[steps.a]\nrun = ["x"]\n') == [
        ("env", "expected a table of strings, got a string ('x')")
    ]
    assert _problems('[env]\nA = 1\n[steps.a]\nrun = ["x"]\n') == [
        ("env.A", "expected a string, got an integer (1)")
    ]


# --- a real run -----------------------------------------------------------------------------


@pytest.mark.real_time
def test_env_interpolation_and_a_path_prepend_in_a_real_run(project: Path) -> None:
    tools = project / "tools" / ".venv-ci" / "bin"
    tools.mkdir(parents=True)
    tool = tools / "greet"
    tool.write_text('#!/bin/sh\necho "greet: $GREETING from $PWD" > "$OUT"\n')
    tool.chmod(0o755)
    write(
        project,
        f"""
        [env]
        GREETING = "hello ${{USER_NAME:-nobody}}"
        PATH = ".venv-ci/bin:${{PATH}}"

        [steps.direct]
        run = ["greet"]
        cwd = "${{TOOLS_DIR}}"
        env = {{ OUT = "../direct.txt" }}

        [steps.shell]
        shell = "greet && echo $$PATH ${{GREETING}} {{{{step}}}} $${{GREETING}} > ../shell.txt"
        cwd = "tools"
        env = {{ OUT = "../shell-greet.txt", GREETING = "${{GREETING}}!" }}

        [steps.python]
        run = [{json.dumps("{python}")}, "-c", "import sys; print(sys.argv[1:])", "${{GREETING}}"]
        """,
    )
    env = {
        **os.environ,
        "TOOLS_DIR": "tools",
        "PYTHONPATH": str(Path(__file__).parent.parent / "src"),
    }
    env.pop("USER_NAME", None)
    completed = trioflow("run", "wf.toml", cwd=project, env=env)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    tools_dir = project / "tools"
    assert (project / "direct.txt").read_text() == f"greet: hello nobody from {tools_dir}\n"
    assert (project / "shell-greet.txt").read_text() == f"greet: hello nobody! from {tools_dir}\n"
    shell_line = (project / "shell.txt").read_text()
    # The relative PATH entry was made absolute against the step's directory.
    assert shell_line.startswith(f"{tools_dir / '.venv-ci' / 'bin'}:")
    # ${GREETING} is quoted as one word; $${GREETING} is the shell's, from the environment.
    assert shell_line.endswith(" hello nobody! {step} hello nobody!\n")
    log = next((project / ".trioflow" / "logs").iterdir()) / "python.log"
    assert "['hello nobody']" in log.read_text()


@pytest.mark.real_time
def test_an_unknown_variable_exits_2_before_anything_runs(project: Path) -> None:
    write(
        project,
        """
        [steps.first]
        shell = "touch ran.txt"

        [steps.build]
        shell = "make ${TRIOFLOW_TEST_UNSET_VARIABLE}"
        after = ["first"]
        """,
    )
    env = {k: v for k, v in os.environ.items() if k != "TRIOFLOW_TEST_UNSET_VARIABLE"}
    env["PYTHONPATH"] = str(Path(__file__).parent.parent / "src")
    completed = trioflow("run", "wf.toml", cwd=project, env=env)
    assert completed.returncode == 2
    assert completed.stderr == (
        "trioflow: error: wf.toml: steps.build.shell: "
        "${TRIOFLOW_TEST_UNSET_VARIABLE} is not set (and has no default)\n"
    )
    assert not (project / "ran.txt").exists()
    assert not (project / ".trioflow").exists()


def test_a_resume_sees_a_changed_env_table_as_a_changed_step() -> None:
    from trioflow.cli._run import step_fingerprint

    plain = parse_spec('[steps.a]\nrun = ["x"]\n', path="wf.toml")
    with_env = parse_spec('[env]\nA = "1"\n[steps.a]\nrun = ["x"]\n', path="wf.toml")
    changed = parse_spec('[env]\nA = "2"\n[steps.a]\nrun = ["x"]\n', path="wf.toml")
    step = plain.steps["a"]
    assert step_fingerprint(step, plain.env) == step_fingerprint(step)  # as before [env]
    fingerprints = {step_fingerprint(step, s.env) for s in (plain, with_env, changed)}
    assert len(fingerprints) == 3
