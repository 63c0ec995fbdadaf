"""What the docstrings promise about checkpoints, checked on trio, where checkpoints are counted.

trio splits a checkpoint in two: a *cancel point* (a cancelled scope raises there) and a
*schedule point* (other tasks may run). :func:`trio.testing.assert_checkpoints` demands both,
:func:`trio.testing.assert_no_checkpoints` neither. Several fast paths here promise exactly one
half, "a cancellation point that does not yield" (like anyio's ``Lock(fast_acquire=True)``), which
neither helper can say; :func:`assert_cancel_point` and :func:`assert_no_schedule_point` check the
two halves apart: a cancelled scope raises at the call, and a trio instrument sees the task
never hand control back to the scheduler during it.

Every test here runs on trio only (the fixture below replaces the two-backend one of
``conftest.py``), in virtual time.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from _lifecycle_stages import SEVEN_STAGES
from trioflow import (
    CircuitBreaker,
    CircuitOpenError,
    HealthMonitor,
    KeyedRateLimiter,
    ResourceManager,
    TokenBucket,
    as_completed,
    run_batch,
)
from trioflow.lifecycle import (
    Pipeline,
    Request,
    RequestKind,
    Router,
    Stage,
    StateChange,
    StateMachine,
    open_coordinator,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


async def assert_cancel_point(fn: Callable[[], Awaitable[object]]) -> None:
    """Check that ``await fn()`` raises at once in a cancelled scope (a cancel point)."""
    reached = False
    with trio.CancelScope() as scope:
        scope.cancel()
        await fn()
        reached = True
    assert scope.cancelled_caught, "not a cancel point: it returned in a cancelled scope"
    assert not reached


class _Yields(trio.abc.Instrument):
    """Counts the times one task hands control back to the scheduler."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


async def assert_no_schedule_point(fn: Callable[[], Awaitable[object]]) -> None:
    """Check that ``await fn()`` returns without handing control to the scheduler."""
    yields = _Yields(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(yields)
    try:
        await fn()
    finally:
        trio.lowlevel.remove_instrument(yields)
    assert yields.count == 0, "a schedule point: the task yielded to the scheduler"


async def nothing() -> None:
    return None


async def answer() -> int:
    return 42


# --- the helpers themselves ------------------------------------------------------------------


async def test_the_helpers_tell_the_halves_of_a_checkpoint_apart() -> None:
    await assert_cancel_point(trio.lowlevel.checkpoint)
    await assert_cancel_point(trio.lowlevel.checkpoint_if_cancelled)
    await assert_no_schedule_point(trio.lowlevel.checkpoint_if_cancelled)
    await assert_no_schedule_point(nothing)
    with pytest.raises(AssertionError, match="a schedule point"):
        await assert_no_schedule_point(trio.lowlevel.checkpoint)
    with pytest.raises(AssertionError, match="not a cancel point"):
        await assert_cancel_point(nothing)


# --- ResourceManager.slot(): "raises at once if ... cancelled, but when every token is free
# it takes them without yielding" ----------------------------------------------------------------


async def test_entering_a_free_slot_is_a_cancel_point_that_does_not_yield() -> None:
    rm = ResourceManager(limit=2, pools={"db": 1})

    async def enter() -> None:
        async with rm.slot("db"):
            pass

    await assert_cancel_point(enter)
    stats = rm.statistics()
    assert (stats.executing, stats.executed) == (0, 0)  # cancelled on entry: took nothing
    await assert_no_schedule_point(enter)
    assert rm.statistics().executed == 1


async def test_entering_a_slot_that_must_wait_is_a_checkpoint() -> None:
    rm = ResourceManager(limit=1)

    async def hold(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with rm.slot():
            task_status.started()
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        await nursery.start(hold)
        with trio.testing.assert_checkpoints():
            async with rm.slot():
                assert trio.current_time() == 1


# --- TokenBucket / KeyedRateLimiter.acquire(): "takes them without yielding to the scheduler;
# it still raises at once if the surrounding scope is cancelled" ---------------------------------


async def test_acquiring_available_tokens_is_a_cancel_point_that_does_not_yield() -> None:
    bucket = TokenBucket(rate=1, burst=2)
    await assert_cancel_point(bucket.acquire)
    assert bucket.statistics().acquired == 0  # cancelled: took nothing
    assert bucket.statistics().tokens == 2
    await assert_no_schedule_point(bucket.acquire)
    assert bucket.statistics().acquired == 1


async def test_acquiring_tokens_that_are_not_there_is_a_checkpoint() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    await bucket.acquire()
    with trio.testing.assert_checkpoints():
        await bucket.acquire()
    assert trio.current_time() == 1


async def test_a_keyed_acquire_with_tokens_available_is_a_cancel_point_that_does_not_yield() -> (
    None
):
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(rate=1, burst=2)

    async def acquire() -> None:
        await limiter.acquire("alice")

    await assert_cancel_point(acquire)
    assert limiter.statistics().acquired == 0
    await assert_no_schedule_point(acquire)  # a new key
    await assert_no_schedule_point(acquire)  # a known key
    assert limiter.statistics().acquired == 2


# --- CircuitBreaker: "Entering never waits and is not a checkpoint" ------------------------------


async def test_entering_a_closed_breaker_is_not_a_checkpoint() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=10)
    with trio.testing.assert_no_checkpoints():
        async with breaker:
            pass
        assert await breaker.call(answer) == 42


async def test_entering_an_open_or_half_open_breaker_is_not_a_checkpoint() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=10)
    with pytest.raises(ConnectionError):
        async with breaker:
            raise ConnectionError("down")
    with trio.testing.assert_no_checkpoints(), pytest.raises(CircuitOpenError):
        async with breaker:
            pass
    await trio.sleep(10)
    with trio.testing.assert_no_checkpoints():
        async with breaker:  # the half-open trial
            pass
    assert breaker.statistics().opened == 1


