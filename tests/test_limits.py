from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioflow import (
    HealthSource,
    PoolStatistics,
    ResourceExhaustedError,
    ResourceManager,
    ResourceManagerEvent,
    ResourceManagerStatistics,
)
from trioflow.testing import virtual_time_backends

pytestmark = pytest.mark.anyio


class Tracker:
    """Counts the work inside slots, per resource, and remembers the most seen at once."""

    def __init__(self) -> None:
        self.now: collections.Counter[str] = collections.Counter()
        self.most: collections.Counter[str] = collections.Counter()
        self.starts: list[float] = []
        self.ends: list[float] = []

    async def work(self, rm: ResourceManager, seconds: float, *pools: str) -> None:
        async with rm.slot(*pools):
            self.starts.append(anyio.current_time())
            for key in ("", *pools):
                self.now[key] += 1
                self.most[key] = max(self.most[key], self.now[key])
            try:
                await anyio.sleep(seconds)
            finally:
                for key in ("", *pools):
                    self.now[key] -= 1
            self.ends.append(anyio.current_time())


async def sleeper(seconds: float) -> float:
    await anyio.sleep(seconds)
    return seconds


async def wait_until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(1000):
        while not predicate():
            await anyio.sleep(0.001)


async def assert_admitted_at_once(rm: ResourceManager, *pools: str) -> None:
    """Enter and leave a slot, checking it did not wait for anything."""
    before = rm.statistics()
    start = anyio.current_time()
    async with rm.slot(*pools):
        assert anyio.current_time() == start
    after = rm.statistics()
    assert after.throttled == before.throttled
    assert after.executed == before.executed + 1


def idle(rm: ResourceManager) -> bool:
    s = rm.statistics()
    return s.executing == 0 and s.waiting == 0


# --- the general limit ------------------------------------------------------------------


async def test_four_ten_second_operations_with_limit_two_take_twenty_seconds() -> None:
    rm = ResourceManager(limit=2)
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(rm.run, sleeper, 10)
    assert anyio.current_time() == 20
    stats = rm.statistics()
    assert stats == ResourceManagerStatistics(
        limit=2,
        executing=0,
        waiting=0,
        executed=4,
        failed=0,
        mean_duration=10.0,
        throttled=2,
        pools={},
    )


async def test_run_returns_the_value_and_passes_arguments() -> None:
    rm = ResourceManager(limit=1, pools={"llm": 1})

    async def add(a: int, b: int) -> int:
        await anyio.sleep(1)
        return a + b

    assert await rm.run(add, 2, 3, pools=["llm"]) == 5
    stats = rm.statistics()
    assert stats.executed == 1
    assert stats.pools["llm"].executed == 1
    assert stats.pools["llm"].mean_duration == 1.0


async def test_statistics_while_running_and_waiting() -> None:
    rm = ResourceManager(limit=2, pools={"llm": 1})
    tracker = Tracker()
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(tracker.work, rm, 10)
        await anyio.sleep(1)
        tg.start_soon(tracker.work, rm, 10, "llm")
        await anyio.sleep(1)
        stats = rm.statistics()
        assert (stats.executing, stats.waiting, stats.throttled) == (2, 2, 2)
        # the llm one waits for a general slot first: it holds no llm token yet
        assert (stats.pools["llm"].executing, stats.pools["llm"].waiting) == (0, 0)
    assert tracker.starts == [0, 0, 10, 10]
    assert anyio.current_time() == 20
    assert tracker.most[""] == 2


async def test_no_wait_means_not_throttled() -> None:
    rm = ResourceManager(limit=3, pools={"a": 3})
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(functools.partial(rm.run, sleeper, 1, pools=["a"]))
    stats = rm.statistics()
    assert stats.throttled == 0
    assert stats.pools["a"].throttled == 0
    assert anyio.current_time() == 1


# --- pools ----------------------------------------------------------------------------------


async def test_pools_limit_concurrency() -> None:
    rm = ResourceManager(limit=20, pools={"llm": 2, "tool": 3})
    tracker = Tracker()
    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(tracker.work, rm, 10, "llm")
        for _ in range(6):
            tg.start_soon(tracker.work, rm, 10, "tool")
    assert tracker.most["llm"] == 2
    assert tracker.most["tool"] == 3
    assert anyio.current_time() == 30
    stats = rm.statistics()
    assert stats.pools["llm"] == PoolStatistics(
        limit=2, executing=0, waiting=0, executed=6, failed=0, mean_duration=10.0, throttled=4
    )
    assert stats.pools["tool"].throttled == 3
    assert stats.executed == 12


