"""The batch executor: run many async operations with bounded parallelism.

Design, in the order it matters for speed:

* A bounded batch (``limit=L``) runs a fixed set of at most ``L`` worker tasks that pull from
  one shared iterator over the input. Spawning one task per operation with a limiter inside
  costs about 37 us and 3.5 KB per operation at 100,000 operations (mostly the garbage collector
  walking the parked tasks); ``L`` workers cost about 2 us per operation, and in-flight memory
  is O(L). Workers are spawned as a chain (each one starts the next after taking its first
  operation), so three operations with ``limit=1000`` start three tasks, not a thousand.
* The input is consumed lazily: a worker takes the next operation only when it is free, so an
  endless generator works with ``fail_fast=True`` or a cancel scope.
* Per operation, the common case (no timeout, retry or progress callback) reads the clock twice
  and stores one tuple; the frozen :class:`~trioflow.Outcome` objects are built when the
  result's ``outcomes`` are first read. A cancel scope is made only when there is a timeout.
* On trio, the engine uses trio's nursery, clock and cancel scopes directly: anyio >= 4.14
  wraps every ``start_soon`` in a handle, which makes an unbounded batch (one task per
  operation) 1.6-2.6x slower. Both paths run the same code below, only these primitives
  differ, and every test runs on both backends.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import sys
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sized,
)
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar, TypeVarTuple, final

import anyio
import anyio.lowlevel
import anyio.to_process
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._limits import ResourceManager
from ._outcomes import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    BatchResult,
    Extra,
    Outcome,
    OutcomeStatus,
    Progress,
    make_outcome,
    make_result,
)
from ._retry import RetryPolicy

__all__ = ("as_completed", "in_process", "in_thread", "map", "run_batch")

T = TypeVar("T")
R = TypeVar("R")
Ts = TypeVarTuple("Ts")

Operation = Callable[[], Awaitable[T]]
Operations = Iterable[Callable[[], Awaitable[T]]] | AsyncIterable[Callable[[], Awaitable[T]]]

# An unbounded batch yields to the scheduler after spawning this many tasks, so the spawned
# operations run (and free their memory) while it reads an endless input, and a fail_fast stop
# or the caller's cancellation reaches the spawning loop.
_SPAWN_BATCH = 256
# The channel between as_completed's operations and its consumer holds min(limit, this)
# outcomes (this many without an int limit); a slow consumer holds the operations back once it
# is full. About one outcome per worker lets a whole scheduling round of outcomes through: with
# 64 workers, a 16-outcome buffer costs 11 us per operation, a 64-outcome one 6.5 us.
_AS_COMPLETED_BUFFER = 256


# --- backend primitives --------------------------------------------------------------------


class _CancelScope(Protocol):
    @property
    def cancelled_caught(self) -> bool: ...

    def cancel(self) -> None: ...


class _TaskGroup(Protocol):
    @property
    def cancel_scope(self) -> _CancelScope: ...

    def start_soon(self, fn: Callable[..., Awaitable[Any]], /, *args: Any) -> object: ...


@final
class _Backend:
    """The handful of primitives the engine needs, bound to the running event loop."""

    __slots__ = ("checkpoint", "checkpoint_if_cancelled", "clock", "move_on_after", "open_group")

    def __init__(
        self,
        open_group: Callable[[], AbstractAsyncContextManager[_TaskGroup]],
        move_on_after: Callable[[float], AbstractContextManager[_CancelScope]],
        checkpoint: Callable[[], Awaitable[None]],
        checkpoint_if_cancelled: Callable[[], Awaitable[None]],
        clock: Callable[[], float],  # only differences of its readings are used
    ) -> None:
        self.open_group = open_group
        self.move_on_after = move_on_after
        self.checkpoint = checkpoint
        self.checkpoint_if_cancelled = checkpoint_if_cancelled
        self.clock = clock


@contextlib.asynccontextmanager
async def _trio_group() -> AsyncIterator[_TaskGroup]:
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


def _current_backend() -> _Backend:
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_task():
        clock = trio.lowlevel.current_clock()
        timer: Callable[[], float] = clock.current_time
        if type(clock).__qualname__ == "SystemClock" and type(clock).__module__.startswith("trio"):
            # trio's default clock reads offset + perf_counter(), and the engine only ever
            # subtracts two readings: read perf_counter directly, a C call instead of a method.
            timer = time.perf_counter
        return _Backend(
            _trio_group,
            trio.move_on_after,
            trio.lowlevel.checkpoint,
            trio.lowlevel.checkpoint_if_cancelled,
            timer,
        )
    timer = anyio.current_time
    with contextlib.suppress(RuntimeError):
        import asyncio

        if asyncio.current_task() is not None:
            loop = asyncio.get_running_loop()
            timer = loop.time  # what anyio.current_time() returns
            if type(loop).time is asyncio.BaseEventLoop.time:
                timer = time.monotonic  # what BaseEventLoop.time() returns, without the method
    return _Backend(
        anyio.create_task_group,  # type: ignore[arg-type]
        anyio.move_on_after,
        anyio.lowlevel.checkpoint,
        anyio.lowlevel.checkpoint_if_cancelled,
        timer,
    )


# --- validation ----------------------------------------------------------------------------


def _kind(value: object) -> str:
    return f"{value!r} ({type(value).__qualname__})"


def _check_limit(limit: object) -> int | ResourceManager | None:
    if limit is None or isinstance(limit, ResourceManager):
        return limit
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(
            f"limit must be an int >= 1, a ResourceManager or None, got {_kind(limit)}"
        )
    if limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit}")
    return limit


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds >= 0 or None, got {_kind(timeout)}")
    if not math.isfinite(timeout) or timeout < 0:
        raise ValueError(
            f"timeout must be a finite number of seconds >= 0 (None for no timeout), "
            f"got {timeout!r}"
        )
    return float(timeout)


def _check_operations(operations: object, name: str = "operations") -> None:
    if not isinstance(operations, Iterable | AsyncIterable):
        raise TypeError(
            f"{name} must be an iterable or async iterable of zero-argument async callables, "
            f"got {_kind(operations)}"
        )


def _not_callable(index: int, op: object) -> TypeError:
    hint = ""
    if inspect.iscoroutine(op):
        op.close()  # it can never run now; closing it avoids a 'never awaited' warning
        hint = "; pass the async function (e.g. functools.partial(fetch, url)), not a coroutine"
    return TypeError(
        f"operation {index} must be a zero-argument async callable, got {_kind(op)}{hint}"
    )


# --- the engine ----------------------------------------------------------------------------


@final
class _Batch:
    """One run of a batch: its input, its options, its records and its counters.

    Each worker catches every ``Exception`` of its operations and records it, so the task
    group only ever sees cancellation. Problems that are not an operation's failure (the input
    iterator raising, a non-callable operation, ``on_progress`` raising) abort the batch: they
    are stored, the batch is cancelled, and ``run()`` re-raises the first one after every task
    has ended, as itself rather than wrapped in a group.
    """

    __slots__ = (
        "_abort_error",
        "_aiter",
        "_cancel",
        "_clock",
        "_completed",
        "_durations",
        "_exhausted",
        "_extra",
        "_fail_fast",
        "_failed",
        "_group",
        "_items",
        "_limit",
        "_lock",
        "_move_on_after",
        "_on_progress",
        "_retry",
        "_running",
        "_send",
        "_taken",
        "_timeout",
        "_total",
        "_values",
        "_workers",
    )

    def __init__(
        self,
        operations: Operations[Any],
        *,
        limit: int | ResourceManager | None,
        timeout: float | None,
        fail_fast: bool,
        retry: RetryPolicy | None,
        on_progress: Callable[[Progress], object] | None,
        send: MemoryObjectSendStream[Outcome[Any]] | None = None,
    ) -> None:
        # Any, not Operation: each item is checked with callable() when it is taken.
        self._items: Iterator[tuple[int, Any]] | None = None
        self._aiter: AsyncIterator[Any] | None = None
        if isinstance(operations, AsyncIterable):
            self._aiter = operations.__aiter__()
        else:
            self._items = enumerate(iter(operations))
        self._total = len(operations) if isinstance(operations, Sized) else None
        self._limit = limit
        self._timeout = timeout
        self._fail_fast = fail_fast
        self._retry = retry
        self._on_progress = on_progress
        self._send = send
        # What BatchResult needs, in two flat lists indexed by operation and one dict for the
        # operations that did not simply succeed at the first attempt. In stream mode
        # (as_completed) outcomes go to the channel instead and nothing is kept.
        self._values: list[Any] = []
        self._durations: list[float] = []
        self._extra: Extra = {}
        self._lock: anyio.Lock | None = None
        self._abort_error: BaseException | None = None
        self._exhausted = False
        self._taken = 0
        self._workers = 0
        self._running = 0
        self._completed = 0
        self._failed = 0
        self._clock: Callable[[], float] = anyio.current_time
        self._move_on_after: Callable[[float], AbstractContextManager[_CancelScope]]
        self._group: _TaskGroup
        self._cancel: Callable[[], None]

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> float:
        """Run every operation; return the batch's duration. Re-raises an abort error."""
        backend = _current_backend()
        self._clock = clock = backend.clock
        self._move_on_after = backend.move_on_after
        await backend.checkpoint()
        start = clock()
        lean = (
            self._items is not None
            and self._send is None
            and self._timeout is None
            and self._retry is None
            and self._on_progress is None
        )
        async with backend.open_group() as group:
            self._group = group
            self._cancel = group.cancel_scope.cancel
            limit = self._limit
            if self._aiter is not None:
                self._lock = anyio.Lock()
            if isinstance(limit, ResourceManager):
                group.start_soon(self._slot_worker, limit)
            elif limit is not None:
                self._workers = 1
                group.start_soon(self._lean_worker if lean else self._worker)
            elif lean:
                await self._spawn_lean(backend.checkpoint)
            else:
                await self._spawn(backend.checkpoint)
        if self._abort_error is not None:
            raise self._abort_error
        return clock() - start

    def result(self, duration: float) -> BatchResult[Any]:
        return make_result(self._values, self._durations, self._extra, duration=duration)

    def _stop(self) -> None:
        """Start nothing more and cancel what is in flight."""
        self._exhausted = True
        self._cancel()

    def _abort(self, exc: BaseException, note: str | None = None) -> None:
        if self._abort_error is None:
            if note is not None:
                exc.add_note(note)
            self._abort_error = exc
        self._stop()

    def _count_taken(self) -> int:
        return self._taken if self._send is not None else len(self._values)

    def _input_failed(self, exc: BaseException) -> None:
        taken = self._count_taken()
        self._abort(exc, f"raised by the operations iterable after {taken} operations")

    # -- taking operations -----------------------------------------------------------------

    def _take(self) -> tuple[int, Operation[Any]] | None:
        """Take the next operation from a synchronous input, or None when there is none."""
        if self._exhausted:
            return None
        assert self._items is not None
        try:
            item = next(self._items, None)
        except Exception as exc:
            self._input_failed(exc)
            return None
        if item is None:
            self._exhausted = True
            self._total = self._count_taken()
            return None
        return self._admit(*item)

    async def _take_async(self) -> tuple[int, Operation[Any]] | None:
        """Take the next operation from an async input, one worker at a time."""
        assert self._lock is not None
        assert self._aiter is not None
        async with self._lock:
            if self._exhausted:
                return None
            try:
                op = await self._aiter.__anext__()
            except StopAsyncIteration:
                self._exhausted = True
                self._total = self._count_taken()
                return None
            except Exception as exc:
                self._input_failed(exc)
                return None
            return self._admit(self._count_taken(), op)

    def _admit(self, index: int, op: Any) -> tuple[int, Operation[Any]] | None:
        if not callable(op):
            self._abort(_not_callable(index, op))
            return None
        if self._send is None:
            self._values.append(None)
            self._durations.append(0.0)
        else:
            self._taken += 1
        return index, op

    async def _next(self) -> tuple[int, Operation[Any]] | None:
        if self._items is not None:
            return self._take()
        return await self._take_async()

    # -- the lean path: no timeout, retry, progress or channel -----------------------------

    async def _lean_worker(self) -> None:
        values = self._values
        durations = self._durations
        add_value = values.append
        add_duration = durations.append
        extra = self._extra
        clock = self._clock
        fail_fast = self._fail_fast
        first = True
        assert self._items is not None
        try:
            for index, op in self._items:
                if not callable(op):
                    self._abort(_not_callable(index, op))
                    return
                add_value(None)
                add_duration(0.0)
                if first:
                    first = False
                    self._grow(self._lean_worker)
                start = clock()
                try:
                    value = await op()
                except Exception as exc:
                    durations[index] = clock() - start
                    extra[index] = (FAILED, exc, 1)
                    if fail_fast:
                        self._stop()
                        return
                except BaseException:
                    durations[index] = clock() - start
                    extra[index] = (CANCELLED, None, 1)
                    raise
                else:
                    durations[index] = clock() - start
                    values[index] = value
                if self._exhausted:
                    return
        except Exception as exc:  # only the input's iterator can raise here
            self._input_failed(exc)

    async def _lean_one(self, index: int, op: Operation[Any]) -> None:
        clock = self._clock
        start = clock()
        try:
            value = await op()
        except Exception as exc:
            self._durations[index] = clock() - start
            self._extra[index] = (FAILED, exc, 1)
            if self._fail_fast:
                self._stop()
        except BaseException:
            self._durations[index] = clock() - start
            self._extra[index] = (CANCELLED, None, 1)
            raise
        else:
            self._durations[index] = clock() - start
            self._values[index] = value

    async def _spawn_lean(self, checkpoint: Callable[[], Awaitable[None]]) -> None:
        add_value = self._values.append
        add_duration = self._durations.append
        start_soon = self._group.start_soon
        one = self._lean_one
        assert self._items is not None
        try:
            for index, op in self._items:
                if not callable(op):
                    self._abort(_not_callable(index, op))
                    return
                add_value(None)
                add_duration(0.0)
                start_soon(one, index, op)
                if not (index + 1) % _SPAWN_BATCH:
                    await checkpoint()
                    if self._exhausted:
                        return
        except Exception as exc:
            self._input_failed(exc)

    # -- the general path ------------------------------------------------------------------

    def _grow(self, worker: Callable[[], Awaitable[None]]) -> None:
        assert isinstance(self._limit, int)
        if self._workers < self._limit:
            self._workers += 1
            self._group.start_soon(worker)

    async def _worker(self) -> None:
        first = True
        while (item := await self._next()) is not None:
            if first:
                first = False
                self._grow(self._worker)
            await self._execute(*item)

    async def _spawn(self, checkpoint: Callable[[], Awaitable[None]]) -> None:
        start_soon = self._group.start_soon
        spawned = 0
        while (item := await self._next()) is not None:
            start_soon(self._execute, *item)
            spawned += 1
            if not spawned % _SPAWN_BATCH:
                await checkpoint()

    async def _slot_worker(self, manager: ResourceManager) -> None:
        # With a ResourceManager, one task per operation, chained: this task takes one
        # operation, waits for a slot, starts the next task of the chain, then runs the
        # operation. So the input is read only as capacity frees up (at most one operation per
        # batch waits for a slot), one task per batch waits on the manager (batches sharing it
        # are served first come, first served), and the batch follows the manager's limit when
        # it changes while running, which a fixed set of workers sized from the limit at the
        # start could not. A failure is re-raised through the slot so that the manager's
        # statistics and listeners see it, as they do for rm.run().
        item = await self._next()
        if item is None:
            return
        index, op = item
        entered = False
        error: Exception | None = None
        try:
            async with manager.slot():
                entered = True
                self._group.start_soon(self._slot_worker, manager)
                error = await self._execute(index, op)
                if error is not None:
                    traceback = error.__traceback__
                    raise error
        except Exception as exc:
            if exc is error:
                exc.__traceback__ = traceback
                return
            if entered:
                raise
            # The manager refused the slot (ResourceExhausted when unhealthy): the operation
            # fails without running, and the chain goes on.
            await self._finish(index, FAILED, None, exc, 0.0, 0)
            if not self._exhausted:
                self._group.start_soon(self._slot_worker, manager)
        except BaseException:
            if not entered and self._send is None:
                self._extra[index] = (CANCELLED, None, 0)
            raise

    async def _call(self, op: Operation[Any]) -> Any:
        """Call an operation once, under the per-attempt timeout if there is one."""
        timeout = self._timeout
        if timeout is None:
            return await op()
        with self._move_on_after(timeout):
            return await op()
        raise TimeoutError(f"operation timed out after {timeout:g} seconds")

    async def _execute(self, index: int, op: Operation[Any]) -> Exception | None:
        """Run one operation, record its outcome; return its exception if it failed."""
        clock = self._clock
        self._running += 1
        start = clock()
        attempts = 0
        try:
            if self._retry is None:
                attempts = 1
                value = await self._call(op)
            else:

                async def attempt() -> Any:
                    nonlocal attempts
                    attempts += 1
                    return await self._call(op)

                value = await self._retry.call(attempt)
        except Exception as exc:
            self._running -= 1
            await self._finish(index, FAILED, None, exc, clock() - start, attempts)
            return exc
        except BaseException:
            self._running -= 1
            if self._send is None:
                self._durations[index] = clock() - start
                self._extra[index] = (CANCELLED, None, attempts)
            raise
        self._running -= 1
        await self._finish(index, SUCCEEDED, value, None, clock() - start, attempts)
        return None

    async def _finish(
        self,
        index: int,
        status: OutcomeStatus,
        value: Any,
        error: Exception | None,
        duration: float,
        attempts: int,
    ) -> None:
        self._completed += 1
        if error is not None:
            self._failed += 1
        send = self._send
        if send is not None:
            outcome = make_outcome(index, status, value, error, duration, attempts)
            try:
                # The operation has just run (and checkpointed): skip send()'s extra
                # checkpoint unless the channel is full and this task has to wait anyway.
                try:
                    send.send_nowait(outcome)
                except anyio.WouldBlock:
                    await send.send(outcome)
            except anyio.BrokenResourceError:  # the consumer is gone: nobody wants the rest
                self._stop()
            return
        self._durations[index] = duration
        if error is None:
            self._values[index] = value
        if error is not None or attempts != 1:
            self._extra[index] = (status, error, attempts)
        if self._on_progress is not None:
            progress = Progress(
                total=self._total,
                completed=self._completed,
                failed=self._failed,
                running=self._running,
            )
            try:
                self._on_progress(progress)
            except Exception as exc:
                self._abort(exc, "raised by on_progress")
                return
        if error is not None and self._fail_fast:
            self._stop()


