"""A watchdog process that stops every step's process group if trioflow itself dies.

Each step's command leads a session of its own (so that stopping it stops everything it
started), which also means nothing stops it when the trioflow that started it is killed with
SIGKILL. A parent-death signal (Linux's ``PR_SET_PDEATHSIG``) does not help: it reaches only
the direct child, and it fires when the *thread* that forked the child ends; trio forks from a
worker thread that ends when it has been idle for a while.

So ``trioflow run`` starts one small watchdog for the run: a Python process in a session of its
own that reads, from a pipe only trioflow holds, which process groups are running (``+PGID``) and
which have ended (``-PGID``). When trioflow exits normally it says ``exit`` first. When the pipe
reaches its end without ``exit``, trioflow died: the watchdog sends each group still registered
SIGTERM, and SIGKILL after the grace period. The kernel closes the pipe however trioflow ends,
so this holds for SIGKILL and for crashes alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import IO, final

import anyio

__all__ = ("ProcessGuard", "open_guard")

_WATCHDOG = """
import os, signal, sys, time

signal.signal(signal.SIGINT, signal.SIG_IGN)
grace = float(sys.argv[1])
groups = set()
for line in sys.stdin.buffer:
    word = line.strip()
    if word == b"exit":
        sys.exit(0)
    if word[:1] == b"+":
        groups.add(int(word[1:]))
    elif word[:1] == b"-":
        groups.discard(int(word[1:]))


def signal_all(signum):
    alive = set()
    for group in groups:
        try:
            os.killpg(group, signum)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        alive.add(group)
    return alive


groups = signal_all(signal.SIGTERM)
deadline = time.monotonic() + grace
while groups and time.monotonic() < deadline:
    time.sleep(0.05)
    groups = signal_all(0)
signal_all(signal.SIGKILL)
"""


@final
class ProcessGuard:
    """The trioflow side of the watchdog: registers the process groups of running steps."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe

    def watch(self, pgid: int) -> None:
        """Register a step's process group: the watchdog stops it if trioflow dies.

        Args:
            pgid: The group's id (the pid of the command, which leads its own session).
        """
        self._send(f"+{pgid}\n")

    def release(self, pgid: int) -> None:
        """Unregister a process group whose command has ended.

        Args:
            pgid: The group's id, as given to :meth:`watch`.
        """
        self._send(f"-{pgid}\n")

    def _send(self, line: str) -> None:
        # A few bytes into a pipe the watchdog drains at once: this never blocks in practice.
        try:
            self._pipe.write(line.encode())
            self._pipe.flush()
        except (BrokenPipeError, ValueError):
            pass  # the watchdog is gone (killed by someone); the run goes on without it


@asynccontextmanager
async def open_guard(grace: float) -> AsyncIterator[ProcessGuard]:
    """Start the watchdog for the block; on leaving, tell it to exit without stopping anything.

    Args:
        grace: Seconds the watchdog gives the groups between SIGTERM and SIGKILL.

    Yields:
        The guard to register step processes with.
    """
    process = await anyio.to_thread.run_sync(_spawn, grace)
    assert process.stdin is not None
    try:
        yield ProcessGuard(process.stdin)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_finish, process)


def _spawn(grace: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-I", "-c", _WATCHDOG, f"{grace:g}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the terminal's Ctrl-C and SIGHUP are for trioflow, not it
        cwd=os.sep,
    )


def _finish(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    try:
        process.stdin.write(b"exit\n")
        process.stdin.close()
    except (BrokenPipeError, ValueError):
        pass
    process.wait()
