from __future__ import annotations

import asyncio
import functools
import itertools
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs
import pytest

from trioflow import RetryPolicy
from trioflow.testing import VirtualTimeEventLoop

pytestmark = pytest.mark.anyio


class Flaky:
    """An async callable that raises the given exceptions in turn, then returns ``value``."""

    def __init__(self, *failures: BaseException, value: object = "ok") -> None:
        self.failures = list(failures)
        self.value = value
        self.times: list[float] = []

    async def __call__(self) -> object:
        self.times.append(anyio.current_time())
        if self.failures:
            raise self.failures.pop(0)
        return self.value


def always(
    exc_factory: Callable[[], BaseException],
) -> tuple[Callable[[], Awaitable[None]], list[float]]:
    times: list[float] = []

    async def fn() -> None:
        times.append(anyio.current_time())
        raise exc_factory()

    return fn, times


# --- the sleep sequence ------------------------------------------------------------------


async def test_exact_sleep_sequence_in_virtual_time() -> None:
    policy = RetryPolicy(attempts=5, initial_delay=1, multiplier=2, max_delay=5)
    fn, times = always(lambda: ConnectionError("down"))
    with pytest.raises(ConnectionError, match="down") as info:
        await policy.call(fn)
    assert times == [0, 1, 3, 7, 12]
    assert anyio.current_time() == 12
    assert info.value.__notes__ == ["trioflow: gave up after 5 attempts"]


async def test_succeeds_after_failures_and_returns_the_value() -> None:
    flaky = Flaky(ConnectionError(), TimeoutError(), value=42)
    assert await RetryPolicy(attempts=3).call(flaky) == 42
    assert flaky.times == [0, 1, 3]


async def test_arguments_are_passed_on_every_try() -> None:
    seen: list[tuple[int, str]] = []

    async def fn(a: int, b: str) -> str:
        seen.append((a, b))
        if len(seen) < 2:
            raise ConnectionError
        return b * a

    assert await RetryPolicy(initial_delay=0).call(fn, 2, "x") == "xx"
    assert seen == [(2, "x"), (2, "x")]


async def test_initial_delay_zero_retries_at_once() -> None:
    policy = RetryPolicy(attempts=4, initial_delay=0, max_delay=0)
    fn, times = always(lambda: TimeoutError())
    with pytest.raises(TimeoutError):
        await policy.call(fn)
    assert times == [0, 0, 0, 0]


async def test_one_attempt_means_no_retry_and_no_note() -> None:
    fn, times = always(lambda: ConnectionError())
    with pytest.raises(ConnectionError) as info:
        await RetryPolicy(attempts=1).call(fn)
    assert times == [0]
    assert not hasattr(info.value, "__notes__")


async def test_max_delay_caps_the_wait() -> None:
    fn, times = always(lambda: ConnectionError())
    with pytest.raises(ConnectionError):
        await RetryPolicy(attempts=4, initial_delay=2, multiplier=10, max_delay=3).call(fn)
    assert times == [0, 2, 5, 8]


async def test_jitter_adds_a_bounded_random_extra() -> None:
    random.seed(1234)
    fn, times = always(lambda: ConnectionError())
    with pytest.raises(ConnectionError):
        await RetryPolicy(attempts=6, initial_delay=1, multiplier=1, jitter=0.5).call(fn)
    waits = [b - a for a, b in itertools.pairwise(times)]
    assert len(waits) == 5
    assert all(1 <= w <= 1.5 for w in waits)
    assert len(set(waits)) > 1  # really random, not a constant extra


def test_delays_are_the_planned_waits() -> None:
    assert RetryPolicy(attempts=5, initial_delay=1, multiplier=2, max_delay=5).delays() == (
        1,
        2,
        4,
        5,
    )
    assert RetryPolicy(attempts=1).delays() == ()
    assert RetryPolicy(attempts=3, initial_delay=0).delays() == (0, 0)
    assert RetryPolicy(attempts=3, jitter=10).delays() == (1, 2)


def test_delays_do_not_overflow() -> None:
    delays = RetryPolicy(attempts=2000, multiplier=10, max_delay=60).delays()
    assert len(delays) == 1999
    assert delays[-1] == 60
    assert all(math.isfinite(d) for d in delays)


# --- what is retried -----------------------------------------------------------------------