async def test_a_slot_with_two_pools_holds_both() -> None:
    rm = ResourceManager(limit=10, pools={"llm": 1, "tool": 1})
    tracker = Tracker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(tracker.work, rm, 10, "llm", "tool")
        await anyio.sleep(1)
        tg.start_soon(tracker.work, rm, 1, "tool")
        tg.start_soon(tracker.work, rm, 1, "llm")
    assert tracker.starts == [0, 10, 10]
    assert anyio.current_time() == 11


async def test_pool_waiting_statistics() -> None:
    rm = ResourceManager(limit=5, pools={"a": 1})
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(rm.run, sleeper, 10, pools=["a"]))
        await anyio.sleep(1)
        tg.start_soon(functools.partial(rm.run, sleeper, 10, pools=["a"]))
        await anyio.sleep(1)
        stats = rm.statistics()
        assert (stats.executing, stats.waiting, stats.throttled) == (1, 1, 1)
        pool = stats.pools["a"]
        assert (pool.executing, pool.waiting, pool.throttled) == (1, 1, 1)
    assert anyio.current_time() == 20


async def test_a_task_waiting_for_a_pool_holds_its_general_slot() -> None:
    # general first, then pools: the documented price of the global order
    rm = ResourceManager(limit=2, pools={"a": 1})
    tracker = Tracker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(tracker.work, rm, 10, "a")
        await anyio.sleep(1)
        tg.start_soon(tracker.work, rm, 10, "a")
        await anyio.sleep(1)
        tg.start_soon(tracker.work, rm, 1)
    assert tracker.starts == [0, 10, 10]


async def test_pool_introspection() -> None:
    rm = ResourceManager(pools={"llm": 5, "tool": 10})
    assert rm.pools == ("llm", "tool")
    assert rm.pool_size("tool") == 10
    assert rm.limit == 8
    assert repr(rm) == "ResourceManager(limit=8, pools={'llm': 5, 'tool': 10})"
    rm.set_pool_size("tool", 2)
    assert rm.pool_size("tool") == 2
    assert rm.statistics().pools["tool"].limit == 2


async def test_nested_slots_in_one_task() -> None:
    rm = ResourceManager(limit=2, pools={"a": 1, "b": 1})
    async with rm.slot("a"), rm.slot("b"):
        assert rm.statistics().executing == 2
    assert idle(rm)


# --- resizing while work runs ---------------------------------------------------------------


async def test_growing_the_limit_admits_waiters_at_once() -> None:
    rm = ResourceManager(limit=1)
    tracker = Tracker()
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(tracker.work, rm, 10)
        await anyio.sleep(5)
        assert rm.statistics().waiting == 2
        rm.limit = 3
    assert tracker.starts == [0, 5, 5]
    assert anyio.current_time() == 15
    assert rm.statistics().limit == 3


async def test_shrinking_lets_running_work_finish_and_admits_below_the_new_limit() -> None:
    rm = ResourceManager(limit=3)
    tracker = Tracker()
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(tracker.work, rm, 10)
        await anyio.sleep(5)
        rm.limit = 1
        stats = rm.statistics()
        assert (stats.limit, stats.executing, stats.waiting) == (1, 3, 2)
    # the three running ones finished at 10, uncancelled; then one at a time
    assert tracker.starts == [0, 0, 0, 10, 20]
    assert tracker.ends == [10, 10, 10, 20, 30]
    assert rm.statistics().executed == 5


async def test_shrinking_then_growing_loses_no_waiter() -> None:
    rm = ResourceManager(limit=4)
    tracker = Tracker()
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(tracker.work, rm, 10)
        await anyio.sleep(1)
        rm.limit = 1
        await anyio.sleep(1)
        rm.limit = 2
        await anyio.sleep(1)
        rm.limit = 6
    # at 3: still 4 running (>= 6? no): 2 more admitted at once
    assert tracker.starts == [0, 0, 0, 0, 3, 3, 10, 10]
    assert len(tracker.ends) == 8
    assert tracker.most[""] == 6


