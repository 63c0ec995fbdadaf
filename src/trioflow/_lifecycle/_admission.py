"""Admission control for the coordinator: who may start processing now, and who waits.

A request is admitted once it has passed, in this order: the per-user and per-source rate
limits (token buckets), health backpressure, the per-user limit and the global limit. The last
three are one :class:`~trioflow.ResourceManager` slot: the global limit is its general limit and
the per-user limit a keyed pool (a limiter per user, dropped when the user has nothing in flight
or waiting), which the manager takes first, so that one busy user waiting for their own slots
never holds global ones. Every step is tried at once first; only a step that must wait makes
the request count as waiting (the queue depth), and a request that would wait beyond
``max_queue_depth`` is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, final

import anyio

from .._errors import ResourceExhaustedError
from .._limits import HealthSource, ResourceManager, Slot
from .._resilience._ratelimit import KeyedRateLimiter
from ._config import OrchestrationConfig
from ._request import Request

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ("Admission", "CancelRequested", "Ticket")

_WouldBlock = anyio.WouldBlock
_USER = "user"


class CancelRequested(Exception):
    """``cancel()`` of a request that has not reached its pipeline (never escapes)."""


@final
class Ticket:
    """A request being processed, and how to cancel it at its current step."""

    __slots__ = ("cancel_requested", "pipeline", "request", "scope")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.scope: anyio.CancelScope | None = None  # while waiting for admission
        self.pipeline: Pipeline | None = None  # once routed
        self.cancel_requested = False


@final
class Admission:
    """The limits a request passes before it is processed, and their counters."""

    def __init__(self, config: OrchestrationConfig, health: HealthSource | None) -> None:
        self._config = config
        self._health = health
        self._wait_when_unhealthy = config.health.when_unhealthy == "wait"
        # Health in "fail" mode refuses here, before the manager: it never waits for health.
        self._slots = ResourceManager(
            limit=config.max_concurrency,
            keyed={_USER: config.per_user_limit},
            health=health if self._wait_when_unhealthy else None,
            aging=config.priority_aging,
        )
        limits = config.rate_limits
        self._user_rate: KeyedRateLimiter[str] | None = None
        if limits.per_user is not None:
            self._user_rate = KeyedRateLimiter(
                rate=limits.per_user.per_second, burst=limits.per_user.capacity
            )
        self._source_rate: KeyedRateLimiter[str] | None = None
        if limits.per_source:
            self._source_rate = KeyedRateLimiter(
                rate=1.0,
                burst=1.0,
                limits={s: (c.per_second, c.capacity) for s, c in limits.per_source.items()},
                classify=lambda source: source,
            )
        self._rate_limited = self._user_rate is not None or self._source_rate is not None
        self._wait_when_limited = limits.when_limited == "wait"
        self.waiting = 0
        self.throttled = 0
        # Called with the new queue depth each time it changes (the coordinator's alerts).
        self.on_depth: Callable[[int], None] | None = None

    @property
    def users(self) -> int:
        """Users with a request waiting for or holding a per-user slot."""
        return self._slots.statistics().keyed[_USER].keys

    def slot(self, request: Request) -> Slot:
        """Return the request's slot (its user's token and a global one), not yet acquired.

        A request that has to wait is served by its ``priority`` (larger first; equal ones
        first come, first served), for its user's token and the global one alike.
        """
        return self._slots.slot(keys={_USER: request.user_id}, priority=request.priority)

    def try_now(self, slot: Slot) -> bool:
        """Acquire the slot if nothing has to wait; else take nothing."""
        if self._rate_limited:
            return False
        health = self._health
        if health is not None and not health.healthy:
            return False
        try:
            slot.acquire_nowait()
        except _WouldBlock:
            return False
        return True

    async def wait(self, request: Request, slot: Slot, deadline: float, ticket: Ticket) -> None:
        """Wait for admission until the deadline; hold nothing on any exception.

        The slot gives back whatever it took when its acquisition fails or is cancelled.

        Raises:
            ResourceExhaustedError: Refused (rate limit or health in "fail" mode, queue too deep).
            TimeoutError: Not admitted by the deadline.
            CancelRequested: ``ticket`` was cancelled while waiting.
        """
        waiting = False

        def must_wait() -> None:
            nonlocal waiting
            self.throttled += 1
            if waiting:
                return
            max_depth = self._config.max_queue_depth
            if max_depth is not None and self.waiting >= max_depth:
                raise ResourceExhaustedError(
                    f"request {request.id!r} refused: {self.waiting} requests already wait "
                    f"for admission (max_queue_depth={max_depth})"
                )
            self.waiting += 1
            waiting = True
            if self.on_depth is not None:
                self.on_depth(self.waiting)

        try:
            with anyio.CancelScope(deadline=deadline) as scope:
                ticket.scope = scope
                await self._rate_limit(request, must_wait)
                health = self._health
                if not self._wait_when_unhealthy and health is not None and not health.healthy:
                    self.throttled += 1
                    raise ResourceExhaustedError(
                        f"request {request.id!r} refused: the system is unhealthy "
                        "(health.when_unhealthy='fail')"
                    )
                # Health ("wait" mode), then the user's token, then a global one.
                await slot.acquire(on_wait=must_wait)
            ticket.scope = None
            if scope.cancelled_caught:
                if ticket.cancel_requested:
                    raise CancelRequested
                raise TimeoutError(
                    f"request {request.id!r} was not admitted within default_timeout "
                    f"({self._config.default_timeout} s)"
                )
        finally:
            if waiting:
                self.waiting -= 1
                if self.on_depth is not None:
                    self.on_depth(self.waiting)

    async def _rate_limit(self, request: Request, must_wait: Callable[[], None]) -> None:
        checks = (
            (self._user_rate, request.user_id, "user"),
            (self._source_rate, request.source, "source"),
        )
        for limiter, key, what in checks:
            if limiter is None:
                continue
            if what == "source" and key not in self._config.rate_limits.per_source:
                continue
            if limiter.try_acquire(key):
                continue
            if not self._wait_when_limited:
                self.throttled += 1
                raise ResourceExhaustedError(
                    f"request {request.id!r} refused: rate limit of {what} {key!r} exceeded"
                )
            must_wait()
            await limiter.acquire(key)
