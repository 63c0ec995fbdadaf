"""Resource limits: one general capacity plus named pools, resizable while work runs.

A :class:`ResourceManager` owns one :class:`anyio.CapacityLimiter` for its general limit and
one per named pool. ``slot(*pools)`` takes a general token and one token of each named pool,
always in the same global order (general first, then pools sorted by name), so two callers
asking for overlapping pools in different orders can never deadlock. Limits are resized
through ``total_tokens``, never by replacing a limiter, so no waiter is ever lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType, TracebackType
from typing import Literal, Protocol, TypeVar, TypeVarTuple, final, runtime_checkable

import anyio
import anyio.lowlevel
import attrs

from ._checks import check_int
from ._errors import ResourceExhaustedError

__all__ = ("HealthSource", "PoolStatistics", "ResourceManager", "ResourceManagerStatistics")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_WouldBlock = anyio.WouldBlock
_CHAIN_CACHE_SIZE = 256


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


def _read_only(pools: Mapping[str, PoolStatistics]) -> Mapping[str, PoolStatistics]:
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
    """

    limit: int
    executing: int
    waiting: int
    executed: int
    failed: int
    mean_duration: float
    throttled: int
    pools: Mapping[str, PoolStatistics] = attrs.field(factory=dict, converter=_read_only)


def _check_size(what: str, value: object) -> int:
    return check_int(value, what, minimum=1)


@final
class _Pool:
    """The mutable state of one named pool (or of the general limit)."""

    __slots__ = (
        "executed",
        "executing",
        "failed",
        "limiter",
        "name",
        "size",
        "throttled",
        "total_duration",
        "waiting",
    )

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.limiter = anyio.CapacityLimiter(size)
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


def _is_failure(exc: BaseException) -> bool:
    """Whether an exception leaving a slot counts as a failure (cancellation never does)."""
    if isinstance(exc, Exception):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda e: isinstance(e, Exception)) is not None
    return False