def _validate(
    operations: object,
    limit: object,
    timeout: object,
    fail_fast: object = False,
    retry: object = None,
    on_progress: object = None,
) -> tuple[int | ResourceManager | None, float | None]:
    _check_operations(operations)
    checked_limit = _check_limit(limit)
    checked_timeout = _check_timeout(timeout)
    if not isinstance(fail_fast, bool):
        raise TypeError(f"fail_fast must be a bool, got {_kind(fail_fast)}")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy or None, got {_kind(retry)}")
    if on_progress is not None and not callable(on_progress):
        raise TypeError(
            f"on_progress must be a callable taking a Progress, got {_kind(on_progress)}"
        )
    return checked_limit, checked_timeout


# --- the public functions ------------------------------------------------------------------


async def run_batch(
    operations: Operations[T],
    *,
    limit: int | ResourceManager | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - per operation, not for this call
    fail_fast: bool = False,
    retry: RetryPolicy | None = None,
    on_progress: Callable[[Progress], object] | None = None,
) -> BatchResult[T]:
    """Run many async operations with at most ``limit`` in flight; collect every outcome.

    The input is consumed lazily, as slots free up, and never turned into a list: an endless
    generator works with ``fail_fast=True`` or a cancel scope around the call, and in-flight
    memory is O(limit). The result keeps one outcome per operation taken.

    Example::

        result = await run_batch(
            [functools.partial(fetch, url) for url in urls], limit=10, timeout=30
        )
        pages = result.values            # the successful values, in input order
        result.raise_for_errors()        # or look at result.errors

    Args:
        operations: An iterable or async iterable of zero-argument async callables (e.g.
            ``functools.partial(fetch, url)``; not coroutines).
        limit: The most operations in flight: an int >= 1; None for no limit (every operation
            starts as soon as it is read); or a :class:`~trioflow.ResourceManager`, whose slots
            several batches then share (each operation holds one slot while it runs).
        timeout: Seconds each operation may take; one past it is cancelled and recorded as
            failed with the builtin ``TimeoutError``. With ``retry``, the timeout applies to
            each attempt, and ``TimeoutError`` is retried if the policy says so.
        fail_fast: False runs everything and collects every failure. True stops at the first
            failure: operations in flight are cancelled (recorded as cancelled, not failed)
            and no more are taken from the input.
        retry: A :class:`~trioflow.RetryPolicy` applied to each operation. An operation waiting
            to retry keeps its slot.
        on_progress: Called with a :class:`~trioflow.Progress` after each operation succeeds
            or fails (not for the ones a ``fail_fast`` stop cancels). It runs in the batch's
            task, so keep it quick.

    Returns:
        A :class:`~trioflow.BatchResult` with every operation's outcome, in input order.

    Raises:
        TypeError: An argument has the wrong type; or the operation at some index is not
            callable. That is found when the operation is reached (the input is read lazily):
            the batch is then cancelled and the error, naming the index, is raised, so bad
            input is never lost among the outcomes.
        ValueError: ``limit`` < 1, or ``timeout`` negative, NaN or infinite.
        Exception: Whatever the operations iterable itself raised, or ``on_progress`` raised:
            the batch is cancelled and the exception propagates, with a note saying where it
            came from.
    """
    checked_limit, checked_timeout = _validate(
        operations, limit, timeout, fail_fast, retry, on_progress
    )
    batch = _Batch(
        operations,
        limit=checked_limit,
        timeout=checked_timeout,
        fail_fast=fail_fast,
        retry=retry,
        on_progress=on_progress,
    )
    duration = await batch.run()
    return batch.result(duration)