async def test_resizing_a_pool_while_work_runs() -> None:
    rm = ResourceManager(limit=10, pools={"llm": 2})
    tracker = Tracker()
    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(tracker.work, rm, 10, "llm")
        await anyio.sleep(5)
        rm.set_pool_size("llm", 1)
        await anyio.sleep(10)  # t=15: the first two finished at 10, one more admitted
        rm.set_pool_size("llm", 4)  # three waiters admitted at once
    assert tracker.starts == [0, 0, 10, 15, 15, 15]
    assert anyio.current_time() == 25


# --- release on error and cancellation -------------------------------------------------------


async def test_slot_is_released_on_error() -> None:
    rm = ResourceManager(limit=1, pools={"a": 1})

    async def boom() -> None:
        await anyio.sleep(2)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await rm.run(boom, pools=["a"])
    stats = rm.statistics()
    assert (stats.executing, stats.waiting, stats.executed, stats.failed) == (0, 0, 1, 1)
    assert stats.mean_duration == 2.0
    assert stats.pools["a"].failed == 1
    await assert_admitted_at_once(rm, "a")


async def test_an_exception_group_counts_as_a_failure() -> None:
    rm = ResourceManager(limit=1)
    with pytest.raises(ExceptionGroup):
        async with rm.slot():
            raise ExceptionGroup("g", [ValueError()])
    assert rm.statistics().failed == 1


async def test_slot_is_released_on_cancellation_while_running() -> None:
    rm = ResourceManager(limit=1, pools={"a": 1})
    with anyio.move_on_after(5):
        await rm.run(sleeper, 100, pools=["a"])
    assert anyio.current_time() == 5
    stats = rm.statistics()
    assert (stats.executing, stats.waiting, stats.executed, stats.failed) == (0, 0, 0, 0)
    assert stats.pools["a"].executing == 0
    await assert_admitted_at_once(rm, "a")


async def test_cancellation_while_waiting_releases_earlier_tokens() -> None:
    # The waiter holds the general slot and pool "a" while it waits for pool "b".
    rm = ResourceManager(limit=2, pools={"a": 1, "b": 1})
    tracker = Tracker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(tracker.work, rm, 100, "b")
        await anyio.sleep(1)
        with anyio.move_on_after(1) as scope:
            async with rm.slot("a", "b"):
                pytest.fail("must not be admitted")
        assert scope.cancelled_caught
        stats = rm.statistics()
        assert (stats.executing, stats.waiting) == (1, 0)
        assert stats.pools["b"].waiting == 0
        # general and "a" were given back: this one is admitted at once.
        await assert_admitted_at_once(rm, "a")
        tg.cancel_scope.cancel()
    assert idle(rm)
    assert rm.statistics().executed == 1


async def test_other_base_exceptions_release_and_are_not_counted() -> None:
    class Stop(BaseException):
        pass

    rm = ResourceManager(limit=1, pools={"a": 1})
    seen: list[ResourceManagerEvent] = []
    rm.add_listener(seen.append)
    with pytest.raises(Stop):
        async with rm.slot("a"):
            raise Stop
    assert idle(rm)
    assert (rm.statistics().executed, rm.statistics().failed, seen) == (0, 0, [])
    await assert_admitted_at_once(rm, "a")


async def test_cancelled_scope_is_not_admitted() -> None:
    rm = ResourceManager(limit=1)
    with anyio.CancelScope() as scope:
        scope.cancel()
        async with rm.slot():
            pytest.fail("a cancelled task must not enter")
    assert idle(rm)
    assert rm.statistics().executed == 0


async def test_no_deadlock_with_pools_named_in_different_orders() -> None:
    rm = ResourceManager(limit=4, pools={"a": 1, "b": 1})
    done = 0

    async def caller(*pools: str) -> None:
        nonlocal done
        for _ in range(20):
            async with rm.slot(*pools):
                await anyio.sleep(1)
                done += 1

    with anyio.fail_after(1000):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "a", "b")
            tg.start_soon(caller, "b", "a")
            tg.start_soon(caller, "b", "a")
            tg.start_soon(caller, "a", "b")
    assert done == 80
    assert anyio.current_time() == 80


async def test_a_slot_can_be_entered_only_once() -> None:
    rm = ResourceManager(limit=2)
    slot = rm.slot()
    async with slot:
        pass
    with pytest.raises(RuntimeError, match="entered only once"):
        async with slot:
            pass


