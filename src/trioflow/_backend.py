"""The one place that knows which event loop runs: the primitives trioflow needs, bound to it.

Every other module asks here (:func:`current_backend`, :func:`current_clock`,
:func:`current_time`) and none imports trio: ``import anyio, trioflow`` on asyncio loads no trio.

On trio, the engine uses trio's nursery, clock and cancel scopes directly: anyio >= 4.14 wraps
every ``start_soon`` in a handle, which makes an unbounded batch (one task per operation)
markedly slower (``bench/executor.py`` measures it). On asyncio, the batch engine's workers run
in ``asyncio.TaskGroup`` for the same reason; everything else uses anyio's primitives.
The engine runs the same code on both; only these primitives differ, and every test runs on
both backends.

What a task group raises is shaped here too: :func:`open_body_group` is the task group of an
async context manager whose body is the user's code.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Protocol, final

import anyio
import anyio.abc
import anyio.lowlevel

__all__ = (
    "Backend",
    "CancelScope",
    "TaskGroup",
    "current_backend",
    "current_clock",
    "OwnScope",
    "cancel_scope",
    "current_time",
    "loop_caller",
    "open_body_group",
    "running_on_trio",
    "scope_and_clock",
)


class CancelScope(Protocol):
    @property
    def cancelled_caught(self) -> bool: ...

    @property
    def cancel_called(self) -> bool: ...

    def cancel(self) -> None: ...


class OwnScope(CancelScope, Protocol):
    """A cancel scope to enter once with ``with``: trio's or anyio's."""

    def __enter__(self) -> object: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...


class TaskGroup(Protocol):
    @property
    def cancel_scope(self) -> CancelScope: ...

    def start_soon(self, fn: Callable[..., Awaitable[Any]], /, *args: Any) -> object: ...


@final
class Backend:
    """The handful of primitives the engine needs, bound to the running event loop."""

    __slots__ = (
        "cancel_scope",
        "checkpoint",
        "checkpoint_if_cancelled",
        "clock",
        "event",
        "move_on_after",
        "open_group",
        "open_workers",
        "sleep_until",
    )

    def __init__(
        self,
        open_group: Callable[[], AbstractAsyncContextManager[TaskGroup]],
        move_on_after: Callable[[float], AbstractContextManager[CancelScope]],
        checkpoint: Callable[[], Awaitable[None]],
        checkpoint_if_cancelled: Callable[[], Awaitable[None]],
        clock: Callable[[], float],  # only differences of its readings are used
        cancel_scope: Callable[[], AbstractContextManager[CancelScope]],
        sleep_until: Callable[[float], Awaitable[None]],  # a time read from ``clock``
        open_workers: Callable[[], AbstractAsyncContextManager[TaskGroup]],
        # A one-shot event for one waiting task: set(), and await wait() (a cancellation point).
        event: Callable[[], Any],
    ) -> None:
        self.event = event
        self.open_group = open_group
        self.open_workers = open_workers
        self.move_on_after = move_on_after
        self.checkpoint = checkpoint
        self.checkpoint_if_cancelled = checkpoint_if_cancelled
        self.clock = clock
        self.cancel_scope = cancel_scope
        self.sleep_until = sleep_until


@contextlib.asynccontextmanager
async def _trio_group() -> AsyncIterator[TaskGroup]:
    import trio

    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        # A strict nursery wraps the Cancelled of every task in a group; give the caller one
        # Cancelled, as anyio's task group does, so cancellation propagates as itself.
        cancelled, rest = group.split(trio.Cancelled)
        if rest is None and cancelled is not None:
            leaf: BaseException = cancelled
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            raise leaf from None
        raise


@final
class _TasksScope:
    """The ``cancel_scope`` of :func:`_asyncio_group`: cancels the group's tasks."""

    __slots__ = ("_tasks", "cancel_called", "cancelled_caught")

    def __init__(self, tasks: set[Any]) -> None:
        self._tasks = tasks
        self.cancel_called = False
        self.cancelled_caught = False

    def cancel(self) -> None:
        self.cancel_called = True
        for task in tuple(self._tasks):
            task.cancel()


@final
class _AsyncioGroup:
    """A task group over ``asyncio.TaskGroup``, with the two members the engine uses."""

    __slots__ = ("_create_task", "_tasks", "cancel_scope")

    def __init__(self, group: Any) -> None:
        self._tasks: set[Any] = set()
        self._create_task = group.create_task
        self.cancel_scope = _TasksScope(self._tasks)

    def start_soon(self, fn: Callable[..., Awaitable[Any]], /, *args: Any) -> object:
        task = self._create_task(fn(*args))
        tasks = self._tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if self.cancel_scope.cancel_called:  # started after a cancel: it never runs its body
            task.cancel()
        return task