async def _bind(
    fn: Callable[[Any], Awaitable[R]], items: AsyncIterable[Any]
) -> AsyncGenerator[Operation[R], None]:
    async for item in items:
        yield functools.partial(fn, item)


async def map(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | ResourceManager | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - per operation, not for this call
) -> list[R]:
    """Call ``fn`` on every item concurrently; return the results in the items' order.

    Example::

        sizes = await trioflow.map(download_size, urls, limit=8)

    Args:
        fn: An async function of one argument.
        items: An iterable or async iterable of arguments, read lazily.
        limit: The most calls in flight (an int >= 1, None or a ResourceManager), as for
            :func:`run_batch`.
        timeout: Seconds each call may take; one past it fails with ``TimeoutError``.

    Returns:
        ``[await fn(item) for item in items]``, computed concurrently.

    Raises:
        ExceptionGroup: A call failed: the first failure cancels the calls in flight and no
            more start. The group holds the failures, each with a note naming its index.
        TypeError: ``fn`` is not callable, or another argument has the wrong type.
        ValueError: ``limit`` or ``timeout`` is out of range.
    """
    if not callable(fn):
        raise TypeError(f"fn must be an async callable of one argument, got {_kind(fn)}")
    _check_operations(items, "items")
    _validate(items, limit, timeout)
    result: BatchResult[R]
    if isinstance(items, AsyncIterable):
        async with contextlib.aclosing(_bind(fn, items)) as operations:
            result = await run_batch(operations, limit=limit, timeout=timeout, fail_fast=True)
    else:
        partial = functools.partial
        result = await run_batch(
            (partial(fn, item) for item in items), limit=limit, timeout=timeout, fail_fast=True
        )
    result.raise_for_errors()
    return list(result.values)