# --- health -------------------------------------------------------------------------------


class FakeHealth:
    def __init__(self, healthy: bool) -> None:
        self._healthy = healthy
        self._event = anyio.Event()
        self.waits = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    def set(self, healthy: bool) -> None:
        self._healthy = healthy
        if healthy:
            self._event.set()
        else:
            self._event = anyio.Event()

    async def wait_healthy(self) -> None:
        self.waits += 1
        await self._event.wait()


async def test_fake_health_is_a_health_source() -> None:
    assert isinstance(FakeHealth(True), HealthSource)


async def test_unhealthy_waits_until_healthy() -> None:
    health = FakeHealth(False)
    rm = ResourceManager(limit=4, health=health)
    tracker = Tracker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(tracker.work, rm, 1)
        tg.start_soon(tracker.work, rm, 1)
        await anyio.sleep(5)
        stats = rm.statistics()
        assert (stats.executing, stats.waiting, stats.throttled) == (0, 2, 2)
        health.set(True)
    assert tracker.starts == [5, 5]
    assert health.waits == 2
    # healthy: no wait at all
    await rm.run(sleeper, 1)
    assert health.waits == 2


async def test_waiting_for_health_is_cancellable() -> None:
    rm = ResourceManager(limit=1, health=FakeHealth(False))
    with anyio.move_on_after(3) as scope:
        await rm.run(sleeper, 1)
    assert scope.cancelled_caught
    assert anyio.current_time() == 3
    assert idle(rm)
    assert rm.statistics().throttled == 1  # it did wait, though it was never admitted


async def test_unhealthy_fails_fast_when_asked() -> None:
    health = FakeHealth(False)
    rm = ResourceManager(limit=1, health=health, when_unhealthy="fail")
    with pytest.raises(ResourceExhaustedError, match="health source reports unhealthy"):
        await rm.run(sleeper, 1)
    assert anyio.current_time() == 0
    stats = rm.statistics()
    assert (stats.executing, stats.waiting, stats.executed, stats.throttled) == (0, 0, 0, 0)
    health.set(True)
    assert await rm.run(sleeper, 1) == 1


# --- listeners ------------------------------------------------------------------------------


