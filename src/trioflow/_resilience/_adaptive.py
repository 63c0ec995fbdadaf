"""Adaptive concurrency: find the limit a dependency can take from its latency and errors.

:class:`AdaptiveConcurrency` watches every call that completes through a
:class:`~trioflow.ResourceManager` (via its listener) and moves the manager's limit with AIMD
- additive increase, multiplicative decrease - as TCP does and as Netflix's concurrency-limits
library does for services:

* Observations are grouped in windows of ``limit`` completed calls (about one round trip of
  everything in flight). Calls that started before the last change of the limit are ignored:
  they ran under the old limit and would blur the feedback.
* The baseline is the lowest latency of a successful call over the last ``baseline_windows``
  windows (the latency with no queueing).
* At the end of each window the limit is multiplied by ``backoff`` (at least -1) when the
  window was congested - its mean latency above ``tolerance`` x baseline, more than
  ``max_error_rate`` of its calls failed, or the health source reports unhealthy - and
  otherwise grows by 1, provided the limit was in use (at least half of it busy or waiting).
* It always stays within ``[min_limit, max_limit]``.

Nothing runs in the background: the controller is purely reactive, so it needs no ``async
with``; :meth:`AdaptiveConcurrency.close` (or a ``with`` block) detaches it.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from types import TracebackType
from typing import Self, final

import attrs

from .._backend import current_time
from .._checks import check_fraction, check_int, check_number
from .._limits import HealthSource, ResourceManager, ResourceManagerEvent

__all__ = ("AdaptiveConcurrency", "AdaptiveConcurrencyStatistics")

# Float noise between a slot's recorded start and "completion time - duration".
_EPSILON = 1e-9


@attrs.frozen(kw_only=True)
class AdaptiveConcurrencyStatistics:
    """A snapshot of an :class:`AdaptiveConcurrency` controller.

    Attributes:
        limit: The resource manager's limit now.
        min_limit: The lowest limit allowed.
        max_limit: The highest limit allowed.
        baseline_latency: The lowest recent latency of a successful call, or None yet.
        window_latency: Mean latency of the successful calls of the last window, or None.
        windows: Windows completed.
        increases: Windows that raised the limit.
        decreases: Windows that lowered the limit.
        samples: Completed calls counted.
        ignored: Completed calls ignored because they started before the last change.
    """

    limit: int
    min_limit: int
    max_limit: int
    baseline_latency: float | None
    window_latency: float | None
    windows: int
    increases: int
    decreases: int
    samples: int
    ignored: int


def _int_at_least_1(name: str, value: object) -> int:
    return check_int(value, name, minimum=1)


@final
@attrs.define(eq=False, init=False, repr=False)
class AdaptiveConcurrency:
    """Moves a resource manager's limit to what the dependency behind it can take.

    ::

        rm = ResourceManager(limit=4)
        with AdaptiveConcurrency(rm, min_limit=2, max_limit=64):
            ...  # run work through rm.run / rm.slot; rm.limit follows the service

    See the module docs above for the algorithm. Construction sets the manager's limit to
    ``initial_limit`` (default: its current limit, clamped to the range) and subscribes to it.

    Args:
        resource_manager: The manager whose ``limit`` is adjusted.
        min_limit: The lowest limit, an int >= 1.
        max_limit: The highest limit, an int >= ``min_limit``.
        initial_limit: The starting limit, within the range; defaults to the manager's
            current limit clamped to the range.
        tolerance: Mean window latency over baseline above which the window is congested, a
            number > 1.
        backoff: Factor applied to the limit on congestion, in (0, 1).
        max_error_rate: Fraction of failed calls in a window above which it is congested, in
            [0, 1].
        health: A health source (e.g. a :class:`~trioflow.HealthMonitor`); while unhealthy,
            every window is congested.
        baseline_windows: How many recent windows the baseline latency is taken over, >= 1.

    Raises:
        TypeError: If ``resource_manager`` is not a ResourceManager, ``health`` is not a
            health source, or a limit is not an int or a factor not a number.
        ValueError: If a bound or factor is out of range, including ``min_limit >
            max_limit``.
    """

    _rm: ResourceManager
    _min_limit: int
    _max_limit: int
    _tolerance: float
    _backoff: float
    _max_error_rate: float
    _health: HealthSource | None
    _minima: collections.deque[float]
    _unsubscribe: Callable[[], None] | None
    _changed_at: float
    _count: int
    _ok: int
    _errors: int
    _latency_sum: float
    _fastest: float
    _window_latency: float | None
    _windows: int
    _increases: int
    _decreases: int
    _samples: int
    _ignored: int

    def __init__(
        self,
        resource_manager: ResourceManager,
        *,
        min_limit: int = 1,
        max_limit: int,
        initial_limit: int | None = None,
        tolerance: float = 2.0,
        backoff: float = 0.9,
        max_error_rate: float = 0.1,
        health: HealthSource | None = None,
        baseline_windows: int = 20,
    ) -> None:
        if not isinstance(resource_manager, ResourceManager):
            raise TypeError(
                f"resource_manager must be a ResourceManager, got {resource_manager!r}"
            )
        _int_at_least_1("min_limit", min_limit)
        _int_at_least_1("max_limit", max_limit)
        if min_limit > max_limit:
            raise ValueError(
                f"min_limit must be <= max_limit, got min_limit={min_limit}, max_limit={max_limit}"
            )
        if initial_limit is None:
            initial_limit = min(max(resource_manager.limit, min_limit), max_limit)
        else:
            check_int(initial_limit, "initial_limit", minimum=min_limit, maximum=max_limit)
        self._tolerance = check_number(tolerance, "tolerance", minimum=1, strict=True)
        self._backoff = check_fraction(backoff, "backoff", strict=True)
        self._max_error_rate = check_fraction(max_error_rate, "max_error_rate")
        if health is not None and not isinstance(health, HealthSource):
            raise TypeError(
                f"health must have a 'healthy' property and 'wait_healthy()', got {health!r}"
            )
        _int_at_least_1("baseline_windows", baseline_windows)
        self._rm = resource_manager
        self._min_limit = min_limit
        self._max_limit = max_limit
        self._health = health
        self._minima = collections.deque(maxlen=baseline_windows)
        self._changed_at = -math.inf
        self._reset_window()
        self._window_latency = None
        self._windows = self._increases = self._decreases = 0
        self._samples = self._ignored = 0
        resource_manager.limit = initial_limit
        self._unsubscribe = resource_manager.add_listener(self._observe)

    def __repr__(self) -> str:
        return (
            f"AdaptiveConcurrency(limit={self._rm.limit}, min_limit={self._min_limit}, "
            f"max_limit={self._max_limit})"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop adjusting the limit (it stays where it is). Idempotent."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    @property
    def limit(self) -> int:
        """The resource manager's limit now."""
        return self._rm.limit

    def _reset_window(self) -> None:
        self._count = self._ok = self._errors = 0
        self._latency_sum = 0.0
        self._fastest = math.inf

    def _observe(self, event: ResourceManagerEvent) -> None:
        if event.kind != "released":
            return  # a limit changed: this controller's own change, or someone else's
        duration, succeeded = event.duration, event.ok
        now = current_time()  # anyio.current_time(), without anyio's dispatch (once a slot)
        if now - duration < self._changed_at - _EPSILON:
            self._ignored += 1
            return
        self._samples += 1
        self._count += 1
        if succeeded:
            self._ok += 1
            self._latency_sum += duration
            self._fastest = min(self._fastest, duration)
        else:
            self._errors += 1
        if self._count >= self._rm.limit:
            self._end_window(now)

    def _end_window(self, now: float) -> None:
        self._windows += 1
        if self._ok:
            self._minima.append(self._fastest)
            self._window_latency = self._latency_sum / self._ok
        baseline = min(self._minima) if self._minima else None
        congested = (
            self._errors > self._max_error_rate * self._count
            or (self._health is not None and not self._health.healthy)
            or (
                self._ok > 0
                and baseline is not None
                and self._latency_sum / self._ok > self._tolerance * baseline
            )
        )
        limit = self._rm.limit
        new = limit
        if congested:
            new = max(self._min_limit, min(limit - 1, math.floor(limit * self._backoff)))
        else:
            stats = self._rm.statistics()
            # +1 for the call just completed: it was part of the demand.
            if 2 * (stats.executing + stats.waiting + 1) >= limit:
                new = min(self._max_limit, limit + 1)
        self._reset_window()
        if new != limit:
            if new > limit:
                self._increases += 1
            else:
                self._decreases += 1
            self._rm.limit = new
            self._changed_at = now

    def statistics(self) -> AdaptiveConcurrencyStatistics:
        """Return a snapshot of the controller's state and counters.

        Returns:
            A frozen :class:`AdaptiveConcurrencyStatistics`.
        """
        return AdaptiveConcurrencyStatistics(
            limit=self._rm.limit,
            min_limit=self._min_limit,
            max_limit=self._max_limit,
            baseline_latency=min(self._minima) if self._minima else None,
            window_latency=self._window_latency,
            windows=self._windows,
            increases=self._increases,
            decreases=self._decreases,
            samples=self._samples,
            ignored=self._ignored,
        )
