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
* Per operation, the lean path (a synchronous input, no retry) reads the clock twice and
  stores a value and a double; the frozen :class:`~trioflow.Outcome` objects are built when the
  result's ``outcomes`` are first read. A progress callback costs one branch and one snapshot
  per operation, and ``as_completed`` one outcome handed to its consumer through a deque.
* A timeout makes no cancel scope per operation: each worker runs in one scope of its own and
  writes each operation's deadline in its slot, and one watchdog task sleeps until the earliest
  deadline and cancels the scope of a worker whose operation overran it (that worker records
  the timeout and goes on in a new scope). Deadlines are met exactly, in virtual time too.
  With ``retry``, each attempt runs in its own ``move_on_after``.
* With a ResourceManager, a pool of workers (its limit plus one) holds one slot per operation;
  only one worker per batch waits for a slot, so batches sharing the manager take turns. When
  nobody but that waiter wants the manager's tokens, a worker whose operation ended hands its
  slot straight to the batch's next operation (no release, heap or wake-up per operation).
* On trio, the engine uses trio's primitives directly, and on asyncio the workers run in
  ``asyncio.TaskGroup`` (see ``_backend.py``); both backends run the same code below.
"""

from __future__ import annotations

import functools
import inspect
from array import array
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
    Sized,
)
from contextlib import AbstractContextManager
from itertools import chain as _chain
from types import CoroutineType, FunctionType
from typing import Any, TypeVar, final

import anyio
import anyio.lowlevel

from .._backend import Backend, CancelScope, TaskGroup, current_backend
from .._checks import (
    check_async_callable,
    check_bool,
    check_int,
    check_timeout,
    describe,
    is_awaitable,
    not_awaitable,
)
from .._limits import ResourceManager, Slot, as_manager, can_pass_on, pass_on
from .._retry import RetryPolicy
from ._handoff import Handoff
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
    make_progress,
    make_result,
    next_progress,
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


def timed_out(timeout: float) -> str:
    """Return the message of an operation's timeout: ``operation timed out after 1 second``."""
    unit = "second" if timeout == 1 else "seconds"
    return f"operation timed out after {timeout:g} {unit}"


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


_INF = float("inf")
# The duration of an operation taken but not started yet (every real duration is >= 0).
_NOT_STARTED = -1.0


@final
class _NoScope:
    """What a watched worker's slot holds before its first cancel scope opens."""

    __slots__ = ()
    cancel_called = False

    def cancel(self) -> None:
        pass


_NO_SCOPE: Any = _NoScope()


