"""Property: run_on starts exactly the calls a simple model says, and its counters add up.

Events arrive at whole seconds, one at a time (two at one instant may start in either
order); calls last a whole number of seconds plus 1/1024, so a call never ends at the moment
an event arrives (no tie for the scheduler to break, and sums of up to 1023 such durations
stay off whole seconds). For every limit and overlap policy, the model below computes when
each event's call starts and which calls ``overlap="cancel"`` cancels; the run must start and
cancel the same calls at the same virtual times, never run more than ``limit`` at once, and
count every event exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from _helpers import Boom
from trioflow import run_on
from trioflow.testing import virtual_time_backends

EPSILON = 1 / 1024


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    gaps = draw(st.lists(st.integers(1, 3), min_size=1, max_size=12))
    durations = draw(st.lists(st.integers(0, 6), min_size=len(gaps), max_size=len(gaps)))
    return {
        "gaps": gaps,
        "durations": [d + EPSILON for d in durations],
        "fails": draw(st.frozensets(st.integers(0, len(gaps) - 1))),
        "limit": draw(st.integers(1, 3)),
        "overlap": draw(st.sampled_from(["skip", "queue", "cancel"])),
        "max_queued": draw(st.integers(1, 3)),
    }


def model(schedule: dict[str, Any]) -> tuple[dict[int, float], set[int]]:
    """When each event's call starts (events not in it never start), and those cancelled."""
    arrivals: list[float] = []
    now = 0.0
    for gap in schedule["gaps"]:
        now += gap
        arrivals.append(now)
    durations, limit, overlap = schedule["durations"], schedule["limit"], schedule["overlap"]
    starts: dict[int, float] = {}
    running: list[tuple[float, int]] = []  # (end, event), in start order
    queue: list[int] = []
    cancelled: set[int] = set()

    def finish_until(t: float) -> None:
        # Calls that end before t; with "queue" each end starts the next queued event.
        while running:
            end, event = min(running)
            if end >= t:
                return
            running.remove((end, event))
            if queue:
                nxt = queue.pop(0)
                starts[nxt] = end
                running.append((end + durations[nxt], nxt))

    for event, t in enumerate(arrivals):
        finish_until(t)
        if len(running) < limit:
            starts[event] = t
            running.append((t + durations[event], event))
        elif overlap == "queue":
            if len(queue) < schedule["max_queued"]:
                queue.append(event)
        elif overlap == "cancel":
            cancelled.add(running.pop(0)[1])  # the oldest started
            starts[event] = t
            running.append((t + durations[event], event))
    finish_until(float("inf"))
    return starts, cancelled


async def run_schedule(schedule: dict[str, Any]) -> None:
    started: dict[int, float] = {}
    inside = [0, 0]  # now, most at once
    seen_cancelled: set[int] = set()
    raised: list[int] = []

    async def trigger() -> AsyncIterator[int]:
        for event, gap in enumerate(schedule["gaps"]):
            await anyio.sleep(gap)
            yield event

    async def fn(event: int) -> None:
        started[event] = anyio.current_time()
        inside[0] += 1
        inside[1] = max(inside)
        try:
            await anyio.sleep(schedule["durations"][event])
            if event in schedule["fails"]:
                raised.append(event)
                raise Boom(f"event {event}")
        except anyio.get_cancelled_exc_class():
            seen_cancelled.add(event)
            raise
        finally:
            inside[0] -= 1

    origin = anyio.current_time()
    run = run_on(
        trigger(),
        fn,
        limit=schedule["limit"],
        overlap=schedule["overlap"],
        max_queued=schedule["max_queued"],
    )
    with anyio.fail_after(10_000):
        stats = await run
    starts, cancelled = model(schedule)
    assert {e: t - origin for e, t in started.items()} == starts
    assert seen_cancelled == cancelled
    assert inside[1] <= schedule["limit"]
    events = len(schedule["gaps"])
    unstarted_cancelled = stats.cancelled - len(seen_cancelled)
    assert stats.events == events
    assert stats.started == len(started)
    assert stats.started + stats.skipped + stats.dropped + unstarted_cancelled == events
    assert stats.succeeded + stats.failed + len(seen_cancelled) == stats.started
    assert stats.failed == len(raised)
    assert (stats.running, stats.queued) == (0, 0)
    if schedule["overlap"] != "skip":
        assert stats.skipped == 0
    if schedule["overlap"] != "queue":
        assert stats.dropped == 0
    if schedule["overlap"] != "cancel":
        assert stats.cancelled == 0


@pytest.mark.parametrize("backend_index", [0, 1], ids=["trio", "asyncio"])
@settings(max_examples=80)
@given(schedule=schedules())
def test_run_on_starts_what_the_model_says_and_counts_every_event(
    backend_index: int, schedule: dict[str, Any]
) -> None:
    backend, options = virtual_time_backends()[backend_index]
    with structlog.testing.capture_logs():  # failing calls are logged
        anyio.run(run_schedule, schedule, backend=backend, backend_options=options)
