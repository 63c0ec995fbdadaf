"""Priorities: a freed slot goes to the highest-priority waiter; ties first come, first served."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _lifecycle_stages import SEVEN_STAGES
from trioflow import ResourceManager
from trioflow._capacity import PriorityLimiter
from trioflow.lifecycle import (
    Pipeline,
    ProcessingStatus,
    Request,
    RequestKind,
    Router,
    Stage,
    open_coordinator,
)
from trioflow.testing import virtual_time_backends

pytestmark = pytest.mark.anyio


async def _queue(rm: ResourceManager, priorities: list[int], started: list[str]) -> None:
    """Hold the only slot, queue one waiter per priority (in order), release it repeatedly."""
    release = anyio.Event()

    async def waiter(name: str, priority: int) -> None:
        async with rm.slot(priority=priority):
            started.append(name)
            await anyio.sleep(1)

    async with anyio.create_task_group() as group:

        async def holder() -> None:
            async with rm.slot():
                await release.wait()

        group.start_soon(holder)
        await anyio.sleep(1)
        for n, priority in enumerate(priorities):
            group.start_soon(waiter, f"p{priority}#{n}", priority)
            await anyio.sleep(1)  # queued in this order
        release.set()


async def test_waiters_start_by_priority_and_equal_ones_in_arrival_order() -> None:
    rm = ResourceManager(limit=1)
    started: list[str] = []
    await _queue(rm, [0, 5, 1, 5], started)
    assert started == ["p5#1", "p5#3", "p1#2", "p0#0"]
    assert rm.statistics().executed == 5


async def test_aging_lets_a_long_waiting_low_priority_slot_go_first() -> None:
    # Aging of 1 s per step: the priority-0 waiter queued at t=1 has risen to 4.x by the time
    # the holder lets go at t=5, above the priority-2 one queued at t=4 (2.x) but not the
    # priority-9 one queued at t=3 (9.x).
    rm = ResourceManager(limit=1, aging=1)
    started: list[str] = []
    release = anyio.Event()

    async def waiter(name: str, priority: int) -> None:
        async with rm.slot(priority=priority):
            started.append(name)

    async with anyio.create_task_group() as group:

        async def holder() -> None:
            async with rm.slot():
                await release.wait()

        group.start_soon(holder)
        await anyio.sleep(1)
        group.start_soon(waiter, "low", 0)
        await anyio.sleep(2)
        group.start_soon(waiter, "urgent", 9)
        await anyio.sleep(1)
        group.start_soon(waiter, "medium", 2)
        await anyio.sleep(1)
        release.set()
    assert started == ["urgent", "low", "medium"]


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    rm = ResourceManager(limit=1)
    started: list[str] = []

    async def waiter(name: str, priority: int) -> None:
        async with rm.slot(priority=priority):
            started.append(name)

    release = anyio.Event()

    async def holder() -> None:
        async with rm.slot():
            await release.wait()

    async with anyio.create_task_group() as group:
        group.start_soon(holder)
        await anyio.sleep(1)
        with anyio.move_on_after(1):
            await waiter("cancelled", 10)
        group.start_soon(waiter, "served", 0)
        await anyio.sleep(1)
        assert rm.statistics().waiting == 1
        release.set()
    assert started == ["served"]
    stats = rm.statistics()
    assert (stats.executing, stats.waiting, stats.executed) == (0, 0, 2)


async def test_a_waiter_cancelled_as_it_is_handed_the_token_passes_it_on() -> None:
    limiter = PriorityLimiter(1)
    limiter.acquire_on_behalf_of_nowait("holder")
    got: list[str] = []

    async def wait(name: str, priority: int) -> None:
        await limiter.acquire_on_behalf_of(name, priority)
        got.append(name)
        limiter.release_on_behalf_of(name)

    first = anyio.CancelScope()

    async def cancelled_one() -> None:
        with first:
            await wait("first", 5)

    async with anyio.create_task_group() as group:
        group.start_soon(wait, "second", 0)
        await anyio.sleep(1)
        group.start_soon(cancelled_one)
        await anyio.sleep(1)
        first.cancel()  # "first" is cancelled and, before it runs again,
        limiter.release_on_behalf_of("holder")  # handed the token: it must pass it on
    assert got == ["second"]
    assert (limiter.borrowed_tokens, limiter.waiting) == (0, 0)


async def test_many_cancelled_waiters_do_not_pile_up() -> None:
    limiter = PriorityLimiter(1)
    limiter.acquire_on_behalf_of_nowait("holder")
    for n in range(1000):
        with anyio.move_on_after(1):
            await limiter.acquire_on_behalf_of(n, n % 7)
    assert limiter.waiting == 0
    assert len(limiter._waiters) <= 65  # compacted as cancellations pile up


async def test_run_takes_a_priority_and_bad_priorities_are_refused_before_waiting() -> None:
    rm = ResourceManager(limit=1)

    async def answer() -> int:
        return 42

    assert await rm.run(answer, priority=3) == 42
    with pytest.raises(TypeError, match=r"priority must be an int, got 1\.5"):
        rm.slot(priority=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="priority must be an int"):
        rm.slot(priority=True)
    with pytest.raises(ValueError, match="aging must be"):
        ResourceManager(aging=0)
    with pytest.raises(TypeError, match="aging must be"):
        ResourceManager(aging="soon")  # type: ignore[arg-type]


async def test_a_high_priority_request_starts_at_the_next_free_slot() -> None:
    order: list[str] = []

    async def work(request: Request) -> Any:
        order.append(request.payload)
        await anyio.sleep(10)

    async def noop(request: Request) -> None:
        pass

    pipeline = Pipeline(
        [Stage(name, state, work if name == "process" else noop) for name, state in SEVEN_STAGES]
    )
    router = Router(lambda r: RequestKind.SIMPLE_QUERY, {RequestKind.SIMPLE_QUERY: pipeline})
    config = {
        "max_concurrency": 1,
        "per_user_limit": 100,
        "enable_metrics": False,
        "default_timeout": None,
    }
    results: list[Any] = []

    async def process(request: Request) -> None:
        results.append(await coordinator.process(request))

    async with (
        open_coordinator(config, router=router) as coordinator,
        anyio.create_task_group() as group,
    ):
        for n in range(20):
            group.start_soon(process, Request(f"r{n}", user_id=f"u{n}"))
            await anyio.sleep(0.001)
        group.start_soon(process, Request("urgent", priority=100))
    assert all(r.status is ProcessingStatus.SUCCEEDED for r in results)
    assert order[:2] == ["r0", "urgent"]
    assert order[2:] == [f"r{n}" for n in range(1, 20)]


# --- against a model -------------------------------------------------------------------------


@st.composite
def schedules(draw: st.DrawFn) -> list[tuple[str, int]]:
    """Steps: ("arrive", priority), ("cancel", waiter number) or ("release", 0)."""
    steps = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("arrive"), st.integers(-2, 3)),
                st.tuples(st.just("cancel"), st.integers(0, 20)),
                st.tuples(st.just("release"), st.just(0)),
            ),
            max_size=40,
        )
    )
    return [*steps, *[("release", 0)] * 25]  # in the end everyone still waiting is served


@pytest.mark.parametrize("backend", range(2), ids=["trio", "asyncio"])
@settings(max_examples=60)
@given(limit=st.integers(1, 3), schedule=schedules())
def test_the_limit_holds_nobody_is_lost_and_the_best_waiter_is_served(
    backend: int, limit: int, schedule: list[tuple[str, int]]
) -> None:
    limiter = PriorityLimiter(limit)
    waiting: dict[int, tuple[int, int]] = {}  # waiter -> (priority, arrival), per the model
    served: list[int] = []
    cancelled: set[int] = set()
    holding: list[int] = []
    scopes: dict[int, anyio.CancelScope] = {}

    async def wait(n: int, priority: int) -> None:
        with scopes[n]:
            await limiter.acquire_on_behalf_of(n, priority)
            # Served: it must have been the best of those waiting when the token freed.
            best = min(waiting, key=lambda w: (-waiting[w][0], waiting[w][1]))
            assert n == best, (n, waiting)
            del waiting[n]
            served.append(n)
            holding.append(n)
            assert limiter.borrowed_tokens <= limit
            return
        cancelled.add(n)  # the scope caught its cancellation

    async def main() -> None:
        async with anyio.create_task_group() as group:
            arrivals = 0
            for action, value in schedule:
                if action == "arrive":
                    n = arrivals
                    arrivals += 1
                    scopes[n] = anyio.CancelScope()
                    try:
                        limiter.acquire_on_behalf_of_nowait(n)
                    except anyio.WouldBlock:
                        waiting[n] = (value, n)
                        group.start_soon(wait, n, value)
                    else:
                        assert not waiting  # a free token never coexists with waiters
                        served.append(n)
                        holding.append(n)
                elif action == "cancel":
                    if value in waiting:
                        del waiting[value]
                        scopes[value].cancel()
                elif holding:
                    limiter.release_on_behalf_of(holding.pop(0))
                await anyio.sleep(1)  # every woken waiter runs before the next step
                assert limiter.borrowed_tokens == len(holding) <= limit
                assert limiter.waiting == len(waiting)

    name, options = virtual_time_backends()[backend]
    anyio.run(main, backend=name, backend_options=options)
    assert waiting == {}
    assert sorted(served + sorted(cancelled)) == sorted(set(served) | cancelled)
    assert set(served).isdisjoint(cancelled)
    assert len(served) + len(cancelled) == sum(1 for a, _ in schedule if a == "arrive")
