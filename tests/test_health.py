from __future__ import annotations

import math
from collections.abc import Sequence

import anyio
import pytest

from trioflow import HealthMonitor, ResourceExhaustedError, ResourceManager
from trioflow._resilience._health import psutil_sampler

pytestmark = pytest.mark.anyio


class Script:
    """A sampler that returns one scripted (cpu, memory) pair per call, repeating the last."""

    def __init__(self, samples: Sequence[tuple[float, float]]) -> None:
        self.samples = list(samples)
        self.calls: list[float] = []

    def __call__(self) -> tuple[float, float]:
        self.calls.append(anyio.current_time())
        return self.samples[min(len(self.calls) - 1, len(self.samples) - 1)]


OK, HOT_CPU, FULL_MEMORY = (10.0, 20.0), (95.0, 20.0), (10.0, 95.0)


async def test_first_sample_is_taken_before_the_block_and_then_every_interval() -> None:
    script = Script([OK])
    async with HealthMonitor(interval=2, sampler=script) as health:
        stats = health.statistics()
        assert (stats.samples, stats.sampled_at, stats.running) == (1, 0, True)
        assert (stats.cpu_percent, stats.memory_percent) == OK
        await anyio.sleep(7)
    assert script.calls == [0, 2, 4, 6]
    await anyio.sleep(10)
    assert len(script.calls) == 4  # sampling stopped with the block
    assert not health.statistics().running


async def test_healthy_follows_the_thresholds() -> None:
    script = Script([OK, HOT_CPU, FULL_MEMORY, (80.0, 90.0), HOT_CPU])
    seen: list[bool] = []
    async with HealthMonitor(max_cpu_percent=80, max_memory_percent=90, sampler=script) as health:
        seen.append(health.healthy)
        for _ in range(4):
            # Read between samples (t = 1.5, 2.5, ...), never at the same instant as one.
            await anyio.sleep(1.5 if not _ else 1)
            seen.append(health.healthy)
        stats = health.statistics()
    # At exactly the threshold the system is still healthy.
    assert seen == [True, False, False, True, False]
    assert (stats.samples, stats.unhealthy_samples, stats.transitions) == (5, 3, 3)
    assert not stats.healthy
    assert stats.load == 1


async def test_consecutive_samples_ride_out_spikes() -> None:
    # Samples at t = 0, 1, 2, ...; the state flips only after 2 disagreeing samples in a row.
    script = Script([OK, HOT_CPU, OK, HOT_CPU, FULL_MEMORY, OK, HOT_CPU, OK, OK, OK])
    seen: list[bool] = []
    async with HealthMonitor(consecutive_samples=2, sampler=script) as health:
        seen.append(health.healthy)
        await anyio.sleep(0.5)  # then read between samples, never at the same instant
        for _ in range(9):
            await anyio.sleep(1)
            seen.append(health.healthy)
        stats = health.statistics()
    # A lone hot sample (t=1) or a lone cool one (t=5) changes nothing; two hot samples in a
    # row (t=3, 4) turn it unhealthy at the second, two cool ones (t=7, 8) healthy again.
    assert seen == [True, True, True, True, False, False, False, False, True, True]
    assert (stats.samples, stats.unhealthy_samples, stats.transitions) == (10, 4, 2)


async def test_the_first_sample_of_a_run_decides_at_once() -> None:
    script = Script([HOT_CPU, OK, HOT_CPU])
    monitor = HealthMonitor(consecutive_samples=3, sampler=script)
    async with monitor:
        # No history to outweigh: the first sample sets the state.
        assert not monitor.statistics().healthy
        await anyio.sleep(1.5)
        assert not monitor.statistics().healthy  # one cool sample (t=1) of the 3 needed
    assert monitor.statistics().healthy  # stopped
    async with monitor:  # a new run: its first sample (hot) decides at once again
        assert not monitor.statistics().healthy
    assert monitor.statistics().transitions == 2