# --- HealthMonitor.wait_healthy(): "return at once (after a checkpoint) if it is" ----------------


async def test_waiting_for_a_healthy_monitor_returns_at_once_after_a_checkpoint() -> None:
    async with HealthMonitor(sampler=lambda: (10.0, 20.0)) as health:
        with trio.testing.assert_checkpoints():
            await health.wait_healthy()
        assert trio.current_time() == 0


# --- as_completed: each step is "a cancellation point, but no yield when an outcome is ready" --


async def test_taking_a_ready_outcome_is_a_cancel_point_that_does_not_yield() -> None:
    async with as_completed([nothing, nothing], limit=2) as outcomes:
        await trio.sleep(1)  # both operations are done; their outcomes wait in the channel
        await assert_cancel_point(outcomes.__anext__)
        await assert_no_schedule_point(outcomes.__anext__)
        await assert_no_schedule_point(outcomes.__anext__)
        with pytest.raises(StopAsyncIteration):
            await outcomes.__anext__()


# --- run_batch: a checkpoint even when nothing waits, as trio expects of every async call ------


async def test_a_batch_of_instant_operations_is_a_checkpoint() -> None:
    with trio.testing.assert_checkpoints():
        await run_batch([nothing], limit=1)
    with trio.testing.assert_checkpoints():
        await run_batch([])


# --- StateMachine: "Without hooks a transition never yields to the event loop" ----------------


class Door(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"


@attrs.define(eq=False)
class Thing:
    state: Door = Door.CLOSED
    history: list[StateChange[Door]] = attrs.field(factory=list)


async def test_a_transition_without_hooks_is_not_a_checkpoint() -> None:
    machine = StateMachine({Door.CLOSED: {Door.OPEN}, Door.OPEN: {Door.CLOSED}}, Door.CLOSED)
    thing = Thing()
    with trio.testing.assert_no_checkpoints():
        await machine.transition(thing, Door.OPEN)
        await machine.transition(thing, Door.CLOSED)
    assert [change.to_state for change in thing.history] == [Door.OPEN, Door.CLOSED]


# --- Coordinator.process: "one checkpoint per request (so a loop of requests whose stages never
# block still lets other tasks run)" (docs/lifecycle.md) -----------------------------------------


async def test_processing_a_request_whose_stages_never_block_is_a_checkpoint() -> None:
    async def instant(request: Request) -> Any:
        return request.payload

    pipeline = Pipeline([Stage(name, state, instant) for name, state in SEVEN_STAGES])
    router = Router(lambda r: RequestKind.SIMPLE_QUERY, {RequestKind.SIMPLE_QUERY: pipeline})
    async with open_coordinator({"enable_metrics": False}, router=router) as coordinator:
        with trio.testing.assert_checkpoints():
            result = await coordinator.process(Request("q"))
        assert result.value == "q"
