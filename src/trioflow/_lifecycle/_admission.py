"""Admission control for the coordinator: who may start processing now, and who waits.

A request is admitted once it has passed, in this order: the per-user and per-source rate
limits (token buckets), health backpressure, the per-user limit (a ``CapacityLimiter`` per user,
dropped when the user has nothing in flight or waiting) and the global limit. Per-user comes
before global so that one busy user waiting for their own slots never holds global ones. Every
step is tried at once first; only a step that must wait makes the request count as waiting
(the queue depth), and a request that would wait beyond ``max_queue_depth`` is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, final

import anyio

from .._errors import ResourceExhaustedError
from .._limits import HealthSource
from .._resilience._ratelimit import KeyedRateLimiter
from ._config import OrchestrationConfig
from ._request import Request

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ("Admission", "CancelRequested", "Ticket", "User")

_WouldBlock = anyio.WouldBlock
_SPARE_USERS = 64


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
class User:
    """A user's limiter, shared by their requests."""

    __slots__ = ("limiter", "requests")

    def __init__(self, limit: int) -> None:
        self.limiter = anyio.CapacityLimiter(limit)
        self.requests = 0


@final
class Admission:
    """The limits a request passes before it is processed, and their counters."""

    def __init__(self, config: OrchestrationConfig, health: HealthSource | None) -> None:
        self._config = config
        self._health = health
        self._limiter = anyio.CapacityLimiter(config.max_concurrency)
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
        self._wait_when_limited = limits.when_limited == "wait"
        self._wait_when_unhealthy = config.health.when_unhealthy == "wait"
        self.users: dict[str, User] = {}
        self._spare: list[User] = []
        self.waiting = 0
        self.throttled = 0

    # --- users ----------------------------------------------------------------------------
    def join(self, user_id: str) -> User:
        """Return the user's limiter holder, counting one more request of theirs."""
        user = self.users.get(user_id)
        if user is None:
            user = self.users[user_id] = (
                self._spare.pop() if self._spare else User(self._config.per_user_limit)
            )
        user.requests += 1
        return user

    def leave(self, user_id: str, user: User) -> None:
        """Count one request of the user fewer; drop the user when none is left."""
        user.requests -= 1
        if not user.requests:
            del self.users[user_id]
            # An idle limiter (no borrowers, no waiters) is as good as new: keep a few, so a
            # user sending one request after the other does not build one per request.
            if len(self._spare) < _SPARE_USERS:
                self._spare.append(user)

    # --- admission ---------------------------------------------------------------------------
    def try_now(self, request: Request, user: User) -> bool:
        """Take everything admission needs if nothing has to wait; else take nothing."""
        if self._user_rate is not None or self._source_rate is not None:
            return False
        if self._health is not None and not self._health.healthy:
            return False
        try:
            user.limiter.acquire_on_behalf_of_nowait(request)
        except _WouldBlock:
            return False
        try:
            self._limiter.acquire_on_behalf_of_nowait(request)
        except _WouldBlock:
            user.limiter.release_on_behalf_of(request)
            return False
        return True

    def release(self, request: Request, user: User) -> None:
        """Give back the global and per-user slots of an admitted request."""
        self._limiter.release_on_behalf_of(request)
        user.limiter.release_on_behalf_of(request)

    async def wait(self, request: Request, user: User, deadline: float, ticket: Ticket) -> None:
        """Wait for admission until the deadline; hold nothing on any exception.

        Raises:
            ResourceExhaustedError: Refused (rate limit or health in "fail" mode, queue too deep).
            TimeoutError: Not admitted by the deadline.
            CancelRequested: ``ticket`` was cancelled while waiting.
        """
        held = 0
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

        try:
            with anyio.CancelScope(deadline=deadline) as scope:
                ticket.scope = scope
                await self._rate_limit(request, must_wait)
                health = self._health
                if health is not None and not health.healthy:
                    if not self._wait_when_unhealthy:
                        self.throttled += 1
                        raise ResourceExhaustedError(
                            f"request {request.id!r} refused: the system is unhealthy "
                            "(health.when_unhealthy='fail')"
                        )
                    must_wait()
                    await health.wait_healthy()
                for limiter in (user.limiter, self._limiter):
                    try:
                        limiter.acquire_on_behalf_of_nowait(request)
                    except _WouldBlock:
                        must_wait()
                        await limiter.acquire_on_behalf_of(request)
                    held += 1
            ticket.scope = None
            if scope.cancelled_caught:
                if ticket.cancel_requested:
                    raise CancelRequested
                raise TimeoutError(
                    f"request {request.id!r} was not admitted within default_timeout "
                    f"({self._config.default_timeout} s)"
                )
        except BaseException:
            if held >= 1:
                user.limiter.release_on_behalf_of(request)
            if held >= 2:
                self._limiter.release_on_behalf_of(request)
            raise
        finally:
            if waiting:
                self.waiting -= 1

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