@final
class _Slot:
    """The async context manager returned by :meth:`ResourceManager.slot`.

    A plain class rather than ``@asynccontextmanager``: it is entered once per operation on the
    executor's hot path. The slot object itself is the borrower of every token it holds.
    """

    __slots__ = ("_acquired", "_manager", "_pools", "_started")

    def __init__(self, manager: ResourceManager, pools: tuple[_Pool, ...]) -> None:
        self._manager = manager
        self._pools = pools  # named pools only, in acquisition (sorted) order
        self._acquired = -1  # -1: not entered; else number of limiters held (general included)
        self._started = 0.0

    async def __aenter__(self) -> None:
        if self._acquired != -1:
            raise RuntimeError("a slot() can be entered only once; call slot() again")
        manager = self._manager
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._acquired = 0
        health = manager._health
        if health is not None and not health.healthy:
            if manager._when_unhealthy == "fail":
                raise ResourceExhaustedError(
                    "resource manager refused work: its health source reports unhealthy "
                    "(when_unhealthy='fail')"
                )
            await self._acquire_slowly(wait_for_health=True)
        else:
            try:
                manager._general.limiter.acquire_on_behalf_of_nowait(self)
                self._acquired = 1
                for pool in self._pools:
                    pool.limiter.acquire_on_behalf_of_nowait(self)
                    self._acquired += 1
            except _WouldBlock:
                await self._acquire_slowly(wait_for_health=False)
        manager._general.executing += 1
        for pool in self._pools:
            pool.executing += 1
        self._started = anyio.current_time()

    async def _acquire_slowly(self, *, wait_for_health: bool) -> None:
        """Wait for health and the tokens not held yet; on any exception give back the rest."""
        manager = self._manager
        general = manager._general
        manager._waiting += 1
        manager._throttled += 1
        try:
            if wait_for_health:
                assert manager._health is not None
                await manager._health.wait_healthy()
            chain = (general, *self._pools)
            while self._acquired < len(chain):
                pool = chain[self._acquired]
                try:
                    pool.limiter.acquire_on_behalf_of_nowait(self)
                except _WouldBlock:
                    pool.throttled += 1
                    pool.waiting += 1
                    try:
                        await pool.limiter.acquire_on_behalf_of(self)
                    finally:
                        pool.waiting -= 1
                self._acquired += 1
        except BaseException:
            self._release()
            raise
        finally:
            manager._waiting -= 1

    def _release(self) -> None:
        """Give back every token held, in reverse order of acquisition."""
        chain = (self._manager._general, *self._pools)
        while self._acquired > 0:
            self._acquired -= 1
            chain[self._acquired].limiter.release_on_behalf_of(self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        duration = anyio.current_time() - self._started
        manager = self._manager
        general = manager._general
        pools = self._pools
        # Give the tokens back first, so nothing below can leak them.
        self._release()
        general.executing -= 1
        for pool in pools:
            pool.executing -= 1
        if exc is None:
            failed = False
        elif _is_failure(exc):
            failed = True
        else:
            return  # cancellation (or KeyboardInterrupt, ...) is neither success nor failure
        general.executed += 1
        general.total_duration += duration
        if failed:
            general.failed += 1
        for pool in pools:
            pool.executed += 1
            pool.total_duration += duration
            if failed:
                pool.failed += 1
        if manager._listeners:
            for listener in tuple(manager._listeners):
                listener(duration, not failed)


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

        rm = ResourceManager(limit=8, pools={"llm": 5, "tool": 10})
        async with rm.slot("llm"):
            ...
        answer = await rm.run(ask_model, prompt, pools=["llm"])

    A ``ResourceManager`` is used from one event loop (it is not thread-safe).

    Args:
        limit: The general limit: most slots running at once, an int >= 1.
        pools: Named pools and their sizes, e.g. ``{"llm": 5, "tool": 10}``.
        health: Consulted before admitting work; see ``when_unhealthy``.
        when_unhealthy: When ``health`` reports unhealthy at acquisition: ``"wait"`` waits
            (cancellably) until it is healthy again; ``"fail"`` raises
            :class:`~trioflow.ResourceExhaustedError` at once.

    Raises:
        TypeError: A limit or pool size is not an int, a pool name is not a string, or
            ``health`` does not have ``healthy`` and ``wait_healthy()``.
        ValueError: A limit or pool size is below 1, a pool name is empty, or
            ``when_unhealthy`` is neither ``"wait"`` nor ``"fail"``.
    """

    _general: _Pool
    _pools: dict[str, _Pool]
    _health: HealthSource | None
    _when_unhealthy: Literal["wait", "fail"]
    _waiting: int
    _throttled: int
    _listeners: list[Callable[[float, bool], None]]
    _chains: dict[tuple[str, ...], tuple[_Pool, ...]]

    def __init__(
        self,
        limit: int = 8,
        pools: Mapping[str, int] | None = None,
        *,
        health: HealthSource | None = None,
        when_unhealthy: Literal["wait", "fail"] = "wait",
    ) -> None:
        _check_size("limit", limit)
        named: dict[str, _Pool] = {}
        if pools is not None:
            if not isinstance(pools, Mapping):
                raise TypeError(
                    f"pools must be a mapping of pool name to size, got {type(pools).__name__}"
                )
            for name, size in pools.items():
                if not isinstance(name, str):
                    raise TypeError(f"pool names must be strings, got {name!r}")
                if not name:
                    raise ValueError("pool names must be non-empty strings, got ''")
                named[name] = _Pool(name, _check_size(f"pools[{name!r}]", size))
        if when_unhealthy not in ("wait", "fail"):
            raise ValueError(f"when_unhealthy must be 'wait' or 'fail', got {when_unhealthy!r}")
        if health is not None and not isinstance(health, HealthSource):
            raise TypeError(
                "health must have a 'healthy' property and an async 'wait_healthy()' method, "
                f"got {type(health).__name__}"
            )
        self._general = _Pool("", limit)
        self._pools = named
        self._health = health
        self._when_unhealthy = when_unhealthy
        self._waiting = 0
        self._throttled = 0
        self._listeners = []
        self._chains = {(): ()}

    def __repr__(self) -> str:
        pools = ", ".join(f"{name!r}: {pool.size}" for name, pool in self._pools.items())
        return f"ResourceManager(limit={self._general.size}, pools={{{pools}}})"

    @property
    def limit(self) -> int:
        """The general limit: most slots running at once.

        Settable while work runs: growing admits waiters at once; shrinking never cancels
        running work, and no new work is admitted until the running work is below the new
        limit.

        Raises:
            TypeError: On setting a value that is not an int.
            ValueError: On setting a value below 1.
        """
        return self._general.size

    @limit.setter
    def limit(self, value: int) -> None:
        self._resize(self._general, _check_size("limit", value))

    @property
    def pools(self) -> tuple[str, ...]:
        """The names of the pools, in the order they were given."""
        return tuple(self._pools)

    def pool_size(self, name: str) -> int:
        """Return the size of one pool.

        Args:
            name: The pool's name.

        Returns:
            The most slots that may hold a token of this pool at once.

        Raises:
            ValueError: There is no pool of that name.
        """
        return self._pool(name).size

    def set_pool_size(self, name: str, size: int) -> None:
        """Resize one pool while work runs.

        Growing admits waiters at once; shrinking never cancels running work, and no new work
        is admitted to the pool until its running work is below the new size.

        Args:
            name: The pool's name.
            size: The new size, an int >= 1.

        Raises:
            TypeError: ``size`` is not an int.
            ValueError: There is no pool of that name, or ``size`` is below 1.
        """
        pool = self._pool(name)
        self._resize(pool, _check_size(f"size of pool {name!r}", size))

    @staticmethod
    def _resize(pool: _Pool, size: int) -> None:
        # Resize the one limiter in place: replacing it would strand its waiters.
        pool.limiter.total_tokens = size
        pool.size = size

    def _pool(self, name: str) -> _Pool:
        try:
            return self._pools[name]
        except (KeyError, TypeError):
            known = ", ".join(repr(n) for n in self._pools) or "none"
            raise ValueError(f"unknown pool {name!r}; known pools: {known}") from None

    def slot(self, *pools: str) -> AbstractAsyncContextManager[None]:
        """Return an async context manager holding a general slot and one token per pool.

        Tokens are taken general first, then pools sorted by name, and given back in reverse
        order on exit, on error and on cancellation (also when cancelled while waiting for a
        later token). Entering is a cancellation point; it waits only when a token is not free
        (or, with a health source, while unhealthy).

        Args:
            *pools: Names of the pools to take one token of each.

        Returns:
            An async context manager, to be entered once, that yields ``None``.

        Raises:
            TypeError: A pool name is not a string (raised here, before any waiting).
            ValueError: A pool is unknown or named twice (raised here, before any waiting).
        """
        try:
            chain = self._chains[pools]
        except KeyError:
            chain = self._chain(pools)
        except TypeError:  # an unhashable argument
            chain = self._chain(pools)
        return _Slot(self, chain)

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
    ) -> T:
        """Run one call under a slot, recording its duration and whether it succeeded.

        Args:
            fn: An async function.
            *args: Positional arguments for ``fn``.
            pools: Names of the pools the call takes one token of each.

        Returns:
            What ``fn`` returned.

        Raises:
            TypeError: ``fn`` is not callable or ``pools`` is a string.
            ValueError: A pool is unknown or named twice.
            ResourceExhaustedError: The health source reports unhealthy and ``when_unhealthy`` is
                ``"fail"``.
        """
        if not callable(fn):
            raise TypeError(f"fn must be an async callable, got {fn!r}")
        if isinstance(pools, str):
            raise TypeError(f"pools must be a sequence of pool names, got the string {pools!r}")
        async with self.slot(*pools):
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
        )

    def add_listener(self, fn: Callable[[float, bool], None]) -> Callable[[], None]:
        """Call ``fn(duration, succeeded)`` after every slot or run completes.

        ``duration`` is in seconds on the running backend's clock. Cancelled work is not
        reported. The listener runs in the task that used the slot, after its tokens are given
        back; an exception it raises propagates to that task.

        Args:
            fn: A synchronous callable taking the duration and whether the work succeeded.

        Returns:
            A function that unsubscribes ``fn`` (calling it again does nothing).

        Raises:
            TypeError: ``fn`` is not callable.
        """
        if not callable(fn):
            raise TypeError(f"listener must be callable, got {fn!r}")
        self._listeners.append(fn)

        def unsubscribe() -> None:
            if fn in self._listeners:
                self._listeners.remove(fn)

        return unsubscribe
