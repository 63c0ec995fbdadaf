"""CircuitBreaker's ratio mode: failure_ratio over a sliding window, in virtual time."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioflow import CircuitBreaker, CircuitOpenError, CircuitState
from trioflow._resilience._breaker import _Window, protect

pytestmark = pytest.mark.anyio

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Boom(ConnectionError):
    pass


class BadRequest(ValueError):
    pass


async def ok() -> str:
    await anyio.sleep(0)
    return "ok"


async def boom() -> str:
    await anyio.sleep(0)
    raise Boom("down")


async def play(breaker: CircuitBreaker, calls: str) -> list[CircuitState]:
    """Make one call per letter (s: success, f: failure); return the state after each."""
    states = []
    for letter in calls:
        if letter == "s":
            await breaker.call(ok)
        else:
            with pytest.raises(Boom):
                await breaker.call(boom)
        states.append(breaker.state)
    return states


def ratio_only(**options: Any) -> CircuitBreaker:
    settings: dict[str, Any] = {
        "failure_threshold": None,
        "failure_ratio": 0.5,
        "sampling_duration": 10,
        "minimum_throughput": 4,
        "reset_timeout": 5,
    }
    return CircuitBreaker(**(settings | options))


async def test_opens_exactly_when_the_ratio_is_reached() -> None:
    breaker = ratio_only()
    assert await play(breaker, "sfs") == [CLOSED] * 3  # 1 of 3: below the minimum anyway
    assert await play(breaker, "s") == [CLOSED]  # 1 of 4
    assert await play(breaker, "f") == [CLOSED]  # 2 of 5 = 0.4
    assert await play(breaker, "f") == [OPEN]  # 3 of 6 = 0.5
    stats = breaker.statistics()
    assert stats.opened == 1
    assert (stats.window_successes, stats.window_failures) == (0, 0)  # not counted while open
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok)


async def test_successes_never_open_it_and_a_ratio_below_does_not() -> None:
    breaker = ratio_only(failure_ratio=0.3)
    assert await play(breaker, "sssssss" + "f" + "s" + "f") == [CLOSED] * 10  # 2 of 10 = 0.2
    assert await play(breaker, "ff") == [CLOSED, OPEN]  # 3 of 11 = 0.27, 4 of 12 = 0.33


async def test_the_minimum_throughput_holds_it_closed() -> None:
    breaker = ratio_only(minimum_throughput=5, failure_ratio=1.0)
    assert await play(breaker, "ffff") == [CLOSED] * 4  # 100%, but only 4 calls
    assert breaker.statistics().window_failures == 4
    assert await play(breaker, "f") == [OPEN]


async def test_old_calls_leave_the_window_at_exact_times() -> None:
    # sampling_duration 10 is ten buckets of 1 s: a call ending at 0.5 counts until 10.0.
    breaker = ratio_only(minimum_throughput=3, failure_ratio=1.0)
    await anyio.sleep(0.5)
    await play(breaker, "f")
    await anyio.sleep(5.0)  # 5.5
    await play(breaker, "f")
    await anyio.sleep(4.0)  # 9.5
    assert breaker.statistics().window_failures == 2
    await anyio.sleep(0.5)  # 10.0: the first failure has left
    assert breaker.statistics().window_failures == 1
    assert await play(breaker, "f") == [CLOSED]  # 2 in the window: below 3
    await anyio.sleep(5.0)  # 15.0: the 5.5 one left at 15.0 too
    assert breaker.statistics().window_failures == 1
    assert await play(breaker, "ff") == [CLOSED, OPEN]  # 10.0, 15.0, 15.0


async def test_either_rule_opens_it() -> None:
    # Three failures in a row open it long before the window holds its minimum...
    both = CircuitBreaker(
        failure_threshold=3, failure_ratio=0.5, sampling_duration=30, minimum_throughput=100
    )
    assert await play(both, "fff") == [CLOSED, CLOSED, OPEN]
    # ...and the ratio opens it without three in a row.
    both = CircuitBreaker(
        failure_threshold=3, failure_ratio=0.5, sampling_duration=30, minimum_throughput=4
    )
    assert await play(both, "sfsf") == [CLOSED, CLOSED, CLOSED, OPEN]
    assert both.statistics().consecutive_failures == 1


async def test_the_window_starts_empty_when_the_circuit_closes() -> None:
    breaker = ratio_only(minimum_throughput=2, failure_ratio=0.5)
    assert await play(breaker, "sf") == [CLOSED, OPEN]
    await anyio.sleep(5)
    assert breaker.state is HALF_OPEN
    assert await play(breaker, "s") == [CLOSED]  # one trial closes it, as without the ratio
    stats = breaker.statistics()
    assert (stats.window_successes, stats.window_failures) == (0, 0)
    assert await play(breaker, "f") == [CLOSED]  # 1 call: below the minimum again
    assert await play(breaker, "sf") == [CLOSED, OPEN]
    await anyio.sleep(5)
    assert await play(breaker, "f") == [OPEN]  # a failed trial opens it at once
    breaker.reset()
    assert breaker.statistics().window_failures == 0


async def test_what_counts_in_the_window() -> None:
    breaker = CircuitBreaker(
        failure_threshold=None, failure_ratio=1.0, minimum_throughput=100, exclude=BadRequest
    )

    async def bad_request() -> None:
        raise BadRequest("the caller's fault")

    with pytest.raises(BadRequest):
        await breaker.call(bad_request)  # excluded: a success
    with anyio.move_on_after(1):
        await breaker.call(anyio.sleep_forever)  # cancelled: nothing
    async with breaker:
        pass
    with pytest.raises(Boom):
        async with breaker:
            raise Boom("down")
    guarded = protect(breaker, ok)
    await guarded()
    stats = breaker.statistics()
    assert (stats.window_successes, stats.window_failures) == (3, 1)
    assert (stats.successes, stats.failures) == (3, 1)


async def test_statistics_and_defaults_of_the_ratio_mode() -> None:
    breaker = CircuitBreaker(failure_ratio=0.25)
    stats = breaker.statistics()
    assert (stats.failure_ratio, stats.sampling_duration, stats.minimum_throughput) == (
        0.25,
        30.0,
        10,
    )
    assert stats.failure_threshold == 5
    assert breaker.failure_ratio == 0.25
    plain = CircuitBreaker().statistics()
    assert (plain.failure_ratio, plain.sampling_duration, plain.minimum_throughput) == (
        None,
        None,
        None,
    )
    assert (plain.window_successes, plain.window_failures) == (0, 0)


async def test_a_long_run_keeps_counting_the_last_window_only() -> None:
    # Memory is ten buckets whatever the traffic: 1200 calls over 300 s, one failure in three.
    breaker = CircuitBreaker(
        failure_threshold=None, failure_ratio=0.9, sampling_duration=20, minimum_throughput=1
    )
    for i in range(1200):
        if i % 3 == 1:
            with pytest.raises(Boom):
                await breaker.call(boom)
        else:
            await breaker.call(ok)
        await anyio.sleep(0.25)
    stats = breaker.statistics()
    assert stats.state is CLOSED
    # At 300.0, the window holds the calls that ended in [282, 300): 72 of them.
    assert stats.window_successes + stats.window_failures == 72
    assert stats.window_failures == 24


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"failure_ratio": 0}, ValueError, r"failure_ratio must be a number in \(0, 1\], got 0"),
        ({"failure_ratio": 1.5}, ValueError, "failure_ratio must be .* got 1.5"),
        ({"failure_ratio": math.nan}, ValueError, "failure_ratio must be .* got nan"),
        ({"failure_ratio": "0.5"}, TypeError, "failure_ratio must be a number"),
        (
            {"failure_ratio": 0.5, "sampling_duration": 0},
            ValueError,
            "sampling_duration must be a finite number > 0, got 0",
        ),
        (
            {"failure_ratio": 0.5, "sampling_duration": math.inf},
            ValueError,
            "sampling_duration must be a finite number > 0",
        ),
        (
            {"failure_ratio": 0.5, "minimum_throughput": 0},
            ValueError,
            "minimum_throughput must be an int >= 1, got 0",
        ),
        (
            {"failure_ratio": 0.5, "minimum_throughput": 2.0},
            TypeError,
            "minimum_throughput must be an int >= 1, got 2.0",
        ),
        ({"sampling_duration": 30}, ValueError, "sampling_duration needs failure_ratio"),
        ({"minimum_throughput": 10}, ValueError, "minimum_throughput needs failure_ratio"),
        (
            {"failure_threshold": None},
            ValueError,
            "failure_threshold must be an int >= 1 without failure_ratio, got None",
        ),
    ],
)
def test_bad_ratio_arguments_are_rejected(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        CircuitBreaker(**kwargs)


# --- the window against a list of every call ------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    duration=st.sampled_from([0.3, 1.0, 3.0, 7.0, 30.0]),
    steps=st.lists(
        st.tuples(st.floats(0, 5, allow_nan=False), st.booleans(), st.booleans()), max_size=60
    ),
)
def test_the_window_counts_what_a_list_of_every_call_would(
    duration: float, steps: list[tuple[float, bool, bool]]
) -> None:
    window = _Window(duration)
    width = duration / 10
    ended: list[tuple[float, bool]] = []
    now = 0.0
    for dt, record, failed in steps:
        now += dt
        if record:
            window.add(now, failed)
            ended.append((now, failed))
        newest = math.floor(now / width)
        live = [f for at, f in ended if newest - 10 < math.floor(at / width) <= newest]
        assert window.counts(now) == (live.count(False), live.count(True))