async def test_non_matching_exception_is_raised_at_once() -> None:
    fn, times = always(lambda: ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input") as info:
        await RetryPolicy(attempts=5).call(fn)
    assert times == [0]
    assert anyio.current_time() == 0
    assert not hasattr(info.value, "__notes__")


async def test_a_later_non_matching_exception_stops_retrying() -> None:
    flaky = Flaky(ConnectionError(), KeyError("k"), ConnectionError())
    with pytest.raises(KeyError) as info:
        await RetryPolicy(attempts=5).call(flaky)
    assert flaky.times == [0, 1]
    assert info.value.__notes__ == ["trioflow: raised on attempt 2 of 5, not retried"]


async def test_single_exception_class_is_accepted() -> None:
    policy = RetryPolicy(on=KeyError, initial_delay=0)
    assert policy.on == (KeyError,)
    flaky = Flaky(KeyError(), value="v")
    assert await policy.call(flaky) == "v"
    fn, times = always(lambda: ValueError("not retried"))
    with pytest.raises(ValueError, match="not retried"):
        await policy.call(fn)
    assert times == [0]


async def test_predicate_decides() -> None:
    def transient(exc: BaseException) -> bool:
        return isinstance(exc, OSError) and exc.errno == 11

    policy = RetryPolicy(on=transient, initial_delay=0, attempts=3)
    flaky = Flaky(OSError(11, "again"), value="done")
    assert await policy.call(flaky) == "done"
    fn, times = always(lambda: OSError(2, "missing"))
    with pytest.raises(OSError, match="missing"):
        await policy.call(fn)
    assert times == [0]


async def test_cancellation_during_a_retry_sleep_propagates_and_is_not_retried() -> None:
    fn, times = always(lambda: ConnectionError())
    policy = RetryPolicy(attempts=10, initial_delay=1, multiplier=2)
    with anyio.move_on_after(2) as scope:
        await policy.call(fn)
    assert scope.cancelled_caught
    assert times == [0, 1]  # the wait 1 -> 3 was cut at 2
    assert anyio.current_time() == 2


async def test_cancellation_during_the_first_wait() -> None:
    fn, times = always(lambda: ConnectionError())
    with anyio.move_on_after(0.5) as scope:
        await RetryPolicy(attempts=10, initial_delay=1).call(fn)
    assert scope.cancelled_caught
    assert times == [0]
    assert anyio.current_time() == 0.5


async def test_cancellation_raised_by_a_retry_is_never_retried() -> None:
    tries = 0
    policy = RetryPolicy(attempts=5, initial_delay=1, on=(BaseException,))

    async def fn() -> None:
        nonlocal tries
        tries += 1
        if tries == 2:
            scope.cancel()
            await anyio.sleep(0)
        raise ConnectionError

    with anyio.CancelScope() as scope:
        await policy.call(fn)
    assert scope.cancelled_caught
    assert tries == 2
    assert anyio.current_time() == 1


async def test_cancellation_raised_by_the_call_is_never_retried() -> None:
    tries = 0
    policy = RetryPolicy(attempts=5, initial_delay=0, on=(BaseException,))

    async def fn() -> None:
        nonlocal tries
        tries += 1
        scope.cancel()
        await anyio.sleep(0)

    with anyio.CancelScope() as scope:
        await policy.call(fn)
    assert scope.cancelled_caught
    assert tries == 1


def test_a_native_asyncio_cancellation_is_never_retried() -> None:
    # asyncio's own task.cancel() is delivered once, unlike a cancel scope that keeps
    # cancelling at every checkpoint: retrying the CancelledError would swallow it.
    tries = 0
    policy = RetryPolicy(attempts=5, initial_delay=0, on=(BaseException,))

    async def fn() -> None:
        nonlocal tries
        tries += 1
        if tries == 2:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)
        raise ConnectionError

    async def main() -> None:
        with pytest.raises(asyncio.CancelledError):
            await policy.call(fn)

    with asyncio.Runner(loop_factory=VirtualTimeEventLoop) as runner:
        runner.run(main())
    assert tries == 2


async def test_base_exceptions_are_never_retried() -> None:
    class Stop(BaseException):
        pass

    policy = RetryPolicy(attempts=5, initial_delay=0, on=(BaseException,))
    fn, times = always(lambda: Stop())
    with pytest.raises(Stop):
        await policy.call(fn)
    assert times == [0]