@final
class _OutcomeStream(Generic[T]):
    """The async iterator ``as_completed`` hands out; ends with the input's error, if any."""

    __slots__ = ("_checkpoint_if_cancelled", "_error", "_receive")

    def __init__(
        self,
        receive: MemoryObjectReceiveStream[Outcome[T]],
        checkpoint_if_cancelled: Callable[[], Awaitable[None]],
    ) -> None:
        self._receive = receive
        self._checkpoint_if_cancelled = checkpoint_if_cancelled
        self._error: BaseException | None = None

    def __aiter__(self) -> _OutcomeStream[T]:
        return self

    async def __anext__(self) -> Outcome[T]:
        try:
            # A cancellation point, but no yield when an outcome is ready: a consumer that took
            # one outcome per scheduling round would let the operations finish only one per
            # round, whatever the limit.
            await self._checkpoint_if_cancelled()
            try:
                return self._receive.receive_nowait()
            except anyio.WouldBlock:
                return await self._receive.receive()
        except anyio.EndOfStream:
            error, self._error = self._error, None
            if error is not None:
                raise error from None
            raise StopAsyncIteration from None


def as_completed(
    operations: Operations[T],
    *,
    limit: int | ResourceManager | None = None,
    timeout: float | None = None,
    retry: RetryPolicy | None = None,
) -> AbstractAsyncContextManager[AsyncIterator[Outcome[T]]]:
    """Run operations concurrently and hand out their outcomes as they complete.

    Outcomes pass through a bounded channel (room for ``min(limit, 256)`` outcomes; 256
    without an int limit), so a slow consumer holds the operations back: at most ``limit``
    operations run and the channel's worth of outcomes wait at any time, and memory stays
    O(limit) however long the input is. Leaving the block early cancels the operations still
    in flight. Every outcome is handed out, failures included (there is no fail-fast).

    Example::

        async with trioflow.as_completed(operations, limit=16, timeout=10) as outcomes:
            async for outcome in outcomes:
                print(outcome.index, outcome.status, outcome.value)

    Args:
        operations: An iterable or async iterable of zero-argument async callables, read
            lazily.
        limit: The most operations in flight (an int >= 1, None or a ResourceManager), as for
            :func:`run_batch`. With a ResourceManager, an outcome waiting for the consumer keeps
            its slot.
        timeout: Seconds each operation (each attempt, with ``retry``) may take; one past it
            yields a failed outcome with ``TimeoutError``.
        retry: A :class:`~trioflow.RetryPolicy` applied to each operation.

    Returns:
        An async context manager; entering it gives an async iterator of
        :class:`~trioflow.Outcome` in completion order.

    Raises:
        TypeError: An argument has the wrong type, or an operation is not callable (raised by
            the iteration once the outcomes before it are handed out, or when the block exits).
        ValueError: ``limit`` or ``timeout`` is out of range.
        Exception: Whatever the operations iterable raised, handed out the same way.
    """
    checked_limit, checked_timeout = _validate(operations, limit, timeout, retry=retry)
    return _as_completed(operations, checked_limit, checked_timeout, retry)


