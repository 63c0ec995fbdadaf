"""The batch engine: runs many async operations with bounded parallelism.

Design, in the order it matters for speed:

* A bounded batch (``limit=L``) runs a fixed set of at most ``L`` worker tasks that pull from
  one shared iterator over the input. Spawning one task per operation with a limiter inside
  costs an order of magnitude more time and memory per operation (mostly the garbage collector
  walking the parked tasks; ``bench/executor.py`` measures both), and in-flight memory is O(L).
  Workers are spawned as a chain (each one starts the next after taking its first operation),
  so three operations with ``limit=1000`` start three tasks, not a thousand.
* The input is consumed lazily: a worker takes the next operation only when it is free, so an
  endless generator works with ``fail_fast=True`` or a cancel scope.
* Per operation, the common case (no timeout, retry or progress callback) reads the clock twice
  and stores one tuple; the frozen :class:`~trioflow.Outcome` objects are built when the
  result's ``outcomes`` are first read. A cancel scope is made only when there is a timeout.
* On trio, the engine uses trio's primitives directly (see ``_backend.py``); both backends run
  the same code below.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sized,
)
from contextlib import AbstractContextManager
from types import CoroutineType, FunctionType
from typing import Any, TypeVar, final

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .._backend import CancelScope, TaskGroup, current_backend
from .._checks import (
    check_async_callable,
    check_bool,
    check_int,
    check_timeout,
    describe,
    is_awaitable,
    not_awaitable,
)
from .._limits import ResourceManager, as_manager
from .._retry import RetryPolicy
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

__all__ = ("Batch", "Operation", "Operations", "check_operations", "kind", "validate")

T = TypeVar("T")

Operation = Callable[[], Awaitable[T]]
Operations = Iterable[Callable[[], Awaitable[T]]] | AsyncIterable[Callable[[], Awaitable[T]]]

# An unbounded batch yields to the scheduler after spawning this many tasks, so the spawned
# operations run (and free their memory) while it reads an endless input, and a fail_fast stop
# or the caller's cancellation reaches the spawning loop.
_SPAWN_BATCH = 256


# --- validation ----------------------------------------------------------------------------


def kind(value: object) -> str:
    return describe(value)


def _check_limit(limit: object) -> int | ResourceManager | None:
    if limit is None or isinstance(limit, ResourceManager):
        return limit
    manager = as_manager(limit)  # a Capacity (e.g. shared by processes): a manager around it
    if manager is not None:
        return manager
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(
            f"limit must be an int >= 1, a ResourceManager, a Capacity or None, got {kind(limit)}"
        )
    return check_int(limit, "limit", minimum=1)


def check_operations(operations: object, name: str = "operations") -> None:
    if not isinstance(operations, Iterable | AsyncIterable):
        raise TypeError(
            f"{name} must be an iterable or async iterable of zero-argument async callables, "
            f"got {kind(operations)}"
        )


_OPERATION = "a zero-argument async callable"


def _not_callable(index: int, op: object) -> TypeError:
    hint = ""
    if inspect.iscoroutine(op):
        op.close()  # it can never run now; closing it avoids a 'never awaited' warning
        hint = "; pass the async function (e.g. functools.partial(fetch, url)), not a coroutine"
    return TypeError(f"operation {index} must be {_OPERATION}, got {kind(op)}{hint}")


def _refusal(index: int, op: object) -> TypeError | None:
    """Why an operation cannot run (not callable, or a plain def function), or None."""
    if not callable(op):
        return _not_callable(index, op)
    try:
        check_async_callable(op, f"operation {index}", _OPERATION)
    except TypeError as exc:
        return exc
    return None


# Judging each operation (check_async_callable) would cost a noticeable share of the lean path's
# whole cost per operation; a batch is nearly always many calls of one function. So each worker
# remembers the last thing judged fine, and an operation is judged only when its key differs:
# the function inside a functools.partial, the code of an async def closure, else the
# operation itself.
_partial = functools.partial
_Function = FunctionType
_Coroutine = CoroutineType
_CO_COROUTINE = inspect.CO_COROUTINE
_UNJUDGED = object()  # the key of no operation (None is one: that of None)


def _key(op: Any) -> object:
    kind = type(op)
    if kind is _partial:
        return op.func
    if kind is _Function and op.__code__.co_flags & _CO_COROUTINE:
        return op.__code__
    return op


# --- the engine ----------------------------------------------------------------------------


def _nothing() -> None:
    pass


@final
class Batch:
    """One run of a batch: its input, its options, its records and its counters.

    Each worker catches every ``Exception`` of its operations and records it, so the task
    group only ever sees cancellation. Problems that are not an operation's failure (the input
    iterator raising, a non-callable operation, ``on_progress`` or a ResourceManager listener
    raising) abort the batch: they
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
        "_judged",
        "_limit",
        "_lock",
        "_move_on_after",
        "_on_progress",
        "_retry",
        "_running",
        "_send",
        "_stopped",
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
        self._judged: object = _UNJUDGED  # the key of the last operation judged fine (see _key)
        self._exhausted = False
        # Set by the first stop (a fail_fast failure, an abort, the consumer leaving): from then
        # on no operation's function is entered, even one already taken or given its slot.
        self._stopped = False
        self._taken = 0
        self._workers = 0
        self._running = 0
        self._completed = 0
        self._failed = 0
        self._clock: Callable[[], float] = anyio.current_time
        self._move_on_after: Callable[[float], AbstractContextManager[CancelScope]]
        self._group: TaskGroup
        # Until run() opens its task group there is nothing to cancel (as_completed's block
        # may end before the batch's task has first run).
        self._cancel: Callable[[], None] = _nothing

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> float:
        """Run every operation; return the batch's duration. Re-raises an abort error."""
        backend = current_backend()
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
        duration = clock() - start
        if self._on_progress is not None and self._fail_fast and self._stopped:
            self._report_end()
        return duration

    def _report_end(self) -> None:
        """After a fail_fast stop, report the end: every operation taken, cancelled included."""
        assert self._on_progress is not None
        cancelled = 0
        for status, _, _ in self._extra.values():
            if status is CANCELLED:
                cancelled += 1
        progress = Progress(
            total=len(self._values),
            completed=self._completed,
            failed=self._failed,
            running=0,
            cancelled=cancelled,
        )
        try:
            self._on_progress(progress)
        except Exception as exc:
            exc.add_note("raised by on_progress")
            raise

    def result(self, duration: float) -> BatchResult[Any]:
        return make_result(self._values, self._durations, self._extra, duration=duration)

    def stop(self) -> None:
        """Start nothing more and cancel what is in flight (``as_completed``'s consumer left)."""
        self._stop()

    def _stop(self) -> None:
        """Start nothing more and cancel what is in flight."""
        self._exhausted = True
        self._stopped = True
        self._cancel()

    def _never_started(self, index: int) -> None:
        """Record an operation taken before a stop but not started: cancelled, 0 attempts."""
        if self._send is None:
            self._extra[index] = (CANCELLED, None, 0)

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
        key = _key(op)
        if key is not self._judged:
            refusal = _refusal(index, op)
            if refusal is not None:
                self._abort(refusal)
                return None
            self._judged = key
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
        judged: object = _UNJUDGED
        partial, coroutine = _partial, _Coroutine
        assert self._items is not None
        if self._stopped:  # a failure came before this worker's first turn
            return
        try:
            for index, op in self._items:
                if type(op) is not partial or op.func is not judged:
                    key = _key(op)
                    if key is not judged:
                        refusal = _refusal(index, op)
                        if refusal is not None:
                            self._abort(refusal)
                            return
                        judged = key
                add_value(None)
                add_duration(0.0)
                if first:
                    first = False
                    self._grow(self._lean_worker)
                start = clock()
                try:
                    awaitable = op()
                    if type(awaitable) is not coroutine and not is_awaitable(awaitable):
                        self._abort(not_awaitable(f"operation {index}", awaitable))
                        return
                    value = await awaitable
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
        if self._stopped:
            self._never_started(index)
            return
        clock = self._clock
        start = clock()
        try:
            awaitable = op()
            if type(awaitable) is not _Coroutine and not is_awaitable(awaitable):
                self._abort(not_awaitable(f"operation {index}", awaitable))
                return
            value = await awaitable
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
        judged: object = _UNJUDGED
        partial = _partial
        assert self._items is not None
        try:
            for index, op in self._items:
                if type(op) is not partial or op.func is not judged:
                    key = _key(op)
                    if key is not judged:
                        refusal = _refusal(index, op)
                        if refusal is not None:
                            self._abort(refusal)
                            return
                        judged = key
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
            if entered:  # leaving the slot raised: one of the manager's listeners did
                self._abort(exc, "raised by a ResourceManager listener")
                return
            # The manager refused the slot (ResourceExhaustedError when unhealthy): the operation
            # fails without running, and the chain goes on.
            await self._finish(index, FAILED, None, exc, 0.0, 0)
            if not self._exhausted:
                self._group.start_soon(self._slot_worker, manager)
        except BaseException:
            if not entered and self._send is None:
                self._extra[index] = (CANCELLED, None, 0)
            raise

    def _start(self, index: int, op: Operation[Any]) -> Awaitable[Any]:
        """Call an operation; abort the batch if what it returns cannot be awaited.

        The refusal is raised as well, to leave the operation (a retry policy never retries a
        NotAwaitableError); ``_execute`` knows it as the abort error and records nothing.
        """
        awaitable = op()
        if type(awaitable) is not _Coroutine and not is_awaitable(awaitable):
            error = not_awaitable(f"operation {index}", awaitable)
            self._abort(error)
            raise error
        return awaitable

    async def _call(self, index: int, op: Operation[Any]) -> Any:
        """Call an operation once, under the per-attempt timeout if there is one."""
        timeout = self._timeout
        if timeout is None:
            return await self._start(index, op)
        with self._move_on_after(timeout):
            return await self._start(index, op)
        raise TimeoutError(f"operation timed out after {timeout:g} seconds")

    async def _execute(self, index: int, op: Operation[Any]) -> Exception | None:
        """Run one operation, record its outcome; return its exception if it failed."""
        if self._stopped:
            self._never_started(index)
            return None
        clock = self._clock
        self._running += 1
        start = clock()
        attempts = 0
        try:
            if self._retry is None:
                attempts = 1
                value = await self._call(index, op)
            else:

                async def attempt() -> Any:
                    nonlocal attempts
                    attempts += 1
                    return await self._call(index, op)

                value = await self._retry.call(attempt)
        except Exception as exc:
            self._running -= 1
            if exc is self._abort_error:  # its result was not awaitable: not its failure
                return None
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


def validate(
    operations: object,
    limit: object,
    timeout: object,
    fail_fast: object = False,
    retry: object = None,
    on_progress: object = None,
) -> tuple[int | ResourceManager | None, float | None]:
    check_operations(operations)
    checked_limit = _check_limit(limit)
    checked_timeout = check_timeout(timeout)
    check_bool(fail_fast, "fail_fast")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy or None, got {kind(retry)}")
    if on_progress is not None and not callable(on_progress):
        raise TypeError(
            f"on_progress must be a callable taking a Progress, got {kind(on_progress)}"
        )
    return checked_limit, checked_timeout