async def test_group_is_retried_when_every_leaf_matches() -> None:
    flaky = Flaky(
        ExceptionGroup("g", [ConnectionError(), ExceptionGroup("inner", [TimeoutError()])]),
        value="ok",
    )
    assert await RetryPolicy(initial_delay=0).call(flaky) == "ok"
    assert len(flaky.times) == 2


async def test_group_with_one_non_matching_leaf_is_raised_at_once() -> None:
    fn, times = always(lambda: ExceptionGroup("g", [ConnectionError(), ValueError("nope")]))
    with pytest.raises(ExceptionGroup) as info:
        await RetryPolicy(initial_delay=0).call(fn)
    assert times == [0]
    assert info.group_contains(ValueError, match="nope")


async def test_group_with_a_predicate_checks_each_leaf() -> None:
    seen: list[BaseException] = []

    def on(exc: BaseException) -> bool:
        seen.append(exc)
        return isinstance(exc, LookupError)

    group = ExceptionGroup("g", [KeyError("a"), IndexError("b")])
    flaky = Flaky(group, value=1)
    assert await RetryPolicy(on=on, initial_delay=0).call(flaky) == 1
    assert [type(e) for e in seen] == [KeyError, IndexError]


def test_should_retry_matches_call() -> None:
    policy = RetryPolicy()
    assert policy.should_retry(ConnectionResetError())
    assert policy.should_retry(ExceptionGroup("g", [TimeoutError()]))
    assert not policy.should_retry(ValueError())
    assert not policy.should_retry(KeyboardInterrupt())
    assert not policy.should_retry(asyncio.CancelledError())
    assert not policy.should_retry(BaseExceptionGroup("g", [KeyboardInterrupt()]))


# --- retry_after ---------------------------------------------------------------------------


class RateLimited(ConnectionError):
    def __init__(self, retry_after: Any) -> None:
        super().__init__("slow down")
        self.retry_after = retry_after


async def test_retry_after_is_a_minimum_wait() -> None:
    flaky = Flaky(RateLimited(10), RateLimited(0.5), value="ok")
    assert await RetryPolicy(attempts=3, initial_delay=1, multiplier=2).call(flaky) == "ok"
    # first wait: max(1, 10) = 10; second: max(2, 0.5) = 2
    assert flaky.times == [0, 10, 12]


async def test_retry_after_on_a_leaf_of_a_group() -> None:
    flaky = Flaky(
        ExceptionGroup("g", [ConnectionError(), RateLimited(7), RateLimited(3)]), value="ok"
    )
    assert await RetryPolicy(initial_delay=1).call(flaky) == "ok"
    assert flaky.times == [0, 7]


@pytest.mark.parametrize("value", ["10", float("nan"), float("inf"), -5, True, None])
async def test_invalid_retry_after_is_ignored(value: Any) -> None:
    flaky = Flaky(RateLimited(value), value="ok")
    assert await RetryPolicy(initial_delay=1).call(flaky) == "ok"
    assert flaky.times == [0, 1]


async def test_retry_after_does_not_make_a_non_matching_error_retryable() -> None:
    class Fatal(Exception):
        retry_after = 1

    fn, times = always(Fatal)
    with pytest.raises(Fatal):
        await RetryPolicy().call(fn)
    assert times == [0]


# --- odd callables -------------------------------------------------------------------------


async def test_a_lambda_returning_a_coroutine_is_awaited() -> None:
    flaky = Flaky(ConnectionError(), value=5)
    assert await RetryPolicy(initial_delay=0).call(lambda: flaky()) == 5


async def test_non_callable_is_rejected() -> None:
    with pytest.raises(TypeError, match="fn must be an async callable, got 3"):
        await RetryPolicy().call(3)  # type: ignore[arg-type]


# --- the value -----------------------------------------------------------------------------


