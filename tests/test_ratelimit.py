from __future__ import annotations

import math
from collections.abc import Hashable
from fractions import Fraction

import anyio
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioflow import KeyedRateLimiter, TokenBucket
from trioflow._resilience._ratelimit import _new_bucket
from trioflow.testing import virtual_time_backends

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- TokenBucket ------------------------------------------------------------------------------


async def test_100_acquisitions_at_10_per_second_with_burst_5_take_exactly_9_5_s() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    for _ in range(100):
        await bucket.acquire()
    assert anyio.current_time() == 9.5
    stats = bucket.statistics()
    assert stats.acquired == 100
    assert stats.waiting == 0


async def test_concurrent_acquisitions_are_exact_too() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    done: list[float] = []

    async def one() -> None:
        await bucket.acquire()
        done.append(anyio.current_time())

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(one)
    assert anyio.current_time() == 9.5
    assert done[:5] == [0, 0, 0, 0, 0]
    assert max(done) == 9.5
    assert sorted(done) == done


async def test_each_waiter_sleeps_once_no_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    real_sleep = anyio.sleep

    async def counting_sleep(delay: float) -> None:
        sleeps.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(anyio, "sleep", counting_sleep)
    bucket = TokenBucket(rate=1 / 3, burst=1)
    await bucket.acquire()
    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(bucket.acquire)
    assert math.isclose(anyio.current_time(), 30)
    assert len(sleeps) == 10  # one sleep per waiter, each for its whole deficit
    assert all(math.isclose(s, 3) for s in sleeps)


