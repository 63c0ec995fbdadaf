"""The command imports what it needs: ``--version``, ``runs`` and ``show`` start light.

Each check runs in a fresh interpreter (what is imported is a property of the whole process):
the command runs with the arguments, then the program reports which modules it loaded.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import trioflow
from test_cli import trioflow as run_trioflow
from test_cli import write

ROOT = Path(__file__).resolve().parent.parent
INIT = ROOT / "src" / "trioflow" / "__init__.py"

# Run the command as `trioflow ARGS` does, then list the heavy modules it loaded.
PROGRAM = textwrap.dedent(
    """
    import json, sys
    from trioflow.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit as exit:
        status = exit.code
    heavy = ("rich", "structlog", "trioflow._lifecycle", "trioflow.lifecycle")
    loaded = sorted({m for m in sys.modules for h in heavy if m == h or m.startswith(h + ".")})
    print(json.dumps({"status": status, "loaded": loaded}), file=sys.stderr)
    """
)


def _loaded(directory: Path, *args: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report: dict[str, object] = json.loads(done.stderr.strip().splitlines()[-1])
    return report


@pytest.mark.real_time
@pytest.mark.parametrize(
    "args",
    [
        ("--version",),
        ("runs",),
        ("runs", "--json"),
        ("show", "latest"),
        ("show", "--json", "latest"),
    ],
)
def test_version_runs_and_show_import_neither_rich_nor_structlog_nor_lifecycle(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    write(tmp_path, '[steps.a]\nshell = "true"\n')
    assert run_trioflow("run", "wf.toml", cwd=tmp_path).returncode == 0
    assert _loaded(tmp_path, *args) == {"status": 0, "loaded": []}


@pytest.mark.real_time
def test_the_lifecycle_layer_loads_on_first_use_by_the_commands_that_need_it(
    tmp_path: Path,
) -> None:
    # `serve` checks that its --tools is a trioflow.lifecycle.ToolRegistry: that loads it.
    report = _loaded(tmp_path, "serve", "--tools", "json:dumps")
    assert report["status"] == 2
    loaded = report["loaded"]
    assert isinstance(loaded, list)
    assert "trioflow.lifecycle" in loaded


@pytest.mark.real_time
def test_import_trioflow_imports_no_module_before_its_names_are_used() -> None:
    program = textwrap.dedent(
        """
        import sys
        import trioflow
        before = sorted(m for m in sys.modules if m.startswith("trioflow"))
        trioflow.RetryPolicy
        after = sorted(m for m in sys.modules if m.startswith("trioflow"))
        print(before, "trioflow._retry" in after, "trioflow._batch._engine" in after)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", program],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.split() == [
        "['trioflow',",
        "'trioflow._deprecate',",
        "'trioflow._startup']",
        "True",
        "False",
    ]


def test_every_public_name_is_there_and_in_dir() -> None:
    listed = dir(trioflow)
    for name in trioflow.__all__:
        assert name in listed
        assert getattr(trioflow, name) is not None
    from trioflow import RunStatus, run_batch

    assert RunStatus.__module__ == "trioflow"
    assert run_batch is trioflow.run_batch
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        trioflow.nothing  # noqa: B018


def test_the_type_checking_imports_say_where_each_name_lives() -> None:
    # The block that type checkers and IDEs read, and the table that imports on first use.
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    declared: dict[str, str] = {}
    for statement in block.body:
        assert isinstance(statement, ast.ImportFrom)
        for alias in statement.names:
            assert alias.asname == alias.name  # a re-export: `import X as X`
            declared[alias.name] = "." * statement.level + (statement.module or "")
    homes: dict[str, str] = {
        name: home for home, names in trioflow._HOMES.items() for name in names
    }
    how = (
        "a public name of trioflow is imported on first use: put `from ._module import Name as "
        "Name` in the TYPE_CHECKING block of trioflow/__init__.py and Name in _HOMES"
    )
    assert {**homes, "lifecycle": "."} == declared, how
    assert set(declared) == set(trioflow.__all__), how
