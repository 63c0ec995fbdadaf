"""Load: 10,000 concurrent requests from 20 users through a seven-stage pipeline, with random
(seeded) failures, timeouts and cancellations, in virtual time on both backends."""

from __future__ import annotations

import collections
import logging
import random
from typing import Any

import anyio
import attrs
import pytest
import structlog

from _lifecycle_stages import SEVEN_STAGES
from trioflow.lifecycle import (
    REQUEST_TRANSITIONS,
    Pipeline,
    ProcessingResult,
    ProcessingStatus,
    Request,
    RequestState,
    Router,
    Stage,
    open_coordinator,
)

pytestmark = pytest.mark.anyio

S = RequestState
REQUESTS = 10_000
USERS = 20
PER_USER_LIMIT = 10
MAX_CONCURRENCY = 150  # below USERS * PER_USER_LIMIT, so both limits bind
STAGE_TIMEOUT = 5.0
TIMED = (3, 4, 5)  # context, process and tools have a timeout (a cancel scope each: not free)
TERMINAL = {S.COMPLETED, S.FAILED, S.CANCELLED}


@attrs.frozen
class Plan:
    delays: tuple[float, ...]
    fail_at: int | None  # stage index that raises
    hang_at: int | None  # stage index that outlives its timeout
    cancel_after: float | None  # coordinator.cancel(request.id) after this long
    abandon_after: float | None  # the caller's own scope gives up after this long


def make_plans(rng: random.Random) -> list[Plan]:
    plans = []
    for _ in range(REQUESTS):
        roll = rng.random()
        plans.append(
            Plan(
                delays=tuple(rng.choice((0.0, 0.0, 0.0, 0.1, 0.5, 1.0)) for _ in SEVEN_STAGES),
                fail_at=rng.randrange(len(SEVEN_STAGES)) if roll < 0.04 else None,
                hang_at=rng.choice(TIMED) if 0.04 <= roll < 0.07 else None,
                cancel_after=rng.uniform(0, 3) if 0.07 <= roll < 0.09 else None,
                abandon_after=rng.uniform(0, 3) if 0.09 <= roll < 0.11 else None,
            )
        )
    return plans


class Counting:
    def __init__(self, plans: dict[str, Plan]) -> None:
        self.plans = plans
        self.inside = 0
        self.peak = 0
        self.per_user: collections.Counter[str] = collections.Counter()
        self.peak_per_user = 0

    def stage(self, index: int) -> Any:
        async def fn(request: Request) -> int:
            plan = self.plans[request.id]
            self.inside += 1
            self.per_user[request.user_id] += 1
            self.peak = max(self.peak, self.inside)
            self.peak_per_user = max(self.peak_per_user, self.per_user[request.user_id])
            try:
                if plan.hang_at == index:
                    await anyio.sleep(STAGE_TIMEOUT * 10)
                if plan.delays[index]:
                    await anyio.sleep(plan.delays[index])
                if plan.fail_at == index:
                    raise (ConnectionError if index % 2 else ValueError)(f"injected at {index}")
            finally:
                self.inside -= 1
                self.per_user[request.user_id] -= 1
            return index

        return fn


async def test_ten_thousand_requests_each_end_in_exactly_one_terminal_state() -> None:
    rng = random.Random(20_240_601)
    requests = [Request(i, user_id=f"user-{rng.randrange(USERS)}") for i in range(REQUESTS)]
    plans = dict(zip((r.id for r in requests), make_plans(rng), strict=True))
    counting = Counting(plans)
    pipeline = Pipeline(
        [
            Stage(
                name,
                state,
                counting.stage(i),
                timeout=STAGE_TIMEOUT if i in TIMED else None,
                optional=name == "tools",
            )
            for i, (name, state) in enumerate(SEVEN_STAGES)
        ]
    )
    router = Router(lambda r: "load", {"load": pipeline})
    quiet = structlog.wrap_logger(
        structlog.ReturnLogger(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
    )
    config = {
        "max_concurrency": MAX_CONCURRENCY,
        "per_user_limit": PER_USER_LIMIT,
        "default_timeout": None,
        "enable_metrics": False,
    }
    results: dict[str, ProcessingResult] = {}
    abandoned: set[str] = set()

    async with open_coordinator(config, router=router, logger=quiet) as coordinator:

        async def one(request: Request) -> None:
            plan = plans[request.id]
            if plan.abandon_after is not None:
                with anyio.move_on_after(plan.abandon_after) as scope:
                    results[request.id] = await coordinator.process(request)
                if scope.cancelled_caught:
                    abandoned.add(request.id)
                return
            if plan.cancel_after is not None:

                async def cancel_later() -> None:
                    await anyio.sleep(plan.cancel_after or 0)
                    coordinator.cancel(request.id)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_later)
                    results[request.id] = await coordinator.process(request)
                    tg.cancel_scope.cancel()
                return
            results[request.id] = await coordinator.process(request)

        with anyio.fail_after(100_000):  # virtual seconds: a stuck request fails the test
            async with anyio.create_task_group() as tg:
                for request in requests:
                    tg.start_soon(one, request)
        stats = coordinator.statistics()

    # None lost: every request has a result, or its caller gave up on it.
    assert len(results) + len(abandoned) == REQUESTS
    assert not set(results) & abandoned
    # None stuck.
    assert (stats.in_flight, stats.queue_depth, stats.users) == (0, 0, 0)
    assert stats.finished == REQUESTS
    # Every request ends in exactly one terminal state, reached by allowed transitions.
    ends: collections.Counter[RequestState] = collections.Counter()
    for request in requests:
        assert request.state in TERMINAL
        terminal_entries = [c for c in request.history if c.to_state in TERMINAL]
        assert terminal_entries == [request.history[-1]]
        state = S.RECEIVED
        for change in request.history:
            assert change.from_state is state
            assert change.to_state in REQUEST_TRANSITIONS[state]
            state = change.to_state
        ends[request.state] += 1
        result = results.get(request.id)
        if result is None:
            assert request.state is S.CANCELLED  # abandoned by its caller
            continue
        assert result.state is request.state
        expected = {
            ProcessingStatus.SUCCEEDED: S.COMPLETED,
            ProcessingStatus.DEGRADED: S.COMPLETED,
            ProcessingStatus.FAILED: S.FAILED,
            ProcessingStatus.CANCELLED: S.CANCELLED,
        }[result.status]
        assert request.state is expected
    # The limits held, counted inside the stages.
    assert counting.peak_per_user <= PER_USER_LIMIT
    assert counting.peak <= MAX_CONCURRENCY
    assert counting.peak_per_user == PER_USER_LIMIT  # the load did reach the limits
    # Every kind of ending happened.
    statuses = collections.Counter(r.status for r in results.values())
    assert all(statuses[s] > 0 for s in ProcessingStatus)
    assert ends[S.CANCELLED] == statuses[ProcessingStatus.CANCELLED] + len(abandoned)
    assert stats.failed == statuses[ProcessingStatus.FAILED]
    assert stats.cancelled == ends[S.CANCELLED]
