"""Property: any schedule of acquires, failures and cancellations leaves a Pool whole.

With any schedule of acquires and releases, failing blocks, failing factories, failing checks
and cancellations (while waiting, while an object is made or checked, inside the block): at
most ``max_size`` objects ever exist, no object is handed to two callers at once or after it
was closed, waiters are served in arrival order (or cancelled cleanly), the statistics add up
at every moment, no place is lost (afterwards ``max_size`` callers get objects at once), and
after closing every object made was closed exactly once.
"""

from __future__ import annotations

import contextvars
import itertools
from typing import Any

import anyio
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from _helpers import Boom
from trioflow import Pool
from trioflow.testing import virtual_time_backends

CALLER: contextvars.ContextVar[int] = contextvars.ContextVar("caller")


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    max_size = draw(st.integers(1, 3))
    callers = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "arrive": st.integers(0, 8),
                    "hold": st.integers(0, 3),
                    "fails": st.booleans(),  # the block raises
                    "cancel_after": st.none() | st.integers(0, 10),
                }
            ),
            min_size=1,
            max_size=12,
        )
    )
    return {
        "max_size": max_size,
        "min_size": draw(st.integers(0, max_size)),
        "max_idle": draw(st.none() | st.integers(1, 6)),
        "make_seconds": draw(st.integers(0, 2)),
        "check_seconds": draw(st.integers(0, 1)),
        "failing_makes": draw(st.frozensets(st.integers(1, 16), max_size=5)),
        # per check call: passes, returns False, raises
        "checks": draw(st.lists(st.sampled_from(["ok", "false", "raise"]), max_size=16)),
        "callers": callers,
    }


async def run_schedule(schedule: dict[str, Any]) -> None:
    max_size = schedule["max_size"]
    live: set[int] = set()  # made and not yet fully closed
    ever_made: list[int] = []
    closed: list[int] = []
    held: set[int] = set()  # handed out now
    numbers = itertools.count(1)
    make_calls = itertools.count(1)
    checks = iter(schedule["checks"])
    failures_on = [False]  # not while the pool makes min_size on entering
    arrival: dict[int, tuple[int, float]] = {}  # caller -> (arrival order, time)
    turn: dict[int, float] = {}  # caller -> when the pool first acted for it
    cancelled_before_turn: set[int] = set()
    seq = itertools.count()

    def note_turn() -> None:
        caller = CALLER.get(-1)
        turn.setdefault(caller, anyio.current_time())

    def audit() -> None:
        s = pool.statistics()
        assert s.size == s.idle + s.in_use
        assert s.created - s.closed == s.size
        assert s.size <= max_size
        assert len(live) <= max_size
        assert s.waiting >= 0
        assert s.in_use >= 0

    async def make() -> int:
        note_turn()
        call = next(make_calls)
        await anyio.sleep(schedule["make_seconds"])
        if failures_on[0] and call in schedule["failing_makes"]:
            raise Boom(f"make {call}")
        number = next(numbers)
        live.add(number)
        ever_made.append(number)
        assert len(live) <= max_size, (live, max_size)
        return number

    async def check(number: int) -> bool:
        note_turn()
        assert number in live
        assert number not in held
        await anyio.sleep(schedule["check_seconds"])
        verdict = next(checks, "ok") if failures_on[0] else "ok"
        if verdict == "raise":
            raise Boom("check")
        return verdict == "ok"

    async def close(number: int) -> None:
        note_turn()  # an expired idle object is closed in the task it was handed to
        assert number in live, number
        assert number not in held, number
        await anyio.sleep(0.5)
        live.discard(number)
        closed.append(number)

    pool = Pool(
        make,
        max_size=max_size,
        min_size=schedule["min_size"],
        max_idle=schedule["max_idle"],
        check=check,
        close=close,
    )

    async def caller(index: int, arrive: int, hold: int, fails: bool, cancel_after: Any) -> None:
        await anyio.sleep(arrive)
        CALLER.set(index)
        arrival[index] = (next(seq), anyio.current_time())
        with anyio.move_on_after(cancel_after if cancel_after is not None else 1e9) as scope:
            try:
                async with pool.acquire() as number:
                    note_turn()
                    assert number in live
                    assert number not in held
                    held.add(number)
                    audit()
                    try:
                        await anyio.sleep(hold)
                        if fails:
                            raise Boom("block")
                    finally:
                        held.discard(number)
            except Boom:
                pass
        if scope.cancelled_caught and index not in turn:
            cancelled_before_turn.add(index)
        audit()

    async def auditor() -> None:
        while True:
            await anyio.sleep(0.25)
            audit()

    with anyio.fail_after(1000):  # a lost place deadlocks: fail soon
        async with pool:
            failures_on[0] = True
            async with anyio.create_task_group() as tg:
                tg.start_soon(auditor)
                async with anyio.create_task_group() as callers:
                    for index, c in enumerate(schedule["callers"]):
                        callers.start_soon(
                            caller, index, c["arrive"], c["hold"], c["fails"], c["cancel_after"]
                        )
                tg.cancel_scope.cancel()
            s = pool.statistics()
            assert (s.in_use, s.waiting) == (0, 0)
            assert held == set()
            # No place was lost: max_size callers get an object at once (no failures now).
            failures_on[0] = False
            inside = [0, 0]  # now, most at once

            async def final(index: int) -> None:
                CALLER.set(1000 + index)
                async with pool.acquire():
                    inside[0] += 1
                    inside[1] = max(inside)
                    await anyio.sleep(100)
                    inside[0] -= 1

            async with anyio.create_task_group() as tg:
                for index in range(max_size):
                    tg.start_soon(final, index)
            assert inside[1] == max_size

    # Waiters were served in arrival order: the pool acted for an earlier caller no later.
    served = sorted((order, index) for index, (order, _) in arrival.items() if index in turn)
    times = [turn[index] for _, index in served]
    assert times == sorted(times), (served, turn)
    assert live == set()
    assert sorted(closed) == sorted(ever_made)  # each closed exactly once (close asserts)
    s = pool.statistics()
    assert (s.size, s.idle, s.in_use, s.waiting) == (0, 0, 0, 0)
    assert s.created == len(ever_made)
    assert s.closed == len(closed)


@pytest.mark.parametrize("backend_index", [0, 1], ids=["trio", "asyncio"])
@settings(max_examples=60)
@given(schedule=schedules())
def test_any_schedule_leaks_nothing_and_serves_in_order(
    backend_index: int, schedule: dict[str, Any]
) -> None:
    backend, options = virtual_time_backends()[backend_index]
    with structlog.testing.capture_logs():  # failing checks are logged
        anyio.run(run_schedule, schedule, backend=backend, backend_options=options)
