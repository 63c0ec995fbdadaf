from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence

import anyio
import pytest

from trioflow import hedge

pytestmark = pytest.mark.anyio


class Service:
    """Attempt i takes plan[i] = (seconds, result or exception); records starts and ends."""

    def __init__(self, plan: Sequence[tuple[float, object]]) -> None:
        self.plan = list(plan)
        self.started: list[float] = []
        self.cancelled: list[int] = []
        self.finished: list[int] = []

    async def __call__(self, tag: str = "") -> str:
        index = len(self.started)
        self.started.append(anyio.current_time())
        seconds, outcome = self.plan[index]
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(index)
            raise
        self.finished.append(index)
        if isinstance(outcome, Exception):
            raise outcome
        return f"{outcome}{tag}"


async def test_a_fast_first_attempt_starts_no_backup() -> None:
    service = Service([(1, "first")])
    assert await hedge(service, delay=2) == "first"
    assert anyio.current_time() == 1
    assert service.started == [0]


async def test_a_slow_first_attempt_gets_a_backup_and_the_first_success_wins() -> None:
    service = Service([(10, "first"), (1, "second")])
    assert await hedge(service, "!", delay=2) == "second!"
    assert anyio.current_time() == 3
    assert service.started == [0, 2]
    assert service.cancelled == [0]


async def test_the_original_can_still_win_after_the_backup_started() -> None:
    service = Service([(3, "first"), (5, "second"), (5, "third")])
    assert await hedge(service, delay=1, max_attempts=3) == "first"
    assert anyio.current_time() == 3
    assert service.started == [0, 1, 2]
    assert sorted(service.cancelled) == [1, 2]


async def test_a_failure_starts_the_next_attempt_at_once() -> None:
    service = Service([(0.5, ConnectionError("a")), (1, "second")])
    assert await hedge(service, delay=10) == "second"
    assert service.started == [0, 0.5]
    assert anyio.current_time() == 1.5


async def test_each_failure_starts_one_more_attempt_at_once() -> None:
    service = Service(
        [
            (1.5, ConnectionError()),  # t=0, fails at 1.5
            (1.0, ConnectionError()),  # t=0.5 (delay), fails at 1.5 as well
            (10, "slow"),  # t=1.0 (delay)
            (1, "fourth"),  # t=1.5: the first failure's immediate replacement
            (5, "fifth"),  # t=1.5 too: the second failure's, not at 2.0 after a delay
        ]
    )
    assert await hedge(service, delay=0.5, max_attempts=5) == "fourth"
    assert service.started == [0, 0.5, 1.0, 1.5, 1.5]
    assert anyio.current_time() == 2.5
    assert sorted(service.cancelled) == [2, 4]


async def test_all_failing_raises_every_error_in_attempt_order() -> None:
    errors = [ConnectionError("a"), TimeoutError("b"), ValueError("c")]
    service = Service([(5, errors[0]), (1, errors[1]), (2, errors[2])])
    with pytest.raises(ExceptionGroup) as info:
        await hedge(service, delay=1, max_attempts=3)
    assert info.value.exceptions == tuple(errors)
    assert "all 3 hedged attempts failed" in str(info.value)
    # #1 fails at t=2, so #2 starts at once (not at t=3 after another delay).
    assert service.started == [0, 1, 2]
    assert anyio.current_time() == 5


async def test_zero_delay_starts_every_attempt_at_once() -> None:
    service = Service([(3, "a"), (2, "b"), (1, "c")])
    assert await hedge(service, delay=0, max_attempts=3) == "c"
    assert service.started == [0, 0, 0]
    assert anyio.current_time() == 1


async def test_one_attempt_is_a_plain_call() -> None:
    service = Service([(1, ConnectionError("x"))])
    with pytest.raises(ExceptionGroup) as info:
        await hedge(service, delay=0.1, max_attempts=1)
    assert [type(e) for e in info.value.exceptions] == [ConnectionError]