async def test_wait_healthy_returns_when_the_system_recovers() -> None:
    script = Script([HOT_CPU, HOT_CPU, HOT_CPU, OK])
    async with HealthMonitor(sampler=script) as health:
        assert not health.healthy
        await health.wait_healthy()
        assert anyio.current_time() == 3
        await health.wait_healthy()  # healthy already: returns at once
        assert anyio.current_time() == 3


async def test_wait_healthy_waits_again_after_a_relapse() -> None:
    script = Script([HOT_CPU, OK, HOT_CPU, HOT_CPU, OK])
    async with HealthMonitor(sampler=script) as health:
        await anyio.sleep(0.5)
        await health.wait_healthy()
        assert anyio.current_time() == 1
        await anyio.sleep(1.5)
        assert not health.healthy
        await health.wait_healthy()
        assert anyio.current_time() == 4


async def test_stopping_releases_waiters_and_reports_healthy() -> None:
    script = Script([HOT_CPU])
    woke: list[float] = []
    async with anyio.create_task_group() as tg:
        async with HealthMonitor(sampler=script) as health:

            async def waiter() -> None:
                await health.wait_healthy()
                woke.append(anyio.current_time())

            tg.start_soon(waiter)
            await anyio.sleep(5)
            assert woke == []
        assert health.healthy
    assert woke == [5]


async def test_load_is_the_closest_threshold_ratio() -> None:
    async with HealthMonitor(
        max_cpu_percent=50, max_memory_percent=80, sampler=Script([(25.0, 60.0)])
    ) as health:
        assert health.load == 0.75
        assert health.statistics().load == 0.75


async def test_resource_manager_waits_while_unhealthy() -> None:
    script = Script([HOT_CPU, HOT_CPU, OK])
    started: list[float] = []

    async def work() -> None:
        started.append(anyio.current_time())

    async with HealthMonitor(sampler=script) as health:
        rm = ResourceManager(limit=2, health=health, when_unhealthy="wait")
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(rm.run, work)
            await anyio.sleep(1)
            assert rm.statistics().waiting == 3
    assert started == [2, 2, 2]


async def test_resource_manager_fails_fast_while_unhealthy() -> None:
    script = Script([FULL_MEMORY, OK])

    async def work() -> str:
        return "done"

    async with HealthMonitor(sampler=script) as health:
        rm = ResourceManager(limit=2, health=health, when_unhealthy="fail")
        with pytest.raises(ResourceExhaustedError):
            await rm.run(work)
        assert anyio.current_time() == 0
        await anyio.sleep(1.5)
        assert await rm.run(work) == "done"


async def test_a_failing_sampler_ends_the_block_with_its_error() -> None:
    calls = 0

    def sampler() -> tuple[float, float]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError("no /proc")
        return OK

    with pytest.raises(ExceptionGroup) as info:
        async with HealthMonitor(sampler=sampler):
            await anyio.sleep(10)
    assert info.group_contains(OSError, match="no /proc")
    assert anyio.current_time() == 2


async def test_the_monitor_cannot_run_twice_at_once_but_can_run_again() -> None:
    monitor = HealthMonitor(sampler=Script([OK]))
    async with monitor:
        with pytest.raises(RuntimeError, match="already running"):
            async with monitor:
                pass
    async with monitor:
        assert monitor.statistics().samples == 2


async def test_two_tasks_cannot_enter_the_same_monitor_at_once() -> None:
    monitor = HealthMonitor(sampler=Script([OK]))
    errors: list[str] = []

    async def enter() -> None:
        try:
            async with monitor:
                await anyio.sleep(1.5)
        except RuntimeError as exc:
            errors.append(str(exc))

    with anyio.fail_after(10):  # two runs tangled in one monitor could deadlock
        async with anyio.create_task_group() as tg:
            tg.start_soon(enter)
            tg.start_soon(enter)
    assert errors == ["this HealthMonitor is already running"]
    assert monitor.statistics().samples == 2  # one run: t=0 and t=1


