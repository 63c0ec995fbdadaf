from __future__ import annotations

import contextlib
import random
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from trioflow import AdaptiveConcurrency, ResourceManager

pytestmark = pytest.mark.anyio


class SimulatedService:
    """Latency 0.1 s up to 12 concurrent calls, then (1 + excess)^2 times that; seeded jitter.

    While ``failing`` it fails fast (after 10 ms) with ConnectionError.
    """

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.inflight = 0
        self.failing = False

    async def __call__(self) -> None:
        self.inflight += 1
        try:
            if self.failing:
                await anyio.sleep(0.01)
                raise ConnectionError("overloaded")
            base = 0.1 if self.inflight <= 12 else 0.1 * (1 + (self.inflight - 12)) ** 2
            await anyio.sleep(base * self.rng.uniform(0.95, 1.05))
        finally:
            self.inflight -= 1


async def drive(
    rm: ResourceManager, service: SimulatedService, *, clients: int, until: float
) -> list[tuple[float, int]]:
    """Run many clients through rm.run until ``until``; return (time, limit) every 0.25 s."""
    trace: list[tuple[float, int]] = []

    async def client() -> None:
        while anyio.current_time() < until:
            with contextlib.suppress(ConnectionError):
                await rm.run(service)

    async def watch() -> None:
        while anyio.current_time() < until:
            trace.append((anyio.current_time(), rm.limit))
            await anyio.sleep(0.25)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        for _ in range(clients):
            tg.start_soon(client)
    return trace


async def test_the_limit_settles_at_what_the_service_can_take_and_recovers_after_errors() -> None:
    rm = ResourceManager(limit=4)
    service = SimulatedService()
    adaptive = AdaptiveConcurrency(rm, min_limit=1, max_limit=64)

    async def errors_between(start: float, end: float) -> None:
        await anyio.sleep_until(start)
        service.failing = True
        await anyio.sleep_until(end)
        service.failing = False

    async with anyio.create_task_group() as tg:
        tg.start_soon(errors_between, 40, 45)
        trace = await drive(rm, service, clients=40, until=80)

    def limits(start: float, end: float) -> list[int]:
        return [limit for t, limit in trace if start <= t < end]

    # Settled within 12 +/- 2 after a short ramp-up, and stays there.
    assert limits(0, 0.3) == [4, 5]  # +1 after the first window of 4 calls (0.1 s)
    assert set(limits(5, 40)) <= set(range(10, 15))
    assert 12 in limits(5, 40)
    # A burst of errors drives the limit down...
    assert min(limits(40, 45)) <= 2
    # ...and once it ends, the limit climbs back to the same band and stays.
    assert set(limits(50, 80)) <= set(range(10, 15))
    stats = adaptive.statistics()
    assert stats.baseline_latency is not None
    assert 0.095 <= stats.baseline_latency <= 0.1
    assert stats.decreases > 0
    assert stats.increases > 0
    assert stats.ignored > 0  # calls from before a change were left out
    assert stats.samples + stats.ignored == rm.statistics().executed


async def test_unhealthy_shrinks_the_limit_to_the_minimum() -> None:
    class Health:
        healthy = True

        async def wait_healthy(self) -> None:
            await anyio.lowlevel.checkpoint()

    health = Health()
    rm = ResourceManager(limit=10)
    AdaptiveConcurrency(rm, min_limit=3, max_limit=12, health=health)

    async def toggle() -> None:
        await anyio.sleep(5)
        health.healthy = False
        await anyio.sleep(5)
        health.healthy = True

    service = SimulatedService()
    async with anyio.create_task_group() as tg:
        tg.start_soon(toggle)
        trace = await drive(rm, service, clients=30, until=20)
    during = [limit for t, limit in trace if 7 <= t < 10]
    after = [limit for t, limit in trace if 15 <= t < 20]
    assert set(during) == {3}
    assert set(after) <= {11, 12}  # back up, capped at max_limit=12


async def test_the_limit_does_not_grow_past_the_demand() -> None:
    rm = ResourceManager(limit=4)
    adaptive = AdaptiveConcurrency(rm, min_limit=1, max_limit=100)
    trace = await drive(rm, SimulatedService(), clients=3, until=30)
    # Three clients never keep more than 3 busy; the limit grows only while at least half
    # of it is in use, so it stops at 7 (2 x 3 + 1).
    assert max(limit for _, limit in trace) == 7
    assert adaptive.limit == rm.limit


async def test_close_stops_adjusting() -> None:
    rm = ResourceManager(limit=4)
    with AdaptiveConcurrency(rm, min_limit=1, max_limit=64) as adaptive:
        await drive(rm, SimulatedService(), clients=40, until=2)
    settled = rm.limit
    assert settled > 4
    adaptive.close()  # idempotent
    await drive(rm, SimulatedService(), clients=40, until=10)
    assert rm.limit == settled
    assert repr(adaptive) == f"AdaptiveConcurrency(limit={settled}, min_limit=1, max_limit=64)"


def test_initial_limit_is_clamped_or_given() -> None:
    rm = ResourceManager(limit=100)
    AdaptiveConcurrency(rm, min_limit=2, max_limit=20).close()
    assert rm.limit == 20
    AdaptiveConcurrency(rm, min_limit=2, max_limit=20, initial_limit=5).close()
    assert rm.limit == 5
    rm.limit = 1
    stats = AdaptiveConcurrency(rm, min_limit=2, max_limit=20).statistics()
    assert rm.limit == 2
    assert (stats.limit, stats.min_limit, stats.max_limit) == (2, 2, 20)
    assert (stats.baseline_latency, stats.window_latency, stats.windows) == (None, None, 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"min_limit": 5, "max_limit": 3}, ValueError, "min_limit must be <= max_limit, got "),
        ({"min_limit": 0, "max_limit": 3}, ValueError, "min_limit must be an int >= 1, got 0"),
        ({"max_limit": 2.5}, TypeError, r"max_limit must be an int >= 1, got 2\.5 \(float\)"),
        ({"max_limit": 9, "initial_limit": 10}, ValueError, r"initial_limit must be an int in"),
        ({"max_limit": 9, "tolerance": 1}, ValueError, r"tolerance must be a finite number > 1, "),
        ({"max_limit": 9, "backoff": 1}, ValueError, r"backoff must be a number in \(0, 1\)"),
        ({"max_limit": 9, "backoff": 0}, ValueError, r"backoff must be a number in \(0, 1"),
        ({"max_limit": 9, "max_error_rate": -1}, ValueError, r"max_error_rate .* got -1"),
        ({"max_limit": 9, "health": object()}, TypeError, "health must have a 'healthy'"),
        ({"max_limit": 9, "baseline_windows": 0}, ValueError, "baseline_windows must be"),
    ],
)
def test_bad_arguments_are_rejected(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    rm = ResourceManager(limit=4)
    with pytest.raises(error, match=message):
        AdaptiveConcurrency(rm, **kwargs)
    assert rm.limit == 4  # nothing changed


def test_resource_manager_is_required() -> None:
    with pytest.raises(TypeError, match="resource_manager must be a ResourceManager"):
        AdaptiveConcurrency(8, max_limit=9)  # type: ignore[arg-type]