async def test_caller_cancellation_cancels_every_attempt() -> None:
    service = Service([(10, "a"), (10, "b"), (10, "c")])
    with anyio.move_on_after(2.5) as scope:
        await hedge(service, delay=1, max_attempts=3)
    assert scope.cancelled_caught
    assert sorted(service.cancelled) == [0, 1, 2]
    assert service.finished == []
    assert anyio.current_time() == 2.5


async def test_failure_after_the_winner_is_ignored() -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(2)
            return "winner"
        await anyio.sleep(1)  # ends at the same instant as the winner
        raise ConnectionError

    assert await hedge(attempt, delay=1) == "winner"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"delay": -1}, ValueError, "delay must be a finite number >= 0, got -1"),
        ({"delay": math.nan}, ValueError, "delay must be a finite number >= 0, got nan"),
        ({"delay": True}, TypeError, "delay must be a finite number >= 0, got True"),
        ({"delay": 1, "max_attempts": 0}, ValueError, "max_attempts must be an int >= 1, got 0"),
        (
            {"delay": 1, "max_attempts": 2.0},
            TypeError,
            "max_attempts must be an int >= 1, got 2.0",
        ),
    ],
)
async def test_bad_arguments_are_rejected_before_any_attempt(
    kwargs: dict[str, float], error: type[Exception], message: str
) -> None:
    service = Service([(1, "x")])
    call: Callable[..., Awaitable[str]] = hedge
    with pytest.raises(error, match=message):
        await call(service, **kwargs)
    assert service.started == []


async def test_no_attempt_starts_after_a_winner_in_the_same_instant_as_a_failure() -> None:
    # Attempt #0 fails at t=1 and, in the same step, releases #1, which wins at once: the
    # failure woke the hedge to start #2, but the winner came first, so #2 never calls fn.
    gate = anyio.Event()
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(1)
            gate.set()
            raise ConnectionError("first")
        if calls == 2:
            await gate.wait()
            return "second"
        return "too late"

    assert await hedge(attempt, delay=0.75, max_attempts=3) == "second"
    assert calls == 2
    assert anyio.current_time() == 1


async def test_an_attempt_scheduled_before_the_win_does_not_call_fn() -> None:
    # With delay=0 the next attempt is scheduled while the first one (which needs no
    # checkpoint) may already have won; either way fn runs once. Repeated, because the
    # order of the two tasks is random on trio.
    for _ in range(20):
        calls = 0

        async def immediate() -> int:
            nonlocal calls
            calls += 1
            return calls

        assert await hedge(immediate, delay=0, max_attempts=3) == 1
        assert calls == 1


async def test_fn_must_be_callable() -> None:
    call: Callable[..., Awaitable[str]] = hedge
    with pytest.raises(TypeError, match="fn must be an async callable, got 3"):
        await call(3, delay=1)


# --- async callables ---------------------------------------------------------------------------


async def test_hedge_refuses_a_plain_def_function_before_any_attempt() -> None:
    calls: list[int] = []

    def save() -> int:
        calls.append(1)
        return 1

    with pytest.raises(TypeError, match=r"^fn must be an async callable, got <function"):
        await hedge(save, delay=0, max_attempts=3)  # type: ignore[arg-type]
    assert calls == []


@pytest.mark.parametrize("delay", [0, 1])
async def test_a_result_that_cannot_be_awaited_ends_the_hedge_at_once(delay: float) -> None:
    calls: list[int] = []

    def save() -> int:
        calls.append(1)
        return 5

    with pytest.raises(TypeError, match=r"^fn must return an awaitable, got 5 \(int\)$"):
        await hedge(lambda: save(), delay=delay, max_attempts=3)  # type: ignore[arg-type,return-value]
    assert calls == [1]  # never called twice
    assert anyio.current_time() == 0


async def test_a_lambda_returning_a_coroutine_is_hedged() -> None:
    async def fetch() -> int:
        await anyio.sleep(5)
        return 1

    assert await hedge(lambda: fetch(), delay=1, max_attempts=2) == 1
    assert anyio.current_time() == 5
