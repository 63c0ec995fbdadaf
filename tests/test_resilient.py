from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import anyio
import pytest

from trioflow import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Context,
    KeyedRateLimiter,
    RetryPolicy,
    TokenBucket,
    Workflow,
    resilient,
    run_batch,
    run_workflow,
)

pytestmark = pytest.mark.anyio


class Flaky:
    """Call i sleeps plan[i][0] seconds, then returns or raises plan[i][1]."""

    def __init__(self, *plan: tuple[float, object]) -> None:
        self.plan = list(plan)
        self.starts: list[float] = []

    async def __call__(self, suffix: str = "") -> str:
        index = len(self.starts)
        self.starts.append(anyio.current_time())
        seconds, outcome = self.plan[min(index, len(self.plan) - 1)]
        await anyio.sleep(seconds)
        if isinstance(outcome, BaseException):
            raise outcome
        return f"{outcome}{suffix}"


async def test_no_strategies_is_a_plain_call_with_the_same_signature() -> None:
    async def fetch(url: str, *, retries: int = 0) -> str:
        return f"{url}:{retries}"

    wrapped = resilient(fetch)
    assert await wrapped("a", retries=2) == "a:2"
    assert wrapped is not fetch
    assert wrapped.__name__ == "fetch"
    assert inspect.signature(wrapped) == inspect.signature(fetch)
    assert inspect.iscoroutinefunction(wrapped)


async def test_timeout_is_per_attempt_and_retried() -> None:
    fn = Flaky((10, "slow"), (0.5, "fast"))
    wrapped = resilient(fn, timeout=1, retry=RetryPolicy(attempts=2, initial_delay=0))
    assert await wrapped("!") == "fast!"
    assert fn.starts == [0, 1]
    assert anyio.current_time() == 1.5


async def test_the_rate_limit_is_charged_per_attempt() -> None:
    fn = Flaky((0, ConnectionError()), (0, ConnectionError()), (0, "ok"))
    bucket = TokenBucket(rate=1, burst=1)
    wrapped = resilient(fn, rate=bucket, retry=RetryPolicy(attempts=3, initial_delay=0.25))
    assert await wrapped() == "ok"
    # Each retry waits for its own token: 0, then 1 and 2 (not 0.25 and 0.5).
    assert fn.starts == [0, 1, 2]
    assert bucket.statistics().acquired == 3


async def test_an_opening_breaker_stops_the_retries() -> None:
    fn = Flaky((0, ConnectionError("down")))
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=60)
    wrapped = resilient(fn, breaker=breaker, retry=RetryPolicy(attempts=5, initial_delay=1))
    with pytest.raises(CircuitOpenError):
        await wrapped()
    assert fn.starts == [0, 1]  # the third attempt was refused by the open circuit
    assert breaker.state is CircuitState.OPEN


async def test_the_breaker_counts_a_hedged_attempt_once() -> None:
    fn = Flaky((1, ConnectionError("a")), (1, ConnectionError("b")), (0.1, "third"))
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=60)
    wrapped = resilient(fn, breaker=breaker, hedge=0.5, hedge_attempts=2)
    with pytest.raises(ExceptionGroup) as info:
        await wrapped()
    assert [str(e) for e in info.value.exceptions] == ["a", "b"]
    stats = breaker.statistics()
    assert (stats.failures, stats.consecutive_failures, stats.state) == (1, 1, CircuitState.CLOSED)
    assert await wrapped() == "third"
    assert breaker.statistics().consecutive_failures == 0


async def test_hedged_calls_take_a_token_each() -> None:
    fn = Flaky((5, "first"), (1, "second"))
    bucket = TokenBucket(rate=1, burst=1)
    wrapped = resilient(fn, rate=bucket, hedge=0.5)
    assert await wrapped() == "second"
    # The backup was due at 0.5 but waited for a token until 1.0.
    assert fn.starts == [0, 1]
    assert anyio.current_time() == 2


async def test_a_keyed_limiter_throttles_each_key_on_its_own() -> None:
    served: list[tuple[str, float]] = []

    async def ask(user: str, prompt: str) -> str:
        served.append((user, anyio.current_time()))
        return f"{prompt} for {user}"

    limiter: KeyedRateLimiter[tuple[str, str]] = KeyedRateLimiter(rate=1, burst=2)
    wrapped = resilient(ask, rate=limiter, rate_key=lambda user, prompt: (user, "llm"))

    async def hi(user: str) -> None:
        await wrapped(user, "hi")

    async with anyio.create_task_group() as tg:
        for user in ("alice", "alice", "alice", "bob"):
            tg.start_soon(hi, user)
    assert await wrapped("bob", "again") == "again for bob"
    # alice's third call waits a second for her bucket; bob's is served at once, as is his
    # second call (made at t=1, after the group).
    assert sorted(served) == [("alice", 0), ("alice", 0), ("alice", 1), ("bob", 0), ("bob", 1)]
    assert limiter.statistics().keys == 2


async def test_timeout_does_not_count_the_wait_for_a_token() -> None:
    fn = Flaky((0.5, "ok"))
    bucket = TokenBucket(rate=0.5, burst=1)
    wrapped = resilient(fn, rate=bucket, timeout=1)
    assert await wrapped() == "ok"
    assert await wrapped() == "ok"  # waited 1.5 s for a token, then ran 0.5 s: no timeout
    assert fn.starts == [0, 2]