async def test_listener_sees_duration_and_success_but_not_cancellation() -> None:
    rm = ResourceManager(limit=2)
    seen: list[tuple[float, bool]] = []
    unsubscribe = rm.add_listener(
        lambda e: seen.append((e.duration, e.ok)) if e.kind == "released" else None
    )

    async def fail_after_one() -> None:
        await anyio.sleep(1)
        raise ValueError

    await rm.run(sleeper, 3)
    with pytest.raises(ValueError):  # noqa: PT011 - the error itself is not under test
        await rm.run(fail_after_one)
    with anyio.move_on_after(1):
        await rm.run(sleeper, 5)
    assert seen == [(3, True), (1, False)]
    unsubscribe()
    unsubscribe()
    await rm.run(sleeper, 1)
    assert len(seen) == 2


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"limit": 0}, ValueError, "limit must be an int >= 1, got 0"),
        ({"limit": -3}, ValueError, "limit must be an int >= 1, got -3"),
        ({"limit": 2.5}, TypeError, "limit must be an int >= 1, got 2.5"),
        ({"limit": True}, TypeError, "limit must be an int >= 1, got True"),
        ({"limit": None}, TypeError, "limit must be an int >= 1, got None"),
        ({"pools": {"llm": 0}}, ValueError, r"pools\['llm'\] must be an int >= 1, got 0"),
        ({"pools": {"llm": 1.0}}, TypeError, r"pools\['llm'\] must be an int >= 1, got 1.0"),
        ({"pools": {3: 1}}, TypeError, "pool names must be strings, got 3"),
        ({"pools": {"": 1}}, ValueError, "pool names must be non-empty strings"),
        ({"pools": [("a", 1)]}, TypeError, "pools must be a mapping of pool name to size"),
        ({"when_unhealthy": "retry"}, ValueError, "when_unhealthy must be 'wait' or 'fail'"),
        ({"health": object()}, TypeError, "health must have a 'healthy' property"),
    ],
)
def test_bad_construction_is_rejected(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ResourceManager(**kwargs)


async def test_bad_slot_arguments_are_rejected_before_waiting() -> None:
    rm = ResourceManager(limit=1, pools={"llm": 1, "tool": 1})
    async with rm.slot():  # the only general slot is held: any wait would hang
        with pytest.raises(ValueError, match="unknown pool 'gpu'; known pools: 'llm', 'tool'"):
            rm.slot("llm", "gpu")
        with pytest.raises(ValueError, match=r"pool 'llm' is named twice in one slot\(\)"):
            rm.slot("llm", "tool", "llm")
        with pytest.raises(TypeError, match="pool names must be strings, got 1"):
            rm.slot(1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="unknown pool 'gpu'"):
            await rm.run(sleeper, 1, pools=["gpu"])
        with pytest.raises(TypeError, match="pools must be a sequence of pool names"):
            await rm.run(sleeper, 1, pools="llm")
        with pytest.raises(TypeError, match="fn must be an async callable"):
            await rm.run(None)  # type: ignore[arg-type]
    assert anyio.current_time() == 0
    assert rm.statistics().executed == 1


def test_bad_resizes_are_rejected_and_change_nothing() -> None:
    rm = ResourceManager(limit=2, pools={"llm": 3})
    with pytest.raises(ValueError, match="limit must be an int >= 1, got 0"):
        rm.limit = 0
    with pytest.raises(TypeError, match=r"limit must be an int >= 1, got 1\.5"):
        rm.limit = 1.5  # type: ignore[assignment]
    with pytest.raises(ValueError, match="size of pool 'llm' must be an int >= 1, got -1"):
        rm.set_pool_size("llm", -1)
    with pytest.raises(ValueError, match="unknown pool 'gpu'; known pools: 'llm'"):
        rm.set_pool_size("gpu", 1)
    with pytest.raises(ValueError, match="unknown pool 'gpu'"):
        rm.pool_size("gpu")
    with pytest.raises(TypeError, match="fn must be callable, got 3"):
        rm.add_listener(3)  # type: ignore[arg-type]
    assert (rm.limit, rm.pool_size("llm")) == (2, 3)


def test_unknown_pool_error_with_no_pools() -> None:
    with pytest.raises(ValueError, match="unknown pool 'x'; known pools: none"):
        ResourceManager().slot("x")


# --- values ---------------------------------------------------------------------------------


def test_statistics_are_frozen_snapshots() -> None:
    rm = ResourceManager(limit=3, pools={"llm": 2})
    stats = rm.statistics()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.limit = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        stats.pools["gpu"] = stats.pools["llm"]  # type: ignore[index]
    rm.limit = 5
    assert stats.limit == 3
    assert rm.statistics().limit == 5


def test_created_outside_an_event_loop_and_used_in_one() -> None:
    rm = ResourceManager(limit=2, pools={"a": 1})
    rm.limit = 3

    async def main() -> float:
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(functools.partial(rm.run, sleeper, 10, pools=["a"]))
        return anyio.current_time()

    backend, options = virtual_time_backends()[0]
    assert anyio.run(main, backend=backend, backend_options=options) == 40
    assert rm.statistics().pools["a"].executed == 4


# --- property: random schedules never exceed any limit and all complete -------------------

POOLS = ("a", "b", "c")


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    limit = draw(st.integers(1, 4))
    sizes = {name: draw(st.integers(1, 3)) for name in POOLS}
    operations = draw(
        st.lists(
            st.tuples(
                st.integers(0, 6),  # start
                st.integers(0, 4),  # duration
                st.lists(st.sampled_from(POOLS), unique=True, max_size=3),  # pools, any order
                st.booleans(),  # fails?
            ),
            min_size=1,
            max_size=14,
        )
    )
    resizes = draw(
        st.lists(
            st.tuples(st.integers(0, 12), st.sampled_from(("", *POOLS)), st.integers(1, 4)),
            max_size=6,
        )
    )
    return {"limit": limit, "sizes": sizes, "operations": operations, "resizes": resizes}


async def run_schedule(schedule: dict[str, Any]) -> None:
    rm = ResourceManager(limit=schedule["limit"], pools=schedule["sizes"])
    inside: dict[str, dict[int, int]] = {key: {} for key in ("", *POOLS)}  # op -> entry seq
    waiting: dict[int, tuple[str, ...]] = {}  # op -> the keys it needs, until it is inside
    # Every size each key has had, with the event number it took effect at.
    history: dict[str, list[tuple[int, int]]] = {"": [(0, schedule["limit"])]}
    history.update({name: [(0, size)] for name, size in schedule["sizes"].items()})
    seq = 0
    completed = 0

    def bound(key: str, since: int) -> int:
        """The largest size ``key`` has had from event ``since`` on.

        A token is granted only while fewer are held than the size at that moment. Take the
        work inside that started waiting last (at event ``since``): when the last of the tokens
        held now was granted, at or after ``since``, all of them were already held; so no more
        can be inside than the largest size from ``since`` on. (Running work is never cancelled
        by a shrink, so the size now alone is not a bound.)
        """
        in_effect = max((i for i, (at, _) in enumerate(history[key]) if at <= since), default=0)
        return max(size for _, size in history[key][in_effect:])

    def size(key: str) -> int:
        return rm.limit if key == "" else rm.pool_size(key)

    def audit() -> None:
        """No waiter may stay blocked while every resource it needs has room for it.

        A resource's tokens are held by the work inside and by waiters that took it and wait
        for a later one; if even counting every other waiter as a holder leaves room in each
        resource a waiter needs, it must have been admitted (growing admits waiters at once).
        """
        for index, keys in waiting.items():
            if all(
                len(inside[key])
                + sum(1 for other, needs in waiting.items() if other != index and key in needs)
                < size(key)
                for key in keys
            ):
                raise AssertionError(f"operation {index} waits for {keys} though all have room")

    async def operation(
        index: int, start: int, duration: int, pools: list[str], fails: bool
    ) -> None:
        nonlocal seq, completed
        await anyio.sleep(start)
        seq += 1
        entered = seq
        waiting[index] = ("", *pools)
        try:
            async with rm.slot(*pools):
                del waiting[index]
                for key in ("", *pools):
                    inside[key][index] = entered
                    n = len(inside[key])
                    limit = bound(key, max(inside[key].values()))
                    assert n <= limit, (key, n, limit)
                try:
                    await anyio.sleep(duration)
                    if fails:
                        raise ValueError("planned")
                finally:
                    for key in ("", *pools):
                        del inside[key][index]
        except ValueError:
            pass
        completed += 1

    async def resize(at: int, key: str, new: int) -> None:
        nonlocal seq
        await anyio.sleep(at)
        if key == "":
            rm.limit = new
        else:
            rm.set_pool_size(key, new)
        seq += 1
        history[key].append((seq, new))

    async def auditor() -> None:
        # Every event happens at a whole second; half a second later all of them have settled.
        now = 0.5
        while completed < len(schedule["operations"]):
            await anyio.sleep(now - anyio.current_time())
            audit()
            now += 1

    with anyio.fail_after(10_000):
        async with anyio.create_task_group() as tg:
            for index, op in enumerate(schedule["operations"]):
                tg.start_soon(operation, index, *op)
            for event in schedule["resizes"]:
                tg.start_soon(resize, *event)
            tg.start_soon(auditor)
    operations = schedule["operations"]
    assert completed == len(operations)
    stats = rm.statistics()
    assert (stats.executing, stats.waiting) == (0, 0)
    assert stats.executed == len(operations)
    assert stats.failed == sum(1 for op in operations if op[3])
    for name in POOLS:
        assert stats.pools[name].executed == sum(1 for op in operations if name in op[2])
        assert stats.pools[name].executing == 0


@pytest.mark.parametrize("backend_index", [0, 1], ids=["trio", "asyncio"])
@settings(max_examples=40)
@given(schedule=schedules())
def test_random_schedules_never_exceed_a_limit_and_all_complete(
    backend_index: int, schedule: dict[str, Any]
) -> None:
    backend, options = virtual_time_backends()[backend_index]
    anyio.run(run_schedule, schedule, backend=backend, backend_options=options)


# --- keyed pools: a limiter per key, made on demand and dropped when idle -------------------
async def test_a_keyed_pool_limits_each_key_and_drops_idle_keys() -> None:
    rm = ResourceManager(limit=10, keyed={"user": 2})
    tracker = collections.Counter[str]()
    most = collections.Counter[str]()

    async def work(user: str) -> None:
        async with rm.slot(keys={"user": user}):
            tracker[user] += 1
            most[user] = max(most[user], tracker[user])
            await anyio.sleep(1)
            tracker[user] -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(work, "heavy")
        tg.start_soon(work, "light")
        await anyio.sleep(0.5)
        stats = rm.statistics().keyed["user"]
        assert (stats.keys, stats.executing, stats.waiting) == (2, 3, 4)
        assert rm.statistics().executing == 3  # waiting for a key's token holds no general one
    assert anyio.current_time() == 3
    assert most == {"heavy": 2, "light": 1}
    stats = rm.statistics().keyed["user"]
    assert (stats.keys, stats.executing, stats.waiting, stats.executed) == (0, 0, 0, 7)
    assert stats.throttled == 4
    assert stats.limit == rm.pool_size("user") == 2
    assert rm.keyed == ("user",)
    assert "keyed={'user': 2}" in repr(rm)


async def test_keys_are_taken_before_the_general_token() -> None:
    rm = ResourceManager(limit=1, keyed={"user": 1})
    order: list[str] = []

    async def work(user: str, seconds: float) -> None:
        async with rm.slot(keys={"user": user}):
            order.append(user)
            await anyio.sleep(seconds)

    async with anyio.create_task_group() as tg:
        tg.start_soon(work, "a", 2)
        await anyio.sleep(0.1)
        tg.start_soon(work, "a", 1)  # waits for a's token, holding no general one
        await anyio.sleep(0.1)
        tg.start_soon(work, "b", 1)  # waits for the general token only
        await anyio.sleep(0.1)
        stats = rm.statistics()
        assert (stats.executing, stats.waiting, stats.keyed["user"].waiting) == (1, 2, 1)
        assert stats.keyed["user"].executing == 1  # the second "a" took no token at all
    assert sorted(order) == ["a", "a", "b"]
    assert anyio.current_time() == 4


async def test_acquire_nowait_acquire_and_release() -> None:
    rm = ResourceManager(limit=1, keyed={"user": 1})
    first = rm.slot(keys={"user": "a"})
    first.acquire_nowait()
    second = rm.slot(keys={"user": "b"})
    with pytest.raises(anyio.WouldBlock):
        second.acquire_nowait()  # the general token is taken: b holds nothing
    stats = rm.statistics()
    assert (stats.keyed["user"].keys, stats.waiting, stats.throttled) == (1, 0, 0)
    waits: list[str] = []

    async def later() -> None:
        await second.acquire(on_wait=lambda: waits.append("waits"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        await anyio.sleep(1)
        assert rm.statistics().waiting == 1
        first.release()
    assert waits == ["waits"]
    assert rm.statistics().executing == 1
    second.release()
    stats = rm.statistics()
    assert (stats.executing, stats.executed, stats.keyed["user"].keys) == (0, 2, 0)
    with pytest.raises(RuntimeError, match="only once"):
        second.acquire_nowait()


async def test_on_wait_may_refuse_and_then_nothing_is_held() -> None:
    rm = ResourceManager(limit=5, keyed={"user": 1})

    def refuse() -> None:
        raise ResourceExhaustedError("queue full")

    async with rm.slot(keys={"user": "a"}):
        with pytest.raises(ResourceExhaustedError, match="queue full"):
            await rm.slot(keys={"user": "a"}).acquire(on_wait=refuse)
        stats = rm.statistics()
        assert (stats.executing, stats.waiting, stats.keyed["user"].keys) == (1, 0, 1)
    assert rm.statistics().keyed["user"].keys == 0


async def test_keyed_pools_are_checked_and_resized() -> None:
    with pytest.raises(ValueError, match=r"either a pool or a keyed pool, got both for \['x'\]"):
        ResourceManager(pools={"x": 1}, keyed={"x": 1})
    with pytest.raises(ValueError, match=r"keyed\['user'\] must be an int >= 1, got 0"):
        ResourceManager(keyed={"user": 0})
    with pytest.raises(TypeError, match="keyed must be a mapping"):
        ResourceManager(keyed=[("user", 1)])  # type: ignore[arg-type]
    rm = ResourceManager(limit=10, keyed={"user": 1})
    with pytest.raises(ValueError, match="unknown keyed pool 'team'; known keyed pools: 'user'"):
        rm.slot(keys={"team": "a"})
    with pytest.raises(TypeError, match=r"keys\['user'\] must be hashable"):
        rm.slot(keys={"user": ["a"]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="keys must be a mapping"):
        rm.slot(keys="user")  # type: ignore[arg-type]
    inside = 0
    most = 0

    async def work() -> None:
        nonlocal inside, most
        async with rm.slot(keys={"user": "a"}):
            inside += 1
            most = max(most, inside)
            await anyio.sleep(1)
            inside -= 1

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(work)
        await anyio.sleep(0.5)
        rm.set_pool_size("user", 3)  # the live key grows at once
    assert (most, anyio.current_time()) == (3, 2)  # 0-1, 0.5-1.5 twice, then 1-2
    rm.set_pool_size("user", 2)  # and keys to come get the new size
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(work)
    assert anyio.current_time() == 4


# --- property: keyed schedules never exceed a per-key limit, lose no waiter, drop idle keys ---
KEYS = ("k0", "k1", "k2")


@st.composite
def keyed_schedules(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "limit": draw(st.integers(1, 4)),
        "per_key": draw(st.integers(1, 3)),
        "pool": draw(st.integers(1, 3)),
        "operations": draw(
            st.lists(
                st.tuples(
                    st.integers(0, 5),  # start
                    st.integers(0, 3),  # duration
                    st.sampled_from(KEYS),
                    st.booleans(),  # also the named pool?
                    st.sampled_from((None, 0.5, 1.5, 3.5)),  # the caller gives up after
                    st.booleans(),  # fails?
                ),
                min_size=1,
                max_size=14,
            )
        ),
    }


async def run_keyed_schedule(schedule: dict[str, Any]) -> None:
    rm = ResourceManager(
        limit=schedule["limit"], pools={"p": schedule["pool"]}, keyed={"user": schedule["per_key"]}
    )
    inside: collections.Counter[str] = collections.Counter()
    live: collections.Counter[str] = collections.Counter()  # ops waiting for or holding a key
    ended = 0

    def check() -> None:
        assert sum(v for k, v in inside.items() if k in KEYS) <= schedule["limit"]
        assert inside["p"] <= schedule["pool"]
        for key in KEYS:
            assert inside[key] <= schedule["per_key"], key
        assert rm.statistics().keyed["user"].keys == sum(1 for k in KEYS if live[k])

    async def operation(
        start: int, duration: int, key: str, pooled: bool, give_up: float | None, fails: bool
    ) -> None:
        nonlocal ended
        await anyio.sleep(start)
        live[key] += 1
        with anyio.move_on_after(give_up if give_up is not None else 10_000):
            try:
                async with rm.slot(*(("p",) if pooled else ()), keys={"user": key}):
                    inside[key] += 1
                    inside["p"] += pooled
                    check()
                    try:
                        await anyio.sleep(duration)
                        if fails:
                            raise ValueError("planned")
                    finally:
                        inside[key] -= 1
                        inside["p"] -= pooled
            except ValueError:
                pass
            finally:
                live[key] -= 1
        check()
        ended += 1

    with anyio.fail_after(10_000):  # a lost waiter would hang here
        async with anyio.create_task_group() as tg:
            for op in schedule["operations"]:
                tg.start_soon(operation, *op)
    assert ended == len(schedule["operations"])
    stats = rm.statistics()
    assert (stats.executing, stats.waiting) == (0, 0)
    keyed = stats.keyed["user"]
    assert (keyed.keys, keyed.executing, keyed.waiting) == (0, 0, 0)  # idle keys are dropped
    assert keyed.executed == stats.executed


@pytest.mark.parametrize("backend_index", [0, 1], ids=["trio", "asyncio"])
@settings(max_examples=40)
@given(schedule=keyed_schedules())
def test_random_keyed_schedules_keep_every_limit_and_drop_idle_keys(
    backend_index: int, schedule: dict[str, Any]
) -> None:
    backend, options = virtual_time_backends()[backend_index]
    anyio.run(run_keyed_schedule, schedule, backend=backend, backend_options=options)


async def test_run_refuses_a_plain_function_before_calling_it() -> None:
    calls: list[int] = []

    def sync() -> int:
        calls.append(1)
        return 1

    rm = ResourceManager(limit=2)
    with pytest.raises(TypeError, match=r"^fn must be an async callable, got .*sync"):
        await rm.run(sync)  # type: ignore[arg-type]
    assert calls == []
    assert rm.statistics().executed == 0
