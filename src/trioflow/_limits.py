"""Resource limits: one general capacity, named pools and keyed pools, resizable while work runs.

A :class:`ResourceManager` owns one limiter for its general limit and one per named pool, each
a :class:`~trioflow._capacity.PriorityLimiter` (a freed token goes to the waiter of highest
priority, equal priorities first come, first served). A keyed pool (``keyed={"user": 10}``)
holds one limiter per key, made when a slot first names the key (``slot(keys={"user":
"alice"})``) and dropped once no slot holds or waits for it, so per-user limits cost nothing
for users who are gone. ``slot()`` takes its tokens always in the same global order (keyed
pools sorted by name, then the general limit, then named pools sorted by name), so two callers
asking for overlapping pools in different orders can never deadlock, and a task waiting for its
own key's token holds no shared one. Limits are resized through ``total_tokens``, never by
replacing a limiter, so no waiter is ever lost.

The general limit or a named pool may also be a :class:`Capacity` made elsewhere (such as a
capacity shared by several processes through Redis, ``trioflow.redis``): the manager then takes
and gives back its tokens through that object, in the same order, and never resizes it (its
waiters are served in the order that object serves them, not by priority).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, Literal, Protocol, TypeVar, TypeVarTuple, final, runtime_checkable

import anyio
import anyio.lowlevel
import attrs

from ._backend import current_time
from ._capacity import PriorityLimiter
from ._checks import check_async_callable, check_int, check_number
from ._errors import ResourceExhaustedError
from ._events import Listeners

__all__ = (
    "Capacity",
    "HealthSource",
    "KeyedPoolStatistics",
    "LimitChanged",
    "PoolStatistics",
    "ResourceManager",
    "ResourceManagerEvent",
    "ResourceManagerStatistics",
    "SharedCapacity",
    "SharedLimits",
    "SharedRateLimiter",
    "Slot",
    "SlotReleased",
)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_WouldBlock = anyio.WouldBlock
_CHAIN_CACHE_SIZE = 256
_SPARE_LIMITERS = 64  # idle per-key limiters kept for reuse, per keyed pool
_NO_KEY_MAP: Mapping[str, Hashable] = MappingProxyType({})  # the keys of a slot without any


@runtime_checkable
class HealthSource(Protocol):
    """Something that knows whether the system is healthy enough to admit more work.

    :class:`ResourceManager` consults it before admitting work (``health=``). trioflow's
    ``HealthMonitor`` implements it; a test can use any object with these two members.
    """

    @property
    def healthy(self) -> bool:
        """Whether new work may be admitted now."""
        ...

    async def wait_healthy(self) -> None:
        """Wait until :attr:`healthy` is true; return at once if it already is."""
        ...


@runtime_checkable
class Capacity(Protocol):
    """A capacity limiter whose tokens are held on behalf of a borrower, made elsewhere.

    anyio's ``CapacityLimiter`` has this shape, and so has a capacity shared by several
    processes (``trioflow.redis``'s ``redis.capacity(...)``). trioflow takes one wherever it
    takes a limit: ``run_batch(limit=cap)``, ``run_workflow(..., limit=cap)``, and as the
    general limit or a named pool of a :class:`ResourceManager`
    (``ResourceManager(limit=8, pools={"llm": cap})``). A slot that takes a token of a capacity
    which can only tell by a round trip always takes the slow path, so the manager counts it
    in ``throttled``.
    """

    @property
    def total_tokens(self) -> float:
        """The most tokens held at once."""
        ...

    def acquire_on_behalf_of_nowait(self, borrower: object) -> None:
        """Take a token for ``borrower`` now, or raise ``anyio.WouldBlock``.

        A capacity that cannot know without waiting (one kept in another process) always
        raises ``anyio.WouldBlock``; trioflow then calls :meth:`acquire_on_behalf_of`.
        """
        ...

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        """Take a token for ``borrower``, waiting until one is free; cancelled, take none."""
        ...

    def release_on_behalf_of(self, borrower: object) -> None:
        """Give back ``borrower``'s token (synchronously; a shared one may send it later)."""
        ...


@runtime_checkable
class SharedCapacity(Protocol):
    """Capacities kept outside this process, one per key, each shared by every process.

    What :meth:`SharedLimits.keyed_capacity` returns: at most :attr:`total_tokens` slots of
    one key held at once, over every process that uses the same name. A held slot is a lease
    that the holder renews while it lives, so a process that dies frees its slots; a key
    nobody holds or waits for costs nothing (here, nor where the slots are kept).
    """

    @property
    def total_tokens(self) -> float:
        """The most slots of one key held at once, by all processes."""
        ...

    @property
    def keys(self) -> int:
        """Keys this process holds or waits for a slot of."""
        ...

    async def try_acquire(self, key: str, borrower: object) -> bool:
        """Take a slot of ``key`` for ``borrower`` if one is free now (never waits in line).

        Returns:
            Whether the slot was taken.
        """
        ...

    async def acquire(self, key: str, borrower: object) -> None:
        """Take a slot of ``key`` for ``borrower``, waiting in line; cancelled, take none."""
        ...

    def release(self, key: str, borrower: object) -> None:
        """Give back ``borrower``'s slot of ``key`` (synchronously; it may be sent later)."""
        ...


@runtime_checkable
class SharedRateLimiter(Protocol):
    """Token buckets kept outside this process, one per key, each shared by every process.

    What :meth:`SharedLimits.keyed_rate_limiter` returns: the shared counterpart of
    :class:`~trioflow.KeyedRateLimiter`, whose checks are round trips (so asynchronous).
    """

    async def try_acquire(self, key: Hashable, n: float = 1) -> bool:
        """Take ``n`` tokens of ``key``'s bucket if it has them now; never waits."""
        ...

    async def acquire(self, key: Hashable, n: float = 1) -> None:
        """Take ``n`` tokens of ``key``'s bucket, waiting until it has them."""
        ...


@runtime_checkable
class SharedLimits(Protocol):
    """Limits that several processes share, e.g. ``trioflow.redis.connect(url)``'s connection.

    A coordinator given one (``open_coordinator(..., shared=...)``, or through
    ``config.shared.url``) admits requests within limits shared by every coordinator that
    uses the same limits and names: the global and per-user limits become
    :class:`SharedCapacity` slots and the rate limits :class:`SharedRateLimiter` buckets.
    """

    def keyed_capacity(self, name: str, *, total: int, lease: float) -> SharedCapacity:
        """Return the shared capacities ``name``: ``total`` slots per key, ``lease`` s leases."""
        ...

    def keyed_rate_limiter(
        self,
        name: str,
        *,
        rate: float,
        burst: float,
        limits: Mapping[Hashable, tuple[float, float]] | None = None,
        classify: Callable[[Hashable], Hashable] | None = None,
    ) -> SharedRateLimiter:
        """Return the shared token buckets ``name``, one per key (``limits`` per key class)."""
        ...


def as_manager(limit: object) -> ResourceManager | None:
    """Return a :class:`ResourceManager` whose general limit is ``limit`` if it is a Capacity.

    Args:
        limit: What a caller passed as a limit.

    Returns:
        A new manager around a :class:`Capacity`; None for anything else.
    """
    if isinstance(limit, Capacity):
        return ResourceManager(limit=limit)
    return None


@attrs.frozen(kw_only=True)
class PoolStatistics:
    """A snapshot of one named pool of a :class:`ResourceManager`.

    Attributes:
        limit: The pool's size (most slots holding a token of it at once).
        executing: Slots holding a token of this pool whose body is running.
        waiting: Tasks blocked waiting for a token of this pool.
        executed: Completed slots that used this pool, succeeded or failed (cancelled ones are
            not counted).
        failed: Those of ``executed`` whose body raised an exception.
        mean_duration: Mean duration in seconds of the ``executed`` slots (0.0 when none).
        throttled: Acquisitions of this pool that had to wait for a token (counted when the
            wait starts, so a wait cut short by cancellation counts too).
    """

    limit: int
    executing: int
    waiting: int
    executed: int
    failed: int
    mean_duration: float
    throttled: int


@attrs.frozen(kw_only=True)
class KeyedPoolStatistics:
    """A snapshot of one keyed pool of a :class:`ResourceManager`, all its keys together.

    Attributes:
        limit: The most slots holding a token of one key at once.
        keys: Keys with a slot holding or waiting for their token (each has a limiter; a key
            with neither has none).
        executing: Slots holding a token of this pool whose body is running.
        waiting: Tasks blocked waiting for a token of this pool.
        executed: Completed slots that used this pool, succeeded or failed (cancelled ones are
            not counted).
        failed: Those of ``executed`` whose body raised an exception.
        mean_duration: Mean duration in seconds of the ``executed`` slots (0.0 when none).
        throttled: Acquisitions of this pool that had to wait for a token of their key.
    """

    limit: int
    keys: int
    executing: int
    waiting: int
    executed: int
    failed: int
    mean_duration: float
    throttled: int


def _read_only(pools: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(pools))


@attrs.frozen(kw_only=True)
class ResourceManagerStatistics:
    """A snapshot of a :class:`ResourceManager`, returned by its ``statistics()``.

    Attributes:
        limit: The general limit (most slots running at once).
        executing: Slots whose body is running.
        waiting: Tasks blocked in ``slot()`` entry, waiting for health or for any token.
        executed: Completed slots, succeeded or failed (cancelled ones are not counted).
        failed: Those of ``executed`` whose body raised an exception.
        mean_duration: Mean duration in seconds of the ``executed`` slots (0.0 when none).
        throttled: Slot entries that had to wait, for health or for any token (counted when the
            wait starts, so a wait cut short by cancellation counts too).
        pools: Per-pool statistics by pool name.
        keyed: Per-keyed-pool statistics by pool name.
    """

    limit: int
    executing: int
    waiting: int
    executed: int
    failed: int
    mean_duration: float
    throttled: int
    pools: Mapping[str, PoolStatistics] = attrs.field(factory=dict, converter=_read_only)
    keyed: Mapping[str, KeyedPoolStatistics] = attrs.field(factory=dict, converter=_read_only)


def _check_size(what: str, value: object) -> int:
    return check_int(value, what, minimum=1)


def _check_limit(what: str, value: object) -> int | Capacity:
    if isinstance(value, Capacity):
        return value
    return _check_size(what, value)


@final
class _Pool:
    """The mutable state of one named pool (or of the general limit)."""

    __slots__ = (
        "counts",
        "executed",
        "executing",
        "failed",
        "limiter",
        "name",
        "shared",
        "size",
        "throttled",
        "total_duration",
        "waiting",
    )

    def __init__(self, name: str, size: int | Capacity, aging: float | None = None) -> None:
        self.name = name
        self.limiter: Any
        if isinstance(size, int):
            self.size = size
            self.limiter = PriorityLimiter(size, aging=aging)
            self.shared = False
        else:  # a Capacity made elsewhere: used as it is, never resized here
            self.size = int(size.total_tokens)
            self.limiter = size
            self.shared = True
        self.counts = self  # where a slot holding this limiter is counted
        self.executing = 0
        self.waiting = 0
        self.executed = 0
        self.failed = 0
        self.total_duration = 0.0
        self.throttled = 0

    def snapshot(self) -> PoolStatistics:
        return PoolStatistics(
            limit=self.size,
            executing=self.executing,
            waiting=self.waiting,
            executed=self.executed,
            failed=self.failed,
            mean_duration=self.total_duration / self.executed if self.executed else 0.0,
            throttled=self.throttled,
        )


@final
class _Key:
    """One key of a keyed pool: its limiter and the slots holding or waiting for it."""

    __slots__ = ("counts", "key", "limiter", "pool", "slots")

    def __init__(self, key: Hashable, limiter: PriorityLimiter, pool: _KeyedPool) -> None:
        self.key = key
        self.limiter = limiter
        self.pool = pool
        self.counts = pool.counts  # the keyed pool's counters, shared by all its keys
        self.slots = 0


@final
class _KeyedPool:
    """A keyed pool: a limiter per live key, counted together in ``counts``."""

    __slots__ = ("aging", "counts", "keys", "name", "spare")

    def __init__(self, name: str, size: int, aging: float | None = None) -> None:
        self.name = name
        self.aging = aging
        self.counts = _Pool(name, size)  # its own limiter is unused: only its counters count
        self.keys: dict[Hashable, _Key] = {}
        self.spare: list[PriorityLimiter] = []

    def join(self, key: Hashable) -> _Key:
        """Return the key's limiter holder, made on demand, counting one more slot of it."""
        entry = self.keys.get(key)
        if entry is None:
            size = self.counts.size
            if self.spare:
                limiter = self.spare.pop()
                if limiter.total_tokens != size:
                    limiter.total_tokens = size
            else:
                limiter = PriorityLimiter(size, aging=self.aging)
            entry = self.keys[key] = _Key(key, limiter, self)
        entry.slots += 1
        return entry

    def leave(self, entry: _Key) -> None:
        """Count one slot of the key fewer; drop the key once no slot holds or waits for it."""
        entry.slots -= 1
        if not entry.slots:
            del self.keys[entry.key]
            # An idle limiter (no borrowers, no waiters) is as good as new: keep a few, so a
            # key used by one slot after the other does not build a limiter per slot.
            if len(self.spare) < _SPARE_LIMITERS:
                self.spare.append(entry.limiter)

    def resize(self, size: int) -> None:
        self.counts.size = size
        for entry in self.keys.values():
            entry.limiter.total_tokens = size

    def snapshot(self) -> KeyedPoolStatistics:
        c = self.counts
        return KeyedPoolStatistics(
            limit=c.size,
            keys=len(self.keys),
            executing=c.executing,
            waiting=c.waiting,
            executed=c.executed,
            failed=c.failed,
            mean_duration=c.total_duration / c.executed if c.executed else 0.0,
            throttled=c.throttled,
        )


def _sizes(what: str, given: object, *, shared: bool = False) -> dict[str, Any]:
    """Check a mapping of pool name to size (``pools=`` or ``keyed=``; a Capacity if shared)."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise TypeError(
            f"{what} must be a mapping of pool name to size, got {type(given).__name__}"
        )
    sizes: dict[str, Any] = {}
    for name, size in given.items():
        if not isinstance(name, str):
            raise TypeError(f"pool names must be strings, got {name!r}")
        if not name:
            raise ValueError("pool names must be non-empty strings, got ''")
        check = _check_limit if shared else _check_size
        sizes[name] = check(f"{what}[{name!r}]", size)
    return sizes


def _is_failure(exc: BaseException) -> bool:
    """Whether an exception leaving a slot counts as a failure (cancellation never does)."""
    if isinstance(exc, Exception):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda e: isinstance(e, Exception)) is not None
    return False


_NO_KEYS: tuple[_Key, ...] = ()


@final
class Slot:
    """What :meth:`ResourceManager.slot` returns: tokens to hold while one piece of work runs.

    Use it once, as ``async with rm.slot(...):``. Code that acquires in one place and gives back
    in another (admission that must not wait when it need not) uses :meth:`acquire_nowait` or
    :meth:`acquire` and then :meth:`release`, the way trio's ``CapacityLimiter`` offers both.
    A plain class rather than ``@asynccontextmanager``: it is entered once per operation on the
    executor's hot path. The slot object itself is the borrower of every token it holds.
    """

    __slots__ = (
        "_acquired",
        "_keys",
        "_keyspec",
        "_manager",
        "_on_wait",
        "_pools",
        "_priority",
        "_started",
    )

    def __init__(
        self,
        manager: ResourceManager,
        pools: tuple[_Pool, ...],
        keyspec: tuple[tuple[_KeyedPool, Hashable], ...] | None = None,
        priority: int = 0,
    ) -> None:
        self._manager = manager
        self._pools = pools  # named pools only, in acquisition (sorted) order
        self._keyspec = keyspec  # (keyed pool, key) sorted by pool name, or None
        self._keys = _NO_KEYS  # the keys' limiter holders, while held or awaited
        self._acquired = -1  # -1: not entered; else number of limiters held (general included)
        self._started = 0.0
        self._on_wait: Callable[[], object] | None = None
        self._priority = priority

    def _begin(self) -> None:
        if self._acquired != -1:
            raise RuntimeError("a slot() can be entered only once; call slot() again")
        self._acquired = 0
        spec = self._keyspec
        if spec is not None:
            self._keys = tuple([pool.join(key) for pool, key in spec])

    def acquire_nowait(self) -> None:
        """Take every token now, or none: never waits and never counts as waiting.

        Raises:
            anyio.WouldBlock: A token is not free (or the health source reports unhealthy
                and ``when_unhealthy`` is ``"wait"``): nothing is held, and the slot may still
                be acquired with :meth:`acquire`.
            ResourceExhaustedError: Unhealthy, and ``when_unhealthy`` is ``"fail"``.
            RuntimeError: The slot was acquired already.
        """
        manager = self._manager
        health = manager._health
        if health is not None and not health.healthy:
            if manager._when_unhealthy == "fail":
                raise self._unhealthy()
            raise _WouldBlock
        self._begin()
        try:
            self._take_free()
        except _WouldBlock:
            self._give_back()
            self._acquired = -1
            raise
        self._entered()

    async def acquire(self, *, on_wait: Callable[[], object] | None = None) -> None:
        """Take every token, waiting for those not free (and, with a health source, health).

        Args:
            on_wait: Called before each wait (for health or a token), e.g. to count the slot
                as queued; an exception it raises refuses the slot, holding nothing.

        Raises:
            ResourceExhaustedError: Unhealthy, and ``when_unhealthy`` is ``"fail"``.
            RuntimeError: The slot was acquired already.
        """
        self._on_wait = on_wait
        await self.__aenter__()

    def release(self, error: BaseException | None = None) -> None:
        """Give back every token of a slot taken by :meth:`acquire_nowait` or :meth:`acquire`.

        Counted as the ``async with`` exit would count it: work that completed, or with
        ``error``, work that failed (an ``Exception``) or neither (cancellation).

        Args:
            error: What the work raised, or None when it returned.
        """
        self._exit(error)

    @staticmethod
    def _unhealthy() -> ResourceExhaustedError:
        return ResourceExhaustedError(
            "resource manager refused work: its health source reports unhealthy "
            "(when_unhealthy='fail')"
        )

    def _take_free(self) -> None:
        for entry in self._keys:
            entry.limiter.acquire_on_behalf_of_nowait(self)
            self._acquired += 1
        self._manager._general.limiter.acquire_on_behalf_of_nowait(self)
        self._acquired += 1
        for pool in self._pools:
            pool.limiter.acquire_on_behalf_of_nowait(self)
            self._acquired += 1

    async def __aenter__(self) -> None:
        manager = self._manager
        await anyio.lowlevel.checkpoint_if_cancelled()
        health = manager._health
        if health is not None and not health.healthy:
            if manager._when_unhealthy == "fail":
                raise self._unhealthy()
            self._begin()
            await self._acquire_slowly(wait_for_health=True)
        else:
            self._begin()
            try:
                self._take_free()
            except _WouldBlock:
                await self._acquire_slowly(wait_for_health=False)
        self._entered()

    def _entered(self) -> None:
        self._manager._general.executing += 1
        for entry in self._keys:
            entry.counts.executing += 1
        for pool in self._pools:
            pool.executing += 1
        self._started = current_time()

    async def _acquire_slowly(self, *, wait_for_health: bool) -> None:
        """Wait for health and the tokens not held yet; on any exception give back the rest."""
        manager = self._manager
        on_wait = self._on_wait
        manager._waiting += 1
        manager._throttled += 1
        try:
            if wait_for_health:
                assert manager._health is not None
                if on_wait is not None:
                    on_wait()
                await manager._health.wait_healthy()
            chain = self._chain()
            while self._acquired < len(chain):
                link = chain[self._acquired]
                try:
                    if isinstance(link, _Pool) and link.shared:  # known only by a round trip
                        link.waiting += 1
                        try:
                            await link.limiter.acquire_on_behalf_of(self)
                        finally:
                            link.waiting -= 1
                        self._acquired += 1
                        continue
                    link.limiter.acquire_on_behalf_of_nowait(self)
                except _WouldBlock:
                    counts = link.counts
                    counts.throttled += 1
                    if on_wait is not None:
                        on_wait()
                    counts.waiting += 1
                    try:
                        await link.limiter.acquire_on_behalf_of(self, self._priority)
                    finally:
                        counts.waiting -= 1
                self._acquired += 1
        except BaseException:
            self._give_back()
            raise
        finally:
            manager._waiting -= 1

    def _chain(self) -> tuple[_Pool | _Key, ...]:
        """Every limiter of the slot, in the manager's one acquisition order."""
        return (*self._keys, self._manager._general, *self._pools)

    def _give_back(self) -> None:
        """Give back every token held, in reverse order of acquisition, and the keys."""
        if self._acquired > 0:
            chain = self._chain() if self._keys else (self._manager._general, *self._pools)
            while self._acquired > 0:
                self._acquired -= 1
                chain[self._acquired].limiter.release_on_behalf_of(self)
        if self._keys:
            for entry in self._keys:
                entry.pool.leave(entry)
            self._keys = _NO_KEYS

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    def _exit(self, exc: BaseException | None) -> None:
        duration = current_time() - self._started
        manager = self._manager
        general = manager._general
        pools = self._pools
        keys = self._keys
        # Give the tokens back first, so nothing below can leak them.
        self._give_back()
        general.executing -= 1
        for entry in keys:
            entry.counts.executing -= 1
        for pool in pools:
            pool.executing -= 1
        if exc is None:
            failed = False
        elif _is_failure(exc):
            failed = True
        else:
            return  # cancellation (or KeyboardInterrupt, ...) is neither success nor failure
        self._count(duration, failed, pools, keys)

    def _count(
        self, duration: float, failed: bool, pools: tuple[_Pool, ...], keys: tuple[_Key, ...]
    ) -> None:
        """Count one piece of work done (or failed) under the slot, and tell the listeners."""
        manager = self._manager
        general = manager._general
        general.executed += 1
        general.total_duration += duration
        if failed:
            general.failed += 1
        for pool in pools:
            pool.executed += 1
            pool.total_duration += duration
            if failed:
                pool.failed += 1
        for entry in keys:
            counts = entry.counts
            counts.executed += 1
            counts.total_duration += duration
            if failed:
                counts.failed += 1
        listeners = manager._listeners
        if listeners:
            listeners.emit(
                SlotReleased(
                    pools=tuple([pool.name for pool in pools]) if pools else (),
                    keys={entry.pool.name: entry.key for entry in keys} if keys else _NO_KEY_MAP,
                    duration=duration,
                    ok=not failed,
                )
            )


def can_pass_on(slot: Slot, behind: Slot | None = None) -> bool:
    """Whether a held slot's tokens may go straight to its holder's next piece of work.

    That is fair only when nobody else waits for them: no waiter at all, or only ``behind``,
    the holder's own slot waiting for a token (a batch's one read-ahead operation, which the
    next piece of work is). It also needs a plain slot (no pools, no keys), a general limit
    made here, no health source to consult, and a limit that has not shrunk below the tokens
    held. Then :func:`pass_on` saves the release, the heap and the wake-up of a waiter.
    """
    manager = slot._manager
    general = manager._general
    if slot._pools or slot._keys or general.shared or manager._health is not None:
        return False
    return bool(general.limiter.wanted_only_by(behind))


def pass_on(slot: Slot, error: BaseException | None, now: float, *, waited: bool) -> None:
    """Count the work done under ``slot`` as :meth:`Slot.release` would, and keep its tokens.

    The next piece of work starts at once under the same tokens (see :func:`can_pass_on`,
    which must have said yes with no ``await`` since). ``now`` is the running loop's time (the
    caller has just read it). ``waited``: that work had been waiting for a token, and counts
    as throttled, as it would have had it waited in the limiter.
    """
    manager = slot._manager
    if waited:
        manager._throttled += 1
        manager._general.throttled += 1
    duration = now - slot._started
    slot._started = now
    slot._count(duration, error is not None, slot._pools, slot._keys)


# --- events --------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class SlotReleased:
    """A slot (or ``run()``) of a :class:`ResourceManager` ended: its work returned or failed.

    Work that was cancelled is not reported: it neither succeeded nor failed.

    Attributes:
        kind: Always ``"released"``.
        pools: The names of the named pools the slot held a token of, sorted.
        keys: The keyed pools the slot held a key's token of, as ``{pool name: key}``.
        duration: Seconds the work held its tokens, on the running backend's clock.
        ok: Whether the work returned (False: it raised an ``Exception``).
    """

    kind: Literal["released"] = "released"
    pools: tuple[str, ...] = ()
    keys: Mapping[str, Hashable] = _NO_KEY_MAP
    duration: float
    ok: bool


@attrs.frozen(kw_only=True)
class LimitChanged:
    """The general limit or a pool's size of a :class:`ResourceManager` was changed.

    Attributes:
        kind: Always ``"limit_changed"``.
        pool: The pool's name, or None for the general limit.
        old: The size before.
        new: The size now.
    """

    kind: Literal["limit_changed"] = "limit_changed"
    pool: str | None
    old: int
    new: int


ResourceManagerEvent = SlotReleased | LimitChanged
"""What a :class:`ResourceManager` listener receives: a :class:`SlotReleased` or a
:class:`LimitChanged`."""


@final
@attrs.define(eq=False, init=False, repr=False)
class ResourceManager:
    """Bounds how much work runs at once, overall and per named pool, and measures it.

    Every slot takes one token of the general limit plus one token of each pool it names.
    Tokens are always taken in one global order (general first, then pools sorted by name) and
    given back in reverse on exit, on error and on cancellation, so callers can never deadlock.
    The general limit and each pool's size can be changed while work runs: growing admits
    waiters at once; shrinking never cancels running work, and new work is admitted only once
    the running work has dropped below the new size.

    Example::

        rm = ResourceManager(limit=8, pools={"llm": 5, "tool": 10}, keyed={"user": 2})
        async with rm.slot("llm"):
            ...
        async with rm.slot("llm", keys={"user": request.user_id}):  # at most 2 per user
            ...
        answer = await rm.run(ask_model, prompt, pools=["llm"])

    A ``ResourceManager`` is used from one event loop (it is not thread-safe).

    Args:
        limit: The general limit: most slots running at once, an int >= 1, or a
            :class:`Capacity` made elsewhere (e.g. one shared by several processes).
        pools: Named pools and their sizes, e.g. ``{"llm": 5, "tool": 10}``; a size may be a
            :class:`Capacity` instead (``{"llm": redis.capacity("llm", total=20)}``).
        keyed: Keyed pools and their size per key, e.g. ``{"user": 10}``: a slot naming
            ``keys={"user": "alice"}`` holds one of alice's 10 tokens. Names are shared with
            ``pools``: a name is either a pool or a keyed pool.
        health: Consulted before admitting work; see ``when_unhealthy``.
        when_unhealthy: When ``health`` reports unhealthy at acquisition: ``"wait"`` waits
            (cancellably) until it is healthy again; ``"fail"`` raises
            :class:`~trioflow.ResourceExhaustedError` at once.
        aging: Against starvation: seconds of waiting that raise a waiting slot by one
            priority step (so a priority-0 slot that waited ``5 * aging`` seconds goes before
            a priority-4 one that just arrived). None (the default): no aging, a freed token
            always goes to the highest priority waiting.

    Waiting slots are served by priority (``slot(priority=...)``, ``run(..., priority=...)``):
    when a token frees, the waiter with the highest priority gets it, equal priorities first
    come, first served. A waiter raised in priority while it waits is not supported.

    Raises:
        TypeError: A limit or pool size is not an int, a pool name is not a string,
            ``health`` does not have ``healthy`` and ``wait_healthy()``, or ``aging`` is not a
            number.
        ValueError: A limit or pool size is below 1, a pool name is empty,
            ``when_unhealthy`` is neither ``"wait"`` nor ``"fail"``, or ``aging`` is not a
            positive finite number.
    """

    _general: _Pool
    _pools: dict[str, _Pool]
    _keyed: dict[str, _KeyedPool]
    _health: HealthSource | None
    _when_unhealthy: Literal["wait", "fail"]
    _waiting: int
    _throttled: int
    _listeners: Listeners[ResourceManagerEvent]
    _chains: dict[tuple[str, ...], tuple[_Pool, ...]]

    def __init__(
        self,
        limit: int | Capacity = 8,
        pools: Mapping[str, int | Capacity] | None = None,
        *,
        keyed: Mapping[str, int] | None = None,
        health: HealthSource | None = None,
        when_unhealthy: Literal["wait", "fail"] = "wait",
        aging: float | None = None,
    ) -> None:
        checked = _check_limit("limit", limit)
        if aging is not None:
            aging = check_number(aging, "aging", minimum=0, strict=True)
        named = {
            name: _Pool(name, size, aging)
            for name, size in _sizes("pools", pools, shared=True).items()
        }
        keyed_pools = {
            name: _KeyedPool(name, size, aging) for name, size in _sizes("keyed", keyed).items()
        }
        both = sorted(set(named) & set(keyed_pools))
        if both:
            raise ValueError(f"a name is either a pool or a keyed pool, got both for {both}")
        if when_unhealthy not in ("wait", "fail"):
            raise ValueError(f"when_unhealthy must be 'wait' or 'fail', got {when_unhealthy!r}")
        if health is not None and not isinstance(health, HealthSource):
            raise TypeError(
                "health must have a 'healthy' property and an async 'wait_healthy()' method, "
                f"got {type(health).__name__}"
            )
        self._general = _Pool("", checked, aging)
        self._pools = named
        self._keyed = keyed_pools
        self._health = health
        self._when_unhealthy = when_unhealthy
        self._waiting = 0
        self._throttled = 0
        self._listeners = Listeners("ResourceManager")
        self._chains = {(): ()}

    def __repr__(self) -> str:
        pools = ", ".join(f"{name!r}: {pool.size}" for name, pool in self._pools.items())
        keyed = ", ".join(f"{name!r}: {p.counts.size}" for name, p in self._keyed.items())
        more = f", keyed={{{keyed}}}" if keyed else ""
        return f"ResourceManager(limit={self._general.size}, pools={{{pools}}}{more})"

    @property
    def limit(self) -> int:
        """The general limit: most slots running at once.

        Settable while work runs: growing admits waiters at once; shrinking never cancels
        running work, and no new work is admitted until the running work is below the new
        limit.

        Raises:
            TypeError: On setting a value that is not an int.
            ValueError: On setting a value below 1, or when the limit is a :class:`Capacity`
                made elsewhere.
        """
        return self._general.size

    @limit.setter
    def limit(self, value: int) -> None:
        self._resize(self._general, _check_size("limit", value))

    @property
    def pools(self) -> tuple[str, ...]:
        """The names of the pools, in the order they were given."""
        return tuple(self._pools)

    @property
    def keyed(self) -> tuple[str, ...]:
        """The names of the keyed pools, in the order they were given."""
        return tuple(self._keyed)

    def pool_size(self, name: str) -> int:
        """Return the size of one pool (of one key, for a keyed pool).

        Args:
            name: The pool's name.

        Returns:
            The most slots that may hold a token of this pool (or key) at once.

        Raises:
            ValueError: There is no pool of that name.
        """
        keyed = self._keyed.get(name) if isinstance(name, str) else None
        if keyed is not None:
            return keyed.counts.size
        return self._pool(name).size

    def set_pool_size(self, name: str, size: int) -> None:
        """Resize one pool while work runs.

        Growing admits waiters at once; shrinking never cancels running work, and no new work
        is admitted to the pool until its running work is below the new size. For a keyed pool
        the size is per key, and applies to every key, live or to come.

        Args:
            name: The pool's name.
            size: The new size, an int >= 1.

        Raises:
            TypeError: ``size`` is not an int.
            ValueError: There is no pool of that name, ``size`` is below 1, or the pool is a
                :class:`Capacity` made elsewhere.
        """
        keyed = self._keyed.get(name) if isinstance(name, str) else None
        if keyed is not None:
            old = keyed.counts.size
            keyed.resize(_check_size(f"size of keyed pool {name!r}", size))
            if self._listeners and size != old:
                self._listeners.emit(LimitChanged(pool=name, old=old, new=size))
            return
        pool = self._pool(name)
        self._resize(pool, _check_size(f"size of pool {name!r}", size))

    def _resize(self, pool: _Pool, size: int) -> None:
        if pool.shared:
            what = f"pool {pool.name!r}" if pool.name else "the general limit"
            raise ValueError(f"{what} is a Capacity made elsewhere: resize it where it is made")
        # Resize the one limiter in place: replacing it would strand its waiters.
        assert isinstance(pool.limiter, PriorityLimiter)
        old = pool.size
        pool.limiter.total_tokens = size
        pool.size = size
        if self._listeners and size != old:
            self._listeners.emit(LimitChanged(pool=pool.name or None, old=old, new=size))

    def _pool(self, name: str) -> _Pool:
        try:
            return self._pools[name]
        except (KeyError, TypeError):
            known = ", ".join(repr(n) for n in self._pools) or "none"
            raise ValueError(f"unknown pool {name!r}; known pools: {known}") from None

    def slot(
        self, *pools: str, keys: Mapping[str, Hashable] | None = None, priority: int = 0
    ) -> Slot:
        """Return a :class:`Slot`: a general token, one token per pool and one per key.

        Tokens are taken in one global order, the keys' first (by keyed pool name), then the
        general one, then the pools' (sorted by name), and given back in reverse order on exit,
        on error and on cancellation (also when cancelled while waiting for a later token). A
        key's limiter exists while a slot holds or waits for it. Entering raises at once if the
        surrounding scope is cancelled, but when every token is free it takes them without
        yielding to other tasks (like anyio's ``Lock(fast_acquire=True)``); it waits, and then
        yields, only when a token is not free (or, with a health source, while unhealthy).

        Args:
            *pools: Names of the pools to take one token of each.
            keys: For keyed pools, the key to take one token of, e.g. ``{"user": "alice"}``.
            priority: When the slot has to wait for a token, larger is served first (equal
                priorities first come, first served); an int, 0 by default.

        Returns:
            A :class:`Slot`, to be used once, as an async context manager yielding ``None``.

        Raises:
            TypeError: A pool name is not a string, or a key is not hashable (raised here,
                before any waiting).
            ValueError: A pool or keyed pool is unknown, or a pool is named twice (raised here,
                before any waiting).
        """
        try:
            chain = self._chains[pools]
        except KeyError:
            chain = self._chain(pools)
        except TypeError:  # an unhashable argument
            chain = self._chain(pools)
        if priority:
            if type(priority) is not int:
                check_int(priority, "priority")
            return Slot(self, chain, None if keys is None else self._keyspec(keys), priority)
        if keys is None:
            return Slot(self, chain)
        return Slot(self, chain, self._keyspec(keys))

    def _keyspec(self, keys: object) -> tuple[tuple[_KeyedPool, Hashable], ...]:
        if type(keys) is not dict and not isinstance(keys, Mapping):
            raise TypeError(f"keys must be a mapping of keyed pool name to key, got {keys!r}")
        spec: list[tuple[_KeyedPool, Hashable]] = []
        for name in sorted(keys) if len(keys) > 1 else keys:
            pool = self._keyed.get(name) if type(name) is str else None
            if pool is None:
                known = ", ".join(repr(n) for n in self._keyed) or "none"
                raise ValueError(f"unknown keyed pool {name!r}; known keyed pools: {known}")
            key = keys[name]
            try:
                hash(key)
            except TypeError:
                raise TypeError(f"keys[{name!r}] must be hashable, got {key!r}") from None
            spec.append((pool, key))
        return tuple(spec)

    def _chain(self, names: tuple[str, ...]) -> tuple[_Pool, ...]:
        seen: set[str] = set()
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"pool names must be strings, got {name!r}")
            if name in seen:
                raise ValueError(f"pool {name!r} is named twice in one slot()")
            seen.add(name)
        chain = tuple(self._pool(name) for name in sorted(names))
        if len(self._chains) < _CHAIN_CACHE_SIZE:
            self._chains[names] = chain
        return chain

    async def run(
        self,
        fn: Callable[[*Ts], Awaitable[T]],
        *args: *Ts,
        pools: Sequence[str] = (),
        priority: int = 0,
    ) -> T:
        """Run one call under a slot, recording its duration and whether it succeeded.

        Args:
            fn: An async function.
            *args: Positional arguments for ``fn``.
            pools: Names of the pools the call takes one token of each.
            priority: When the call has to wait for a token, larger is served first.

        Returns:
            What ``fn`` returned.

        Raises:
            TypeError: ``fn`` is not callable, is a plain ``def`` function, or ``pools`` is a
                string.
            ValueError: A pool is unknown or named twice.
            ResourceExhaustedError: The health source reports unhealthy and ``when_unhealthy`` is
                ``"fail"``.
        """
        check_async_callable(fn, "fn")  # a plain def is refused before it runs
        if isinstance(pools, str):
            raise TypeError(f"pools must be a sequence of pool names, got the string {pools!r}")
        async with self.slot(*pools, priority=priority):
            return await fn(*args)

    def statistics(self) -> ResourceManagerStatistics:
        """Return a snapshot of the limits, the work running and waiting, and what ran.

        Returns:
            A frozen :class:`ResourceManagerStatistics`, with one :class:`PoolStatistics` per pool.
        """
        general = self._general
        return ResourceManagerStatistics(
            limit=general.size,
            executing=general.executing,
            waiting=self._waiting,
            executed=general.executed,
            failed=general.failed,
            mean_duration=general.total_duration / general.executed if general.executed else 0.0,
            throttled=self._throttled,
            pools={name: pool.snapshot() for name, pool in self._pools.items()},
            keyed={name: pool.snapshot() for name, pool in self._keyed.items()},
        )

    def add_listener(self, fn: Callable[[ResourceManagerEvent], object]) -> Callable[[], None]:
        """Call ``fn(event)`` after every slot or run ends, and when a limit changes.

        ``fn`` receives a :class:`SlotReleased` when work that held a slot returned or failed
        (cancelled work is not reported), after its tokens are given back and in the task that
        used the slot, and a :class:`LimitChanged` when :attr:`limit` or a pool's size is
        changed. A listener that raises is logged and changes nothing else.

        Example::

            def on_event(event: trioflow.ResourceManagerEvent) -> None:
                if event.kind == "released" and not event.ok:
                    failures.append(event.duration)

            remove = rm.add_listener(on_event)

        A listener of trioflow 0.1, ``fn(duration, succeeded)``, still works (with a
        :class:`DeprecationWarning`) and sees only the released slots.

        Args:
            fn: A synchronous callable taking one event.

        Returns:
            A function that removes ``fn`` (calling it again does nothing).

        Raises:
            TypeError: ``fn`` is not callable.
        """
        return self._listeners.add(fn, legacy=(2, "(duration, succeeded)", _released_only))


def _released_only(fn: Callable[..., object]) -> Callable[[ResourceManagerEvent], object]:
    """Adapt a 0.1 listener, ``fn(duration, succeeded)``, to events."""

    def listener(event: ResourceManagerEvent) -> None:
        if event.kind == "released":
            fn(event.duration, event.ok)

    return listener