@contextlib.asynccontextmanager
async def _asyncio_group() -> AsyncIterator[TaskGroup]:
    """The batch engine's worker group on asyncio: ``asyncio.TaskGroup``, not anyio's wrapper.

    anyio's task group wraps each task in a handle with a cancel scope of its own (an extra
    frame on every resume, about twice the calls per operation of the native group). The
    engine's workers catch every ``Exception`` of their operations and use no anyio feature of
    the group (``start``, per-task scopes), so the native group is enough. Cancelling its scope
    cancels its tasks; unlike anyio's and trio's groups, a task that has not started yet is
    then dropped without running any of its code (the engine accounts for that).
    """
    import asyncio

    async with asyncio.TaskGroup() as group:
        yield _AsyncioGroup(group)


@final
class _TrioWaiter:
    """A one-shot event one task waits on: ``trio.Event`` without its parking lot.

    ``as_completed`` makes one each time its consumer finds no outcome ready and each time a
    worker finds the consumer's queue full (about a fifth of the operations at limit 16 on
    trio); a ``trio.Event`` builds a parking lot and an ordered dict each time, which made the
    waits a fifth of the whole cost per operation. The waiting task parks itself directly;
    cancellation unparks it, as from ``trio.Event.wait``.
    """

    __slots__ = ("_flag", "_task")

    # trio's low-level functions, bound by current_backend() on trio (never imported here).
    _lowlevel: Any = None

    def __init__(self) -> None:
        self._flag = False
        self._task: Any = None

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            task = self._task
            if task is not None:
                self._task = None
                self._lowlevel.reschedule(task)

    def _abort(self, _: object) -> Any:
        self._task = None
        return self._lowlevel.Abort.SUCCEEDED

    async def wait(self) -> None:
        lowlevel = self._lowlevel
        if self._flag:
            await lowlevel.checkpoint()
            return
        assert self._task is None, "a waiter has one waiting task"
        self._task = lowlevel.current_task()
        await lowlevel.wait_task_rescheduled(self._abort)


@final
class _AsyncioWaiter:
    """A one-shot event one task waits on: a bare future of the running asyncio loop.

    ``anyio.Event`` wraps ``asyncio.Event``, which makes a future per wait anyway; the future
    alone is a C object. A cancel scope cancels the waiting task, and so its future; a later
    ``set()`` then does nothing.
    """

    __slots__ = ("_flag", "_future")

    def __init__(self) -> None:
        self._flag = False
        self._future: Any = None

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            future = self._future
            if future is not None and not future.done():
                future.set_result(None)

    async def wait(self) -> None:
        if self._flag:
            await anyio.lowlevel.checkpoint()
            return
        import asyncio

        assert self._future is None, "a waiter has one waiting task"
        self._future = future = asyncio.get_running_loop().create_future()
        await future


def _running_trio() -> Any:
    # trio is never imported here: if it is not loaded yet, nothing runs on it.
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_task():
        return trio
    return None


def running_on_trio() -> bool:
    """Whether the running event loop is trio's (an integration picks its server by it)."""
    return _running_trio() is not None


def current_clock() -> Callable[[], float]:
    """Return the running event loop's clock, resolved once.

    ``anyio.current_time()`` looks the backend up on every call; code that reads the clock many
    times per operation resolves it once with this and calls the result.

    Returns:
        A function returning the loop's current time in seconds (trio's clock, including a
        ``MockClock``, or the asyncio loop's ``time``).

    Raises:
        RuntimeError: No event loop is running in this thread.
    """
    trio = _running_trio()
    if trio is not None:
        # The clock's own method: trio.current_time() calls it through two more functions.
        clock: Callable[[], float] = trio.lowlevel.current_clock().current_time
        return clock
    import asyncio

    try:
        return asyncio.get_running_loop().time
    except RuntimeError:
        raise RuntimeError("no trio or asyncio event loop is running in this thread") from None


def cancel_scope(deadline: float = math.inf) -> OwnScope:
    """Return a new cancel scope of the running loop: trio's own on trio, else anyio's.

    On trio an anyio ``CancelScope`` wraps a trio one; code that opens a scope per call (a
    pipeline run) takes trio's directly, which costs about a third less.

    Args:
        deadline: When the scope cancels itself, on the loop's clock (never by default).
    """
    trio = _running_trio()
    if trio is not None:
        scope: OwnScope = trio.CancelScope(deadline=deadline)
        return scope
    return anyio.CancelScope(deadline=deadline)