def test_policy_is_frozen_and_comparable() -> None:
    policy = RetryPolicy(attempts=4)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.attempts = 5  # type: ignore[misc]
    assert policy == RetryPolicy(attempts=4)
    assert attrs.evolve(policy, jitter=1.0).jitter == 1.0


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.initial_delay, policy.multiplier) == (3, 1.0, 2.0)
    assert policy.jitter == 0
    assert policy.max_delay == 30
    assert policy.on == (ConnectionError, TimeoutError)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attempts": 0}, ValueError, "attempts must be an int >= 1, got 0"),
        ({"attempts": 2.0}, TypeError, "attempts must be an int >= 1, got 2.0"),
        ({"attempts": True}, TypeError, "attempts must be an int >= 1, got True"),
        ({"initial_delay": -1}, ValueError, "initial_delay must be a finite number >= 0, got -1"),
        (
            {"initial_delay": float("nan")},
            ValueError,
            "initial_delay must be a finite number >= 0, got nan",
        ),
        ({"initial_delay": "1"}, TypeError, "initial_delay must be a finite number >= 0, got '1'"),
        ({"multiplier": 0.5}, ValueError, "multiplier must be a finite number >= 1, got 0.5"),
        (
            {"max_delay": float("inf")},
            ValueError,
            "max_delay must be a finite number >= 0, got inf",
        ),
        (
            {"initial_delay": 5, "max_delay": 1},
            ValueError,
            r"max_delay must be >= initial_delay \(5\), got 1",
        ),
        ({"jitter": -0.1}, ValueError, "jitter must be a finite number >= 0, got -0.1"),
        ({"on": ()}, TypeError, "on must be an exception class, a non-empty tuple"),
        ({"on": (ValueError, int)}, TypeError, "on must be an exception class"),
        ({"on": "ValueError"}, TypeError, "on must be an exception class.*got 'ValueError'"),
    ],
)
def test_bad_fields_are_rejected_with_clear_messages(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        RetryPolicy(**kwargs)


def test_delay_of_one_retry_is_computed_on_its_own() -> None:
    policy = RetryPolicy(attempts=10**12, initial_delay=1, multiplier=2, max_delay=60)
    assert [policy.delay(n) for n in (1, 2, 3, 7, 10**11)] == [1.0, 2.0, 4.0, 60.0, 60.0]
    small = RetryPolicy(attempts=5, initial_delay=1, multiplier=2, max_delay=5)
    assert tuple(small.delay(n) for n in range(1, 5)) == small.delays() == (1.0, 2.0, 4.0, 5.0)
    for bad in (0, 5, -1):
        with pytest.raises(ValueError, match=rf"retry must be an int from 1 to 4 .*got {bad}"):
            small.delay(bad)


# --- async callables ---------------------------------------------------------------------------


async def test_call_refuses_a_plain_def_function_before_calling_it() -> None:
    calls: list[int] = []

    def save(n: int) -> int:
        calls.append(n)
        return n

    policy = RetryPolicy(attempts=3, initial_delay=0, on=Exception)
    with pytest.raises(TypeError, match=r"^fn must be an async callable, got <function"):
        await policy.call(save, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^fn must be an async callable, got functools.partial"):
        await policy.call(functools.partial(save, 1))  # type: ignore[arg-type]
    assert calls == []


async def test_a_result_that_cannot_be_awaited_is_never_retried() -> None:
    calls: list[int] = []

    def save() -> int:
        calls.append(1)
        return 5

    policy = RetryPolicy(attempts=3, initial_delay=1, on=Exception)
    with pytest.raises(TypeError, match=r"^fn must return an awaitable, got 5 \(int\)$"):
        await policy.call(lambda: save())  # type: ignore[arg-type,return-value]
    assert calls == [1]
    assert anyio.current_time() == 0


async def test_a_later_try_whose_result_cannot_be_awaited_ends_the_retries() -> None:
    results: list[Any] = [None, 7]  # a failing coroutine first, then an int
    calls = 0

    async def fails() -> int:
        raise ConnectionError("down")

    def flaky() -> Any:
        nonlocal calls
        calls += 1
        return fails() if results[calls - 1] is None else results[calls - 1]

    policy = RetryPolicy(attempts=5, initial_delay=1, on=Exception)
    with pytest.raises(TypeError, match="must return an awaitable, got 7") as info:
        await policy.call(lambda: flaky())
    assert calls == 2
    assert not getattr(info.value, "__notes__", [])


async def test_a_lambda_returning_a_coroutine_is_accepted() -> None:
    async def fetch(n: int) -> int:
        return n

    assert await RetryPolicy().call(lambda: fetch(3)) == 3
