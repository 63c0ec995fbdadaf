"""Admission control for the coordinator: who may start processing now, and who waits.

A request is admitted once it has passed, in this order: the per-user and per-source rate
limits (token buckets), health backpressure, the per-user limit and the global limit. The last
three are one :class:`~trioflow.ResourceManager` slot: the global limit is its general limit and
the per-user limit a keyed pool (a limiter per user, dropped when the user has nothing in flight
or waiting), which the manager takes first, so that one busy user waiting for their own slots
never holds global ones. Every step is tried at once first; only a step that must wait makes
the request count as waiting (the queue depth), and a request that would wait beyond
``max_queue_depth`` is refused.

When the two limits are all there is (no rate limit, health source or shared limits) and no
slot is held or awaited, a request with room under both is admitted by counting it (a user's
count and the total), without a slot. The first request that finds no room turns every counted
request into the slot it stands for (they always fit) and then queues as before, so waiting,
priorities and aging are the manager's own; counting resumes once no slot is held or awaited.

Shared by several processes (``config.shared.url``, or ``open_coordinator(..., shared=...)``):
the same checks in the same order, on :class:`~trioflow.SharedLimits` instead: the rate limits
are shared token buckets, the per-user limit one shared capacity per user (made on use, dropped
when idle) and the global limit one shared capacity, each taken first by a single round trip
that never waits in line, and only when that fails by waiting (so the queue depth still counts
only the requests that wait). Shared slots are served first come, first served over all
processes: ``Request.priority`` and ``priority_aging`` are not honoured then. ``waiting``,
``throttled`` and ``users`` count this process's requests.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, final

import anyio

from .._backend import OwnScope, cancel_scope
from .._errors import ConfigError, ResourceExhaustedError
from .._limits import (
    HealthSource,
    ResourceManager,
    SharedCapacity,
    SharedLimits,
    SharedRateLimiter,
    Slot,
)
from .._resilience._ratelimit import KeyedRateLimiter
from ._config import OrchestrationConfig, SharedConfig
from ._request import Request

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ("Admission", "CancelRequested", "Ticket", "connect_shared")

_WouldBlock = anyio.WouldBlock
_USER = "user"
_EVERYONE = "all"  # the one key of the shared global capacity


class CancelRequested(Exception):
    """``cancel()`` of a request that has not reached its pipeline (never escapes)."""


@final
class Ticket:
    """A request being processed, its admission, and how to cancel it at its current step."""

    __slots__ = ("cancel_requested", "counted", "pipeline", "request", "scope", "slot")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.scope: OwnScope | None = None  # while waiting for admission
        self.pipeline: Pipeline | None = None  # once routed
        self.cancel_requested = False
        # Its admission: a slot of the limits (held, or being waited for), or, admitted by
        # counting alone (see Admission.try_now), None with ``counted`` true.
        self.slot: Slot | SharedSlot | None = None
        self.counted = False


@final
class Admission:
    """The limits a request passes before it is processed, and their counters."""

    def __init__(
        self,
        config: OrchestrationConfig,
        health: HealthSource | None,
        shared: SharedLimits | None = None,
    ) -> None:
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
        self._shared = shared
        self._everyone: SharedCapacity | None = None
        self._users: SharedCapacity | None = None
        limits = config.rate_limits
        user_rate = None
        if limits.per_user is not None:
            user_rate = (limits.per_user.per_second, limits.per_user.capacity)
        sources: dict[Hashable, tuple[float, float]] = {
            s: (c.per_second, c.capacity) for s, c in limits.per_source.items()
        }
        self._user_rate: KeyedRateLimiter[str] | SharedRateLimiter | None = None
        self._source_rate: KeyedRateLimiter[str] | SharedRateLimiter | None = None
        if shared is None:
            if user_rate is not None:
                self._user_rate = KeyedRateLimiter(rate=user_rate[0], burst=user_rate[1])
            if sources:
                self._source_rate = KeyedRateLimiter(
                    rate=1.0, burst=1.0, limits=sources, classify=lambda source: source
                )
        else:
            name, lease = config.shared.name, config.shared.lease
            self._everyone = shared.keyed_capacity(
                f"{name}:admission", total=config.max_concurrency, lease=lease
            )
            self._users = shared.keyed_capacity(
                f"{name}:user", total=config.per_user_limit, lease=lease
            )
            if user_rate is not None:
                self._user_rate = shared.keyed_rate_limiter(
                    f"{name}:user-rate", rate=user_rate[0], burst=user_rate[1]
                )
            if sources:
                self._source_rate = shared.keyed_rate_limiter(
                    f"{name}:source-rate",
                    rate=1.0,
                    burst=1.0,
                    limits=sources,
                    classify=lambda source: source,
                )
        self._rate_limited = self._user_rate is not None or self._source_rate is not None
        self._wait_when_limited = limits.when_limited == "wait"
        self.waiting = 0
        self.throttled = 0
        # Admission by counting: while no slot of the limits is held or awaited, and nothing
        # but the two limits can hold a request back (no rate limit, health or shared limit),
        # a request with room under both is admitted by two counters, with no slot at all.
        # The first request that finds no room turns every counted request into a slot of
        # the limits (they fit: the counts never exceed the limits) and goes the usual way.
        self._counting = not self._rate_limited and health is None and shared is None
        self._slotted = 0  # tickets with a slot: held, waited for, or just tried
        self._counted: dict[Ticket, None] = {}  # the requests admitted by counting
        self._user_counts: dict[str, int] = {}
        self._limit = config.max_concurrency
        self._per_user = config.per_user_limit
        # Called with the new queue depth each time it changes (the coordinator's alerts).
        self.on_depth: Callable[[int], None] | None = None

    @property
    def users(self) -> int:
        """Users with a request waiting for or holding a per-user slot (in this process)."""
        if self._users is not None:
            return self._users.keys
        return self._slots.statistics().keyed[_USER].keys + len(self._user_counts)

    def _slot(self, request: Request) -> Slot | SharedSlot:
        """Return the request's slot (its user's token and a global one), not yet acquired.

        A request that has to wait is served by its ``priority`` (larger first; equal ones
        first come, first served), for its user's token and the global one alike; shared
        slots are served first come, first served.
        """
        self._slotted += 1
        if self._everyone is not None and self._users is not None:
            return SharedSlot(self, self._everyone, self._users, request.user_id)
        return self._slots.slot(keys={_USER: request.user_id}, priority=request.priority)

    def try_now(self, ticket: Ticket) -> bool:
        """Admit the ticket's request if nothing has to wait; else hold nothing.

        Either way the ticket must then be given to :meth:`wait` (when this returned false)
        or to :meth:`release` (once the admitted request ends).
        """
        if self._counting and not self._slotted:
            user = ticket.request.user_id
            counts = self._user_counts
            held = counts.get(user, 0)
            if held < self._per_user and len(self._counted) < self._limit:
                counts[user] = held + 1
                self._counted[ticket] = None
                ticket.counted = True
                return True
            self._to_slots()  # no room: the limits' slots take over, and queue fairly
        slot = ticket.slot = self._slot(ticket.request)
        if self._rate_limited or isinstance(slot, SharedSlot):
            return False  # a shared limit is known only by a round trip
        health = self._health
        if health is not None and not health.healthy:
            return False
        try:
            slot.acquire_nowait()
        except _WouldBlock:
            return False
        except BaseException:  # holding nothing: the ticket needs no wait and no release
            ticket.slot = None
            self._slotted -= 1
            raise
        return True

    def _to_slots(self) -> None:
        """Give every request admitted by counting the slot of the limits it stands for."""
        for ticket in self._counted:
            slot = self._slot(ticket.request)
            assert isinstance(slot, Slot)  # counting is only ever on without shared limits
            slot.acquire_nowait()  # always free: no slot was held, and the counts fit
            ticket.slot = slot
            ticket.counted = False
        self._counted.clear()
        self._user_counts.clear()

    def release(self, ticket: Ticket) -> None:
        """Give back what an admitted request holds (its slot, or its counts)."""
        slot = ticket.slot
        if slot is not None:
            ticket.slot = None
            self._slotted -= 1
            slot.release()
            return
        if ticket.counted:
            ticket.counted = False
            del self._counted[ticket]
            user = ticket.request.user_id
            counts = self._user_counts
            left = counts[user] - 1
            if left:
                counts[user] = left
            else:
                del counts[user]

    async def wait(self, request: Request, deadline: float, ticket: Ticket) -> None:
        """Wait for admission until the deadline; hold nothing on any exception.

        The ticket's slot (made by :meth:`try_now`) gives back whatever it took when its
        acquisition fails or is cancelled.

        Raises:
            ResourceExhaustedError: Refused (rate limit or health in "fail" mode, queue too deep).
            TimeoutError: Not admitted by the deadline.
            CancelRequested: ``ticket`` was cancelled while waiting.
        """
        slot = ticket.slot
        assert slot is not None
        admitted = waiting = False

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
            scope = cancel_scope(deadline)  # trio's own on trio: about a third cheaper
            with scope:
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
            admitted = True
        finally:
            if not admitted:
                ticket.slot = None
                self._slotted -= 1
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
            taken = limiter.try_acquire(key)
            if not isinstance(taken, bool):  # a shared limiter: a round trip
                taken = await taken
            if taken:
                continue
            if not self._wait_when_limited:
                self.throttled += 1
                raise ResourceExhaustedError(
                    f"request {request.id!r} refused: rate limit of {what} {key!r} exceeded"
                )
            must_wait()
            await limiter.acquire(key)


@final
class SharedSlot:
    """A request's per-user and global slots in shared capacities (this object borrows both).

    Used as :class:`~trioflow.Slot` is by the coordinator: :meth:`acquire`, then
    :meth:`release`. The user's slot is taken first, so that a user waiting for their own
    slot holds no global one; a slot is first asked for without waiting in line (one round
    trip) and only waited for, counted by ``on_wait``, when that fails.
    """

    __slots__ = ("_admission", "_everyone", "_held", "_user", "_users")

    def __init__(
        self,
        admission: Admission,
        everyone: SharedCapacity,
        users: SharedCapacity,
        user: str,
    ) -> None:
        self._admission = admission
        self._everyone = everyone
        self._users = users
        self._user = user
        self._held = 0  # 1: the user's slot; 2: the global one as well

    async def acquire(self, *, on_wait: Callable[[], object]) -> None:
        """Take the user's slot, then a global one; on any exception hold neither.

        Args:
            on_wait: Called before each wait (for health or a slot); an exception it raises
                refuses the request, holding nothing.

        Raises:
            Exception: What the shared capacities raise (e.g. Redis unreachable), holding
                nothing.
        """
        admission = self._admission
        health = admission._health
        if health is not None and admission._wait_when_unhealthy and not health.healthy:
            on_wait()
            await health.wait_healthy()
        await self._take(self._users, self._user, on_wait)
        self._held = 1
        try:
            await self._take(self._everyone, _EVERYONE, on_wait)
        except BaseException:
            self._held = 0
            self._users.release(self._user, self)
            raise
        self._held = 2

    async def _take(
        self, capacity: SharedCapacity, key: str, on_wait: Callable[[], object]
    ) -> None:
        if not await capacity.try_acquire(key, self):
            on_wait()
            await capacity.acquire(key, self)

    def release(self, error: BaseException | None = None) -> None:
        """Give back both slots (the writes are sent in the background).

        Args:
            error: What the work raised (unused: shared slots keep no counts).
        """
        if self._held == 2:
            self._held = 0
            try:
                self._everyone.release(_EVERYONE, self)
            finally:
                self._users.release(self._user, self)


@contextlib.asynccontextmanager
async def connect_shared(config: SharedConfig) -> AsyncIterator[SharedLimits]:
    """Connect to the Redis that ``config.url`` names, for one ``async with`` block.

    The one place the core loads an integration: by name, on use, only when a configuration
    names a Redis URL and no :class:`~trioflow.SharedLimits` was given (``trioflow.redis``
    imports the public API, which is above this floor; tests/test_imports.py allows this one).

    Args:
        config: The ``shared`` section, with its ``url`` set.

    Yields:
        The connection.

    Raises:
        ConfigError: The Redis client is not installed.
        trioflow.redis.RedisStateError: Redis cannot be reached.
    """
    assert config.url is not None
    try:
        redis = importlib.import_module("trioflow.redis")
    except ImportError as exc:
        raise ConfigError(
            [
                (
                    "shared.url",
                    "a Redis URL needs the Redis client: pip install 'trioflow[redis]' "
                    f"({type(exc).__name__}: {exc})",
                )
            ]
        ) from exc
    connect: Callable[[str], AbstractAsyncContextManager[SharedLimits]] = redis.connect
    async with connect(config.url) as connection:
        yield connection
