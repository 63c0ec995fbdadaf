"""Admission by counting (no slot while nothing waits) admits exactly as the limits' slots do.

A coordinator with nothing but its two limits (no rate limit, health or shared limits) admits a
request that finds room by counting it; the first request that finds none turns the counted
ones into slots of the limits and queues as before. A per-user rate limit too generous to ever
bind makes a coordinator take the slot path for every request: the two must admit the same
requests at every moment, keep the limits, and report the same statistics.
"""

from __future__ import annotations

from typing import Any

import anyio
import hypothesis
import hypothesis.strategies as st
import pytest

from _lifecycle_stages import SEVEN_STAGES
from trioflow.lifecycle import (
    Coordinator,
    Pipeline,
    ProcessingStatus,
    Request,
    Router,
    Stage,
    open_coordinator,
)

pytestmark = pytest.mark.anyio

LIMIT = 3
PER_USER = 2
USERS = ("ann", "bob", "cy")
BASE: dict[str, Any] = {
    "max_concurrency": LIMIT,
    "per_user_limit": PER_USER,
    "enable_metrics": False,
}
# Never binds (a million requests at once), but puts every request on the slot path.
SLOTTED: dict[str, Any] = {**BASE, "rate_limits": {"per_user": {"rate": 1e6}}}

# ("arrive", user, priority) or ("finish", which running request, by position)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("arrive"), st.sampled_from(USERS), st.integers(0, 2)),
        st.tuples(st.just("finish"), st.integers(0, LIMIT - 1), st.just(0)),
    ),
    max_size=30,
)


async def _instant(request: Request) -> None:
    return None


class Traffic:
    """Requests of one coordinator, each held in its stage until the test finishes it."""

    def __init__(self) -> None:
        self.running: dict[str, anyio.Event] = {}  # in arrival-at-the-stage order
        self.admitted: list[str] = []
        self.users: dict[str, str] = {}
        self.results: list[Any] = []

    async def hold(self, request: Request) -> None:
        release = self.running[request.id] = anyio.Event()
        self.admitted.append(request.id)
        await release.wait()
        del self.running[request.id]

    def router(self) -> Router:
        # The request holds in its first stage; the others return at once.
        pipeline = Pipeline(
            [
                Stage(name, state, self.hold if index == 0 else _instant)
                for index, (name, state) in enumerate(SEVEN_STAGES)
            ]
        )
        return Router(lambda request: "q", {"q": pipeline})


async def _play(config: dict[str, Any], ops: list[tuple[str, Any, int]]) -> list[Any]:
    traffic = Traffic()
    seen: list[Any] = []
    async with (
        open_coordinator(config, router=traffic.router()) as coordinator,
        anyio.create_task_group() as tg,
    ):

        async def process(request: Request) -> None:
            traffic.results.append(await coordinator.process(request, timeout=None))

        for number, (op, arg, priority) in enumerate(ops):
            if op == "arrive":
                request = Request(number, id=f"r{number}", user_id=arg, priority=priority)
                traffic.users[request.id] = arg
                tg.start_soon(process, request)
            elif traffic.running:
                running = list(traffic.running.values())
                running[arg % len(running)].set()
            await anyio.wait_all_tasks_blocked()
            seen.append(_observe(coordinator, traffic))
        while traffic.running:
            # One at a time, as the "finish" steps do: released together, the woken requests
            # would race for the tokens in an order trio draws at random, and how often each
            # waits again (``throttled``) would differ from one run to the next.
            next(iter(traffic.running.values())).set()
            await anyio.wait_all_tasks_blocked()
        await anyio.wait_all_tasks_blocked()
        seen.append(_observe(coordinator, traffic))
    arrivals = sum(op == "arrive" for op, _, _ in ops)
    assert len(traffic.results) == arrivals
    assert all(r.status is ProcessingStatus.SUCCEEDED for r in traffic.results)
    return seen


def _observe(coordinator: Coordinator, traffic: Traffic) -> Any:
    running = sorted(traffic.running)
    per_user = [traffic.users[r] for r in running]
    assert len(running) <= LIMIT
    assert all(per_user.count(u) <= PER_USER for u in USERS)
    stats = coordinator.statistics()
    assert stats.in_flight == len(running)
    return (running, stats.in_flight, stats.queue_depth, stats.users, stats.throttled)


@hypothesis.given(ops=operations)
@hypothesis.settings(max_examples=40)
async def test_counting_admits_as_the_slots_do(ops: list[tuple[str, Any, int]]) -> None:
    counted = await _play(BASE, ops)
    slotted = await _play(SLOTTED, ops)
    assert counted == slotted


async def test_a_full_limit_turns_counted_requests_into_slots_and_back() -> None:
    # Three of ann's and bob's requests fill the global limit by counting; the fourth waits
    # in the limits' queue; once all end, the next request is counted again.
    ops: list[tuple[str, Any, int]] = [
        ("arrive", "ann", 0),
        ("arrive", "ann", 0),
        ("arrive", "bob", 0),
        ("arrive", "cy", 0),
        ("finish", 0, 0),
        ("finish", 0, 0),
        ("finish", 0, 0),
        ("finish", 0, 0),
        ("arrive", "cy", 0),
    ]
    seen = await _play(BASE, ops)
    assert [s[1:4] for s in seen[:5]] == [
        (1, 0, 1),
        (2, 0, 1),
        (3, 0, 2),
        (3, 1, 3),  # cy waits: the limit is full
        (3, 0, 3),  # one ended, cy runs
    ]
    assert seen[-2][1:4] == (1, 0, 1)
    assert seen[-1][1:4] == (0, 0, 0)
    assert seen == await _play(SLOTTED, ops)
