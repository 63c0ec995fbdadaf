"""run_batch with a retry policy: attempts, per-attempt timeouts, the last error."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from _helpers import FAILED, SUCCEEDED
from trioflow import (
    RetryPolicy,
    run_batch,
)

pytestmark = pytest.mark.anyio


# --- retry ---------------------------------------------------------------------------------


async def test_retry_attempts_are_recorded() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        await anyio.sleep(1)
        if calls < 3:
            raise ConnectionError("reset")
        return "ok"

    async def broken() -> str:
        raise ValueError("not retried")

    policy = RetryPolicy(attempts=4, initial_delay=1, multiplier=2)
    result = await run_batch([flaky, broken], retry=policy)
    ok, bad = result.outcomes
    assert (ok.status, ok.value, ok.attempts) == (SUCCEEDED, "ok", 3)
    assert ok.duration == 1 + 1 + 1 + 2 + 1  # three tries, waits of 1 and 2 seconds
    assert (bad.status, bad.attempts) == (FAILED, 1)
    assert result.values == ("ok",)


async def test_the_timeout_applies_to_each_attempt() -> None:
    durations = iter([10, 1])

    async def slow_then_fast() -> int:
        await anyio.sleep(next(durations))
        return 7

    result = await run_batch(
        [slow_then_fast], timeout=2, retry=RetryPolicy(attempts=2, initial_delay=0.5)
    )
    (outcome,) = result.outcomes
    assert (outcome.status, outcome.value, outcome.attempts) == (SUCCEEDED, 7, 2)
    assert outcome.duration == 2 + 0.5 + 1


async def test_retries_that_run_out_record_the_last_error_and_every_attempt() -> None:
    async def down() -> None:
        await anyio.sleep(1)
        raise ConnectionError("down")

    result = await run_batch([down], retry=RetryPolicy(attempts=3, initial_delay=0))
    (outcome,) = result.outcomes
    assert outcome.status is FAILED
    assert isinstance(outcome.error, ConnectionError)
    assert outcome.attempts == 3
    assert outcome.duration == 3
