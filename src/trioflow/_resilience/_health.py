"""System health from psutil, sampled in a background task scoped by ``async with``.

``HealthMonitor`` is a health source for :class:`~trioflow.ResourceManager` (``health=``): while
the CPU or memory use is above its thresholds, the manager holds back new work (or refuses it),
and :class:`~trioflow.AdaptiveConcurrency` shrinks the limit.

Sampling calls psutil directly on the event loop rather than through a worker thread:
``psutil.cpu_percent(interval=None)`` and ``psutil.virtual_memory()`` each read one small procfs
file (about 0.1 ms together, once per ``interval``), cheaper than a thread hand-off; and psutil
keeps the CPU baseline per calling thread, so calls from a pool of worker threads would measure
over arbitrary windows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Literal, Self, final

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from .._backend import open_body_group
from .._checks import check_int, check_number, check_percent, validator
from .._events import Listeners

__all__ = ("HealthChanged", "HealthMonitor", "HealthMonitorStatistics")

Sampler = Callable[[], tuple[float, float]]


def psutil_sampler() -> tuple[float, float]:
    """Return ``(cpu_percent, memory_percent)`` of the whole machine, from psutil.

    CPU use is measured since the previous call from the same thread (psutil's
    ``cpu_percent(interval=None)``); memory is ``virtual_memory().percent``.

    Returns:
        Both percentages, 0-100.
    """
    import psutil  # type: ignore[import-untyped]  # on first use: a tenth of import trioflow

    return psutil.cpu_percent(interval=None), psutil.virtual_memory().percent


_percent = validator(check_percent)
_interval = validator(check_number, minimum=0, strict=True)
_at_least_1 = validator(check_int, minimum=1)


def _sampler(value: Sampler | None) -> Sampler:
    if value is None:
        return psutil_sampler
    if not callable(value):
        raise TypeError(f"sampler must be a callable returning (cpu, memory), got {value!r}")
    return value


@attrs.frozen(kw_only=True)
class HealthMonitorStatistics:
    """A snapshot of a :class:`HealthMonitor`.

    Attributes:
        healthy: Whether the system counts as healthy (see :attr:`HealthMonitor.healthy`).
        running: Whether the monitor is sampling (inside its ``async with``).
        cpu_percent: CPU use at the last sample, or None before the first.
        memory_percent: Memory use at the last sample, or None before the first.
        max_cpu_percent: The CPU threshold.
        max_memory_percent: The memory threshold.
        load: ``max(cpu / max_cpu, memory / max_memory)`` capped to [0, 1]; 1 when unhealthy.
        samples: Samples taken.
        unhealthy_samples: Samples above a threshold.
        transitions: Changes between healthy and unhealthy.
        sampled_at: When the last sample was taken (``anyio.current_time()``), or None.
    """

    healthy: bool
    running: bool
    cpu_percent: float | None
    memory_percent: float | None
    max_cpu_percent: float
    max_memory_percent: float
    load: float
    samples: int
    unhealthy_samples: int
    transitions: int
    sampled_at: float | None


@attrs.frozen(kw_only=True)
class HealthChanged:
    """A :class:`HealthMonitor` turned unhealthy, or healthy again.

    Attributes:
        kind: ``"unhealthy"`` or ``"healthy"``.
        cpu_percent: CPU use at the sample that flipped the state (None when the monitor
            stopped, which reports healthy).
        memory_percent: Memory use at that sample (None when the monitor stopped).
        at: When (``anyio.current_time()``).
    """

    kind: Literal["healthy", "unhealthy"]
    cpu_percent: float | None
    memory_percent: float | None
    at: float


@final
@attrs.define(eq=False, repr=False, on_setattr=attrs.setters.NO_OP)
class HealthMonitor:
    """Samples CPU and memory use every ``interval`` seconds inside an ``async with`` block.

    ::

        async with HealthMonitor(max_cpu_percent=80, max_memory_percent=90) as health:
            rm = ResourceManager(limit=16, health=health)   # waits while unhealthy
            ...

    Entering takes the first sample before the block starts (so :attr:`healthy` is meaningful
    at once) and starts a sampling task in a task group; leaving the block stops it. An
    exception raised in the block comes out as itself, not wrapped in an ``ExceptionGroup``
    (a failure of the sampler, which is the sampler's own, comes out in one). A sample
    is healthy when CPU use <= ``max_cpu_percent`` and memory use <= ``max_memory_percent``.
    Outside its block the monitor has no fresh data and reports healthy, and releases
    anything waiting in :meth:`wait_healthy`.

    **Hysteresis.** The first sample of a run sets the state. After that, the state flips only
    when ``consecutive_samples`` samples in a row disagree with it; one that agrees starts the
    count again. The default, 1, follows every sample; 2 or 3 rides out a momentary CPU
    spike (at the cost of reacting ``interval`` x (``consecutive_samples`` - 1) later).

    Args:
        max_cpu_percent: CPU use above which the system is unhealthy, in (0, 100].
        max_memory_percent: Memory use above which the system is unhealthy, in (0, 100].
        interval: Seconds between samples, a finite number > 0.
        consecutive_samples: Samples in a row that must disagree with the state to flip it,
            an int >= 1.
        sampler: A callable returning ``(cpu_percent, memory_percent)``; defaults to psutil
            (see :func:`psutil_sampler`). Tests inject a scripted one.

    Raises:
        ValueError: If a percentage is outside (0, 100], ``interval`` is not > 0 or
            ``consecutive_samples`` is not an int >= 1.
        TypeError: If ``sampler`` is not callable, or a number has the wrong type.
    """

    _max_cpu_percent: float = attrs.field(
        alias="max_cpu_percent", default=80.0, validator=_percent
    )
    _max_memory_percent: float = attrs.field(
        alias="max_memory_percent", default=90.0, validator=_percent
    )
    _interval: float = attrs.field(alias="interval", default=1.0, validator=_interval)
    _consecutive_samples: int = attrs.field(
        alias="consecutive_samples", default=1, kw_only=True, validator=_at_least_1
    )
    _sampler: Sampler = attrs.field(
        alias="sampler", default=None, kw_only=True, converter=_sampler
    )
    _cpu: float | None = attrs.field(default=None, init=False)
    _memory: float | None = attrs.field(default=None, init=False)
    _sampled_at: float | None = attrs.field(default=None, init=False)
    _unhealthy: bool = attrs.field(default=False, init=False)
    # Samples in a row that disagreed with _unhealthy, and -1 before the first of a run.
    _streak: int = attrs.field(default=-1, init=False)
    # Set when the system turns healthy again (or the monitor stops); replaced when it turns
    # unhealthy.
    _recovered: anyio.Event | None = attrs.field(default=None, init=False)
    _samples: int = attrs.field(default=0, init=False)
    _unhealthy_samples: int = attrs.field(default=0, init=False)
    _transitions: int = attrs.field(default=0, init=False)
    _stack: contextlib.AsyncExitStack | None = attrs.field(default=None, init=False)
    _listeners: Listeners[HealthChanged] = attrs.field(
        factory=lambda: Listeners("HealthMonitor"), init=False
    )

    def __repr__(self) -> str:
        return (
            f"HealthMonitor(max_cpu_percent={self._max_cpu_percent!r}, "
            f"max_memory_percent={self._max_memory_percent!r}, interval={self._interval!r})"
        )

    @property
    def healthy(self) -> bool:
        """Whether the system counts as healthy (True when not running).

        With ``consecutive_samples=1``, whether the latest sample is within both thresholds;
        otherwise the state flips only after that many disagreeing samples in a row.
        """
        return not self._unhealthy

    @property
    def load(self) -> float:
        """How close the latest sample is to the thresholds, from 0 to 1 (1: unhealthy).

        ``max(cpu / max_cpu_percent, memory / max_memory_percent)``, capped to [0, 1]; 0 when
        not running. :class:`~trioflow.RetryPolicies` accepts a monitor as ``load=``.
        """
        if self._stack is None or self._cpu is None or self._memory is None:
            return 0.0
        ratio = max(self._cpu / self._max_cpu_percent, self._memory / self._max_memory_percent)
        return min(1.0, max(0.0, ratio))

    async def wait_healthy(self) -> None:
        """Wait until the system is healthy; return at once (after a checkpoint) if it is."""
        if not self._unhealthy:
            await anyio.lowlevel.checkpoint()
            return
        while self._unhealthy:
            assert self._recovered is not None
            await self._recovered.wait()

    def _take_sample(self) -> None:
        cpu, memory = self._sampler()
        self._cpu, self._memory = float(cpu), float(memory)
        self._sampled_at = anyio.current_time()
        self._samples += 1
        unhealthy = self._cpu > self._max_cpu_percent or self._memory > self._max_memory_percent
        if unhealthy:
            self._unhealthy_samples += 1
        if unhealthy == self._unhealthy:
            self._streak = 0
            return
        first = self._streak < 0
        self._streak += 1
        if first or self._streak >= self._consecutive_samples:
            self._streak = 0
            self._transitions += 1
            self._set_unhealthy(unhealthy)

    def _set_unhealthy(self, unhealthy: bool, *, stopped: bool = False) -> None:
        self._unhealthy = unhealthy
        if unhealthy:
            self._recovered = anyio.Event()
        elif self._recovered is not None:
            self._recovered.set()
        if self._listeners:
            self._listeners.emit(
                HealthChanged(
                    kind="unhealthy" if unhealthy else "healthy",
                    cpu_percent=None if stopped else self._cpu,
                    memory_percent=None if stopped else self._memory,
                    at=anyio.current_time(),
                )
            )

    def add_listener(self, fn: Callable[[HealthChanged], object]) -> Callable[[], None]:
        """Call ``fn(event)`` with a :class:`HealthChanged` each time the health flips.

        An event comes when the monitor turns unhealthy (``kind="unhealthy"``) and when it
        turns healthy again (``"healthy"``), after the hysteresis of
        ``consecutive_samples``; also ``"healthy"`` when it stops while unhealthy (outside
        its block it reports healthy). The first sample of a run reports only a change from
        healthy. Listeners run in the sampling task; one that raises is logged and changes
        nothing else.

        Example::

            remove = monitor.add_listener(lambda e: print(e.kind, e.cpu_percent))

        Args:
            fn: A synchronous callable taking one event.

        Returns:
            A function that removes the listener (idempotent).

        Raises:
            TypeError: ``fn`` is not callable.
        """
        return self._listeners.add(fn)

    async def _sample_forever(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self._take_sample()
        task_status.started()
        deadline = anyio.current_time()
        while True:
            deadline += self._interval
            await anyio.sleep_until(deadline)
            self._take_sample()

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("this HealthMonitor is already running")
        async with contextlib.AsyncExitStack() as stack:
            # Unwound in reverse: stop the sampling task, wait for it, then mark stopped.
            stack.callback(self._stop)
            # Claimed before the first checkpoint, so that a concurrent enter fails.
            self._stack = stack
            # The block's own exception comes out as itself, not in a group of one.
            tg = await stack.enter_async_context(open_body_group())
            stack.callback(tg.cancel_scope.cancel)
            await tg.start(self._sample_forever)
            self._stack = stack.pop_all()
        return self

    def _stop(self) -> None:
        self._stack = None
        self._streak = -1
        if self._unhealthy:
            self._set_unhealthy(False, stopped=True)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack = self._stack
        assert stack is not None
        return await stack.__aexit__(exc_type, exc, tb)

    def statistics(self) -> HealthMonitorStatistics:
        """Return a snapshot of the latest sample and the counters.

        Returns:
            A frozen :class:`HealthMonitorStatistics`.
        """
        return HealthMonitorStatistics(
            healthy=self.healthy,
            running=self._stack is not None,
            cpu_percent=self._cpu,
            memory_percent=self._memory,
            max_cpu_percent=self._max_cpu_percent,
            max_memory_percent=self._max_memory_percent,
            load=self.load,
            samples=self._samples,
            unhealthy_samples=self._unhealthy_samples,
            transitions=self._transitions,
            sampled_at=self._sampled_at,
        )