@contextlib.asynccontextmanager
async def _as_completed(
    operations: Operations[T],
    checked_limit: int | ResourceManager | None,
    checked_timeout: float | None,
    retry: RetryPolicy | None,
) -> AsyncGenerator[AsyncIterator[Outcome[T]], None]:
    buffer = _AS_COMPLETED_BUFFER
    if isinstance(checked_limit, int):
        buffer = min(checked_limit, buffer)
    send, receive = anyio.create_memory_object_stream[Outcome[T]](buffer)
    batch = _Batch(
        operations,
        limit=checked_limit,
        timeout=checked_timeout,
        fail_fast=False,
        retry=retry,
        on_progress=None,
        send=send,
    )
    backend = _current_backend()
    stream = _OutcomeStream(receive, backend.checkpoint_if_cancelled)

    async def drive() -> None:
        with send:
            try:
                await batch.run()
            except Exception as exc:
                stream._error = exc

    body_error: Exception | None = None
    with receive:
        async with backend.open_group() as group:
            group.start_soon(drive)
            try:
                yield stream
            except Exception as exc:
                # Re-raised below, once the operations are cancelled, as itself rather than
                # wrapped in the task group's ExceptionGroup.
                body_error = exc
            finally:
                group.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
    if stream._error is not None:
        error, stream._error = stream._error, None
        raise error


