"""What a coordinator tells its listeners, and the alerts it raises on its own measures.

A :class:`~trioflow.lifecycle.Coordinator` emits, to the listeners of ``add_listener``, a
:class:`RequestFinished` for every request that ends, an :class:`AdmissionRefused` for every
request refused before it ran, and the :class:`Alert` and :class:`AlertCleared` events of the
thresholds of ``OrchestrationConfig.alerts``.

An alert is a :class:`Threshold`: it fires when its value reaches the threshold and clears when
the value is back at or below ``clear_at`` (below the threshold), so a value hovering at the
threshold fires once. Each measure is evaluated only where it changes: the queue depth when a
request starts or stops waiting for admission, the failure ratio when a request ends (over a
sliding window of ``window`` seconds, once it holds ``min_requests``), the health when the
health source flips (a :class:`~trioflow.HealthMonitor` says so; another source is looked at
every ``interval`` seconds), in a task of the coordinator's task group.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any, Literal, final

import anyio
import attrs

from .._backend import current_time
from .._limits import HealthSource
from .._resilience._health import HealthChanged, HealthMonitor
from ._config import AlertsConfig
from ._request import ErrorCategory, ProcessingStatus, RequestState

__all__ = (
    "AdmissionRefused",
    "Alert",
    "AlertCleared",
    "AlertName",
    "Alerts",
    "CoordinatorEvent",
    "FailureWindow",
    "RequestFinished",
    "Threshold",
)

#: The alerts a coordinator knows.
AlertName = Literal["queue_depth", "failure_ratio", "health"]


@attrs.frozen(kw_only=True)
class RequestFinished:
    """A request of a coordinator reached its terminal state.

    Attributes:
        kind: Always ``"finished"``.
        request_id: The request's id.
        user_id: Its user.
        request_kind: Its kind (``Request.kind``), or None.
        status: How it ended.
        state: Its terminal state.
        category: For a failed request, the category of its error; else None.
        duration: Seconds from its arrival to its end.
    """

    kind: Literal["finished"] = "finished"
    request_id: str
    user_id: str
    request_kind: str | None
    status: ProcessingStatus
    state: RequestState
    category: ErrorCategory | None
    duration: float


@attrs.frozen(kw_only=True)
class AdmissionRefused:
    """A request was refused before it ran: rate limited, queue too deep, unhealthy, timed out.

    A :class:`RequestFinished` (status ``FAILED``) follows for the same request.

    Attributes:
        kind: Always ``"refused"``.
        request_id: The request's id.
        user_id: Its user.
        category: The category of the refusal (``RESOURCE_EXHAUSTION``, ``TIMEOUT``, ...).
        reason: The refusal's message.
    """

    kind: Literal["refused"] = "refused"
    request_id: str
    user_id: str
    category: ErrorCategory | None
    reason: str


@attrs.frozen(kw_only=True)
class Alert:
    """An alert fired: its value reached its threshold.

    Attributes:
        kind: Always ``"alert"``.
        name: Which alert: ``"queue_depth"`` (requests waiting for admission),
            ``"failure_ratio"`` (failed requests over the window) or ``"health"`` (seconds
            the health source has been unhealthy).
        value: The value that fired it.
        threshold: The threshold it reached.
        at: When (``anyio.current_time()``).
    """

    kind: Literal["alert"] = "alert"
    name: AlertName
    value: float
    threshold: float
    at: float


@attrs.frozen(kw_only=True)
class AlertCleared:
    """An alert that had fired cleared: its value is back at or below ``clear_at``.

    Attributes:
        kind: Always ``"cleared"``.
        name: Which alert (see :class:`Alert`).
        value: The value that cleared it (for ``"health"``, 0: healthy again).
        threshold: The alert's threshold.
        clear_at: The level at or below which it clears.
        at: When (``anyio.current_time()``).
    """

    kind: Literal["cleared"] = "cleared"
    name: AlertName
    value: float
    threshold: float
    clear_at: float
    at: float


CoordinatorEvent = RequestFinished | AdmissionRefused | Alert | AlertCleared
"""What a :class:`~trioflow.lifecycle.Coordinator` listener receives (its ``kind`` tells which)."""


@final
class Threshold:
    """One alert's state: fires at ``threshold``, clears at or below ``clear_at``.

    Args:
        name: The alert's name.
        threshold: The value that fires it.
        clear_at: The value at or below which it clears, below ``threshold``.
    """

    __slots__ = ("active", "clear_at", "name", "threshold")

    def __init__(self, name: AlertName, threshold: float, clear_at: float) -> None:
        assert clear_at < threshold, "checked by the configuration"
        self.name = name
        self.threshold = threshold
        self.clear_at = clear_at
        self.active = False

    def update(self, value: float, at: float) -> Alert | AlertCleared | None:
        """Take a new value; return the event it causes, if any.

        Args:
            value: The measure now.
            at: The time now.

        Returns:
            An :class:`Alert` when the value reaches the threshold while the alert is clear,
            an :class:`AlertCleared` when it is at or below ``clear_at`` while the alert is
            active, else None.
        """
        if not self.active:
            if value >= self.threshold:
                self.active = True
                return Alert(name=self.name, value=value, threshold=self.threshold, at=at)
        elif value <= self.clear_at:
            self.active = False
            return AlertCleared(
                name=self.name,
                value=value,
                threshold=self.threshold,
                clear_at=self.clear_at,
                at=at,
            )
        return None


@final
class FailureWindow:
    """Requests that ended in the last ``window`` seconds: (end time, failed), oldest first."""

    __slots__ = ("ended", "failures", "minimum", "window")

    def __init__(self, window: float, minimum: int) -> None:
        self.window = window
        self.minimum = minimum
        self.ended: collections.deque[tuple[float, bool]] = collections.deque()
        self.failures = 0

    def ratio(self, at: float, failed: bool) -> float | None:
        """Count a request that ended; the failure ratio of the window, or None if too few."""
        ended = self.ended
        ended.append((at, failed))
        self.failures += failed
        # A request that ended exactly `window` seconds ago is out: the window is (at - w, at].
        horizon = at - self.window
        while ended[0][0] <= horizon:
            self.failures -= ended.popleft()[1]
        if len(ended) < self.minimum:
            return None
        return self.failures / len(ended)


@final
class Alerts:
    """The alerts of one coordinator: evaluated where their measures change.

    Args:
        config: Which alerts, and their thresholds.
        emit: Called with every event (the coordinator's listeners).
        logger: The structlog logger alerts are logged with.
    """

    __slots__ = ("_emit", "_failures", "_health", "_log", "_queue", "_window")

    def __init__(
        self, config: AlertsConfig, emit: Callable[[Alert | AlertCleared], None], logger: Any
    ) -> None:
        self._emit = emit
        self._log = logger
        queue, failures, health = config.queue_depth, config.failure_ratio, config.health
        self._queue = (
            None if queue is None else Threshold("queue_depth", queue.threshold, queue.clear_level)
        )
        self._failures: Threshold | None = None
        self._window: FailureWindow | None = None
        if failures is not None:
            self._failures = Threshold("failure_ratio", failures.threshold, failures.clear_level)
            self._window = FailureWindow(failures.window, failures.min_requests)
        self._health = health

    @property
    def watches_queue(self) -> bool:
        """Whether the queue depth has an alert."""
        return self._queue is not None

    @property
    def watches_failures(self) -> bool:
        """Whether the failure ratio has an alert."""
        return self._failures is not None

    @property
    def watches_health(self) -> bool:
        """Whether the health has an alert."""
        return self._health is not None

    def _report(self, event: Alert | AlertCleared | None) -> None:
        if event is None:
            return
        if event.kind == "alert":
            self._log.warning(
                "alert", alert=event.name, value=event.value, threshold=event.threshold
            )
        else:
            self._log.info(
                "alert cleared", alert=event.name, value=event.value, clear_at=event.clear_at
            )
        self._emit(event)

    def queue_depth(self, depth: int) -> None:
        """The requests waiting for admission changed to ``depth``."""
        if self._queue is not None:
            self._report(self._queue.update(depth, current_time()))

    def request_ended(self, at: float, failed: bool) -> None:
        """A request ended at ``at``, failed or not (cancelled requests are not reported)."""
        if self._failures is None:
            return
        assert self._window is not None
        ratio = self._window.ratio(at, failed)
        if ratio is not None:
            self._report(self._failures.update(ratio, at))

    async def watch_health(self, health: HealthSource) -> None:
        """Fire and clear the health alert; runs until cancelled (the coordinator closes).

        A :class:`~trioflow.HealthMonitor` wakes this task when it flips; another health source
        is looked at every ``interval`` seconds. The alert fires once the source has been
        unhealthy for ``unhealthy_for`` seconds in a row.
        """
        config = self._health
        assert config is not None
        unhealthy_for = config.unhealthy_for
        changed = anyio.Event()

        def wake(event: HealthChanged) -> None:
            changed.set()

        remove = None
        poll = config.interval
        if isinstance(health, HealthMonitor):
            remove = health.add_listener(wake)
            poll = math.inf
        since: float | None = None  # when the source turned unhealthy
        alerted = False
        try:
            while True:
                now = current_time()
                due = math.inf
                if health.healthy:
                    since = None
                    if alerted:
                        alerted = False
                        self._report(
                            AlertCleared(
                                name="health",
                                value=0.0,
                                threshold=unhealthy_for,
                                clear_at=0.0,
                                at=now,
                            )
                        )
                elif not alerted:
                    if since is None:
                        since = now
                    if now - since >= unhealthy_for:
                        alerted = True
                        self._report(
                            Alert(
                                name="health", value=now - since, threshold=unhealthy_for, at=now
                            )
                        )
                    else:
                        due = since + unhealthy_for - now
                with anyio.move_on_after(min(due, poll)):
                    await changed.wait()
                changed = anyio.Event()
        finally:
            if remove is not None:
                remove()
