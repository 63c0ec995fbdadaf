"""One listener shape across components: ``remove = x.add_listener(fn)``, ``fn(event)``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import anyio
import attrs
import pytest
import structlog
from structlog.testing import LogCapture, capture_logs

from _lifecycle_stages import SEVEN_STAGES
from trioflow import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    CircuitStateChanged,
    HealthChanged,
    HealthMonitor,
    LimitChanged,
    ObjectPoolEvent,
    Pool,
    ResourceManager,
    ResourceManagerEvent,
    SlotReleased,
)
from trioflow.lifecycle import (
    AdmissionRefused,
    CoordinatorEvent,
    ErrorCategory,
    Pipeline,
    ProcessingStatus,
    Request,
    RequestFinished,
    RequestKind,
    RequestState,
    Router,
    Stage,
    open_coordinator,
)

pytestmark = pytest.mark.anyio


class Boom(Exception):
    pass


async def _boom() -> None:
    await anyio.sleep(1)
    raise Boom


async def _sleep(seconds: float) -> float:
    await anyio.sleep(seconds)
    return seconds


def _router() -> Router:
    async def work(request: Request) -> None:
        await anyio.sleep(request.payload)

    async def noop(request: Request) -> None:
        return None

    stages = [Stage(n, s, work if n == "process" else noop) for n, s in SEVEN_STAGES]
    pipeline = Pipeline(stages)
    return Router(lambda r: RequestKind.SIMPLE_QUERY, {RequestKind.SIMPLE_QUERY: pipeline})


def _logger() -> tuple[LogCapture, Any]:
    cap = LogCapture()
    return cap, structlog.wrap_logger(structlog.ReturnLogger(), processors=[cap])


@contextlib.asynccontextmanager
async def _components() -> AsyncIterator[dict[str, Any]]:
    """One of each component that takes listeners."""

    async def make() -> object:
        return object()

    config = {"enable_metrics": False}
    async with open_coordinator(config, router=_router(), logger=_logger()[1]) as coordinator:
        yield {
            "ResourceManager": ResourceManager(limit=1),
            "CircuitBreaker": CircuitBreaker(),
            "HealthMonitor": HealthMonitor(sampler=lambda: (1.0, 1.0)),
            "Pool": Pool(make, max_size=1),
            "Coordinator": coordinator,
        }


# --- the shape, the same for every component ---------------------------------------------------


async def test_every_component_refuses_a_listener_that_is_not_callable() -> None:
    async with _components() as components:
        for name, component in components.items():
            with pytest.raises(TypeError, match=r"^fn must be callable, got 3 \(int\)$"):
                component.add_listener(3)
            assert callable(component.add_listener(print)), name


async def test_remove_is_idempotent_and_removes_only_its_own_registration() -> None:
    rm = ResourceManager(limit=1)
    seen: list[ResourceManagerEvent] = []
    first = rm.add_listener(seen.append)
    second = rm.add_listener(seen.append)  # the same function twice: two listeners
    await rm.run(_sleep, 1)
    assert len(seen) == 2
    first()
    first()
    await rm.run(_sleep, 1)
    assert len(seen) == 3
    second()
    await rm.run(_sleep, 1)
    assert len(seen) == 3


async def test_a_listener_removed_while_events_are_delivered_is_not_called_again() -> None:
    rm = ResourceManager(limit=1)
    seen: list[str] = []
    removes: list[Callable[[], None]] = []

    def once(event: ResourceManagerEvent) -> None:
        seen.append("once")
        removes[0]()

    removes.append(rm.add_listener(once))
    rm.add_listener(lambda e: seen.append("always"))
    await rm.run(_sleep, 1)
    await rm.run(_sleep, 1)
    assert seen == ["once", "always", "always"]


def _failures(logs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return [(e["component"], e["kind"]) for e in logs if e["event"] == "listener failed"]


async def test_a_raising_listener_is_logged_once_per_raise_and_the_others_still_hear() -> None:
    rm = ResourceManager(limit=1)
    seen: list[ResourceManagerEvent] = []

    def broken(event: ResourceManagerEvent) -> None:
        raise RuntimeError("listener broke")

    rm.add_listener(broken)
    rm.add_listener(seen.append)
    with capture_logs() as logs:
        assert await rm.run(_sleep, 2) == 2
        rm.limit = 3
    assert [e.kind for e in seen] == ["released", "limit_changed"]
    assert _failures(logs) == [
        ("ResourceManager", "released"),
        ("ResourceManager", "limit_changed"),
    ]
    assert logs[0]["error"] == "RuntimeError: listener broke"
    assert logs[0]["log_level"] == "error"
    assert rm.statistics().executed == 1


async def test_a_base_exception_raised_by_a_listener_is_not_swallowed() -> None:
    class Stop(BaseException):  # as cancellation or KeyboardInterrupt: never swallowed
        pass

    rm = ResourceManager(limit=1)

    def stop(event: ResourceManagerEvent) -> None:
        raise Stop

    rm.add_listener(stop)
    with pytest.raises(Stop):
        await rm.run(_sleep, 1)
    assert rm.statistics().executing == 0


# --- ResourceManager -----------------------------------------------------------------------------


async def test_resource_manager_reports_released_slots_but_not_cancelled_ones() -> None:
    rm = ResourceManager(limit=2, pools={"llm": 1, "db": 1}, keyed={"user": 1})
    seen: list[ResourceManagerEvent] = []
    rm.add_listener(seen.append)
    async with rm.slot("llm", "db", keys={"user": "alice"}):
        await anyio.sleep(3)
    with pytest.raises(Boom):
        await rm.run(_boom, pools=["llm"])
    with anyio.move_on_after(1):
        await rm.run(_sleep, 5)
    assert seen == [
        SlotReleased(pools=("db", "llm"), keys={"user": "alice"}, duration=3, ok=True),
        SlotReleased(pools=("llm",), duration=1, ok=False),
    ]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        seen[0].ok = False  # type: ignore[misc, union-attr]


async def test_resource_manager_reports_limit_changes() -> None:
    rm = ResourceManager(limit=2, pools={"llm": 1}, keyed={"user": 1})
    seen: list[ResourceManagerEvent] = []
    rm.add_listener(seen.append)
    rm.limit = 4
    rm.limit = 4  # unchanged: no event
    rm.set_pool_size("llm", 3)
    rm.set_pool_size("user", 2)
    assert seen == [
        LimitChanged(pool=None, old=2, new=4),
        LimitChanged(pool="llm", old=1, new=3),
        LimitChanged(pool="user", old=1, new=2),
    ]


async def test_a_0_1_resource_manager_listener_still_works_with_a_warning() -> None:
    rm = ResourceManager(limit=1)
    seen: list[tuple[float, bool]] = []
    with pytest.warns(DeprecationWarning, match=r"listener taking \(duration, succeeded\)"):
        remove = rm.add_listener(lambda duration, ok: seen.append((duration, ok)))  # type: ignore[arg-type, misc]
    await rm.run(_sleep, 2)
    rm.limit = 2  # not a released slot: the old shape never sees it
    remove()
    await rm.run(_sleep, 1)
    assert seen == [(2, True)]


# --- CircuitBreaker ------------------------------------------------------------------------------


async def test_circuit_breaker_reports_every_state_change_with_its_time() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5)
    seen: list[CircuitStateChanged] = []
    breaker.add_listener(seen.append)
    with pytest.raises(Boom):
        await breaker.call(_boom)
    with pytest.raises(CircuitOpenError):
        await breaker.call(_sleep, 1)
    await anyio.sleep(5)
    await breaker.call(_sleep, 1)
    closed, open_, half = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
    assert seen == [
        CircuitStateChanged(old=closed, new=open_, at=1),
        CircuitStateChanged(old=open_, new=half, at=6),
        CircuitStateChanged(old=half, new=closed, at=7),
    ]


async def test_a_raising_breaker_listener_does_not_break_the_breaker() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5)
    breaker.add_listener(lambda e: 1 / 0)
    with capture_logs() as logs, pytest.raises(Boom):
        await breaker.call(_boom)  # the call's own error, not the listener's
    assert breaker.state is CircuitState.OPEN
    assert _failures(logs) == [("CircuitBreaker", "state_changed")]


async def test_a_0_1_breaker_listener_still_works_with_a_warning() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    seen: list[tuple[CircuitState, CircuitState]] = []
    with pytest.warns(DeprecationWarning, match=r"listener taking \(old_state, new_state\)"):
        breaker.add_listener(lambda old, new: seen.append((old, new)))  # type: ignore[arg-type, misc]
    with pytest.raises(Boom):
        await breaker.call(_boom)
    assert seen == [(CircuitState.CLOSED, CircuitState.OPEN)]


# --- HealthMonitor -------------------------------------------------------------------------------


async def test_health_monitor_reports_its_transitions_and_its_stop() -> None:
    samples = iter([(10.0, 20.0), (95.0, 20.0), (95.0, 20.0), (10.0, 20.0), (10.0, 99.0)])
    monitor = HealthMonitor(interval=1, sampler=lambda: next(samples))
    seen: list[HealthChanged] = []
    monitor.add_listener(seen.append)
    async with monitor:
        await anyio.sleep(4.5)
    assert seen == [
        HealthChanged(kind="unhealthy", cpu_percent=95, memory_percent=20, at=1),
        HealthChanged(kind="healthy", cpu_percent=10, memory_percent=20, at=3),
        HealthChanged(kind="unhealthy", cpu_percent=10, memory_percent=99, at=4),
        HealthChanged(kind="healthy", cpu_percent=None, memory_percent=None, at=4.5),
    ]


async def test_a_raising_health_listener_does_not_stop_the_sampling() -> None:
    samples = iter([(95.0, 20.0), (10.0, 20.0)] * 3)
    monitor = HealthMonitor(interval=1, sampler=lambda: next(samples))
    monitor.add_listener(lambda e: 1 / 0)
    with capture_logs() as logs:
        async with monitor:
            await anyio.sleep(2.5)
    assert monitor.statistics().samples == 3
    assert _failures(logs) == [
        ("HealthMonitor", k) for k in ("unhealthy", "healthy", "unhealthy")
    ] + [("HealthMonitor", "healthy")]


# --- Pool ----------------------------------------------------------------------------------------


async def test_pool_reports_objects_made_checked_closed_and_its_own_close() -> None:
    made = 0

    async def make() -> int:
        nonlocal made
        made += 1
        return made

    async def check(obj: int) -> bool:
        if obj == 2:
            raise Boom("check failed")
        return obj != 1

    seen: list[ObjectPoolEvent] = []
    pool = Pool(make, max_size=2, check=check, max_idle=10)
    pool.add_listener(seen.append)
    async with pool:
        async with pool.acquire():  # 1 made
            pass
        async with pool.acquire() as obj:  # 1 fails its check and is closed; 2 made
            assert obj == 2
        with pytest.raises(Boom):
            async with pool.acquire():  # 2's check raises: closed; 3 made, and broken
                raise Boom
        async with pool.acquire():  # 4 made, then idle
            pass
        await anyio.sleep(11)  # 4 closed for being idle
        async with pool.acquire():  # 5 made, closed with the pool
            pass
    kinds = [(e.kind, e.reason, e.size) for e in seen]
    assert kinds == [
        ("created", None, 1),
        ("check_failed", None, 1),
        ("closed", "check_failed", 0),
        ("created", None, 1),
        ("check_failed", None, 1),
        ("closed", "check_failed", 0),
        ("created", None, 1),
        ("closed", "broken", 0),
        ("created", None, 1),
        ("closed", "idle", 0),
        ("created", None, 1),
        ("pool_closed", None, 1),
        ("closed", "pool_closed", 0),
    ]
    assert isinstance(seen[4].error, Boom)
    assert seen[1].error is None


# --- Coordinator ---------------------------------------------------------------------------------


async def test_coordinator_reports_finished_and_refused_requests() -> None:
    seen: list[CoordinatorEvent] = []
    config = {"enable_metrics": False, "max_concurrency": 1, "max_queue_depth": 1}
    async with open_coordinator(config, router=_router(), logger=_logger()[1]) as coordinator:
        coordinator.add_listener(seen.append)
        async with anyio.create_task_group() as tg:
            for n in range(3):  # one runs, one waits, the third is refused
                tg.start_soon(coordinator.process, Request(2, id=f"r{n}", user_id="alice"))
                await anyio.sleep(0.5)
    refused = [e for e in seen if isinstance(e, AdmissionRefused)]
    assert len(refused) == 1
    assert refused[0].request_id == "r2"
    assert refused[0].category is ErrorCategory.RESOURCE_EXHAUSTION
    assert "max_queue_depth=1" in refused[0].reason
    finished = {e.request_id: e for e in seen if isinstance(e, RequestFinished)}
    assert finished["r2"].status is ProcessingStatus.FAILED
    assert finished["r2"].category is ErrorCategory.RESOURCE_EXHAUSTION
    assert finished["r0"] == RequestFinished(
        request_id="r0",
        user_id="alice",
        request_kind=RequestKind.SIMPLE_QUERY,
        status=ProcessingStatus.SUCCEEDED,
        state=RequestState.COMPLETED,
        category=None,
        duration=2,
    )
    assert finished["r1"].duration == 3.5  # arrived at 0.5, waited until 2, ran 2 s
    # The refusal comes first, then its end.
    assert [e.kind for e in seen if e.request_id == "r2"] == ["refused", "finished"]  # type: ignore[union-attr]