async def test_a_large_request_is_not_starved_by_small_ones() -> None:
    bucket = TokenBucket(rate=1, burst=5)
    await bucket.acquire(5)  # empty now
    order: list[tuple[str, float]] = []

    async def big() -> None:
        await bucket.acquire(5)
        order.append(("big", anyio.current_time()))

    async def small(i: int) -> None:
        await bucket.acquire(1)
        order.append((f"small{i}", anyio.current_time()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(big)
        await anyio.sleep(0.5)
        for i in range(3):
            tg.start_soon(small, i)
            await anyio.sleep(0.5)
    # The big request was first in line, so it is served first, after 5 s; then the small
    # ones at one per second.
    assert order == [("big", 5), ("small0", 6), ("small1", 7), ("small2", 8)]


async def test_try_acquire_never_waits_and_does_not_jump_the_queue() -> None:
    bucket = TokenBucket(rate=1, burst=2)
    assert bucket.try_acquire()
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    assert anyio.current_time() == 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(bucket.acquire, 2)
        await anyio.sleep(1.5)
        # 1.5 tokens are there, but a waiter is queued for 2: try_acquire must not take one.
        assert not bucket.try_acquire()
    assert anyio.current_time() == 2
    stats = bucket.statistics()
    assert (stats.acquired, stats.rejected) == (3, 2)
    assert stats.tokens == 0


async def test_cancelled_waiter_consumes_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    await bucket.acquire()
    with anyio.move_on_after(0.5) as scope:
        await bucket.acquire()
    assert scope.cancelled_caught
    assert bucket.statistics().waiting == 0
    # Had the cancelled waiter taken its token, this would finish at 2.
    await bucket.acquire()
    assert anyio.current_time() == 1
    assert bucket.statistics().acquired == 2


async def test_cancelled_waiter_in_line_lets_the_next_one_through() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    await bucket.acquire()
    finished: list[tuple[str, float]] = []
    scope = anyio.CancelScope()

    async def first() -> None:
        with scope:
            await bucket.acquire()
            finished.append(("first", anyio.current_time()))

    async def second() -> None:
        await bucket.acquire()
        finished.append(("second", anyio.current_time()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.sleep(0.1)
        tg.start_soon(second)
        await anyio.sleep(0.15)
        scope.cancel()
    assert finished == [("second", 1)]
    assert bucket.statistics().acquired == 2


async def test_acquire_is_cancellable_on_the_fast_path() -> None:
    bucket = TokenBucket(rate=1, burst=5)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await bucket.acquire()
    assert scope.cancelled_caught
    assert bucket.statistics().tokens == 5


async def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=2, burst=3)
    await bucket.acquire(3)
    await anyio.sleep(100)
    assert bucket.statistics().tokens == 3
    for _ in range(3):
        assert bucket.try_acquire()
    assert not bucket.try_acquire()


async def test_fractional_tokens() -> None:
    bucket = TokenBucket(rate=0.5, burst=1.5)
    await bucket.acquire(1.5)
    await bucket.acquire(0.5)
    assert anyio.current_time() == 1


@pytest.mark.parametrize("n", [0, -1, 6, 5.5, math.nan, "1", True])
def test_bad_request_sizes_are_rejected(n: object) -> None:
    bucket = TokenBucket(rate=1, burst=5, clock=FakeClock())
    with pytest.raises(ValueError, match=r"n must be a number > 0 and <= burst \(5\)"):
        bucket.try_acquire(n)  # type: ignore[arg-type]


async def test_request_above_burst_is_rejected_before_waiting() -> None:
    bucket = TokenBucket(rate=1, burst=5)
    with pytest.raises(ValueError, match="got 6"):
        await bucket.acquire(6)
    assert bucket.statistics().tokens == 5


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"rate": 0, "burst": 1}, ValueError, "rate must be a finite number > 0, got 0"),
        ({"rate": -1, "burst": 1}, ValueError, "rate must be a finite number > 0, got -1"),
        ({"rate": math.inf, "burst": 1}, ValueError, "rate must be a finite number > 0, got inf"),
        ({"rate": 1, "burst": 0}, ValueError, "burst must be a finite number > 0, got 0"),
        ({"rate": 1, "burst": math.nan}, ValueError, "burst must be a finite number > 0, got nan"),
        ({"rate": "1", "burst": 1}, TypeError, "rate must be a finite number > 0, got '1'"),
    ],
)
def test_bad_bucket_arguments_are_rejected(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        TokenBucket(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        KeyedRateLimiter(**kwargs)  # type: ignore[arg-type]


def test_bucket_statistics_and_repr_work_with_an_injected_clock() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4, burst=2, clock=clock)
    assert repr(bucket) == "TokenBucket(rate=4, burst=2)"
    assert (bucket.rate, bucket.burst) == (4, 2)
    assert bucket.try_acquire(2)
    clock.now = 0.25
    stats = bucket.statistics()
    assert stats.tokens == 1
    assert (stats.rate, stats.burst, stats.acquired, stats.rejected) == (4, 2, 1, 0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.tokens = 3  # type: ignore[misc]


def test_bad_clock_is_rejected() -> None:
    with pytest.raises(TypeError, match="clock must be a callable"):
        TokenBucket(1, 1, clock=3)  # type: ignore[arg-type]


def test_the_fast_bucket_factory_sets_every_field() -> None:
    clock = FakeClock()
    fast = _new_bucket(2, 3, clock)
    slow = TokenBucket(2, 3, clock=clock)
    names = [a.name for a in attrs.fields(TokenBucket)]
    assert {n: getattr(fast, n) for n in names} == {n: getattr(slow, n) for n in names}


# --- KeyedRateLimiter -------------------------------------------------------------------------


async def test_keys_do_not_slow_each_other_down() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(rate=10, burst=5)
    finished: dict[str, list[float]] = {"a": [], "b": []}

    async def client(key: str, count: int) -> None:
        for _ in range(count):
            await limiter.acquire(key)
            finished[key].append(anyio.current_time())

    async with anyio.create_task_group() as tg:
        tg.start_soon(client, "a", 15)
        tg.start_soon(client, "b", 15)
    # Each key gets its full rate: both finish at 1.0 s, in lock step.
    assert finished["a"] == finished["b"]
    assert finished["a"][-1] == 1.0
    assert anyio.current_time() == 1.0


async def test_a_busy_key_does_not_delay_a_quiet_one() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(rate=1, burst=1)
    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(limiter.acquire, "busy")
        await anyio.sleep(0.5)
        await limiter.acquire("quiet")
        assert anyio.current_time() == 0.5
        assert limiter.statistics().waiting == 9
    assert anyio.current_time() == 9


async def test_key_classes_have_their_own_limits() -> None:
    limiter: KeyedRateLimiter[tuple[str, str]] = KeyedRateLimiter(
        rate=1, burst=1, limits={"cli": (1, 2), "mcp": (10, 5)}
    )
    assert limiter.limits_for(("alice", "mcp")) == (10, 5)
    assert limiter.limits_for(("alice", "cli")) == (1, 2)
    assert limiter.limits_for(("alice", "web")) == (1, 1)
    for _ in range(15):
        await limiter.acquire(("alice", "mcp"))
    assert anyio.current_time() == 1.0
    assert limiter.try_acquire(("alice", "cli"))
    assert limiter.try_acquire(("alice", "cli"))
    assert not limiter.try_acquire(("alice", "cli"))
    assert limiter.try_acquire(("alice", "web"))
    assert not limiter.try_acquire(("alice", "web"))


def test_custom_classify_and_non_tuple_keys() -> None:
    clock = FakeClock()
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(
        rate=1,
        burst=1,
        limits={"vip": (1, 3)},
        classify=lambda key: "vip" if key.startswith("vip:") else None,
        clock=clock,
    )
    assert limiter.limits_for("vip:bob") == (1, 3)
    assert limiter.limits_for("bob") == (1, 1)
    default: KeyedRateLimiter[Hashable] = KeyedRateLimiter(rate=1, burst=1, limits={"x": (2, 2)})
    assert default.limits_for("x") == (1, 1)  # a plain key has no class
    assert default.limits_for(("u", "x")) == (2, 2)
    assert default.limits_for(("u",)) == (1, 1)


def test_memory_stays_bounded_whatever_the_number_of_distinct_keys() -> None:
    # 1000 new keys per second, each used once. A bucket used once refills in 0.1 s, i.e.
    # 100 new keys later, so the sweep keeps ~100 live and the count reaches a steady state
    # within the first few hundred keys: from then on each new key forgets one old one. The
    # bound therefore does not depend on how many keys there are; 100,000 of them (ten times
    # max_keys, so the cap alone could not hold it) show it as well as a million would.
    clock = FakeClock()
    limiter: KeyedRateLimiter[tuple[int, str]] = KeyedRateLimiter(
        rate=10, burst=5, max_keys=10_000, clock=clock
    )
    total = 100_000
    live: list[int] = []
    granted = 0
    for i in range(total):
        clock.now = i * 0.001
        granted += limiter.try_acquire((i, "mcp"))
        if i % 1000 == 999:
            live.append(limiter.statistics().keys)
    assert granted == total
    # The same small number of live buckets at every checkpoint: a steady state, not growth.
    assert max(live) <= 110
    assert max(live) - min(live) <= 2
    stats = limiter.statistics()
    assert stats.acquired == total
    assert stats.evicted == 0
    assert stats.forgotten == total - stats.keys


def test_a_bad_request_for_a_new_key_changes_nothing() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(
        rate=1, burst=1, max_keys=1, limits={"x": (1, 3)}, classify=str, clock=FakeClock()
    )
    assert limiter.try_acquire("a")
    with pytest.raises(ValueError, match=r"n must be a number > 0 and <= burst \(1\), got 2"):
        limiter.try_acquire("b", 2)
    stats = limiter.statistics()
    assert (stats.keys, stats.evicted, stats.forgotten) == (1, 0, 0)
    assert not limiter.try_acquire("a")  # "a" kept its (empty) bucket: it was not pushed out
    assert limiter.try_acquire("x", 3)  # a class's own burst bounds the request


async def test_a_bad_acquire_for_a_new_key_changes_nothing() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(rate=1, burst=1, max_keys=1)
    await limiter.acquire("a")
    with pytest.raises(ValueError, match="got 0"):
        await limiter.acquire("b", 0)
    assert limiter.statistics().keys == 1
    assert not limiter.try_acquire("a")


def test_max_keys_caps_memory_when_every_bucket_is_busy() -> None:
    clock = FakeClock()  # time stands still: no bucket ever refills
    limiter: KeyedRateLimiter[int] = KeyedRateLimiter(rate=1, burst=2, max_keys=100, clock=clock)
    for i in range(10_000):
        assert limiter.try_acquire(i)
    stats = limiter.statistics()
    assert stats.keys == 100
    assert stats.evicted == 10_000 - 100
    assert stats.max_keys == 100
    # The most recently used keys are still tracked (bucket down to 1 token).
    assert limiter.try_acquire(9_999)
    assert not limiter.try_acquire(9_999)


def test_eviction_prefers_full_buckets() -> None:
    clock = FakeClock()
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(rate=1, burst=1, max_keys=3, clock=clock)
    limiter.try_acquire("old-busy")  # 0 tokens, refills at t=1
    clock.now = 0.5
    limiter.try_acquire("young-busy")  # refills at t=1.5
    limiter.try_acquire("third")  # refills at t=1.5
    clock.now = 1.2  # "old-busy" is full again; the sweep forgets it losslessly
    limiter.try_acquire("new")
    stats = limiter.statistics()
    assert (stats.keys, stats.forgotten, stats.evicted) == (3, 1, 0)
    # "young-busy" is still tracked: it is empty, so a second token is refused.
    assert not limiter.try_acquire("young-busy")


async def test_buckets_with_waiters_are_never_evicted() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(rate=1, burst=1, max_keys=2)
    await limiter.acquire("a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire, "a")  # waits until t=1
        await anyio.sleep(0.1)
        limiter.try_acquire("b")
        limiter.try_acquire("c")  # over max_keys: "b" is evicted, not "a" with its waiter
        assert limiter.statistics().evicted == 1
    assert anyio.current_time() == 1
    # "a" kept its debt: the next token comes one second later.
    await limiter.acquire("a")
    assert anyio.current_time() == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_keys": 0}, ValueError, "max_keys must be an int >= 1, got 0"),
        ({"max_keys": 1.5}, TypeError, "max_keys must be an int >= 1, got 1.5"),
        ({"limits": [("cli", (1, 1))]}, TypeError, "limits must be a mapping"),
        ({"limits": {"cli": 1}}, TypeError, r"limits\['cli'\] must be a \(rate, burst\) pair"),
        ({"limits": {"cli": (0, 1)}}, ValueError, r"limits\['cli'\] rate must be .* got 0"),
        ({"limits": {"cli": (1, -2)}}, ValueError, r"limits\['cli'\] burst must be .* got -2"),
        ({"classify": "second"}, TypeError, "classify must be callable"),
    ],
)
def test_bad_keyed_arguments_are_rejected(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        KeyedRateLimiter(1, 1, **kwargs)  # type: ignore[arg-type]


def test_keyed_repr_and_properties() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(2, 3, max_keys=7, clock=FakeClock())
    limiter.try_acquire("k")
    assert (limiter.rate, limiter.burst, limiter.max_keys) == (2, 3, 7)
    assert repr(limiter) == "KeyedRateLimiter(rate=2, burst=3, max_keys=7, keys=1)"


# --- property: the bucket matches an exact model, on both backends ----------------------------


def _model_completions(
    rate: float, burst: float, calls: list[tuple[float, float]]
) -> list[Fraction]:
    """Exact (rational) completion times of FIFO acquisitions from a bucket full at t=0."""
    r, b = Fraction(rate), Fraction(burst)
    tokens, t = b, Fraction(0)
    done: list[Fraction] = []
    for when, n in calls:
        start = max(Fraction(when), t)  # served after everyone ahead (FIFO)
        tokens = min(b, tokens + (start - t) * r)
        t = start
        if tokens < n:
            t += (Fraction(n) - tokens) / r
            tokens = Fraction(n)
        tokens -= Fraction(n)
        done.append(t)
    return done


async def _run_requests(
    rate: float, burst: int, requests: list[tuple[int, int]]
) -> tuple[list[tuple[float, float]], list[float]]:
    """Start each request at its time; return (call time, n) and finish time in call order."""
    bucket = TokenBucket(rate, burst)
    calls: list[tuple[float, float]] = []
    finished: dict[int, float] = {}

    async def one(n: int) -> None:
        seq = len(calls)  # the order acquire() is really called in
        calls.append((anyio.current_time(), n))
        await bucket.acquire(n)
        finished[seq] = anyio.current_time()

    async with anyio.create_task_group() as tg:
        for quarter_seconds, n in sorted(requests):
            await anyio.sleep_until(quarter_seconds / 4)
            tg.start_soon(one, min(n, burst))
    return calls, [finished[i] for i in range(len(calls))]


@given(
    rate=st.sampled_from([0.5, 1, 2.5, 10]),
    burst=st.sampled_from([1, 2, 5]),
    requests=st.lists(st.tuples(st.integers(0, 12), st.integers(1, 5)), min_size=1, max_size=12),
)
@settings(max_examples=30, deadline=None)
def test_bucket_matches_an_exact_model(
    rate: float, burst: int, requests: list[tuple[int, int]]
) -> None:
    for backend, options in virtual_time_backends():
        calls, finished = anyio.run(
            _run_requests, rate, burst, requests, backend=backend, backend_options=options
        )
        assert len(calls) == len(requests)
        expected = _model_completions(rate, burst, calls)
        assert finished == pytest.approx([float(e) for e in expected], abs=1e-9)
        # Served in call order, and never more than burst + rate * t tokens by time t.
        assert finished == sorted(finished)
        for i, t in enumerate(finished):
            granted = sum(n for _, n in calls[: i + 1])
            assert granted <= burst + rate * t + 1e-9
