from __future__ import annotations

import anyio
import pytest

import trioflow


def test_every_error_derives_from_the_one_base() -> None:
    errors = [
        obj
        for name in trioflow.__all__
        if isinstance(obj := getattr(trioflow, name), type) and issubclass(obj, BaseException)
    ]
    assert errors
    assert [e.__name__ for e in errors if not issubclass(e, trioflow.TrioflowError)] == []


def test_circuit_open_error_retry_after_outside_a_loop_is_zero() -> None:
    assert trioflow.CircuitOpenError("open", retry_at=5.0).retry_after == 0.0


@pytest.mark.anyio
async def test_a_retry_waits_until_the_breaker_half_opens() -> None:
    breaker = trioflow.CircuitBreaker(failure_threshold=1, reset_timeout=10)
    policy = trioflow.RetryPolicy(attempts=3, initial_delay=0, on=(trioflow.CircuitOpenError,))
    calls: list[float] = []

    async def flaky() -> str:
        calls.append(anyio.current_time())
        if len(calls) == 1:
            raise ConnectionError("down")
        return "up"

    with pytest.raises(ConnectionError):
        await breaker.call(flaky)
    assert breaker.statistics().state is trioflow.CircuitState.OPEN
    assert await policy.call(breaker.call, flaky) == "up"
    # The open breaker refused at t=0; its retry_after made the retry wait for the half-open.
    assert calls == [0.0, 10.0]
    assert anyio.current_time() == 10.0
