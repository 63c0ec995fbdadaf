"""``trioflow watch``: a real watcher process, real file changes, SIGINT."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from test_cli import project, write
from trioflow.cli._spec import parse_spec
from trioflow.cli._watch import watched_directories

__all__ = ("project",)  # the fixture, used by name

_WORKFLOW = """
[steps.compile]
shell = "echo x >> compile.count"
sources = ["a/*.txt"]

[steps.check]
shell = "echo x >> check.count"
sources = ["b/*.txt"]

[steps.link]
shell = "echo x >> link.count"
after = ["compile"]

[steps.slow]
shell = "echo x >> slow.count; while ! test -f go; do sleep 0.05; done"
sources = ["s/*.txt"]
"""


def _count(project: Path, name: str) -> int:
    path = project / f"{name}.count"
    return len(path.read_text().splitlines()) if path.exists() else 0


class _Lines:
    """Reads a process's output in a thread, so that a test can wait for a line."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        stream = process.stdout
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} in:\n{''.join(self.seen)}") from None
            self.seen.append(line)
            if text in line:
                return


def _wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_watched_directories_hold_none_inside_another(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path.parent / "elsewhere").mkdir(exist_ok=True)
    spec = parse_spec(
        """
        [steps.a]
        run = ["x"]
        sources = ["*.txt"]
        cwd = "sub"

        [steps.b]
        run = ["x"]
        sources = ["*.txt"]
        cwd = "../elsewhere"
        """,
        path=tmp_path / "wf.toml",
    )
    assert watched_directories(spec) == sorted([tmp_path, (tmp_path.parent / "elsewhere")])


@pytest.mark.real_time
def test_watch_reruns_what_a_change_affects_restarts_a_run_and_exits_130(project: Path) -> None:
    for directory, name in (("a", "x"), ("b", "y"), ("s", "z")):
        (project / directory).mkdir()
        (project / directory / f"{name}.txt").write_text("1\n")
    write(project, _WORKFLOW)
    process = subprocess.Popen(
        [sys.executable, "-m", "trioflow", "watch", "wf.toml", "--debounce", "0.1"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "COLUMNS"},
    )
    lines = _Lines(process)
    try:
        # The first run runs every step; 'slow' waits for the file 'go'.
        _wait_until(lambda: _count(project, "slow") == 1 and _count(project, "link") == 1)
        # A change during the run: 'slow' is stopped and started again.
        (project / "s" / "z.txt").write_text("2\n")
        lines.wait_for("changes during the run: running slow again")
        (project / "go").touch()
        lines.wait_for("watching ")
        assert _count(project, "slow") == 2
        counts = {n: _count(project, n) for n in ("compile", "check", "link")}
        assert counts == {"compile": 1, "check": 1, "link": 1}

        # A change to compile's sources: compile and what comes after it run, check does not.
        (project / "a" / "x.txt").write_text("2\n")
        lines.wait_for("sources changed: running compile, link")
        lines.wait_for("watching ")
        counts = {n: _count(project, n) for n in ("compile", "check", "link", "slow")}
        assert counts == {"compile": 2, "check": 1, "link": 2, "slow": 2}

        # A file no step reads changes nothing.
        (project / "notes.md").write_text("hello\n")
        (project / "b" / "y.txt").write_text("2\n")
        lines.wait_for("sources changed: running check")
        lines.wait_for("watching ")
        assert _count(project, "check") == 2

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        lines.thread.join(timeout=10)
        while not lines.lines.empty():
            lines.seen.append(lines.lines.get())
        output = "".join(lines.seen)
        assert "SIGINT: stopping" in output
        assert "Traceback" not in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        lines.thread.join(timeout=10)
        process.stdout.close()


def test_watchfiles_is_imported_only_by_the_watch_command() -> None:
    code = (
        "import sys, trioflow, trioflow.cli, trioflow.cli._app; "
        "assert 'watchfiles' not in sys.modules, 'watchfiles imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
