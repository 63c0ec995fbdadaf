"""Running one step's command as a child process, with its output in a log file.

The command runs in a new session (its own process group), so that a timeout or a cancelled
run can stop the whole tree the command started: SIGTERM first, then SIGKILL after a grace
period, waited for under a shielded cancel scope so that no child outlives the run.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Final, final

import anyio
import anyio.abc

from ._guard import ProcessGuard

GRACE_PERIOD: Final = 5.0
"""Seconds a terminated command gets to exit before it is killed."""


@final
class GracePeriods:
    """The grace periods of the commands being stopped, which :meth:`end` cuts short.

    A second Ctrl-C means "stop now": the commands still in their grace period are killed at
    once, and so are the ones stopped later in the same run.
    """

    def __init__(self) -> None:
        self._scopes: set[anyio.CancelScope] = set()
        self.ended = False

    @contextmanager
    def wait(self, seconds: float) -> Iterator[None]:
        """Give up waiting after ``seconds``, or at once when :meth:`end` is called.

        Args:
            seconds: The grace period.

        Yields:
            Nothing; the block is where the command is waited for.
        """
        with anyio.move_on_after(0 if self.ended else seconds) as scope:
            self._scopes.add(scope)
            try:
                yield
            finally:
                self._scopes.discard(scope)

    def end(self) -> None:
        """End every grace period, now and later in this run."""
        self.ended = True
        for scope in self._scopes:
            scope.cancel()


class CommandFailed(Exception):
    """A step's command did not succeed.

    Attributes:
        exit_code: The command's exit status, or None when it did not run or was stopped.
        retryable: Whether another attempt could help (False for a missing command).
    """

    def __init__(self, message: str, *, exit_code: int | None = None, retryable: bool = True):
        super().__init__(message)
        self.exit_code = exit_code
        self.retryable = retryable


def expand(text: str, values: Mapping[str, str], *, quote: bool = False) -> str:
    """Replace the placeholders ``{python}``, ``{run_id}``, ``{step}`` and ``{logs}``.

    Only these exact placeholders are replaced; any other braces are left alone, so shell
    code such as ``${HOME}`` or ``awk '{print $1}'`` passes through unchanged.

    Args:
        text: A command argument, shell line, environment value or directory.
        values: The placeholder names (without braces) and their values.
        quote: Quote the values for a shell command line.

    Returns:
        The text with every placeholder replaced.
    """
    for name, value in values.items():
        text = text.replace("{" + name + "}", shlex.quote(value) if quote else value)
    return text


def placeholders(*, run_id: str, step: str, logs: Path) -> dict[str, str]:
    """Return the placeholder values of one step of one run.

    Args:
        run_id: The run's id.
        step: The step's name.
        logs: The run's log directory.

    Returns:
        The mapping to give to :func:`expand`.
    """
    return {
        "python": sys.executable,
        "run_id": run_id,
        "step": step,
        "logs": str(logs.resolve()),
    }


def describe_command(command: Sequence[str] | str) -> str:
    """Show a command the way a shell user would type it.

    Args:
        command: An argument list or a shell command line.

    Returns:
        The shell line as it is, or the arguments quoted and joined.
    """
    return command if isinstance(command, str) else shlex.join(command)


def describe_exit(code: int) -> str:
    """Describe a non-zero exit status the way a shell user would read it.

    Args:
        code: The return code (negative: killed by that signal).

    Returns:
        E.g. ``"exit status 2"`` or ``"killed by signal SIGKILL"``.
    """
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == 127:
        return "exit status 127 (command not found)"
    return f"exit status {code}"


def _check_program(program: str, cwd: Path, env: Mapping[str, str]) -> None:
    if os.sep in program or (os.altsep and os.altsep in program):
        candidate = cwd / program
        if not candidate.exists():
            raise CommandFailed(f"command not found: {program}", retryable=False)
        if candidate.is_dir() or not os.access(candidate, os.X_OK):
            raise CommandFailed(f"permission denied: {program}", retryable=False)
    elif shutil.which(program, path=env.get("PATH", os.defpath)) is None:
        raise CommandFailed(f"command not found: {program}", retryable=False)


def _prepare(
    command: Sequence[str] | str, cwd: Path, env: Mapping[str, str], log_path: Path, header: str
) -> IO[bytes]:
    """Check the working directory and the program, then open the log (in a worker thread)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    problem: CommandFailed | None = None
    if not cwd.is_dir():
        problem = CommandFailed(f"working directory not found: {cwd}", retryable=False)
    elif not isinstance(command, str):
        try:
            _check_program(command[0], cwd, env)
        except CommandFailed as exc:
            problem = exc
    log = log_path.open("ab")
    log.write(header.encode())
    if problem is not None:
        log.write(f"{problem}\n".encode())
        log.close()
        raise problem
    log.flush()
    return log


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as log:
        log.write(text)