@final
class Batch:
    """One run of a batch: its input, its options, its records and its counters.

    Each worker catches every ``Exception`` of its operations and records it, so the task
    group only ever sees cancellation. Problems that are not an operation's failure (the input
    iterator raising, a non-callable operation, ``on_progress`` raising) abort the batch:
    they are stored, the batch is cancelled, and ``run()`` re-raises the first one after every task
    has ended, as itself rather than wrapped in a group.
    """

    __slots__ = (
        "_abort_error",
        "_ahead",
        "_aiter",
        "_cancel",
        "_checkpoint",
        "_clock",
        "_completed",
        "_deadlines",
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
        "_scopes",
        "_send",
        "_slot_waiter",
        "_started",
        "_stopped",
        "_taken",
        "_timeout",
        "_total",
        "_values",
        "_waiting_slot",
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
        send: Handoff[Outcome[Any]] | None = None,
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
        self._durations: array[float] = array("d")  # 8 bytes each, not a float object
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
        # With a timeout on the lean path, one entry per worker: the deadline of the operation
        # it runs (inf when none), its cancel scope, and the index and duration of the last
        # operation cancelled in it.
        self._deadlines: list[float] = []
        self._scopes: list[CancelScope] = []
        self._started: list[tuple[int, float]] = []
        # With a ResourceManager: set while one worker waits for a slot (see _managed_worker).
        self._slot_waiter: anyio.Event | None = None
        self._waiting_slot: Slot | None = None  # its slot
        self._ahead: tuple[int, Operation[Any]] | None = None  # the operation read ahead
        self._clock: Callable[[], float] = anyio.current_time
        self._checkpoint: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint
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
        self._checkpoint = backend.checkpoint
        self._move_on_after = backend.move_on_after
        await backend.checkpoint()
        start = clock()
        # The lean path: a synchronous input, results kept, no retry. Bounded, it also takes a
        # timeout (one deadline per worker and one watchdog, see _watchdog) and a progress
        # callback (one branch per operation).
        lean = self._items is not None and self._retry is None
        limit = self._limit
        watched = lean and self._timeout is not None and isinstance(limit, int)
        async with backend.open_group() as outer:
            if watched:
                outer.start_soon(self._watchdog, backend)
            async with backend.open_workers() as group:
                self._group = group
                self._cancel = group.cancel_scope.cancel
                if self._aiter is not None:
                    self._lock = anyio.Lock()
                if isinstance(limit, ResourceManager):
                    self._workers = 1
                    group.start_soon(self._managed_worker, limit)
                elif limit is not None:
                    self._workers = 1
                    if not lean:
                        group.start_soon(self._worker)
                    elif watched:
                        group.start_soon(self._watched_worker, backend.cancel_scope, True)
                    else:
                        # The loop is the worker's task itself: no coroutine around it to resume
                        # at every operation.
                        group.start_soon(self._lean_loop, -1, None, True)
                elif (
                    lean
                    and self._send is None
                    and self._timeout is None
                    and self._on_progress is None
                ):
                    await self._spawn_lean(backend.checkpoint)
                else:
                    await self._spawn(backend.checkpoint)
            outer.cancel_scope.cancel()  # the watchdog, if any
        if self._abort_error is not None:
            raise self._abort_error
        if self._stopped and self._send is None:
            self._account_for_unstarted()
        duration = clock() - start
        if self._on_progress is not None and self._fail_fast and self._stopped:
            self._report_end()
        return duration

    def _account_for_unstarted(self) -> None:
        """After a stop, record as cancelled (0 attempts) every operation that never started.

        Those are the ones whose duration is still the mark put in when they were taken: a
        task dropped by the stop before it ran (on asyncio's native group) had no chance to
        record itself.
        """
        durations = self._durations
        extra = self._extra
        for index, duration in enumerate(durations):
            if duration == _NOT_STARTED:
                durations[index] = 0.0
                extra.setdefault(index, (CANCELLED, None, 0))

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

    def durations(self) -> Sequence[float]:
        """Each operation's duration, in input order (none in stream mode)."""
        return self._durations

    def result(self, duration: float) -> BatchResult[Any]:
        return make_result(self._values, self._durations, self._extra, duration=duration)

    def stopped(self) -> bool:
        """Whether the batch has stopped (read after an await: it may have changed since)."""
        return self._stopped

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
        if type(op) is not _partial or op.func is not self._judged:  # see _key
            key = _key(op)
            if key is not self._judged:
                refusal = _refusal(index, op)
                if refusal is not None:
                    self._abort(refusal)
                    return None
                self._judged = key
        if self._send is None:
            self._values.append(None)
            self._durations.append(_NOT_STARTED)
        else:
            self._taken += 1
        return index, op

    async def _next(self) -> tuple[int, Operation[Any]] | None:
        if self._items is not None:
            return self._take()
        return await self._take_async()

    # -- the lean path: a synchronous input, no retry, no channel ---------------------------

    async def _lean_loop(
        self,
        worker: int,
        scope: CancelScope | None,
        first: bool,
        slot: Slot | None = None,
        held: tuple[int, Operation[Any]] | None = None,
    ) -> bool:
        """Run operations until the input ends or the batch stops; the lean path's one loop.

        ``worker`` and ``scope`` are the worker's slot and cancel scope when it has a timeout
        (``_watched_worker``), else ``-1`` and None. Returns True when the worker must go on
        in a new cancel scope: the watchdog cancelled its scope as an operation returned.

        With a ResourceManager (``_managed_worker``), ``slot`` is the slot the worker holds and
        ``held`` the operation it was acquired for (already taken). The slot goes on from each
        operation to the next while :func:`~trioflow._limits.can_pass_on` allows it (with
        :func:`~trioflow._limits.pass_on`, running the batch's read-ahead operation first when
        it has one); otherwise, or when the loop ends, it is released with the last
        operation's error, and on cancellation with the cancellation.
        """
        values = self._values
        durations = self._durations
        add_value = values.append
        add_duration = durations.append
        extra = self._extra
        clock = self._clock
        fail_fast = self._fail_fast
        report = self._on_progress
        progress = next_progress
        last: Progress | None = None  # this worker's last report (filled in again if not kept)
        send = self._send  # as_completed: each outcome goes to the consumer, nothing is kept
        timeout = self._timeout
        deadlines = self._deadlines
        started = self._started
        judged: object = _UNJUDGED
        partial, coroutine = _partial, _Coroutine
        error: Exception | None = None
        failure: Exception | None = None  # the slot's last operation's error
        items = self._items
        assert items is not None
        if held is not None:
            items = _chain((held,), items)
        # Whether another task can stop the batch with a result to show (a fail_fast failure,
        # on_progress raising, as_completed's consumer leaving): then a slot passed on starts
        # its next operation only after every task that ended in this instant has run.
        settle = fail_fast or report is not None or send is not None
        # The bare batch (no timeout, progress, consumer or slot): its successes skip every
        # branch of the other modes.
        plain = scope is None and report is None and send is None and slot is None
        if self._stopped:  # a failure came before this worker's first turn
            if held is not None:
                self._never_started(held[0])
            if slot is not None:
                slot.release(None)
            return False
        try:
            for index, op in items:
                if held is not None:  # the slot's first operation: judged and taken already
                    held = None
                else:
                    if type(op) is not partial or op.func is not judged:
                        key = _key(op)
                        if key is not judged:
                            refusal = _refusal(index, op)
                            if refusal is not None:
                                self._abort(refusal)
                                return False
                            judged = key
                    if send is None:
                        add_value(None)
                        add_duration(_NOT_STARTED)
                    else:
                        self._taken += 1
                    if slot is not None:
                        # can_pass_on() said yes at the end of the last operation, with no
                        # await since: the slot goes on to this one, or to the read-ahead one.
                        behind = self._waiting_slot
                        pass_on(slot, failure, clock(), waited=behind is not None)
                        failure = None
                        if behind is not None:
                            ahead = self._ahead
                            assert ahead is not None
                            self._ahead = (index, op)
                            index, op = ahead
                        if settle:
                            try:
                                await self._checkpoint()
                            except BaseException:
                                self._never_started(index)
                                raise
                            if self.stopped():  # by a task that ended in this instant
                                self._never_started(index)
                                return False
                if first:
                    first = False
                    if scope is None:
                        self._grow(self._lean_loop, -1, None, True)
                    else:
                        self._grow(self._watched_worker)
                if plain:
                    start = clock()
                else:
                    if report is not None:
                        self._running += 1
                    start = clock()
                    if scope is not None:
                        assert timeout is not None
                        deadlines[worker] = start + timeout
                try:
                    awaitable = op()
                    if type(awaitable) is not coroutine and not is_awaitable(awaitable):
                        self._abort(not_awaitable(f"operation {index}", awaitable))
                        return False
                    value = await awaitable
                except Exception as exc:
                    duration = clock() - start
                    error = failure = exc
                    self._failed += 1
                    if send is None:
                        durations[index] = duration
                        extra[index] = (FAILED, exc, 1)
                except BaseException:
                    # Cancelled; by the watchdog if the watched worker finds its scope caught it.
                    duration = clock() - start
                    if scope is not None:
                        started[worker] = (index, duration)
                    if send is None:
                        durations[index] = duration
                        extra[index] = (CANCELLED, None, 1)
                    if report is not None:
                        self._running -= 1
                    raise
                else:
                    duration = clock() - start
                    if plain:  # the bare batch: nothing more to do for a success
                        durations[index] = duration
                        values[index] = value
                        if self._exhausted:
                            return False
                        continue
                    if send is None:
                        durations[index] = duration
                        values[index] = value
                if scope is not None:
                    deadlines[worker] = _INF
                if send is not None:
                    if error is None:
                        outcome = make_outcome(index, SUCCEEDED, value, None, duration, 1)
                    else:
                        outcome = make_outcome(index, FAILED, None, error, duration, 1)
                        error = None
                    try:
                        # The operation has just checkpointed: skip send()'s own checkpoint
                        # unless the consumer is behind and this worker has to wait anyway.
                        if not send.offer(outcome):
                            await send.wait_for_room(outcome)
                    except anyio.BrokenResourceError:  # the consumer is gone
                        self._stop()
                        return False
                elif report is not None:
                    # _report(), inlined: this runs once per operation.
                    self._running -= 1
                    self._completed = completed = self._completed + 1
                    try:
                        last = progress(last, self._total, completed, self._failed, self._running)
                        report(last)
                    except Exception as exc:
                        self._abort(exc, "raised by on_progress")
                        return False
                if error is not None:
                    error = None
                    if fail_fast:
                        self._stop()
                        return False
                if scope is not None and scope.cancel_called:
                    return True  # the watchdog fired as the operation returned: a new scope
                if self._exhausted:
                    return False
                if slot is not None and not can_pass_on(slot, self._waiting_slot):
                    return False
            self._exhausted = True  # the loop ends only when the input does
            self._total = self._count_taken()
        except Exception as exc:  # only the input's iterator can raise here
            self._input_failed(exc)
        except BaseException as exc:  # cancelled: counted neither way, no listener called
            if slot is not None:
                held_slot, slot = slot, None
                held_slot.release(exc)
            raise
        finally:
            if slot is not None:
                slot.release(failure)  # a listener that raises is logged by the manager
        return False

    def _report(self) -> bool:
        """Report progress after an operation ended on the lean path; False if it aborted."""
        assert self._on_progress is not None
        self._completed += 1
        try:
            self._on_progress(
                make_progress(self._total, self._completed, self._failed, self._running)
            )
        except Exception as exc:
            self._abort(exc, "raised by on_progress")
            return False
        return True

    async def _watched_worker(
        self,
        cancel_scope: Callable[[], AbstractContextManager[CancelScope]] | None = None,
        first: bool = True,
    ) -> None:
        """A lean worker with a timeout: one cancel scope per worker, not one per operation.

        The worker writes each operation's deadline in its slot; :meth:`_watchdog` cancels its
        scope when an operation overruns. The scope ends there, the operation is recorded as
        timed out, and the worker goes on in a new scope.
        """
        if cancel_scope is None:
            cancel_scope = current_backend().cancel_scope
        worker = len(self._deadlines)
        self._deadlines.append(_INF)
        self._started.append((-1, 0.0))
        self._scopes.append(_NO_SCOPE)
        timeout = self._timeout
        assert timeout is not None
        while True:
            with cancel_scope() as scope:
                self._scopes[worker] = scope
                again = await self._lean_loop(worker, scope, first)
            first = False
            if scope.cancelled_caught:  # the operation in flight overran its deadline
                self._deadlines[worker] = _INF
                index, duration = self._started[worker]
                error = TimeoutError(timed_out(timeout))
                self._failed += 1
                if self._send is not None:
                    outcome = make_outcome(index, FAILED, None, error, duration, 1)
                    try:
                        await self._send.send(outcome)
                    except anyio.BrokenResourceError:
                        self._stop()
                        return
                else:
                    self._extra[index] = (FAILED, error, 1)
                    if self._on_progress is not None and not self._report():
                        return
                if self._fail_fast:
                    self._stop()
                    return
                if self._exhausted:
                    return
            elif not again:
                return

    async def _watchdog(self, backend: Backend) -> None:
        """Cancel the scope of each watched worker whose operation is past its deadline.

        It sleeps until the earliest deadline, and never longer than the timeout: an operation
        that starts while it sleeps has a deadline after its wake-up. So each deadline is met
        exactly, at the cost of one list scan per wake-up (about one per timeout period).
        """
        clock = self._clock
        sleep_until = backend.sleep_until
        deadlines = self._deadlines
        scopes = self._scopes
        timeout = self._timeout
        assert timeout is not None
        while True:
            soonest = clock() + timeout
            for deadline in deadlines:
                if deadline < soonest:
                    soonest = deadline
            await sleep_until(soonest)
            now = clock()
            for worker, deadline in enumerate(deadlines):
                if deadline <= now:
                    deadlines[worker] = _INF
                    scopes[worker].cancel()

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
                add_duration(_NOT_STARTED)
                start_soon(one, index, op)
                if not (index + 1) % _SPAWN_BATCH:
                    await checkpoint()
                    if self._exhausted:
                        return
        except Exception as exc:
            self._input_failed(exc)

    # -- the general path ------------------------------------------------------------------

    def _grow(self, worker: Callable[..., Awaitable[object]], *args: object) -> None:
        assert isinstance(self._limit, int)
        if self._workers < self._limit:
            self._workers += 1
            self._group.start_soon(worker, *args)

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

    async def _managed_worker(self, manager: ResourceManager) -> None:
        """A worker of a batch limited by a ResourceManager: each operation holds a slot.

        Workers grow to the manager's limit plus one, and follow the limit when it grows while
        the batch runs. Each worker takes an operation, then its slot: at once when one is
        free; else it waits, and it is the batch's only waiter (the others wait before taking,
        so the input is read only as capacity frees up, and batches sharing the manager are
        served first come, first served). The operation the waiter holds is the batch's one
        read ahead (``_ahead``): a worker whose operation ends while nobody but that waiter
        waits for the manager's tokens keeps its slot and runs the read-ahead operation itself,
        reading the next one ahead (:func:`~trioflow._limits.pass_on`), so the waiter wakes
        only when a token frees for it; anyone else waiting gets the slot back as usual.
        A failure is given to the slot so that the manager's statistics and listeners see it,
        as they do for ``rm.run()``. On the lean path (a synchronous input, no timeout, no
        retry) the slot is run and handed on by :meth:`_lean_loop`, the same loop an int limit
        uses; otherwise by the loop below, one ``_execute`` per operation.
        """
        passing = self._items is not None  # taking the next operation must not await
        lean = passing and self._retry is None and self._timeout is None
        backend = current_backend()
        checkpoint = backend.checkpoint
        clock = backend.clock
        # Whether another task can stop the batch with a result to show: a fail_fast failure,
        # on_progress raising or as_completed's consumer leaving. Otherwise only an abort can
        # (the batch raises), and a passed slot starts its next operation at once.
        settle = self._fail_fast or self._on_progress is not None or self._send is not None
        while True:
            while self._slot_waiter is not None:  # another worker waits: wait behind it
                await self._slot_waiter.wait()
            item = await self._next()
            if item is None:
                return
            slot = manager.slot()
            # With a synchronous input this worker is the batch's one waiter (nothing awaited
            # since the loop above), and the operation it waits with may be handed on.
            ahead = False
            try:
                try:
                    slot.acquire_nowait()
                except anyio.WouldBlock:
                    if passing:
                        ahead = True
                        self._ahead = item
                        self._waiting_slot = slot
                    self._slot_waiter = waiter = anyio.Event()
                    try:
                        await slot.acquire()
                    finally:
                        self._slot_waiter = None
                        self._waiting_slot = None
                        waiter.set()
            except Exception as exc:
                # Refused (ResourceExhaustedError when unhealthy): the operation fails without
                # running, and the worker goes on.
                index = self._take_ahead(item, ahead)[0]
                await self._finish(index, FAILED, None, exc, 0.0, 0)
                continue
            except BaseException:
                index = self._take_ahead(item, ahead)[0]
                if self._send is None:
                    self._extra[index] = (CANCELLED, None, 0)
                raise
            item = self._take_ahead(item, ahead)  # perhaps a later one: see pass_on below
            # Only a slot acquired afresh can be a new token (the limit grew): one passed on
            # is the same token.
            if self._workers <= manager.limit:
                self._workers += 1
                self._group.start_soon(self._managed_worker, manager)
            if lean:  # the lean loop hands the slot on, and releases it
                await self._lean_loop(-1, None, False, slot, item)
                continue
            passed = False
            while True:
                try:
                    if passed and settle:
                        # As a waiter handed the slot would, start only after every task that
                        # ended in this instant has run: one of them may stop the batch.
                        try:
                            await checkpoint()
                        except BaseException:
                            self._never_started(item[0])
                            raise
                    error = await self._execute(*item)
                except BaseException as exc:  # cancelled: counted neither way, no listener called
                    slot.release(exc)
                    raise
                behind = self._waiting_slot
                if not passing or self._stopped or not can_pass_on(slot, behind):
                    break
                following = self._take()
                if following is None:
                    break
                if behind is None:
                    pass_on(slot, error, clock(), waited=False)
                    item = following
                else:  # run the read-ahead operation; the one just taken is read ahead now
                    pass_on(slot, error, clock(), waited=True)
                    item = self._ahead
                    self._ahead = following
                    assert item is not None
                passed = True
            slot.release(error)  # a listener that raises is logged by the manager

    def _take_ahead(
        self, item: tuple[int, Operation[Any]], ahead: bool
    ) -> tuple[int, Operation[Any]]:
        """The operation a managed worker waited with: the read-ahead one if it was the waiter."""
        if not ahead:
            return item
        taken = self._ahead
        assert taken is not None
        self._ahead = None
        return taken

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
        raise TimeoutError(timed_out(timeout))

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
                if self._timeout is None:
                    value = await self._start(index, op)
                else:
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
        if attempts == 1 and self._send is None and self._on_progress is None:
            # _finish's common case, inlined: this runs once per operation.
            self._completed += 1
            self._durations[index] = clock() - start
            self._values[index] = value
            return None
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
                if not send.offer(outcome):
                    await send.wait_for_room(outcome)
            except anyio.BrokenResourceError:  # the consumer is gone: nobody wants the rest
                self._stop()
            return
        self._durations[index] = duration
        if error is None:
            self._values[index] = value
        if error is not None or attempts != 1:
            self._extra[index] = (status, error, attempts)
        if self._on_progress is not None:
            progress = make_progress(self._total, self._completed, self._failed, self._running)
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
