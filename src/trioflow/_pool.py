"""Pools of expensive objects: made on demand, reused, checked, replaced, closed.

A :class:`Pool` owns at most ``max_size`` objects that an async factory makes (a compiler
workspace, a browser, a connection). ``async with pool.acquire() as obj`` hands out an idle
object, or makes one while fewer than ``max_size`` exist; otherwise the caller waits, first in,
first out. The pool's capacity is counted in reservations: an object handed out, an object
being made or being closed each hold one, so at most ``max_size`` objects ever exist, even while
a broken one is still being closed and its replacement is wanted.

Handing over is direct: an object given back while tasks wait goes to the first of them (it
never passes through the idle list where a newcomer could take it), and a freed place is given
to the first waiter as a right to make an object in its own task. A waiter cancelled after it
was given something passes it on to the next. Every path that can be interrupted undoes what
it took before re-raising, as ``httpcore``'s connection pool does.

Idle objects are kept last in, first out, so the least recently used age at the far end, where
the pool's own task (while the pool is open as ``async with pool:``) closes those idle for
``max_idle`` seconds, keeping ``min_size``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, final

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from ._backend import checkpoint_if_cancelled, current_time, open_body_group
from ._checks import check_async_callable, check_int, check_number, describe
from ._errors import PoolClosedError
from ._events import Listeners

__all__ = ("ObjectPoolEvent", "ObjectPoolStatistics", "Pool")

T = TypeVar("T")

_CLOSED: Any = object()  # what a waiter is handed when the pool closes


@attrs.frozen(kw_only=True)
class ObjectPoolStatistics:
    """A snapshot of a :class:`Pool`.

    ``size == idle + in_use`` and ``created - closed == size`` at every moment.

    Attributes:
        max_size: The most objects that may exist at once.
        size: Objects that exist now (made and not yet closed), idle or in use.
        idle: Objects waiting in the pool to be handed out.
        in_use: Objects handed out (including one being health-checked before it is).
        waiting: Tasks waiting for an object.
        created: Objects the factory made (a factory that failed made none).
        closed: Objects closed (broken, idle too long, failed a check, or the pool closed).
        failed_checks: Health checks that returned false or raised an exception.
    """

    max_size: int
    size: int
    idle: int
    in_use: int
    waiting: int
    created: int
    closed: int
    failed_checks: int


#: Why the pool closed an object.
CloseReason = Literal["broken", "idle", "check_failed", "pool_closed"]


@attrs.frozen(kw_only=True)
class ObjectPoolEvent:
    """Something happened to a :class:`Pool` or one of its objects.

    Attributes:
        kind: ``"created"`` (the factory made an object), ``"check_failed"`` (``check``
            returned false or raised), ``"closed"`` (the pool closed an object) or
            ``"pool_closed"`` (the pool itself was closed; once).
        reason: For ``"closed"``, why: ``"broken"`` (its block raised, or it was cancelled
            while being checked), ``"idle"`` (idle for ``max_idle``), ``"check_failed"`` or
            ``"pool_closed"``; None for the other kinds.
        size: Objects that exist after the event.
        error: For ``"check_failed"``, the exception ``check`` raised (None when it returned
            false); None for the other kinds.
    """

    kind: Literal["created", "check_failed", "closed", "pool_closed"]
    reason: CloseReason | None = None
    size: int
    error: BaseException | None = None


@final
class _Waiter:
    __slots__ = ("entry", "event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False
        # An idle (object, since) pair, None for "make one", or _CLOSED.
        self.entry: Any = None


def _log_failure(event: str, exc: BaseException, **fields: object) -> None:
    import structlog  # here, not at module level: it is slow to import

    structlog.get_logger("trioflow").error(event, exc_info=exc, **fields)


def _check_max_idle(value: object) -> float | None:
    if value is None:
        return None
    seconds = check_number(value, "max_idle", minimum=0, strict=True, finite=False)
    return None if seconds == math.inf else seconds


@final
class Pool(Generic[T]):
    """A pool of at most ``max_size`` expensive objects, made by an async factory and reused.

    ::

        async def make_workspace() -> Workspace:
            return await Workspace.create()      # seconds of work

        async with trioflow.Pool(make_workspace, max_size=4, close=Workspace.aclose) as pool:
            async with pool.acquire() as workspace:
                await workspace.compile(source)

    :meth:`acquire` hands out an idle object, or makes one while fewer than ``max_size``
    exist; further callers wait in arrival order and can be cancelled at any moment. An object
    whose ``async with`` block raised an exception (cancellation included: its state is
    unknown) is closed, not handed to the next caller, and its place goes to the next caller,
    who makes a fresh one. A factory that fails raises to the caller that asked for the object;
    the pool counts nothing for it.

    The pool can be used without ``async with pool:``; entering it makes ``min_size`` objects
    at once and runs the task that closes objects idle for ``max_idle`` seconds (without it,
    an expired object is noticed, and closed, only when it would be handed out). Leaving it, or
    :meth:`aclose`, closes the idle objects, makes every waiting task raise
    :class:`~trioflow.PoolClosedError`, and closes each object still in use when its block
    ends.

    Args:
        factory: An async function of no arguments that makes an object.
        max_size: The most objects that exist at once, an int >= 1.
        min_size: Objects made when the pool is entered, and kept however long they sit idle;
            an int in ``[0, max_size]``.
        max_idle: Seconds after which an idle object is closed (``None``, the default, or
            ``math.inf``: never).
        check: An optional async health check, ``check(obj) -> bool``, run before an idle
            object is handed out again. An object for which it returns false or raises is
            closed (and counted in ``failed_checks``), and the caller gets another one.
        close: An optional async cleanup, ``close(obj)``, run (shielded from cancellation)
            for every object the pool closes. An exception it raises is logged and the object
            counted closed.

    Raises:
        TypeError: A callable argument is not an async callable, or a number is not a number.
        ValueError: ``max_size`` < 1, ``min_size`` outside ``[0, max_size]``, or ``max_idle``
            not > 0.
    """

    __slots__ = (
        "__weakref__",
        "_check",
        "_close",
        "_closed",
        "_closed_count",
        "_created",
        "_entered",
        "_factory",
        "_failed_checks",
        "_held",
        "_idle",
        "_listeners",
        "_max_idle",
        "_max_size",
        "_min_size",
        "_reaper_asleep",
        "_size",
        "_stack",
        "_waiters",
        "_wake",
    )

    def __init__(
        self,
        factory: Callable[[], Awaitable[T]],
        *,
        max_size: int,
        min_size: int = 0,
        max_idle: float | None = None,
        check: Callable[[T], Awaitable[bool]] | None = None,
        close: Callable[[T], Awaitable[object]] | None = None,
    ) -> None:
        self._factory = check_async_callable(factory, "factory")
        self._max_size = check_int(max_size, "max_size", minimum=1)
        self._min_size = check_int(min_size, "min_size", minimum=0)
        if self._min_size > self._max_size:
            raise ValueError(
                f"min_size must be an int in [0, max_size={self._max_size}], "
                f"got {describe(min_size)}"
            )
        self._max_idle = _check_max_idle(max_idle)
        self._check = None if check is None else check_async_callable(check, "check")
        self._close = None if close is None else check_async_callable(close, "close")
        self._idle: deque[tuple[T, float]] = deque()  # (object, idle since), newest last
        self._waiters: deque[_Waiter] = deque()
        self._held = 0  # reservations: objects handed out, being made or being closed
        self._size = 0
        self._created = 0
        self._closed_count = 0
        self._failed_checks = 0
        self._closed = False
        self._entered = False
        self._stack: AsyncExitStack | None = None
        self._wake: anyio.Event | None = None
        self._reaper_asleep = False
        self._listeners: Listeners[ObjectPoolEvent] = Listeners("Pool")

    def __repr__(self) -> str:
        return f"Pool(max_size={self._max_size}, size={self._size}, idle={len(self._idle)})"

    @property
    def closed(self) -> bool:
        """Whether the pool was closed (it hands out no more objects)."""
        return self._closed

    def acquire(self) -> _Lease[T]:
        """Return an async context manager that holds one object of the pool for its block.

        ::

            async with pool.acquire() as obj:
                await obj.work()

        Entering it waits (cancellably, in arrival order) for an idle object or a free place,
        then hands out an object: an idle one that passes ``check``, or a new one from the
        factory. Leaving the block normally gives the object back; leaving it with an
        exception closes the object and frees its place.

        Returns:
            The context manager; its ``__aenter__`` returns the object.

        Raises:
            PoolClosedError: (on entering) The pool is closed, or closed while waiting.
            Exception: (on entering) Whatever the factory raised.
        """
        return _Lease(self)

    def add_listener(self, fn: Callable[[ObjectPoolEvent], object]) -> Callable[[], None]:
        """Call ``fn(event)`` with an :class:`ObjectPoolEvent` as objects come and go.

        Events come when the factory makes an object, a health check fails, the pool closes an
        object (with the reason) and when the pool itself closes. Handing out and giving back
        an object are not events (they are the pool's hot path; see :meth:`statistics`).
        Listeners run synchronously in the task that caused the event; one that raises is
        logged and changes nothing else.

        Example::

            remove = pool.add_listener(lambda e: print(e.kind, e.reason, e.size))

        Args:
            fn: A synchronous callable taking one event.

        Returns:
            A function that removes the listener (idempotent).

        Raises:
            TypeError: ``fn`` is not callable.
        """
        return self._listeners.add(fn)

    def _emit(
        self,
        kind: Literal["created", "check_failed", "closed", "pool_closed"],
        reason: CloseReason | None = None,
        error: BaseException | None = None,
    ) -> None:
        self._listeners.emit(
            ObjectPoolEvent(kind=kind, reason=reason, size=self._size, error=error)
        )

    def statistics(self) -> ObjectPoolStatistics:
        """Return a snapshot of the pool's objects, waiters and counters.

        Returns:
            A frozen :class:`ObjectPoolStatistics`.
        """
        idle = len(self._idle)
        return ObjectPoolStatistics(
            max_size=self._max_size,
            size=self._size,
            idle=idle,
            in_use=self._size - idle,
            waiting=len(self._waiters),
            created=self._created,
            closed=self._closed_count,
            failed_checks=self._failed_checks,
        )

    # --- open and close -------------------------------------------------------------------

    async def __aenter__(self) -> Pool[T]:
        """Make ``min_size`` objects and start closing idle ones after ``max_idle``.

        Returns:
            The pool itself.

        Raises:
            RuntimeError: The pool was entered before.
            PoolClosedError: The pool was closed.
            Exception: Whatever the factory raised while making ``min_size`` objects (those
                made are closed again).
        """
        if self._entered:
            raise RuntimeError("a Pool can be entered once")
        if self._closed:
            raise PoolClosedError("the pool is closed")
        self._entered = True
        try:
            for _ in range(self._min_size):
                self._held += 1
                try:
                    obj = await self._make()
                finally:
                    self._held -= 1
                self._idle.appendleft((obj, self._now()))
            if self._max_idle is not None:
                stack = AsyncExitStack()
                group: anyio.abc.TaskGroup = await stack.enter_async_context(open_body_group())
                self._stack = stack
                group.start_soon(self._reap)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the pool (see :meth:`aclose`); the block's exception propagates as it is."""
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                self._mark_closed()  # the reaper stops at its next look
                if self._wake is not None:
                    self._wake.set()
                await stack.__aexit__(exc_type, exc, tb)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the pool: close idle objects now, and fail every waiting task.

        Each waiting task raises :class:`~trioflow.PoolClosedError`; an object in use is closed
        when its block ends, and one being made when the factory returns it. Closing twice is
        harmless.
        """
        self._mark_closed()
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            waiter.entry = _CLOSED
            waiter.granted = True
            waiter.event.set()
        idle = self._idle
        while idle:
            obj, _ = idle.pop()
            await self._retire(obj, "pool_closed")
        if self._wake is not None:
            self._wake.set()
        await anyio.lowlevel.checkpoint()

    # --- the inside -----------------------------------------------------------------------

    def _mark_closed(self) -> None:
        if not self._closed and self._listeners:
            self._emit("pool_closed")
        self._closed = True

    def _now(self) -> float:
        return 0.0 if self._max_idle is None else current_time()

    async def _make(self) -> T:
        """Make an object; the caller holds the reservation for it."""
        obj: T = await self._factory()
        self._size += 1
        self._created += 1
        if self._listeners:
            self._emit("created")
        if self._closed:
            await self._retire(obj, "pool_closed")
            raise PoolClosedError("the pool was closed while this object was being made")
        return obj

    async def _retire(self, obj: T, reason: CloseReason) -> None:
        """Close an object (shielded); the caller still holds its reservation."""
        self._size -= 1
        self._closed_count += 1
        if self._listeners:
            self._emit("closed", reason)
        close = self._close
        if close is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await close(obj)
            except Exception as exc:
                _log_failure("trioflow.pool.close_failed", exc, object=repr(obj))

    def _free(self) -> None:
        """Give up one reservation and serve the waiters that can be served now."""
        self._held -= 1
        if self._waiters:
            self._serve()

    def _serve(self) -> None:
        waiters, idle = self._waiters, self._idle
        while waiters and (idle or self._held + len(idle) < self._max_size):
            waiter = waiters.popleft()
            waiter.entry = idle.pop() if idle else None
            waiter.granted = True
            self._held += 1
            waiter.event.set()

    def _give_back(self, obj: T, since: float) -> None:
        """Put a healthy object back (the caller's reservation is given up)."""
        self._held -= 1
        self._idle.append((obj, since))
        if self._waiters:
            self._serve()
        if self._reaper_asleep:
            self._reaper_asleep = False
            self._wake.set()  # type: ignore[union-attr]

    async def _wait(self) -> tuple[T, float] | None:
        """Queue until given an idle entry or a place (None); returns holding a reservation."""
        waiter = _Waiter()
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if not waiter.granted:
                self._waiters.remove(waiter)
            elif waiter.entry is not _CLOSED:
                # Given something, but cancelled before it could use it: pass it on.
                await self._undo(waiter.entry)
            raise
        if waiter.entry is _CLOSED:
            raise PoolClosedError("the pool was closed while waiting for an object")
        entry: tuple[T, float] | None = waiter.entry
        return entry

    async def _undo(self, entry: tuple[T, float] | None) -> None:
        """Return an idle entry (or a place) that was handed out and will not be used."""
        if entry is None:
            self._free()
        elif self._closed:
            await self._retire(entry[0], "pool_closed")
            self._free()
        else:
            self._give_back(*entry)

    async def _obtain(self) -> T:
        """The slow path of acquire: wait, check, make, as needed."""
        if self._closed:
            raise PoolClosedError("the pool is closed")
        idle = self._idle
        entry: tuple[T, float] | None
        if self._waiters or not (idle or self._held < self._max_size):
            entry = await self._wait()
        else:
            self._held += 1
            entry = idle.pop() if idle else None
        try:
            while entry is not None:
                obj, since = entry
                entry = None
                if await self._usable(obj, since):
                    return obj
                if idle:
                    entry = idle.pop()
            return await self._make()
        except BaseException:
            if entry is not None:
                await self._undo(entry)
            else:
                self._free()
            raise

    async def _usable(self, obj: T, since: float) -> bool:
        """Vet an idle object for the caller; an unusable one is closed (False)."""
        max_idle = self._max_idle
        if (
            max_idle is not None
            and current_time() - since >= max_idle
            and self._size > self._min_size
        ):
            await self._retire(obj, "idle")
            return False
        check = self._check
        if check is None:
            try:
                await checkpoint_if_cancelled()
            except BaseException:
                await self._undo_held(obj, since)
                raise
            return True
        try:
            healthy = await check(obj)
        except Exception as exc:
            self._failed_checks += 1
            _log_failure("trioflow.pool.check_failed", exc, object=repr(obj))
            if self._listeners:
                self._emit("check_failed", error=exc)
            await self._retire(obj, "check_failed")
            return False
        except BaseException:  # cancelled while checking: the object's state is unknown
            await self._retire(obj, "broken")
            raise
        if healthy:
            return True
        self._failed_checks += 1
        if self._listeners:
            self._emit("check_failed")
        await self._retire(obj, "check_failed")
        return False

    async def _undo_held(self, obj: T, since: float) -> None:
        # Cancelled before the object was handed out: back to idle, the reservation kept
        # (the caller's except gives it up).
        if self._closed:
            await self._retire(obj, "pool_closed")
        else:
            self._idle.append((obj, since))

    async def _reap(self) -> None:
        """Close objects idle for ``max_idle`` seconds, keeping ``min_size``; runs until closed."""
        max_idle = self._max_idle
        assert max_idle is not None
        idle = self._idle
        while not self._closed:
            self._wake = anyio.Event()
            if idle and self._size > self._min_size:
                self._reaper_asleep = False
                with anyio.move_on_after(max(0.0, idle[0][1] + max_idle - current_time())):
                    await self._wake.wait()
            else:
                self._reaper_asleep = True
                await self._wake.wait()
            now = current_time()
            while (
                not self._closed
                and idle
                and self._size > self._min_size
                and now - idle[0][1] >= max_idle
            ):
                obj, _ = idle.popleft()
                self._held += 1
                await self._retire(obj, "idle")
                self._free()


@final
class _Lease(Generic[T]):
    """What :meth:`Pool.acquire` returns: holds one object for an ``async with`` block."""

    __slots__ = ("_obj", "_pool", "_since")

    def __init__(self, pool: Pool[T]) -> None:
        self._pool = pool

    async def __aenter__(self) -> T:
        pool = self._pool
        idle = pool._idle
        if idle and pool._check is None and pool._max_idle is None and not pool._waiters:
            # The fast path: an idle object, nothing to vet, nobody ahead.
            entry = idle.pop()
            pool._held += 1
            try:
                await checkpoint_if_cancelled()
            except BaseException:
                pool._held -= 1
                idle.append(entry)
                raise
            self._obj = obj = entry[0]
            return obj
        self._obj = obj = await pool._obtain()
        return obj

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool = self._pool
        obj = self._obj
        del self._obj
        if exc_type is None and not pool._closed:
            if pool._max_idle is None and not pool._waiters:  # the fast path: back to idle
                pool._held -= 1
                pool._idle.append((obj, 0.0))
                return
            pool._give_back(obj, current_time())
            return
        await pool._retire(obj, "broken" if exc_type is not None else "pool_closed")
        pool._free()