def _signal_group(process: anyio.abc.Process, signum: int) -> None:
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signum)  # the command leads its own session
        elif signum == signal.SIGTERM:  # pragma: no cover - Windows
            process.terminate()
        else:  # pragma: no cover - Windows
            process.kill()
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty (a member that changed its uid is not ours to stop)


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` is still running.

    On Linux, zombies (exited, not yet reaped by their parent) do not count: an orphan that
    died is reaped by init, which in a container may never happen, and it holds nothing.

    Args:
        pgid: The process group's id (the pid of the step's command, which leads it).

    Returns:
        True while a member of the group runs.
    """
    if not hasattr(os, "killpg"):  # pragma: no cover - Windows has no process groups
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux: every member counts
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


_POLL = 0.05
"""Seconds between two looks at a process group whose leader has exited."""

_KILL_WAIT = 5.0
"""Seconds to wait for killed members to be gone (a process in the kernel may take a while)."""


async def _stop(process: anyio.abc.Process, grace: float, periods: GracePeriods) -> str:
    """Stop the command's whole process group: SIGTERM, then SIGKILL after ``grace`` seconds.

    The group is killed when any member is still running at the end of the grace period, not
    only the command itself: a child that ignores SIGTERM must not outlive its step.

    Returns:
        How it ended, for the log: ``"terminated"``, or ``"killed after N s grace"``.
    """
    with anyio.CancelScope(shield=True):
        _signal_group(process, signal.SIGTERM)
        with periods.wait(grace):
            await process.wait()
            await _group_exit(process.pid)
        if process.returncode is None or await anyio.to_thread.run_sync(group_alive, process.pid):
            _signal_group(process, signal.SIGKILL)
            await process.wait()
            with anyio.move_on_after(_KILL_WAIT):  # SIGKILL is not instant, but cannot be caught
                await _group_exit(process.pid)
            return f"killed after {grace:g} s grace"
    return "terminated"


async def _group_exit(pgid: int) -> None:
    # No event tells when the last member of a process group exits: look every _POLL seconds.
    while await anyio.to_thread.run_sync(group_alive, pgid):  # noqa: ASYNC110
        await anyio.sleep(_POLL)


async def run_command(
    command: Sequence[str] | str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    timeout: float | None = None,  # noqa: ASYNC109 - a cancel scope at once, see below
    grace: float = GRACE_PERIOD,
    grace_periods: GracePeriods | None = None,
    guard: ProcessGuard | None = None,
    attempt: int = 1,
) -> None:
    """Run one attempt of a step's command and wait for it.

    The output (stdout and stderr together) is appended to ``log_path``, after a header line
    with the command; a footer line records how it ended. If the caller is cancelled, the
    command's process group is terminated (and killed after ``grace`` seconds) before the
    cancellation propagates.

    Args:
        command: An argument list (run without a shell) or a shell command line.
        cwd: The working directory.
        env: The complete environment of the command.
        log_path: The log file to append the output to.
        timeout: Seconds the attempt may take, or None.
        grace: Seconds a terminated command gets before it is killed.
        grace_periods: Where the run can cut the grace period short (a second Ctrl-C).
        guard: The run's watchdog, which stops the command's process group if trioflow dies.
        attempt: The attempt number, for the log header.

    Raises:
        CommandFailed: The command is missing, exited with a non-zero status, was killed by a
            signal, or timed out.
    """
    shown = describe_command(command)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    header = f"--- {stamp} attempt {attempt}: {shown}\n"
    log = await anyio.to_thread.run_sync(_prepare, command, cwd, env, log_path, header)
    try:
        process = await anyio.open_process(
            command if isinstance(command, str) else list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    except FileNotFoundError:
        raise CommandFailed(f"command not found: {command[0]}", retryable=False) from None
    except PermissionError:
        raise CommandFailed(f"permission denied: {command[0]}", retryable=False) from None
    finally:
        log.close()  # the child holds its own descriptor

    if guard is not None:
        guard.watch(process.pid)
    try:
        await _wait(process, log_path, timeout, grace, grace_periods)
    finally:
        if guard is not None:
            guard.release(process.pid)


async def _wait(
    process: anyio.abc.Process,
    log_path: Path,
    timeout: float | None,  # noqa: ASYNC109 - a cancel scope at once
    grace: float,
    grace_periods: GracePeriods | None,
) -> None:
    periods = GracePeriods() if grace_periods is None else grace_periods
    timed_out = False
    try:
        with anyio.move_on_after(timeout) as scope:
            await process.wait()
        timed_out = scope.cancelled_caught
    except anyio.get_cancelled_exc_class():
        ending = await _stop(process, grace, periods)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_append, log_path, f"--- cancelled: {ending}\n")
        raise
    if timed_out:
        # Stopped (the whole group) before the attempt fails: a retry never overlaps it.
        ending = await _stop(process, grace, periods)
        message = f"timed out after {timeout:g}s"
        await anyio.to_thread.run_sync(_append, log_path, f"--- {message}: {ending}\n")
        raise CommandFailed(message)
    code = process.returncode
    assert code is not None
    ending = "exit status 0" if code == 0 else describe_exit(code)
    await anyio.to_thread.run_sync(_append, log_path, f"--- {ending}\n")
    if code != 0:
        raise CommandFailed(ending, exit_code=code)


def tail(path: Path, lines: int) -> list[str]:
    """Return the last lines of a log file (an empty list if it does not exist).

    Args:
        path: The log file.
        lines: How many lines at most.

    Returns:
        The lines, without their line endings.
    """
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - 64 * 1024))
            data = log.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


def log_size(path: Path) -> int:
    """Return how many bytes a log file holds now (0 if it does not exist).

    Args:
        path: The log file.

    Returns:
        Its size: where the next attempt's output starts.
    """
    try:
        return path.stat().st_size
    except OSError:
        return 0


def attempt_output(path: Path, start: int) -> list[str]:
    """Return the output of the attempt written to a log file from ``start`` on.

    Args:
        path: The log file.
        start: Its size before the attempt (:func:`log_size`).

    Returns:
        The command's lines, without trioflow's header and footer lines; empty if there are
        none or the file cannot be read.
    """
    try:
        with path.open("rb") as log:
            log.seek(start)
            data = log.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if lines and lines[0].startswith("--- "):
        lines = lines[1:]  # "--- <time> attempt N: <command>"
    if lines and lines[-1].startswith("--- "):
        lines = lines[:-1]  # "--- exit status 0", "--- timed out after 2s: ..."
    return lines


def last_output_line(path: Path) -> str:
    """Return the last line a running command wrote to its log, for the live view.

    Args:
        path: The log file.

    Returns:
        The line (stripped), or ``""`` when the command wrote nothing yet since its header
        (or the file cannot be read).
    """
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - 4096))
            data = log.read()
    except OSError:
        return ""
    for line in reversed(data.decode("utf-8", "replace").splitlines()):
        if line.strip():
            return "" if line.startswith("--- ") else line.strip()
    return ""