async def test_the_default_sampler_reads_psutil() -> None:
    cpu, memory = psutil_sampler()
    assert 0 <= cpu <= 100
    assert 0 < memory <= 100
    async with HealthMonitor(max_cpu_percent=100, max_memory_percent=100) as health:
        stats = health.statistics()
        assert stats.healthy
        assert stats.cpu_percent is not None
        assert 0 <= stats.cpu_percent <= 100


def test_statistics_before_running() -> None:
    monitor = HealthMonitor()
    stats = monitor.statistics()
    assert stats.healthy
    assert not stats.running
    assert (stats.cpu_percent, stats.memory_percent, stats.sampled_at) == (None, None, None)
    assert (stats.max_cpu_percent, stats.max_memory_percent) == (80, 90)
    assert (
        repr(monitor)
        == "HealthMonitor(max_cpu_percent=80.0, max_memory_percent=90.0, interval=1.0)"
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"max_cpu_percent": 0},
            ValueError,
            r"max_cpu_percent must be a number in \(0, 100\], got 0",
        ),
        ({"max_cpu_percent": 101}, ValueError, "max_cpu_percent .* got 101"),
        ({"max_cpu_percent": math.nan}, ValueError, "max_cpu_percent .* got nan"),
        ({"max_memory_percent": -5}, ValueError, "max_memory_percent .* got -5"),
        ({"max_memory_percent": "90"}, TypeError, "max_memory_percent .* got '90'"),
        ({"interval": 0}, ValueError, "interval must be a finite number > 0, got 0"),
        (
            {"consecutive_samples": 0},
            ValueError,
            "consecutive_samples must be an int >= 1, got 0",
        ),
        ({"consecutive_samples": 2.0}, TypeError, "consecutive_samples .* got 2.0"),
        ({"interval": math.inf}, ValueError, "interval must be a finite number > 0, got inf"),
        ({"sampler": 3}, TypeError, "sampler must be a callable"),
    ],
)
def test_bad_arguments_are_rejected(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        HealthMonitor(**kwargs)  # type: ignore[arg-type]


# --- what the block raises comes out as itself ------------------------------------------------


def _quiet() -> tuple[float, float]:
    return 10.0, 10.0


async def test_an_exception_in_the_block_comes_out_as_itself() -> None:
    mine = KeyError("mine")

    async def block() -> None:
        async with HealthMonitor(interval=1, sampler=_quiet):
            await anyio.sleep(2.5)
            raise mine

    with pytest.raises(KeyError) as info:
        await block()
    assert info.value is mine
    assert anyio.current_time() == 2.5


async def test_a_failing_sampler_still_comes_out_in_a_group() -> None:
    samples = 0

    def breaks() -> tuple[float, float]:
        nonlocal samples
        samples += 1
        if samples == 3:
            raise OSError("procfs gone")
        return 10.0, 10.0

    with pytest.raises(ExceptionGroup) as info:
        async with HealthMonitor(interval=1, sampler=breaks):
            await anyio.sleep(10)
    assert [type(e) for e in info.value.exceptions] == [OSError]


async def test_the_blocks_error_and_the_samplers_come_out_together() -> None:
    samples = 0

    def breaks() -> tuple[float, float]:
        nonlocal samples
        samples += 1
        if samples == 2:
            raise OSError("procfs gone")
        return 10.0, 10.0

    async def block() -> None:
        async with HealthMonitor(interval=1, sampler=breaks):
            try:
                await anyio.sleep(10)
            finally:
                raise KeyError("mine")  # raised while the sampler's failure cancels the block

    with pytest.raises(ExceptionGroup) as info:
        await block()
    assert [type(e) for e in info.value.exceptions] == [KeyError, OSError]


async def test_cancellation_of_the_block_propagates_as_itself() -> None:
    seen: BaseException | None = None
    with anyio.move_on_after(3) as scope:
        try:
            async with HealthMonitor(interval=1, sampler=_quiet) as health:
                await anyio.sleep(10)
        except BaseException as exc:
            seen = exc
            raise
    assert scope.cancelled_caught
    assert type(seen) is anyio.get_cancelled_exc_class()
    assert not health.statistics().running
