"""trioflow.Pool: objects made on demand, reused, checked, replaced and closed; in virtual time."""

from __future__ import annotations

import math
import re
from typing import Any

import anyio
import pytest
import structlog

from _helpers import Boom
from trioflow import ObjectPoolStatistics, Pool, PoolClosedError

pytestmark = pytest.mark.anyio


class Resource:
    """A pooled object that knows whether it was closed."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False

    def __repr__(self) -> str:
        return f"Resource({self.number})"


class Factory:
    """Makes Resources in ``seconds`` each, failing for the numbers in ``fail``."""

    def __init__(self, seconds: float = 1, fail: frozenset[int] = frozenset()) -> None:
        self.seconds = seconds
        self.fail = fail
        self.calls = 0
        self.made: list[Resource] = []
        self.closed: list[Resource] = []

    async def make(self) -> Resource:
        self.calls += 1
        number = self.calls
        await anyio.sleep(self.seconds)
        if number in self.fail:
            raise Boom(f"factory call {number}")
        resource = Resource(number)
        self.made.append(resource)
        return resource

    async def close(self, resource: Resource) -> None:
        assert not resource.closed, f"{resource} closed twice"
        await anyio.sleep(0.5)
        resource.closed = True
        self.closed.append(resource)

    @property
    def live(self) -> list[Resource]:
        return [r for r in self.made if not r.closed]


def stats(pool: Pool[Any]) -> tuple[int, int, int, int, int, int, int]:
    s = pool.statistics()
    return (s.size, s.idle, s.in_use, s.waiting, s.created, s.closed, s.failed_checks)


async def test_an_idle_object_is_reused_and_at_most_max_size_exist() -> None:
    factory = Factory()
    pool = Pool(factory.make, max_size=2, close=factory.close)
    entered: list[tuple[float, int]] = []

    async def user(seconds: float) -> None:
        async with pool.acquire() as resource:
            entered.append((anyio.current_time(), resource.number))
            assert len(factory.live) <= 2
            await anyio.sleep(seconds)

    async with pool, anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(user, 2)
        await anyio.sleep(0.5)
        assert stats(pool) == (0, 0, 0, 3, 0, 0, 0)  # two being made, three waiting
    # Two made at 0-1; users 1, 2 hold them 1-3; 3, 4 hold them 3-5; 5 holds one 5-7.
    assert sorted(t for t, _ in entered) == [1, 1, 3, 3, 5]
    assert {n for _, n in entered} == {1, 2}
    assert factory.calls == 2
    assert anyio.current_time() == 8  # closing takes 0.5 s each
    assert [r.closed for r in factory.made] == [True, True]
    assert pool.statistics() == ObjectPoolStatistics(
        max_size=2, size=0, idle=0, in_use=0, waiting=0, created=2, closed=2, failed_checks=0
    )


async def test_waiters_are_served_first_in_first_out() -> None:
    factory = Factory(seconds=0)
    pool = Pool(factory.make, max_size=1)
    served: list[int] = []

    async def user(index: int) -> None:
        async with pool.acquire():
            served.append(index)
            await anyio.sleep(1)

    async with anyio.create_task_group() as tg:
        for index in range(6):
            tg.start_soon(user, index)
            await anyio.sleep(0.01)  # arrive in this order
    assert served == list(range(6))


async def test_a_cancelled_waiter_leaves_the_queue_and_loses_no_place() -> None:
    factory = Factory(seconds=0)
    pool = Pool(factory.make, max_size=1)
    served: list[str] = []

    async def user(name: str, hold: float) -> None:
        async with pool.acquire():
            served.append(name)
            await anyio.sleep(hold)

    async with anyio.create_task_group() as tg:
        tg.start_soon(user, "first", 10)
        await anyio.sleep(1)
        with anyio.move_on_after(2):  # waits, then gives up
            await user("impatient", 1)
        assert pool.statistics().waiting == 0
        tg.start_soon(user, "next", 1)
    assert served == ["first", "next"]
    assert anyio.current_time() == 11
    assert stats(pool) == (1, 1, 0, 0, 1, 0, 0)


async def test_a_waiter_cancelled_just_after_it_was_handed_an_object_passes_it_on() -> None:
    factory = Factory(seconds=0)
    pool = Pool(factory.make, max_size=1)
    order: list[str] = []

    async def second() -> None:
        async with pool.acquire():
            order.append("second")

    async with anyio.create_task_group() as tg:
        async with pool.acquire():
            scope = anyio.CancelScope()
            tg.start_soon(_wait_then_use, pool, scope, order)
            await anyio.sleep(1)
            tg.start_soon(second)
            await anyio.sleep(1)
            scope.cancel()  # the object is handed to the first waiter, who is cancelled now
        order.append("released")
    assert order == ["released", "second"]
    assert stats(pool) == (1, 1, 0, 0, 1, 0, 0)


async def _wait_then_use(pool: Pool[Resource], scope: anyio.CancelScope, order: list[str]) -> None:
    with scope:
        async with pool.acquire():
            order.append("first")  # never: cancelled at the moment it was handed the object


async def test_an_object_whose_block_raised_is_closed_and_replaced() -> None:
    factory = Factory()
    pool = Pool(factory.make, max_size=1, close=factory.close)
    got: list[int] = []

    async def user(fail: bool) -> None:
        async with pool.acquire() as resource:
            got.append(resource.number)
            await anyio.sleep(1)
            if fail:
                raise Boom("broken")

    async with anyio.create_task_group() as tg:
        tg.start_soon(_expect_boom, user(True))
        await anyio.sleep(0.1)
        tg.start_soon(user, False)
    assert got == [1, 2]  # the second caller did not get the broken object
    assert factory.made[0].closed
    assert not factory.made[1].closed
    # made 0-1, used 1-2, closed 2-2.5, then the next one is made 2.5-3.5 and used 3.5-4.5
    assert anyio.current_time() == 4.5
    assert stats(pool) == (1, 1, 0, 0, 2, 1, 0)


async def _expect_boom(awaitable: Any) -> None:
    with pytest.raises(Boom):
        await awaitable


async def test_a_cancelled_block_closes_its_object_without_losing_the_place() -> None:
    factory = Factory()
    pool = Pool(factory.make, max_size=1, close=factory.close)
    with anyio.move_on_after(5):
        async with pool.acquire():
            await anyio.sleep(10)
    assert factory.made[0].closed
    async with pool.acquire() as resource:
        assert resource.number == 2
    assert stats(pool) == (1, 1, 0, 0, 2, 1, 0)


async def test_a_failing_factory_raises_to_its_caller_and_the_next_one_makes_an_object() -> None:
    factory = Factory(fail=frozenset({1}))
    pool = Pool(factory.make, max_size=1)
    results: list[object] = []

    async def user() -> None:
        try:
            async with pool.acquire() as resource:
                results.append(resource.number)
        except Boom as exc:
            results.append(str(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(user)
        await anyio.sleep(0.1)
        tg.start_soon(user)
    assert results == ["factory call 1", 2]
    assert stats(pool) == (1, 1, 0, 0, 1, 0, 0)  # the failed call counts nowhere


async def test_a_factory_cancelled_midway_loses_no_place() -> None:
    factory = Factory(seconds=10)
    pool = Pool(factory.make, max_size=1)
    with anyio.move_on_after(5):
        async with pool.acquire():
            pytest.fail("never made")
    assert stats(pool) == (0, 0, 0, 0, 0, 0, 0)
    async with pool.acquire() as resource:
        assert resource.number == 2


async def test_check_vets_idle_objects_and_a_failing_one_is_replaced() -> None:
    factory = Factory(seconds=0)
    verdicts = iter([True, False, "raise"])
    checked: list[int] = []

    async def check(resource: Resource) -> bool:
        checked.append(resource.number)
        await anyio.sleep(0)
        verdict = next(verdicts)
        if verdict == "raise":
            raise Boom("check crashed")
        return bool(verdict)

    pool = Pool(factory.make, max_size=1, check=check, close=factory.close)
    numbers = []
    with structlog.testing.capture_logs() as logs:
        for _ in range(4):
            async with pool.acquire() as resource:
                numbers.append(resource.number)
    # new 1; 1 passes; 1 fails -> new 2; 2 raises -> new 3
    assert numbers == [1, 1, 2, 3]
    assert checked == [1, 1, 2]
    assert [r.closed for r in factory.made] == [True, True, False]
    assert stats(pool) == (1, 1, 0, 0, 3, 2, 2)
    assert [entry["event"] for entry in logs] == ["trioflow.pool.check_failed"]


async def test_a_check_cancelled_midway_closes_the_object_and_frees_its_place() -> None:
    factory = Factory(seconds=0)

    async def slow_check(resource: Resource) -> bool:
        await anyio.sleep(10)
        return True

    pool = Pool(factory.make, max_size=1, check=slow_check, close=factory.close)
    async with pool.acquire():
        pass
    with anyio.move_on_after(1):
        async with pool.acquire():
            pytest.fail("the check never ends")
    assert factory.made[0].closed
    assert stats(pool) == (0, 0, 0, 0, 1, 1, 0)


async def test_idle_objects_are_closed_after_max_idle_keeping_min_size() -> None:
    factory = Factory(seconds=0)
    pool = Pool(factory.make, max_size=3, min_size=1, max_idle=60, close=factory.close)

    async def hold(seconds: float) -> None:
        async with pool.acquire():
            await anyio.sleep(seconds)

    async with pool:
        assert stats(pool) == (1, 1, 0, 0, 1, 0, 0)  # min_size made on entering
        async with anyio.create_task_group() as tg:
            for seconds in (10, 20, 30):
                tg.start_soon(hold, seconds)
        assert stats(pool)[:2] == (3, 3)
        assert anyio.current_time() == 30  # idle since 10, 20 and 30
        await anyio.sleep(45)
        assert stats(pool)[:2] == (2, 2)  # the one idle since 10 was closed at 70
        await anyio.sleep(10)
        assert stats(pool)[:2] == (1, 1)  # the one idle since 20 at 80; one is min_size
        await anyio.sleep(1000)
        assert stats(pool)[:2] == (1, 1)  # kept however long it sits
    assert [r.closed for r in factory.made] == [True, True, True]


async def test_an_expired_object_is_not_handed_out_even_without_the_reaper() -> None:
    factory = Factory(seconds=0)
    pool = Pool(factory.make, max_size=1, max_idle=5)  # never entered: no reaper task
    async with pool.acquire() as resource:
        assert resource.number == 1
    await anyio.sleep(4)
    async with pool.acquire() as resource:
        assert resource.number == 1
    await anyio.sleep(5)
    async with pool.acquire() as resource:
        assert resource.number == 2
    assert stats(pool) == (1, 1, 0, 0, 2, 1, 0)


async def test_closing_fails_waiters_closes_idle_objects_and_those_in_use_when_returned() -> None:
    factory = Factory(seconds=1)
    pool = Pool(factory.make, max_size=2, close=factory.close)
    errors: list[str] = []

    async def user(hold: float) -> None:
        try:
            async with pool.acquire():
                await anyio.sleep(hold)
        except PoolClosedError as exc:
            errors.append(str(exc))

    async with anyio.create_task_group() as tg:
        async with pool.acquire():
            pass  # one idle object
        tg.start_soon(user, 5)  # takes the idle one
        tg.start_soon(user, 5)  # makes the second
        tg.start_soon(user, 5)  # waits
        await anyio.sleep(2)
        assert stats(pool) == (2, 0, 2, 1, 2, 0, 0)
        await pool.aclose()
        assert pool.closed
        await anyio.sleep(0.1)  # the waiter runs
        assert errors == ["the pool was closed while waiting for an object"]
        assert [r.closed for r in factory.made] == [False, False]  # still in use
    assert [r.closed for r in factory.made] == [True, True]
    with pytest.raises(PoolClosedError, match="the pool is closed"):
        async with pool.acquire():
            pass
    assert isinstance(PoolClosedError("x"), anyio.ClosedResourceError)
    await pool.aclose()  # twice is harmless


async def test_an_object_made_while_the_pool_closes_is_closed_and_its_caller_told() -> None:
    factory = Factory(seconds=5)
    pool = Pool(factory.make, max_size=1, close=factory.close)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_expect_closed, pool)
        await anyio.sleep(1)
        await pool.aclose()
    assert [r.closed for r in factory.made] == [True]
    assert stats(pool) == (0, 0, 0, 0, 1, 1, 0)


async def _expect_closed(pool: Pool[Resource]) -> None:
    with pytest.raises(PoolClosedError, match="while this object was being made"):
        async with pool.acquire():
            pass


async def test_a_failing_close_is_logged_and_the_object_still_counted_closed() -> None:
    async def make() -> Resource:
        return Resource(1)

    async def close(resource: Resource) -> None:
        raise Boom("cannot close")

    pool = Pool(make, max_size=1, close=close)
    with structlog.testing.capture_logs() as logs:
        async with pool, pool.acquire():
            pass
    assert [entry["event"] for entry in logs] == ["trioflow.pool.close_failed"]
    assert stats(pool) == (0, 0, 0, 0, 1, 1, 0)


async def test_entering_makes_min_size_and_a_failure_there_closes_what_was_made() -> None:
    factory = Factory(seconds=1, fail=frozenset({3}))
    pool = Pool(factory.make, max_size=4, min_size=3, close=factory.close)
    with pytest.raises(Boom):
        async with pool:
            pytest.fail("not entered")
    assert [r.closed for r in factory.made] == [True, True]
    assert pool.closed
    with pytest.raises(RuntimeError, match="entered once"):
        async with pool:
            pass


async def test_the_body_exception_of_the_pool_propagates_as_itself() -> None:
    factory = Factory(seconds=0)
    pool = Pool(factory.make, max_size=1, max_idle=10)  # a reaper task runs
    with pytest.raises(Boom, match="mine"):
        async with pool:
            raise Boom("mine")
    assert pool.closed


def _plain(resource: object) -> bool:
    return True


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_size": 0}, ValueError, "max_size must be an int >= 1, got 0 (int)"),
        ({"max_size": "2"}, TypeError, "max_size must be an int >= 1, got '2' (str)"),
        ({"max_size": 2, "min_size": 3}, ValueError, r"min_size must be an int in \[0, "),
        ({"max_size": 2, "min_size": -1}, ValueError, "min_size must be an int >= 0"),
        ({"max_size": 2, "max_idle": 0}, ValueError, "max_idle must be a number > 0"),
        ({"max_size": 2, "max_idle": math.nan}, ValueError, "max_idle must be"),
        ({"max_size": 2, "max_idle": "1"}, TypeError, "max_idle must be"),
        ({"max_size": 2, "check": _plain}, TypeError, "check must be an async callable"),
        ({"max_size": 2, "close": 5}, TypeError, "close must be an async callable"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    async def make() -> int:
        return 1

    with pytest.raises(error, match=re.escape(message) if "[" not in message else message):
        Pool(make, **kwargs)


def test_a_plain_function_is_refused_as_a_factory() -> None:
    def make() -> int:
        return 1

    with pytest.raises(TypeError, match="factory must be an async callable"):
        Pool(make, max_size=1)  # type: ignore[arg-type]
    assert Pool(Factory().make, max_size=1, max_idle=math.inf).statistics().size == 0
