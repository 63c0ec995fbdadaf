"""Running a step's command: exit statuses, missing commands, logs, timeouts and cancellation.

Real processes on the real clock, on trio and on asyncio.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import anyio
import pytest

from _helpers import alive
from trioflow.cli._steps import (
    CommandFailed,
    GracePeriods,
    describe_command,
    describe_exit,
    expand,
    placeholders,
    run_command,
    tail,
)
from trioflow.testing import virtual_time_backends

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]

PY = sys.executable


def env() -> dict[str, str]:
    return dict(os.environ)


async def test_output_goes_to_the_log_with_a_header_and_a_footer(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "a.log"
    code = "import sys; print('out'); print('err', file=sys.stderr)"
    await run_command([PY, "-c", code], cwd=tmp_path, env=env(), log_path=log, attempt=2)
    lines = log.read_text().splitlines()
    assert lines[0].startswith("--- ")
    assert lines[0].endswith(f" attempt 2: {describe_command([PY, '-c', code])}")
    assert sorted(lines[1:3]) == ["err", "out"]
    assert lines[3:] == ["--- exit status 0"]


async def test_a_non_zero_exit_fails_with_the_status(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    with pytest.raises(CommandFailed) as info:
        await run_command("exit 3", cwd=tmp_path, env=env(), log_path=log)
    assert str(info.value) == "exit status 3"
    assert (info.value.exit_code, info.value.retryable) == (3, True)
    assert tail(log, 1) == ["--- exit status 3"]


async def test_a_missing_command_is_named_and_not_retryable(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    with pytest.raises(CommandFailed) as info:
        await run_command(["no-such-cmd-trioflow", "x"], cwd=tmp_path, env=env(), log_path=log)
    assert str(info.value) == "command not found: no-such-cmd-trioflow"
    assert info.value.retryable is False
    assert tail(log, 1) == ["command not found: no-such-cmd-trioflow"]
    with pytest.raises(CommandFailed, match=r"^command not found: \./nope\.sh$"):
        await run_command(["./nope.sh"], cwd=tmp_path, env=env(), log_path=log)
    (tmp_path / "script.sh").write_text("#!/bin/sh\necho hi\n")  # not executable
    with pytest.raises(CommandFailed, match=r"^permission denied: \./script\.sh$"):
        await run_command(["./script.sh"], cwd=tmp_path, env=env(), log_path=log)


async def test_a_shell_command_that_is_not_found_exits_127(tmp_path: Path) -> None:
    log = tmp_path / "d.log"
    with pytest.raises(CommandFailed, match=r"^exit status 127 \(command not found\)$"):
        await run_command("no-such-cmd-trioflow", cwd=tmp_path, env=env(), log_path=log)


async def test_a_missing_working_directory(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match=r"^working directory not found: ") as info:
        await run_command([PY, "-V"], cwd=tmp_path / "nope", env=env(), log_path=tmp_path / "l")
    assert info.value.retryable is False


async def test_environment_and_working_directory_reach_the_command(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    log = tmp_path / "e.log"
    code = "import os; print(os.environ['GREETING'], os.path.basename(os.getcwd()))"
    await run_command(
        [PY, "-c", code], cwd=tmp_path / "sub", env={**env(), "GREETING": "hi"}, log_path=log
    )
    assert "hi sub" in log.read_text().splitlines()


async def test_a_timeout_terminates_the_process_group(tmp_path: Path) -> None:
    # The shell starts a grandchild; stopping the group stops both.
    log = tmp_path / "f.log"
    script = (
        f'{PY} -c \'import os, time; open("pid", "w").write(str(os.getpid())); time.sleep(30)\''
    )
    with pytest.raises(CommandFailed, match=r"^timed out after 1s$") as info:
        await run_command(script, cwd=tmp_path, env=env(), log_path=log, timeout=1)
    assert info.value.retryable is True
    # The grandchild got SIGTERM with its group; give it a moment to finish exiting.
    grandchild = int((tmp_path / "pid").read_text())
    with anyio.fail_after(10):
        while alive(grandchild):
            await anyio.sleep(0.02)
    assert tail(log, 1) == ["--- timed out after 1s: terminated"]


async def test_cancellation_kills_a_command_that_ignores_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "g.log"
    code = (
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open('pid', 'w').write(str(os.getpid())); time.sleep(30)"
    )
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(
                    run_command, [PY, "-c", code], cwd=tmp_path, env=env(), log_path=log, grace=0.2
                )
            )
            while not (tmp_path / "pid").exists():
                await anyio.sleep(0.02)
            scope.cancel()
    assert scope.cancelled_caught
    assert not alive(int((tmp_path / "pid").read_text()))
    assert tail(log, 1) == ["--- cancelled: killed after 0.2 s grace"]


# A shell whose background child ignores SIGTERM: the shell (the group's leader) dies of
# SIGTERM at once, the grandchild only of SIGKILL.
STUBBORN_GRANDCHILD = (
    f"{PY} -c 'import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    'open("grandchild", "w").write(str(os.getpid())); time.sleep(60)\' & '
    "while [ ! -s grandchild ]; do sleep 0.01; done; echo ready > ready; wait"
)


async def test_a_timeout_kills_a_grandchild_that_ignores_sigterm_before_it_fails(
    tmp_path: Path,
) -> None:
    log = tmp_path / "t.log"
    with pytest.raises(CommandFailed, match=r"^timed out after 1s$"):
        await run_command(
            STUBBORN_GRANDCHILD, cwd=tmp_path, env=env(), log_path=log, timeout=1, grace=0.3
        )
    # Dead when run_command returns, so a retry can never overlap it.
    assert not alive(int((tmp_path / "grandchild").read_text()))
    assert tail(log, 1) == ["--- timed out after 1s: killed after 0.3 s grace"]


async def test_cancellation_kills_a_grandchild_that_outlives_its_leader(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(
                    run_command,
                    STUBBORN_GRANDCHILD,
                    cwd=tmp_path,
                    env=env(),
                    log_path=log,
                    grace=0.3,
                )
            )
            while not (tmp_path / "ready").exists():
                await anyio.sleep(0.02)
            scope.cancel()
    assert not alive(int((tmp_path / "grandchild").read_text()))
    assert tail(log, 1) == ["--- cancelled: killed after 0.3 s grace"]


async def test_a_group_that_exits_on_sigterm_is_terminated_not_killed(tmp_path: Path) -> None:
    log = tmp_path / "k.log"
    script = f"{PY} -c 'import time; time.sleep(60)' & echo started > ready; wait"
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(
                    run_command, script, cwd=tmp_path, env=env(), log_path=log, grace=30
                )
            )
            while not (tmp_path / "ready").exists():
                await anyio.sleep(0.02)
            scope.cancel()
    assert tail(log, 1) == ["--- cancelled: terminated"]


def test_ending_the_grace_periods_cuts_current_and_later_ones_short() -> None:
    async def main() -> None:
        periods = GracePeriods()
        ended_at: list[float] = []

        async def stopping() -> None:
            with periods.wait(30):
                await anyio.sleep(100)  # a command that does not exit
            ended_at.append(anyio.current_time())

        async with anyio.create_task_group() as tg:
            tg.start_soon(stopping)
            tg.start_soon(stopping)
            await anyio.sleep(2)
            periods.end()  # the second Ctrl-C
        assert ended_at == [2, 2]
        with periods.wait(30):
            await anyio.sleep(100)
        assert anyio.current_time() == 2  # a later stop does not wait either
        with GracePeriods().wait(30):
            await anyio.sleep(100)
        assert anyio.current_time() == 32  # without end(): the whole grace period

    for backend, options in virtual_time_backends():
        anyio.run(main, backend=backend, backend_options=options)


def test_placeholders_are_expanded_and_other_braces_kept(tmp_path: Path) -> None:
    values = placeholders(run_id="r1", step="build", logs=tmp_path)
    assert values == {
        "python": sys.executable,
        "run_id": "r1",
        "step": "build",
        "logs": str(tmp_path.resolve()),
    }
    assert expand("{python} x {run_id}/{step}.txt ${HOME} {other}", values) == (
        f"{sys.executable} x r1/build.txt ${{HOME}} {{other}}"
    )
    spaced = {"logs": "/a dir/x"}
    assert expand("ls {logs}", spaced, quote=True) == "ls '/a dir/x'"
    assert expand("{logs}", spaced) == "/a dir/x"


def test_describe_exit() -> None:
    assert describe_exit(1) == "exit status 1"
    assert describe_exit(127) == "exit status 127 (command not found)"
    assert describe_exit(-9) == "killed by signal SIGKILL"
    assert describe_exit(-200) == "killed by signal 200"


def test_tail_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert tail(tmp_path / "nope.log", 5) == []
    (tmp_path / "x.log").write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(tmp_path / "x.log", 2) == ["line 98", "line 99"]
