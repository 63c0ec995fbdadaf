"""Coordinator alerts: queue depth, failure ratio over a sliding window, health; virtual time."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import LogCapture

from _lifecycle_stages import SEVEN_STAGES
from trioflow import ConfigError, HealthMonitor
from trioflow._lifecycle._alerts import FailureWindow, Threshold
from trioflow.lifecycle import (
    Alert,
    AlertCleared,
    AlertsConfig,
    CoordinatorEvent,
    FailureRatioAlertConfig,
    OrchestrationConfig,
    Pipeline,
    QueueDepthAlertConfig,
    Request,
    RequestKind,
    Router,
    Stage,
    load_config,
    open_coordinator,
)

pytestmark = pytest.mark.anyio


async def _work(request: Request) -> None:
    seconds, fail = request.payload
    await anyio.sleep(seconds)
    if fail:
        raise ValueError("the work failed")


async def _noop(request: Request) -> None:
    return None


def _router() -> Router:
    pipeline = Pipeline(
        [Stage(name, state, _work if name == "process" else _noop) for name, state in SEVEN_STAGES]
    )
    return Router(lambda r: RequestKind.SIMPLE_QUERY, {RequestKind.SIMPLE_QUERY: pipeline})


def _capture() -> tuple[LogCapture, Any]:
    cap = LogCapture()
    return cap, structlog.wrap_logger(structlog.ReturnLogger(), processors=[cap])


def _alerts(events: Sequence[CoordinatorEvent]) -> list[tuple[str, str, float, float]]:
    return [(e.kind, e.name, e.value, e.at) for e in events if isinstance(e, Alert | AlertCleared)]


def _config(**alerts: Any) -> dict[str, Any]:
    return {
        "enable_metrics": False,
        "max_concurrency": 1,
        "default_timeout": None,
        "alerts": alerts,
    }


# --- queue depth -------------------------------------------------------------------------------


async def test_queue_depth_fires_once_when_reached_and_clears_at_clear_at() -> None:
    events: list[CoordinatorEvent] = []
    logs, logger = _capture()
    config = _config(queue_depth={"threshold": 3, "clear_at": 1})
    async with open_coordinator(config, router=_router(), logger=logger) as coordinator:
        coordinator.add_listener(events.append)
        async with anyio.create_task_group() as tg:
            for _ in range(5):  # one runs, four wait: the depth goes 1, 2, 3 (alert), 4
                tg.start_soon(coordinator.process, Request((10, False)))
    # Admitted one by one every 10 s: the depth is 3 at 10, 2 at 20, 1 at 30 (cleared).
    assert _alerts(events) == [("alert", "queue_depth", 3, 0), ("cleared", "queue_depth", 1, 30)]
    alert, cleared = (e for e in events if isinstance(e, Alert | AlertCleared))
    assert isinstance(alert, Alert)
    assert alert.threshold == 3
    assert isinstance(cleared, AlertCleared)
    assert (cleared.threshold, cleared.clear_at) == (3, 1)
    found = [(e["event"], e["log_level"], e["alert"]) for e in logs.entries if "alert" in e]
    assert found == [("alert", "warning", "queue_depth"), ("alert cleared", "info", "queue_depth")]


async def test_a_queue_depth_hovering_at_the_threshold_fires_once() -> None:
    events: list[CoordinatorEvent] = []
    config = _config(queue_depth={"threshold": 3, "clear_at": 1})
    async with open_coordinator(config, router=_router(), logger=_capture()[1]) as coordinator:
        coordinator.add_listener(events.append)
        async with anyio.create_task_group() as tg:
            for _ in range(4):  # depth 3 at 0
                tg.start_soon(coordinator.process, Request((10, False)))
            for t in (10, 20, 30):  # each admission (depth 2) is followed by an arrival (3)
                await anyio.sleep_until(t)
                tg.start_soon(coordinator.process, Request((10, False)))
    # 3 waiting until 30, then 2 at 40, 1 at 50.
    assert _alerts(events) == [("alert", "queue_depth", 3, 0), ("cleared", "queue_depth", 1, 50)]


async def test_the_default_clear_at_is_a_fraction_of_the_threshold() -> None:
    assert QueueDepthAlertConfig(threshold=10).clear_level == 8
    assert FailureRatioAlertConfig(threshold=0.5).clear_level == 0.4
    events: list[CoordinatorEvent] = []
    config = _config(queue_depth={"threshold": 2})  # clears at 1.6: at a depth of 1
    async with open_coordinator(config, router=_router(), logger=_capture()[1]) as coordinator:
        coordinator.add_listener(events.append)
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(coordinator.process, Request((10, False)))
    assert _alerts(events) == [("alert", "queue_depth", 2, 0), ("cleared", "queue_depth", 1, 20)]


# --- failure ratio -----------------------------------------------------------------------------


async def test_the_failure_ratio_counts_a_sliding_window_that_expires_at_exact_times() -> None:
    events: list[CoordinatorEvent] = []
    window = {"threshold": 0.5, "clear_at": 0.25, "window": 10, "min_requests": 4}
    async with open_coordinator(
        _config(failure_ratio=window), router=_router(), logger=_capture()[1]
    ) as coordinator:
        coordinator.add_listener(events.append)
        # Requests of 1 s, one after the other, ending at 1, 2, ... 7: F F ok F ok ok ok.
        for fail in (True, True, False, True, False, False, False):
            await coordinator.process(Request((1, fail)))
        assert _alerts(events) == [("alert", "failure_ratio", 0.75, 4)]  # 3 of 4 at 4
        # At 7: 3 of 7 failed (0.43), above clear_at. Ending at 11, the one that ended at 1 is
        # exactly 10 s old and out: 2 of 7 (0.29). Ending at 12, the one of 2 is out: 1 of 7.
        await anyio.sleep_until(10)
        await coordinator.process(Request((1, False)))
        assert len(_alerts(events)) == 1
        await coordinator.process(Request((1, False)))
    assert _alerts(events) == [
        ("alert", "failure_ratio", 0.75, 4),
        ("cleared", "failure_ratio", 1 / 7, 12),
    ]


async def test_the_failure_ratio_waits_for_min_requests_and_ignores_cancelled_ones() -> None:
    events: list[CoordinatorEvent] = []
    window = {"threshold": 0.5, "window": 60, "min_requests": 3}
    async with open_coordinator(
        _config(failure_ratio=window), router=_router(), logger=_capture()[1]
    ) as coordinator:
        coordinator.add_listener(events.append)
        await coordinator.process(Request((1, True)))
        with anyio.move_on_after(1):  # cancelled: neither a success nor a failure
            await coordinator.process(Request((5, False)))
        await coordinator.process(Request((1, True)))
        assert _alerts(events) == []  # 2 of 2 failed, but fewer than min_requests
        await coordinator.process(Request((1, False)))
    assert _alerts(events) == [("alert", "failure_ratio", 2 / 3, 4)]


# --- health ------------------------------------------------------------------------------------


class Script:
    """A sampler returning one scripted (cpu, memory) pair per call, repeating the last."""

    def __init__(self, samples: Sequence[tuple[float, float]]) -> None:
        self.samples = list(samples)
        self.calls = 0

    def __call__(self) -> tuple[float, float]:
        self.calls += 1
        return self.samples[min(self.calls - 1, len(self.samples) - 1)]


OK, HOT = (10.0, 20.0), (95.0, 20.0)


async def test_health_fires_after_unhealthy_for_and_clears_when_healthy() -> None:
    # Sampled every second from 0: unhealthy from 3 to 9 (7 s), a blip at 12-13 (2 s).
    samples = [OK] * 3 + [HOT] * 7 + [OK] * 2 + [HOT] * 2 + [OK]
    monitor = HealthMonitor(interval=1, sampler=Script(samples))
    events: list[CoordinatorEvent] = []
    config = _config(health={"unhealthy_for": 5})
    async with open_coordinator(
        config, router=_router(), health=monitor, logger=_capture()[1]
    ) as coordinator:
        coordinator.add_listener(events.append)
        await anyio.sleep(20)
    assert _alerts(events) == [("alert", "health", 5, 8), ("cleared", "health", 0, 10)]


async def test_a_health_source_without_transitions_is_looked_at_every_interval() -> None:
    class Flag:
        healthy = True

        async def wait_healthy(self) -> None:
            await anyio.lowlevel.checkpoint()

    flag = Flag()
    events: list[CoordinatorEvent] = []
    config = _config(health={"interval": 2})
    async with open_coordinator(
        config, router=_router(), health=flag, logger=_capture()[1]
    ) as coordinator:
        coordinator.add_listener(events.append)
        await anyio.sleep(3)
        flag.healthy = False  # seen at 4
        await anyio.sleep(4)
        flag.healthy = True  # seen at 8
        await anyio.sleep(3)
    assert _alerts(events) == [("alert", "health", 0, 4), ("cleared", "health", 0, 8)]


async def test_a_health_alert_without_a_health_source_is_refused_before_anything_runs() -> None:
    with pytest.raises(ValueError, match=r"config\.alerts\.health needs a health source"):
        async with open_coordinator(_config(health={}), router=_router()):
            pytest.fail("opened")  # pragma: no cover


# --- a listener that raises --------------------------------------------------------------------


async def test_a_raising_listener_is_logged_and_breaks_neither_alerts_nor_requests() -> None:
    logs, logger = _capture()
    events: list[CoordinatorEvent] = []

    def broken(event: CoordinatorEvent) -> None:
        raise RuntimeError("listener broke")

    config = _config(queue_depth={"threshold": 1})
    async with open_coordinator(config, router=_router(), logger=logger) as coordinator:
        coordinator.add_listener(broken)
        coordinator.add_listener(events.append)
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(coordinator.process, Request((1, False)))
    # The first request ends (and hands its place to the second) before the second starts.
    assert [e.kind for e in events] == ["alert", "finished", "cleared", "finished"]
    failures = [e for e in logs.entries if e["event"] == "listener failed"]
    assert [(f["component"], f["kind"], f["log_level"]) for f in failures] == [
        ("Coordinator", "alert", "error"),
        ("Coordinator", "finished", "error"),
        ("Coordinator", "cleared", "error"),
        ("Coordinator", "finished", "error"),
    ]
    assert coordinator.statistics().completed == 2


# --- configuration -----------------------------------------------------------------------------


def test_alerts_load_from_toml(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "orchestration.toml"
    path.write_text(
        "[alerts.queue_depth]\nthreshold = 100\nclear_at = 50\n"
        '[alerts.failure_ratio]\nthreshold = 0.2\nwindow = "00:05:00"\nmin_requests = 50\n'
        "[alerts.health]\nunhealthy_for = 30\n"
    )
    alerts = load_config(path).alerts
    assert alerts.queue_depth == QueueDepthAlertConfig(threshold=100, clear_at=50)
    assert alerts.failure_ratio == FailureRatioAlertConfig(
        threshold=0.2, window=300, min_requests=50
    )
    assert alerts.health is not None
    assert alerts.health.unhealthy_for == 30
    assert OrchestrationConfig().alerts == AlertsConfig()  # no alert unless given


def test_bad_alert_settings_are_each_reported() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            {
                "alerts": {
                    "queue_depth": {"threshold": 0},
                    "failure_ratio": {"threshold": 1.5, "window": 0, "min_requests": 0},
                    "health": {"unhealthy_for": -1, "every": 2},
                }
            }
        )
    assert list(info.value.problems) == [
        ("alerts.queue_depth.threshold", "must be an int >= 1, got 0 (int)"),
        ("alerts.failure_ratio.threshold", "must be a number in (0, 1], got 1.5 (float)"),
        ("alerts.failure_ratio.window", "must be a finite number > 0, got 0.0 (float)"),
        ("alerts.failure_ratio.min_requests", "must be an int >= 1, got 0 (int)"),
        ("alerts.health.unhealthy_for", "must be a finite number >= 0, got -1.0 (float)"),
        ("alerts.health.every", "unknown key"),
    ]


def test_clear_at_must_be_below_the_threshold() -> None:
    with pytest.raises(ConfigError, match=r"clear_at: must be < threshold \(3\), got 3"):
        QueueDepthAlertConfig(threshold=3, clear_at=3)
    with pytest.raises(ConfigError, match=r"clear_at: must be < threshold \(0.5\), got 0.6"):
        load_config({"alerts": {"failure_ratio": {"threshold": 0.5, "clear_at": 0.6}}})


# --- the hysteresis, property-based ------------------------------------------------------------


@given(
    threshold=st.integers(1, 10),
    gap=st.integers(1, 10),
    values=st.lists(st.integers(-5, 15), max_size=40),
)
def test_hysteresis_alternates_and_fires_only_beyond_its_levels(
    threshold: int, gap: int, values: list[int]
) -> None:
    clear_at = threshold - gap
    level = Threshold("queue_depth", threshold, clear_at)
    fired: list[Alert | AlertCleared] = []
    for at, value in enumerate(values):
        event = level.update(value, at)
        if event is not None:
            fired.append(event)
            assert event.at == at
            assert event.value == value
        if value >= threshold:
            assert level.active  # never above the threshold without an alert out
        elif value <= clear_at:
            assert not level.active  # never at or below clear_at with an alert out
        else:
            assert event is None  # between the levels nothing changes
    assert [e.kind for e in fired] == ["alert", "cleared"] * (len(fired) // 2) + (
        ["alert"] if len(fired) % 2 else []
    )
    assert all(e.value >= threshold for e in fired if e.kind == "alert")
    assert all(e.value <= clear_at for e in fired if e.kind == "cleared")
    assert level.active == (bool(fired) and fired[-1].kind == "alert")


@given(
    window=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    minimum=st.integers(1, 5),
    ends=st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 1.0, 4.0]), st.booleans())),
)
def test_the_failure_window_agrees_with_counting_from_scratch(
    window: float, minimum: int, ends: list[tuple[float, bool]]
) -> None:
    failures = FailureWindow(window, minimum)
    now = 0.0
    history: list[tuple[float, bool]] = []
    for step, failed in ends:
        now += step
        history.append((now, failed))
        inside = [f for at, f in history if at > now - window]  # the window is (now - w, now]
        expected = sum(inside) / len(inside) if len(inside) >= minimum else None
        assert failures.ratio(now, failed) == expected
