from __future__ import annotations

import math

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioflow import HealthMonitor, ResourceManager, RetryPolicies, RetryPolicy, load_of

pytestmark = pytest.mark.anyio

LLM = RetryPolicy(attempts=3, initial_delay=1, multiplier=2, max_delay=5)
TOOL = RetryPolicy(attempts=2, initial_delay=2, multiplier=1, max_delay=2, on=(OSError,))
STORAGE = RetryPolicy(attempts=5, initial_delay=0.5, max_delay=2)


def policies(**kwargs: object) -> RetryPolicies:
    return RetryPolicies({"llm": LLM, "tool": TOOL, "storage": STORAGE}, **kwargs)  # type: ignore[arg-type]


def test_no_load_and_normal_priority_give_the_base_policy() -> None:
    p = policies()
    assert p.get("llm") is LLM
    assert p.get("tool", load=0.0, priority="normal") is TOOL
    assert p.types == ("llm", "tool", "storage")
    assert "llm" in p
    assert list(p) == ["llm", "tool", "storage"]
    assert len(p) == 3


def test_the_documented_rule_at_half_load() -> None:
    adapted = policies().get("llm", load=0.5)
    # attempts = ceil(3 * 0.5) = 2; waits scaled by 1 - 0.5 * 0.9 = 0.55
    assert adapted.attempts == 2
    assert adapted.initial_delay == pytest.approx(0.55)
    assert adapted.max_delay == pytest.approx(2.75)
    assert (adapted.multiplier, adapted.jitter, adapted.on) == (LLM.multiplier, 0, LLM.on)


def test_full_load_leaves_one_attempt_and_a_tenth_of_the_waits() -> None:
    p = policies()
    assert p.get("storage", load=1).attempts == 1
    high = p.get("storage", load=1, priority="high")
    assert high.attempts == 2
    assert high.delays() == pytest.approx((0.05,))


@pytest.mark.parametrize(
    ("priority", "attempts"), [("low", 2), ("normal", 3), ("high", 4), (3, 6), (-10, 1)]
)
def test_priority_adds_or_removes_attempts(priority: str | int, attempts: int) -> None:
    adapted = policies().get("llm", priority=priority)  # type: ignore[arg-type]
    assert adapted.attempts == attempts
    assert adapted.initial_delay == LLM.initial_delay


def test_float_noise_does_not_add_an_attempt() -> None:
    assert policies().get("llm", load=1 / 3).attempts == 2


def test_min_wait_fraction_is_configurable() -> None:
    assert policies(min_wait_fraction=0.5).get("llm", load=1).initial_delay == 0.5
    assert policies(min_wait_fraction=0).get("llm", load=1).initial_delay == 0


def test_unknown_operation_type_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"unknown operation type 'cache'; known types: 'llm', "):
        policies().get("cache")
    fallback = RetryPolicy(attempts=1)
    assert policies(default=fallback).get("cache") is fallback
    assert policies(default=fallback).base("llm") is LLM


@given(
    load_a=st.floats(0, 1),
    load_b=st.floats(0, 1),
    attempts=st.integers(1, 10),
    delay=st.floats(0, 10),
    boost=st.integers(-3, 3),
)
@settings(max_examples=60)
def test_more_load_never_means_more_attempts_or_longer_waits(
    load_a: float, load_b: float, attempts: int, delay: float, boost: int
) -> None:
    low, high = sorted((load_a, load_b))
    p = RetryPolicies({"op": RetryPolicy(attempts=attempts, initial_delay=delay, max_delay=10)})
    calm, busy = p.get("op", load=low, priority=boost), p.get("op", load=high, priority=boost)
    assert busy.attempts <= calm.attempts
    assert busy.initial_delay <= calm.initial_delay
    assert busy.max_delay <= calm.max_delay
    assert 1 <= busy.attempts <= max(1, attempts + boost)
    more = p.get("op", load=low, priority=boost + 1)
    assert more.attempts >= calm.attempts


async def test_load_from_a_resource_manager() -> None:
    rm = ResourceManager(limit=4)
    release = anyio.Event()
    assert load_of(rm) == 0
    async with anyio.create_task_group() as tg:
        for _ in range(2):
            tg.start_soon(rm.run, release.wait)
        await anyio.sleep(0.1)
        assert load_of(rm) == 0.5
        assert policies().get("llm", load=rm).attempts == 2
        for _ in range(4):
            tg.start_soon(rm.run, release.wait)
        await anyio.sleep(0.1)
        assert load_of(rm) == 1  # 4 running + 2 queued, capped at 1
        release.set()


async def test_load_from_a_health_monitor() -> None:
    async with HealthMonitor(max_cpu_percent=80, sampler=lambda: (40.0, 30.0)) as health:
        assert load_of(health) == 0.5
        assert policies().get("storage", load=health).attempts == 3
    assert load_of(health) == 0  # stopped: no data


async def test_adapted_policy_still_sees_inside_groups_and_honours_retry_after() -> None:
    class Busy(ConnectionError):
        retry_after = 4.0

    calls: list[float] = []

    async def flaky() -> str:
        calls.append(anyio.current_time())
        if len(calls) == 1:
            raise ExceptionGroup("both", [Busy(), ConnectionError()])
        return "done"

    # At full load the planned wait is 0.1 s, but the server asked for 4 s.
    policy = policies().get("llm", load=1.0, priority="high")
    assert await policy.call(flaky) == "done"
    assert calls == [0, 4]


@pytest.mark.parametrize(
    ("load", "error", "message"),
    [
        (-0.1, ValueError, r"load must be a number in \[0, 1\], got -0.1"),
        (1.5, ValueError, r"load must be a number in \[0, 1\], got 1.5"),
        (math.nan, ValueError, r"load must be a number in \[0, 1\], got nan"),
        (True, TypeError, "load must be a number in .* got True"),
        ("high", TypeError, "load must be a number in .* got 'high'"),
    ],
)
def test_bad_load_is_rejected(load: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        policies().get("llm", load=load)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("priority", "error"), [("urgent", ValueError), (True, TypeError), (None, ValueError)]
)
def test_bad_priority_is_rejected(priority: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="priority must be 'low', 'normal', 'high' or an int"):
        policies().get("llm", priority=priority)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (([("llm", LLM)],), {}, TypeError, "policies must be a mapping"),
        (({"llm": {"attempts": 3}},), {}, TypeError, r"policies\['llm'\] must be a RetryPolicy"),
        (({"": LLM},), {}, TypeError, "operation types must be non-empty strings, got ''"),
        (({"llm": LLM},), {"default": 3}, TypeError, "default must be a RetryPolicy or None"),
        (({"llm": LLM},), {"min_wait_fraction": 2}, ValueError, r"min_wait_fraction .* got 2"),
    ],
)
def test_bad_construction_is_rejected(
    args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        RetryPolicies(*args, **kwargs)  # type: ignore[arg-type]


def test_policies_are_frozen_values() -> None:
    p = policies()
    with pytest.raises(AttributeError):
        p.min_wait_fraction = 0.5  # type: ignore[misc]
    assert p == policies()
