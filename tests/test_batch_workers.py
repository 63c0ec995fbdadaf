"""in_process / in_thread with real processes and threads, and the demo."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import anyio
import psutil  # type: ignore[import-untyped]
import pytest

from trioflow import OutcomeStatus, in_process, in_thread, run_batch
from trioflow.cli._demo import main as demo_main

pytestmark = pytest.mark.anyio


@pytest.mark.real_time
async def test_a_cpu_bound_batch_runs_in_worker_processes() -> None:
    # A stdlib function: the worker processes need not import this test module.
    salts = [b"salt-1", b"salt-2", b"salt-3", b"salt-4"]
    ops = [in_process(hashlib.pbkdf2_hmac, "sha256", b"secret", salt, 20_000) for salt in salts]
    result = await run_batch(ops, limit=2)
    assert result.values == tuple(
        hashlib.pbkdf2_hmac("sha256", b"secret", salt, 20_000) for salt in salts
    )
    assert result.succeeded == 4


@pytest.mark.real_time
async def test_cancelling_an_in_process_operation_kills_its_process() -> None:
    # A first call leaves one idle worker process in anyio's pool, and tells us its pid; the
    # next call reuses it.
    warm_up = await run_batch([in_process(os.getpid)])
    (pid,) = warm_up.values
    assert pid != os.getpid()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_batch, [in_process(time.sleep, 60)])
        await anyio.wait_all_tasks_blocked()  # the call is sent; the batch awaits the result
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        tg.cancel_scope.cancel()
    with anyio.fail_after(30):  # a guard against hanging, not a timing assertion
        while psutil.pid_exists(pid):
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            await anyio.sleep(0.01)


@pytest.mark.real_time
async def test_in_thread_runs_blocking_calls_in_worker_threads() -> None:
    main_thread = threading.get_ident()
    result = await run_batch([in_thread(threading.get_ident), in_thread(sum, [1, 2, 3])])
    thread, total = result.values
    assert thread != main_thread
    assert total == 6


@pytest.mark.real_time
async def test_an_exception_in_a_thread_is_the_operations_failure() -> None:
    result = await run_batch([in_thread(int, "not a number")])
    (outcome,) = result.outcomes
    assert outcome.status is OutcomeStatus.FAILED
    assert isinstance(outcome.error, ValueError)


def test_in_process_and_in_thread_need_a_callable() -> None:
    with pytest.raises(TypeError, match="fn must be a callable, got 3"):
        in_process(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fn must be a callable, got 'x'"):
        in_thread("x")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_the_demo_runs(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_main(["--virtual", "--backend", backend]) == 0
    out = capsys.readouterr().out
    assert out.startswith("trioflow demo: 12 downloads, at most 4 at once, timeout 1 s each\n")
    assert out.count("done ") == 12
    assert "epsilon.csv  failed     1.0s  TimeoutError" in out
    assert "eta.csv      failed     0.2s  ConnectionResetError" in out
    assert out.rstrip().endswith(
        "10 succeeded, 2 failed, 0 cancelled in 1.8 s (one at a time: 6.6 s)"
    )


@pytest.mark.real_time
@pytest.mark.parametrize("limit", [1, None])
async def test_durations_on_the_real_clock(limit: int | None) -> None:
    async def nap() -> None:
        await anyio.sleep(0.02)

    result = await run_batch([nap, nap], limit=limit, timeout=None)
    assert all(o.duration >= 0.015 for o in result.outcomes)
    assert result.duration >= max(o.duration for o in result.outcomes) - 1e-6
    if limit == 1:
        assert result.duration >= sum(o.duration for o in result.outcomes) - 1e-6