async def test_fallback_gets_what_escaped_everything_else() -> None:
    seen: list[BaseException] = []

    async def cached(exc: Exception) -> str:
        seen.append(exc)
        return "cached"

    fn = Flaky((0, ConnectionError("down")))
    wrapped = resilient(fn, retry=RetryPolicy(attempts=2, initial_delay=0), fallback=cached)
    assert await wrapped() == "cached"
    assert len(fn.starts) == 2
    assert [type(e) for e in seen] == [ConnectionError]


async def test_fallback_never_sees_cancellation() -> None:
    async def cached(exc: Exception) -> str:
        raise AssertionError("fallback must not run on cancellation")

    wrapped = resilient(Flaky((10, "slow")), fallback=cached)
    with anyio.move_on_after(1) as scope:
        await wrapped()
    assert scope.cancelled_caught


async def test_usable_as_a_batch_operation() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=60)

    async def op() -> int:
        await anyio.sleep(1)
        return 7

    wrapped = resilient(op, breaker=breaker, timeout=5)
    result = await run_batch([wrapped] * 4, limit=2)
    assert result.values == (7, 7, 7, 7)
    assert anyio.current_time() == 2
    assert breaker.statistics().successes == 4


async def test_usable_as_a_workflow_step() -> None:
    attempts = 0

    async def step(ctx: Context) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("blip")
        return 41 + len(ctx.results)

    wf = Workflow("wf")
    wf.step("answer", resilient(step, retry=RetryPolicy(attempts=2, initial_delay=1)))
    result = await run_workflow(wf)
    assert result.ok
    assert result.context.results["answer"] == 41
    assert attempts == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"rate": 5}, TypeError, "rate must be a TokenBucket, a KeyedRateLimiter or None, got 5"),
        (
            {"rate": KeyedRateLimiter(1, 1)},
            TypeError,
            "rate_key must be a callable taking fn's arguments when rate is a KeyedRateLimiter",
        ),
        (
            {"rate": KeyedRateLimiter(1, 1), "rate_key": "user"},
            TypeError,
            "rate_key must be a callable .* got 'user'",
        ),
        (
            {"rate": TokenBucket(1, 1), "rate_key": lambda: "k"},
            TypeError,
            "rate_key needs rate to be a KeyedRateLimiter, got rate=TokenBucket",
        ),
        ({"breaker": "b"}, TypeError, "breaker must be a CircuitBreaker or None"),
        ({"retry": 3}, TypeError, "retry must be a RetryPolicy or None"),
        (
            {"timeout": -1},
            ValueError,
            r"timeout must be a number of seconds >= 0 or None \(no deadline\), got -1 \(int\)",
        ),
        ({"timeout": math.nan}, ValueError, "timeout must be .* got nan"),
        ({"hedge": -0.5}, ValueError, "hedge must be a finite number >= 0, got -0.5"),
        ({"hedge": 1, "hedge_attempts": 0}, ValueError, "hedge_attempts must be an int >= 1"),
        ({"fallback": "x"}, TypeError, "fallback must be an async callable or None"),
    ],
)
def test_bad_arguments_are_rejected_at_wrapping_time(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    async def fn() -> None:
        pass

    with pytest.raises(error, match=message):
        resilient(fn, **kwargs)


def test_fn_must_be_callable() -> None:
    with pytest.raises(TypeError, match="fn must be an async callable"):
        resilient(3)  # type: ignore[arg-type]


# --- async callables ---------------------------------------------------------------------------


def test_resilient_refuses_a_plain_def_function_at_decoration() -> None:
    def save() -> int:
        return 1

    async def fetch() -> int:
        return 1

    with pytest.raises(TypeError, match=r"^fn must be an async callable, got <function"):
        resilient(save)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^fallback must be an async callable or None, got"):
        resilient(fetch, fallback=functools.partial(save))  # type: ignore[arg-type]


@pytest.mark.parametrize("strategies", ["none", "all"])
async def test_a_result_that_cannot_be_awaited_passes_every_strategy(strategies: str) -> None:
    calls: list[int] = []
    rescued: list[Exception] = []

    def save() -> int:
        calls.append(1)
        return 5

    async def fallback(exc: Exception) -> int:
        rescued.append(exc)
        return 0

    breaker = CircuitBreaker(failure_threshold=1)
    options: dict[str, Any] = (
        {
            "breaker": breaker,
            "retry": RetryPolicy(attempts=3, initial_delay=0, on=Exception),
            "timeout": 10,
            "hedge": 0,
            "hedge_attempts": 3,
            "rate": TokenBucket(rate=100, burst=10),
            "fallback": fallback,
        }
        if strategies == "all"
        else {}
    )
    call = resilient(lambda: save(), **options)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match=r"^fn must return an awaitable, got 5 \(int\)$"):
        await call()
    assert calls == [1]  # not retried, not hedged
    assert rescued == []  # not rescued
    assert breaker.statistics().failures == 0


async def test_a_fallback_lambda_must_return_an_awaitable() -> None:
    async def down() -> int:
        raise ConnectionError

    async def cached() -> int:
        return 9

    assert await resilient(down, fallback=lambda exc: cached())() == 9
    call = resilient(down, fallback=lambda exc: 5)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match=r"^fallback must return an awaitable, got 5 \(int\)$"):
        await call()
