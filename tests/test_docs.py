"""Every code sample in the README and the docs runs, so the documentation cannot rot.

Each ```python block is a standalone script: it runs as ``__main__`` in a process of its own
(forked from one that has imported trioflow, trio, anyio, pytest and hypothesis, so that the
samples do not each pay for those imports), in an empty directory of its own, on the real
clock, and must exit with status 0 (within 60 seconds).
Each ```toml block that describes a workflow (it has ``[steps.``) must pass the
``trioflow run`` file validation.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Mapping
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


# Runs samples for the tests: it imports the heavy modules once, then forks one child per
# sample (at most ``workers`` at a time). Each child is a fresh copy of a process that has
# imported but not run anything: it runs the sample as ``__main__`` in the sample's own
# directory, with stdout and stderr in files, and exits through the normal interpreter exit
# (atexit handlers and non-daemon threads run). A sample that hangs is killed by SIGALRM.
_RUNNER = r"""
import gc, json, os, runpy, signal, sys, traceback

import anyio, hypothesis, pytest, trio, trioflow, trioflow.testing  # noqa: F401 - shared by forks

# Without this, each child's collections at exit touch every object the imports made, copying
# the whole heap page by page: five times the cost of a typical sample.
gc.freeze()
jobs, workers, seconds = json.load(sys.stdin)
results, running, pending = {}, {}, list(jobs)


def child(where, script):
    directory = os.path.dirname(script)
    os.chdir(directory)
    for fd, name, flags in ((0, os.devnull, os.O_RDONLY), (1, "stdout", os.O_WRONLY | os.O_CREAT),
                            (2, "stderr", os.O_WRONLY | os.O_CREAT)):
        os.dup2(os.open(os.path.join(directory, name) if fd else name, flags), fd)
    sys.argv, sys.path[0] = [script], directory
    signal.alarm(seconds)
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        raise SystemExit(1)
    raise SystemExit(0)


while pending or running:
    while pending and len(running) < workers:
        where, script = pending.pop(0)
        pid = os.fork()
        if pid == 0:
            child(where, script)  # never returns: the child exits with the sample's status
        running[pid] = (where, script)
    pid, status = os.wait()
    where, script = running.pop(pid)
    results[where] = os.waitstatus_to_exitcode(status)
json.dump(results, sys.stdout)
"""


def _run_samples(
    codes: Mapping[str, str], directory: Path, *, seconds: int = 60
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run samples (``{name: code}``), each in a fresh process and an empty directory."""
    jobs = []
    for number, (where, code) in enumerate(codes.items()):
        sample = directory / f"sample{number}"
        sample.mkdir()
        (sample / "sample.py").write_text(code, encoding="utf-8")
        jobs.append((where, str(sample / "sample.py")))
    workers = max(2, os.cpu_count() or 1)
    runner = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps([jobs, workers, seconds]),
        capture_output=True,
        text=True,
        timeout=seconds * (1 + len(jobs) // workers) + 60,
        check=False,
    )
    assert runner.returncode == 0, f"the sample runner failed:\n{runner.stderr}"
    statuses: dict[str, int] = json.loads(runner.stdout)
    completed = {}
    for where, script in jobs:
        sample = Path(script).parent
        completed[where] = subprocess.CompletedProcess(
            args=[sys.executable, script],
            returncode=statuses[where],
            stdout=(sample / "stdout").read_text(encoding="utf-8", errors="replace"),
            stderr=(sample / "stderr").read_text(encoding="utf-8", errors="replace"),
        )
    return completed


def test_sample_runner_reports_each_samples_status_and_output(tmp_path: Path) -> None:
    codes = {
        "ok": "import pathlib\nprint('hello', len(list(pathlib.Path('.').iterdir())))\n",
        "raises": "raise ValueError('broken sample')\n",
        "exits": "import sys\nprint('partial', flush=True)\nsys.exit(3)\n",
        "hangs": "import time\ntime.sleep(60)\n",
    }
    done = _run_samples(codes, tmp_path, seconds=1)
    assert (done["ok"].returncode, done["ok"].stdout) == (0, "hello 3\n")  # its own directory
    assert done["raises"].returncode == 1
    assert "ValueError: broken sample" in done["raises"].stderr
    assert (done["exits"].returncode, done["exits"].stdout) == (3, "partial\n")
    assert done["hangs"].returncode == -signal.SIGALRM


@pytest.fixture(scope="session")
def sample_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run every selected sample once, for all the tests that check one."""
    codes: dict[str, str] = {
        item.callspec.id: str(item.callspec.params["code"])
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_python_sample_runs"
        and hasattr(item, "callspec")
    }
    return _run_samples(codes, tmp_path_factory.mktemp("samples"))


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