class ScopeFactory(Protocol):
    """A cancel scope class of the running loop: ``factory(deadline=...)`` makes one scope."""

    def __call__(self, *, deadline: float) -> OwnScope: ...


def scope_and_clock() -> tuple[ScopeFactory, Callable[[], float]]:
    """Return what :func:`cancel_scope` and :func:`current_clock` use, with one look-up.

    Code that opens a scope and resolves the clock once per call (a pipeline run) asks which
    loop runs once instead of twice.

    Returns:
        The loop's cancel scope class (trio's own on trio, else anyio's), to call with
        ``deadline=``, and the loop's clock, as :func:`current_clock` returns it.

    Raises:
        RuntimeError: No event loop is running in this thread.
    """
    trio = _running_trio()
    if trio is not None:
        timer: Callable[[], float] = trio.lowlevel.current_clock().current_time
        return trio.CancelScope, timer
    return anyio.CancelScope, current_clock()


def current_time() -> float:
    """Return the running event loop's time: ``anyio.current_time()``, several times cheaper.

    anyio's backends make these very calls; asking the loops directly skips anyio's dispatch
    (the rate limiters', pools' and requests' hot paths). On trio it reads the run's clock as
    ``trio.current_time()`` does, without its two calls around it; on asyncio it reads
    ``loop.time()``, or ``time.monotonic()`` itself for a loop whose ``time`` is asyncio's own.

    Raises:
        Exception: What ``anyio.current_time()`` raises outside an event loop.
    """
    context = _trio_run_context
    if context is None and "trio" in sys.modules:
        context = _find_trio_run_context()
    if context:
        # In a trio task (what trio.lowlevel.in_trio_task() tests), read through the thread's
        # own attributes: a missing one is not an AttributeError raised and caught. (Outside
        # its tasks, as in an asyncio task beside a guest run of trio, the run is not asked.)
        run = context.__dict__
        if "task" in run:
            now: float = run["runner"].clock.current_time()
            return now
    elif context is False:  # pragma: no cover - a trio that keeps its run elsewhere
        trio = sys.modules["trio"]
        if trio.lowlevel.in_trio_task():
            now = trio.current_time()
            return now
    asyncio: Any = sys.modules.get("asyncio")
    loop = asyncio._get_running_loop() if asyncio is not None else None
    if loop is None:
        return anyio.current_time()  # raises anyio's own error outside an event loop
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic()  # what BaseEventLoop.time() returns, without the method
    now = loop.time()
    return now


# trio's record of the run in this thread (its GLOBAL_RUN_CONTEXT), found once trio is loaded:
# None until then, False when this trio keeps it elsewhere.
_trio_run_context: Any = None


def _find_trio_run_context() -> Any:
    global _trio_run_context
    try:
        from trio._core._run import GLOBAL_RUN_CONTEXT

        found: Any = GLOBAL_RUN_CONTEXT
        if type(found.__dict__) is not dict:  # pragma: no cover - not a thread's record
            found = False
    except Exception:  # pragma: no cover - a trio without that record
        found = False
    _trio_run_context = found
    return found


def loop_caller() -> Callable[..., object]:
    """Return a function that any thread may call to run a callback soon on this event loop.

    Captured on the loop, handed to a foreign thread (a client library's IO thread, a helper
    thread waiting on a remote result): ``call(fn, *args)`` queues ``fn(*args)`` to run on the
    loop's thread and returns at once, without waiting for it. It is
    ``trio.lowlevel.TrioToken.run_sync_soon`` on trio and ``loop.call_soon_threadsafe`` on
    asyncio: ``anyio.from_thread.run_sync`` does the same but blocks the calling thread until
    the loop has run the callback. ``fn`` must not raise (trio ends the run if it does).

    Returns:
        The thread-safe ``call(fn, *args)``. Once the loop has ended, calling it raises
        ``RuntimeError``.

    Raises:
        RuntimeError: No event loop is running in this thread.
    """
    trio = _running_trio()
    if trio is not None:
        call: Callable[..., object] = trio.lowlevel.current_trio_token().run_sync_soon
        return call
    import asyncio

    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:
        raise RuntimeError("no trio or asyncio event loop is running in this thread") from None


