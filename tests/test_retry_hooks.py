"""RetryPolicy(on_retry=...): the hook and the ``retry scheduled`` log, in virtual time."""

from __future__ import annotations

import functools
from typing import Any

import anyio
import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from _lifecycle_stages import SEVEN_STAGES
from trioflow import (
    CircuitBreaker,
    RetryEvent,
    RetryPolicies,
    RetryPolicy,
    Workflow,
    resilient,
    run_batch,
    run_workflow,
)
from trioflow.lifecycle import Pipeline, Request, Stage

pytestmark = pytest.mark.anyio


class Failing:
    """An async callable that fails ``times`` times (with ``retry_after`` if given), then works."""

    def __init__(self, times: int, *, retry_after: float | None = None) -> None:
        self.times = times
        self.retry_after = retry_after
        self.tries: list[float] = []

    async def __call__(self, *args: object) -> str:
        self.tries.append(anyio.current_time())
        await anyio.sleep(0)
        if len(self.tries) <= self.times:
            error = ConnectionError(f"down #{len(self.tries)}")
            if self.retry_after is not None:
                error.retry_after = self.retry_after  # type: ignore[attr-defined]
            raise error
        return "ok"


class Recorder:
    """An on_retry hook that keeps every event and the time it came."""

    def __init__(self) -> None:
        self.events: list[RetryEvent] = []
        self.times: list[float] = []

    def __call__(self, event: RetryEvent) -> None:
        self.events.append(event)
        self.times.append(anyio.current_time())

    def pairs(self) -> list[tuple[int, float]]:
        return [(e.attempt, e.delay) for e in self.events]


async def test_the_hook_sees_each_attempt_and_delay_in_order() -> None:
    hook = Recorder()
    policy = RetryPolicy(attempts=5, initial_delay=1, multiplier=2, max_delay=5, on_retry=hook)
    fn = Failing(4)
    assert await policy.call(fn) == "ok"
    assert hook.pairs() == [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0)]
    # Called when the try failed, before the wait: the next try starts `delay` later.
    assert hook.times == [0.0, 1.0, 3.0, 7.0]
    assert fn.tries == [0.0, 1.0, 3.0, 7.0, 12.0]
    assert all(e.attempts == 5 for e in hook.events)
    assert [str(e.error) for e in hook.events] == ["down #1", "down #2", "down #3", "down #4"]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        hook.events[0].attempt = 9  # type: ignore[misc]


async def test_no_hook_after_the_last_attempt() -> None:
    hook = Recorder()
    policy = RetryPolicy(attempts=3, initial_delay=2, multiplier=1, max_delay=2, on_retry=hook)
    with pytest.raises(ConnectionError, match="down #3"):
        await policy.call(Failing(10))
    assert hook.pairs() == [(1, 2.0), (2, 2.0)]


async def test_the_delay_includes_retry_after_and_jitter() -> None:
    hook = Recorder()
    policy = RetryPolicy(attempts=3, initial_delay=1, max_delay=1, on_retry=hook)
    fn = Failing(2, retry_after=7.5)
    await policy.call(fn)
    assert hook.pairs() == [(1, 7.5), (2, 7.5)]
    assert fn.tries == [0.0, 7.5, 15.0]

    jittered = Recorder()
    policy = RetryPolicy(attempts=4, initial_delay=1, max_delay=1, jitter=0.5, on_retry=jittered)
    fn = Failing(3)
    await policy.call(fn)
    # The delay told is the wait taken, jitter included.
    assert [b - a for a, b in zip(fn.tries, fn.tries[1:], strict=False)] == pytest.approx(
        [e.delay for e in jittered.events]
    )
    assert all(1 <= e.delay <= 1.5 for e in jittered.events)


async def test_errors_not_retried_and_cancellation_never_reach_the_hook() -> None:
    hook = Recorder()
    policy = RetryPolicy(attempts=5, initial_delay=1, on_retry=hook)

    async def refused() -> None:
        raise ValueError("not retried")

    with pytest.raises(ValueError, match="not retried"):
        await policy.call(refused)

    async def hangs() -> None:
        await anyio.sleep_forever()

    with anyio.move_on_after(3) as scope:
        await policy.call(hangs)
    assert scope.cancelled_caught
    assert hook.events == []

    # Cancelled while waiting to retry: the retry was announced, but nothing after it.
    with anyio.move_on_after(0.5):
        await policy.call(Failing(3))
    assert hook.pairs() == [(1, 1.0)]


async def test_the_log_has_the_fields_and_never_the_arguments() -> None:
    policy = RetryPolicy(attempts=3, initial_delay=1, multiplier=3, max_delay=10)
    with capture_logs() as logs:
        await policy.call(Failing(2), "password=hunter2", {"token": "s3cr3t"})
    assert logs == [
        {
            "event": "retry scheduled",
            "log_level": "info",
            "attempt": n,
            "attempts": 3,
            "delay": delay,
            "error_type": "ConnectionError",
            "error": f"down #{n}",
        }
        for n, delay in ((1, 1.0), (2, 3.0))
    ]
    assert "hunter2" not in repr(logs)
    assert "s3cr3t" not in repr(logs)


async def test_log_retries_false_keeps_the_hook_only() -> None:
    hook = Recorder()
    policy = RetryPolicy(attempts=2, initial_delay=1, on_retry=hook, log_retries=False)
    with capture_logs() as logs:
        await policy.call(Failing(1))
    assert logs == []
    assert hook.pairs() == [(1, 1.0)]