def in_process(fn: Callable[[*Ts], R], *args: *Ts) -> Callable[[], Awaitable[R]]:
    """Wrap a synchronous call as an operation that runs in a worker process.

    Use it for CPU-bound work, so a batch uses every core. The call runs through
    :func:`anyio.to_process.run_sync` (a pool of worker processes, one per CPU by default); when
    the operation is cancelled (a timeout, a ``fail_fast`` stop, the caller's cancel scope) its
    worker process is killed. ``fn`` and ``args`` must be picklable: ``fn`` a module-level
    function.

    Example::

        result = await run_batch([in_process(checksum, path) for path in paths], limit=4)

    Args:
        fn: A synchronous, picklable function.
        *args: Its positional arguments (picklable).

    Returns:
        A zero-argument async callable returning ``fn(*args)``.

    Raises:
        TypeError: ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable, got {_kind(fn)}")

    async def run_in_process() -> R:
        return await anyio.to_process.run_sync(fn, *args, cancellable=True)

    run_in_process.__qualname__ = f"in_process({getattr(fn, '__qualname__', fn)!s})"
    return run_in_process


def in_thread(fn: Callable[[*Ts], R], *args: *Ts) -> Callable[[], Awaitable[R]]:
    """Wrap a synchronous, blocking call as an operation that runs in a worker thread.

    Use it for blocking I/O or libraries without async support. The call runs through
    :func:`anyio.to_thread.run_sync`. A thread cannot be interrupted, so a cancellation (a
    timeout, a ``fail_fast`` stop, the caller's cancel scope) takes effect when the call
    returns: no thread outlives the batch. Give ``fn`` its own timeout if it can hang.

    Example::

        result = await run_batch([in_thread(read_file, path) for path in paths], limit=8)

    Args:
        fn: A synchronous function.
        *args: Its positional arguments.

    Returns:
        A zero-argument async callable returning ``fn(*args)``.

    Raises:
        TypeError: ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable, got {_kind(fn)}")

    async def run_in_thread() -> R:
        return await anyio.to_thread.run_sync(fn, *args)

    run_in_thread.__qualname__ = f"in_thread({getattr(fn, '__qualname__', fn)!s})"
    return run_in_thread
