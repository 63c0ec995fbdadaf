"""Every code sample in the README and the docs runs, so the documentation cannot rot.

Each ```python block is a standalone script: it runs in a fresh interpreter, in an empty
directory of its own, on the real clock, and must exit with status 0 (within 60 seconds).
Each ```toml block that describes a workflow (it has ``[steps.``) must pass the
``trioflow run`` file validation.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from trioflow.cli._spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks_in(text: str, language: str) -> list[tuple[int, str]]:
    """Return ``(first line number, code)`` of every fenced block of one language."""
    found = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        index += 1
        if match is None:
            continue
        start = index
        while index < len(lines) and not lines[index].strip().startswith(match["fence"]):
            index += 1
        if match["lang"] == language:
            found.append((start + 1, textwrap.dedent("\n".join(lines[start:index])) + "\n"))
        index += 1
    return found


def _blocks(language: str) -> list[pytest.ParameterSet]:
    """Every block of one language in the documents, as pytest params named ``file:line``."""
    params = []
    for path in _documents():
        if path.exists():
            name = path.relative_to(ROOT).as_posix()
            for line, code in _blocks_in(path.read_text(encoding="utf-8"), language):
                params.append(pytest.param(code, id=f"{name}:{line}"))
    return params


def test_the_documents_have_samples() -> None:
    # A broken fence parser must not pass silently by finding nothing.
    assert len(_blocks("python")) >= 5


def test_fence_parser_finds_blocks_with_their_line_and_dedents_them() -> None:
    text = (
        "# title\n\n```python\nprint(1)\n```\n\n```text\nnot python\n```\n"
        "- item\n\n    ```python\n    if True:\n        print(2)\n    ```\n"
    )
    assert _blocks_in(text, "python") == [(4, "print(1)\n"), (13, "if True:\n    print(2)\n")]
    assert _blocks_in(text, "text") == [(8, "not python\n")]


def _run_sample(code: str, directory: Path) -> subprocess.CompletedProcess[str]:
    script = directory / "sample.py"
    script.write_text(code, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="session")
def sample_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run every selected sample, several at once (each mostly waits for Python to start)."""
    codes: dict[str, str] = {
        item.callspec.id: str(item.callspec.params["code"])
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_python_sample_runs"
        and hasattr(item, "callspec")
    }
    directories = {where: tmp_path_factory.mktemp("sample") for where in codes}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        futures = {
            where: pool.submit(_run_sample, code, directories[where])
            for where, code in codes.items()
        }
        return {where: future.result() for where, future in futures.items()}


@pytest.mark.parametrize("code", _blocks("python"))
def test_python_sample_runs(
    code: str,
    request: pytest.FixtureRequest,
    sample_runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    completed = sample_runs[request.node.callspec.id]
    assert completed.returncode == 0, (
        f"exit status {completed.returncode}\n--- stdout\n{completed.stdout}"
        f"\n--- stderr\n{completed.stderr}"
    )


@pytest.mark.parametrize("text", [p for p in _blocks("toml") if "[steps." in str(p.values[0])])
def test_workflow_file_sample_is_valid(text: str) -> None:
    spec = parse_spec(text, path=ROOT / "docs" / "sample.toml")
    assert spec.steps