def checkpoint_if_cancelled() -> Awaitable[None]:
    """Return ``anyio.lowlevel.checkpoint_if_cancelled()``, made by trio directly when on trio.

    Not a coroutine function itself: the caller awaits the loop's own awaitable, so the hot
    paths that use it (a rate limiter with tokens to spare) pay for no extra frame.
    """
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_task():
        awaitable: Awaitable[None] = trio.lowlevel.checkpoint_if_cancelled()
        return awaitable
    return anyio.lowlevel.checkpoint_if_cancelled()


def _anyio_checkpoint_if_cancelled() -> Callable[[], Awaitable[None]]:
    """``anyio.lowlevel.checkpoint_if_cancelled`` of the running loop, its backend looked up now.

    anyio's function asks sniffio which loop runs on every call, which is most of its cost;
    the engine calls it once per ``as_completed`` outcome. anyio's backend lookup is not
    public, so any failure to reach it falls back to the public function.
    """
    try:
        from anyio._core._eventloop import get_async_backend

        found: Callable[[], Awaitable[None]] = get_async_backend().checkpoint_if_cancelled
    except Exception:  # pragma: no cover - an anyio without that private helper
        return anyio.lowlevel.checkpoint_if_cancelled
    return found


@functools.cache
def _asyncio_task_records() -> tuple[Callable[[], Any], Callable[[Any], Any]] | None:
    """``asyncio.current_task`` and the lookup of anyio's record of a task, found once.

    None when anyio keeps its records or its scopes' flags elsewhere than this version does.
    """
    try:
        import asyncio

        from anyio._backends._asyncio import CancelScope as AsyncioScope
        from anyio._backends._asyncio import _task_states

        scope = AsyncioScope()
        read = ("_cancel_called", "_shield", "_parent_scope")
        if not all(hasattr(scope, name) for name in read):
            return None  # pragma: no cover - an anyio whose scopes changed
    except Exception:  # pragma: no cover - an anyio without those private records
        return None
    get_state: Callable[[Any], Any] = _task_states.get
    return asyncio.current_task, get_state


def _current_task_of_this_loop(current_task: Callable[[], Any]) -> Callable[[], Any]:
    """``current_task``, or an equal lookup that costs a call less, for the running loop.

    Before Python 3.12, ``asyncio.current_task`` is a Python function that asks for the running
    loop and looks it up in the dictionary of current tasks: the same lookup bound to this
    loop answers the same (checked here) without either call.
    """
    import asyncio
    import types

    current = getattr(asyncio.tasks, "_current_tasks", None)
    if type(current_task) is not types.FunctionType or type(current) is not dict:
        return current_task  # C's own already (3.12 and later), or kept elsewhere
    loop = asyncio.get_running_loop()
    lookup: Callable[[], Any] = functools.partial(current.get, loop)
    if lookup() is not current_task():  # pragma: no cover - an asyncio keeping them otherwise
        return current_task
    return lookup


def _trio_cancel_probe(trio: Any) -> Callable[[], bool] | None:
    """Return the test of trio's own ``checkpoint_if_cancelled``, as a plain function.

    It reads what trio's check reads (the current task's cancel status, and a pending
    KeyboardInterrupt for the main task) and, when not cancelled, counts the cancellation point
    as trio's check does. None when trio keeps these records elsewhere than this version does.
    """
    context = _trio_run_context or _find_trio_run_context()
    if not context:  # pragma: no cover - a trio that keeps its run elsewhere
        return None
    try:
        task = trio.lowlevel.current_task()
        runner = task._runner
        if context.task is not task or type(task._cancel_points) is not int:
            return None  # pragma: no cover - a trio that finds its task otherwise
        main_task = runner.main_task
        bool(task._cancel_status.effectively_cancelled) or bool(runner.ki_pending)
    except Exception:  # pragma: no cover - a trio without those private records
        return None

    def cancelled() -> bool:
        task = context.task
        if task._cancel_status.effectively_cancelled or (task is main_task and runner.ki_pending):
            return True
        task._cancel_points += 1  # what trio's check counts when it does not raise
        return False

    return cancelled