async def test_a_failing_hook_is_logged_and_the_retries_go_on() -> None:
    calls: list[int] = []

    def broken(event: RetryEvent) -> None:
        calls.append(event.attempt)
        raise RuntimeError("hook bug")

    async def coroutine() -> None:
        await anyio.sleep(0)

    policy = RetryPolicy(attempts=3, initial_delay=1, on_retry=broken, log_retries=False)
    with capture_logs() as logs:
        assert await policy.call(Failing(2)) == "ok"
    assert calls == [1, 2]
    assert [(e["event"], e["log_level"], e["attempt"]) for e in logs] == [
        ("retry hook failed", "error", 1),
        ("retry hook failed", "error", 2),
    ]
    assert isinstance(logs[0]["exc_info"], RuntimeError)

    # A hook that returns a coroutine is refused the same way, and the coroutine closed.
    sneaky = RetryPolicy(
        attempts=2, initial_delay=1, on_retry=lambda e: coroutine(), log_retries=False
    )
    with capture_logs() as logs:
        assert await sneaky.call(Failing(1)) == "ok"
    assert [e["event"] for e in logs] == ["retry hook failed"]
    assert "returned" in str(logs[0]["exc_info"])


@pytest.mark.parametrize("bad", [3, "print"])
def test_on_retry_must_be_callable(bad: object) -> None:
    with pytest.raises(TypeError, match=r"on_retry must be a plain \(not async\) callable"):
        RetryPolicy(on_retry=bad)  # type: ignore[arg-type]


def test_on_retry_must_not_be_async() -> None:
    async def hook(event: RetryEvent) -> None:
        pass

    with pytest.raises(TypeError, match="on_retry must be a plain"):
        RetryPolicy(on_retry=hook)
    with pytest.raises(TypeError, match="on_retry must be a plain"):
        RetryPolicy(on_retry=functools.partial(hook))
    with pytest.raises(TypeError, match="log_retries must be a bool"):
        RetryPolicy(log_retries=1)  # type: ignore[arg-type]


def test_adapted_policies_keep_the_hook() -> None:
    hook = Recorder()
    policies = RetryPolicies({"llm": RetryPolicy(attempts=4, on_retry=hook, log_retries=False)})
    adapted = policies.get("llm", load=0.5, priority="high")
    assert adapted.on_retry is hook
    assert adapted.log_retries is False


# --- every engine's retries go through the hook ---------------------------------------------


def fast(hook: Recorder, attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(
        attempts=attempts, initial_delay=1, multiplier=2, max_delay=10, on_retry=hook
    )


async def test_run_batch_retries_reach_the_hook() -> None:
    hook = Recorder()
    result = await run_batch([Failing(2), Failing(0)], limit=2, retry=fast(hook))
    assert result.ok
    assert hook.pairs() == [(1, 1.0), (2, 2.0)]


async def test_workflow_step_retries_reach_the_hook() -> None:
    hook = Recorder()
    wf = Workflow("w")
    flaky = Failing(1)

    async def step(ctx: Any) -> str:
        return await flaky()

    wf.step("a", step, retry=fast(hook))
    result = await run_workflow(wf)
    assert result.ok
    assert result.steps["a"].attempts == 2
    assert hook.pairs() == [(1, 1.0)]


async def test_resilient_and_breaker_retries_reach_the_hook() -> None:
    hook = Recorder()
    fn = Failing(2)
    guarded = resilient(fn, retry=fast(hook), breaker=CircuitBreaker(failure_threshold=5))
    assert await guarded() == "ok"
    assert hook.pairs() == [(1, 1.0), (2, 2.0)]


async def test_pipeline_stage_retries_reach_the_hook() -> None:
    hook = Recorder()
    flaky = Failing(1)

    async def stage(request: Request) -> str:
        return await flaky()

    pipeline = Pipeline(
        [Stage(name, state, stage, retry=fast(hook)) for name, state in SEVEN_STAGES[:1]]
        + [Stage(name, state, Failing(0)) for name, state in SEVEN_STAGES[1:]]
    )
    result = await pipeline.run(Request("q"))
    assert result.ok
    assert hook.pairs() == [(1, 1.0)]


# --- the sequence as a property, for any fixed backoff -----------------------------------------


@given(
    attempts=st.integers(1, 6),
    initial=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    multiplier=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    cap=st.sampled_from([0.0, 1.0, 4.0, 100.0]),
    failures=st.integers(0, 8),
)
def test_the_sequence_is_the_planned_delays(
    attempts: int, initial: float, multiplier: float, cap: float, failures: int
) -> None:
    cap = max(cap, initial)
    hook = Recorder()
    policy = RetryPolicy(
        attempts=attempts,
        initial_delay=initial,
        multiplier=multiplier,
        max_delay=cap,
        on_retry=hook,
        log_retries=False,
    )
    fn = Failing(failures)

    async def main() -> None:
        try:
            await policy.call(fn)
        except ConnectionError:
            assert failures >= attempts

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    retried = min(failures, attempts - 1)
    assert hook.pairs() == [(n, policy.delay(n)) for n in range(1, retried + 1)]
    assert len(fn.tries) == retried + 1
    # Each try starts exactly its planned delay after the failure the hook was told about.
    assert fn.tries[1:] == pytest.approx(
        [t + e.delay for t, e in zip(hook.times, hook.events, strict=True)]
    )