def cancel_probe() -> Callable[[], bool] | None:
    """Return a synchronous test of whether the current task sits in a cancelled scope.

    The test answers True exactly when ``anyio.lowlevel.checkpoint_if_cancelled()`` would
    raise: the caller awaits the loop's own check only then, and skips its coroutine when not
    cancelled. Each ``as_completed`` outcome handed out is a cancellation point, and the
    check's coroutine is a large part of an outcome's cost: on trio about 2,500 instructions
    against 600 for the test; on asyncio anyio's check also looks the task up in a weak
    dictionary and walks its scopes on every call. On trio the test reads what trio's own
    check reads; on asyncio it remembers the last task it found and reads the scopes anyio
    reads.

    Returns:
        The test, or None when the loop's records are not where this version expects them
        (the caller then always awaits the check).
    """
    trio = _running_trio()
    if trio is not None:
        return _trio_cancel_probe(trio)
    records = _asyncio_task_records()
    if records is None:
        return None
    current_task, get_state = records
    current_task = _current_task_of_this_loop(current_task)
    last_task: object = None
    last_state: Any = None

    def cancelled() -> bool:
        nonlocal last_task, last_state
        task = current_task()
        if task is last_task:
            state = last_state
        else:
            state = get_state(task) if task is not None else None
            if state is None:  # no anyio scope was ever entered here: nothing can cancel it
                return False
            last_task, last_state = task, state
        scope = state.cancel_scope
        while scope is not None:  # anyio's own walk, from the innermost scope outwards
            if scope._cancel_called:
                return True
            if scope._shield:
                return False
            scope = scope._parent_scope
        return False

    return cancelled


def current_backend() -> Backend:
    """Return the primitives of the running event loop (trio's own on trio, anyio's otherwise)."""
    trio = _running_trio()
    if trio is not None:
        _TrioWaiter._lowlevel = trio.lowlevel
        clock = trio.lowlevel.current_clock()
        timer: Callable[[], float] = clock.current_time
        sleep_until: Callable[[float], Awaitable[None]] = trio.sleep_until
        if type(clock).__qualname__ == "SystemClock" and type(clock).__module__.startswith("trio"):
            # trio's default clock reads offset + perf_counter(), and the engine only ever
            # subtracts two readings: read perf_counter directly, a C call instead of a method.
            timer = time.perf_counter
            offset: float = clock.offset
            sleep_until = lambda moment: trio.sleep_until(moment + offset)  # noqa: E731
        return Backend(
            _trio_group,
            trio.move_on_after,
            trio.lowlevel.checkpoint,
            trio.lowlevel.checkpoint_if_cancelled,
            timer,
            trio.CancelScope,
            sleep_until,
            _trio_group,
            _TrioWaiter,
        )
    timer = anyio.current_time
    with contextlib.suppress(RuntimeError):
        import asyncio

        if asyncio.current_task() is not None:
            loop = asyncio.get_running_loop()
            timer = loop.time  # what anyio.current_time() returns
            if type(loop).time is asyncio.BaseEventLoop.time:
                timer = time.monotonic  # what BaseEventLoop.time() returns, without the method
    return Backend(
        anyio.create_task_group,  # type: ignore[arg-type]
        anyio.move_on_after,
        anyio.lowlevel.checkpoint,
        _anyio_checkpoint_if_cancelled(),
        timer,
        anyio.CancelScope,
        anyio.sleep_until,  # the loop's time, which ``timer`` reads too
        _asyncio_group,
        _AsyncioWaiter,
    )


@contextlib.asynccontextmanager
async def open_body_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    """Open a task group for an async context manager's body; the body's errors stay its own.

    A task group wraps whatever its body raises in an ``ExceptionGroup``, even alone. A context
    manager that owns background tasks (a monitor's sampler, a coordinator's metrics) and runs
    the caller's code as the group's body uses this instead, so that::

        async with monitor:          # its __aenter__ entered open_body_group()
            raise KeyError("mine")   # comes out as KeyError itself, not a group

    The contract:

    * The body raises an exception (any ``BaseException`` but cancellation): the background
      tasks are cancelled and waited for, then that exception is re-raised, itself, with its
      traceback. If a background task failed too, both come out in one ``ExceptionGroup``
      (``BaseExceptionGroup``), the body's exception first.
    * The body ends normally and a background task fails: the group's ``ExceptionGroup``, as
      a task group raises it.
    * Cancellation (of the body or from outside) propagates as itself, as from a task group.

    Yields:
        The task group (``start_soon``, ``start`` and ``cancel_scope``).
    """
    cancelled = anyio.get_cancelled_exc_class()
    body_error: BaseException | None = None
    try:
        async with anyio.create_task_group() as group:
            try:
                yield group
            except cancelled:
                raise
            except BaseException as exc:
                body_error = exc
                group.cancel_scope.cancel()
    except BaseExceptionGroup as failures:
        if body_error is None:
            raise
        raise BaseExceptionGroup(failures.message, [body_error, *failures.exceptions]) from None
    if body_error is not None:
        raise body_error
