"""``run_on``: call a function for each event of a trigger, bounded, inside one task group.

The trigger is read in the run's own task (the body of its task group) and never waits for a
call: each call runs in a task of the group, so a slow call never delays the trigger (an
``every`` keeps its ticks on time) and what to do with an event that arrives while ``limit``
calls run is the overlap policy's decision, counted in the statistics. No call outlives the
run: leaving it (the trigger ended, a failure with ``fail_fast``, or cancellation) waits for,
or cancels, every call it started.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Generator
from typing import Any, Generic, Literal, TypeVar, final

import anyio
import anyio.abc
import attrs

from .._backend import open_body_group
from .._checks import (
    check_async_callable,
    check_bool,
    check_int,
    describe,
    is_awaitable,
    not_awaitable,
)

__all__ = ("TriggerRun", "TriggerRunStatistics", "run_on")

E = TypeVar("E")
Overlap = Literal["skip", "queue", "cancel"]
_OVERLAPS = ("skip", "queue", "cancel")


@attrs.frozen(kw_only=True)
class TriggerRunStatistics:
    """A snapshot of a :class:`TriggerRun`.

    Every event is counted once in ``events`` and then exactly once as ``started``,
    ``skipped``, ``dropped`` or still ``queued`` (or left unstarted when the run was cancelled).

    Attributes:
        events: Events the trigger delivered.
        started: Calls of ``fn`` that started.
        succeeded: Calls that returned.
        failed: Calls that raised an exception (cancellation is never a failure).
        cancelled: Calls cancelled by ``overlap="cancel"`` to make room for a newer event
            (counted when cancelled, started or not).
        skipped: Events dropped by ``overlap="skip"`` because ``limit`` calls were running.
        dropped: Events dropped by ``overlap="queue"`` because ``max_queued`` were waiting.
        running: Calls running now.
        queued: Events waiting for a call now (``overlap="queue"``).
    """

    events: int
    started: int
    succeeded: int
    failed: int
    cancelled: int
    skipped: int
    dropped: int
    running: int
    queued: int


@final
class _Call:
    __slots__ = ("done", "scope")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()


def _log_failure(event: str, exc: BaseException, **fields: object) -> None:
    import structlog  # here, not at module level: it is slow to import

    structlog.get_logger("trioflow").error(event, exc_info=exc, **fields)


@final
class TriggerRun(Generic[E]):
    """A run of ``fn`` on a trigger's events, made by :func:`run_on`; await it to run it.

    ::

        run = trioflow.run_on(trioflow.every(60), poll, overlap="skip")
        with anyio.move_on_after(3600):
            await run
        print(run.statistics().skipped)

    It runs once (awaiting it again raises ``RuntimeError``); :meth:`statistics` can be read
    at any time, during the run and after it, however it ended.
    """

    __slots__ = (
        "_call_name",
        "_cancelled",
        "_dropped",
        "_error",
        "_events",
        "_fail_fast",
        "_failed",
        "_fn",
        "_group",
        "_limit",
        "_max_queued",
        "_overlap",
        "_queue",
        "_ran",
        "_running",
        "_skipped",
        "_started",
        "_succeeded",
        "_trigger",
    )

    def __init__(
        self,
        trigger: AsyncIterable[E],
        fn: Callable[[E], Awaitable[Any]],
        *,
        limit: int,
        overlap: Overlap,
        max_queued: int,
        fail_fast: bool,
    ) -> None:
        self._trigger = trigger
        self._fn = fn
        self._call_name = getattr(fn, "__qualname__", None) or repr(fn)
        self._limit = limit
        self._overlap = overlap
        self._max_queued = max_queued
        self._fail_fast = fail_fast
        self._running: deque[_Call] = deque()  # oldest first
        self._queue: deque[E] = deque()
        self._group: anyio.abc.TaskGroup | None = None
        self._error: Exception | None = None
        self._ran = False
        self._events = self._started = self._succeeded = self._failed = 0
        self._cancelled = self._skipped = self._dropped = 0

    def __repr__(self) -> str:
        return f"TriggerRun({self._trigger!r}, {self._call_name}, overlap={self._overlap!r})"

    def __await__(self) -> Generator[Any, None, TriggerRunStatistics]:
        return self.run().__await__()

    def statistics(self) -> TriggerRunStatistics:
        """Return a snapshot of the run's counters.

        Returns:
            A frozen :class:`TriggerRunStatistics`.
        """
        return TriggerRunStatistics(
            events=self._events,
            started=self._started,
            succeeded=self._succeeded,
            failed=self._failed,
            cancelled=self._cancelled,
            skipped=self._skipped,
            dropped=self._dropped,
            running=len(self._running),
            queued=len(self._queue),
        )

    async def run(self) -> TriggerRunStatistics:
        """Read the trigger and call ``fn`` for its events until the trigger ends.

        The same as awaiting the run; for ``task_group.start_soon(run.run)``.

        Returns:
            The final statistics, once the trigger ended and every call finished.

        Raises:
            RuntimeError: The run was run before.
            Exception: With ``fail_fast``, the first exception a call raised (the trigger
                stops and the other calls are cancelled); otherwise whatever reading the
                trigger raised.
        """
        if self._ran:
            raise RuntimeError("a run_on(...) run can be awaited once")
        self._ran = True
        iterator = aiter(self._trigger)
        try:
            async with open_body_group() as group:
                self._group = group
                async for event in iterator:
                    self._events += 1
                    self._arrive(event)
        finally:
            self._group = None
            self._queue.clear()
            if inspect.isasyncgen(iterator):  # ours to finish; a channel stays the caller's
                with anyio.CancelScope(shield=True):
                    await iterator.aclose()
        if self._error is not None:
            raise self._error
        return self.statistics()

    def _arrive(self, event: E) -> None:
        running = self._running
        if len(running) < self._limit:
            self._launch(event, None)
        elif self._overlap == "skip":
            self._skipped += 1
        elif self._overlap == "queue":
            if len(self._queue) < self._max_queued:
                self._queue.append(event)
            else:
                self._dropped += 1
        else:  # cancel the oldest running call; the new one starts once it has finished
            victim = running.popleft()
            victim.scope.cancel()
            self._cancelled += 1
            self._launch(event, victim.done)

    def _launch(self, event: E, after: anyio.Event | None) -> None:
        call = _Call()
        self._running.append(call)
        assert self._group is not None
        self._group.start_soon(self._call, call, event, after)

    async def _call(self, call: _Call, event: E, after: anyio.Event | None) -> None:
        try:
            with call.scope:
                if after is not None:
                    await after.wait()
                self._started += 1
                try:
                    result = self._fn(event)
                    if not is_awaitable(result):
                        raise not_awaitable("fn", result)
                    await result
                except Exception as exc:
                    self._fail(exc, event)
                else:
                    self._succeeded += 1
        finally:
            call.done.set()
            if call in self._running:  # not if the overlap policy cancelled it (taken out)
                self._running.remove(call)
        # Here only when the call ended by itself: a cancelled run starts nothing new.
        group = self._group
        if self._queue and group is not None and not group.cancel_scope.cancel_called:
            self._launch(self._queue.popleft(), None)

    def _fail(self, exc: Exception, event: E) -> None:
        self._failed += 1
        _log_failure("trioflow.trigger.call_failed", exc, fn=self._call_name, trigger_event=event)
        if self._fail_fast and self._error is None:
            self._error = exc
            if self._group is not None:
                self._group.cancel_scope.cancel()


def run_on(
    trigger: AsyncIterable[E],
    fn: Callable[[E], Awaitable[Any]],
    *,
    limit: int = 1,
    overlap: Overlap = "skip",
    max_queued: int = 1,
    fail_fast: bool = False,
) -> TriggerRun[E]:
    """Call ``fn(event)`` for each event of a trigger, at most ``limit`` at a time.

    ::

        await trioflow.run_on(trioflow.every(3600), lambda _: run_workflow(wf, store=store))

    The calls run in the run's own task group, so none outlives it. An event that arrives
    while ``limit`` calls are running is handled by ``overlap``:

    * ``"skip"``: dropped, and counted in ``skipped``;
    * ``"queue"``: kept until a call finishes, at most ``max_queued`` of them (first in, first
      out); one more is dropped and counted in ``dropped``;
    * ``"cancel"``: the oldest running call is cancelled (counted in ``cancelled``) and the
      new one starts as soon as it has finished unwinding.

    A call that raises an exception is logged (structlog, ``trioflow.trigger.call_failed``)
    and counted in ``failed``, and the run goes on, unless ``fail_fast``: then the trigger
    stops, the other calls are cancelled and the exception is raised. Cancellation is never a
    failure. When the trigger ends, the run waits for the running and queued calls.

    Args:
        trigger: Any async iterable: :func:`every`, :func:`cron`, :func:`file_changes`, a
            memory channel's receive end, an async generator.
        fn: An async callable of one argument, the event (a lambda returning a coroutine
            works too).
        limit: The most calls running at once, an int >= 1.
        overlap: ``"skip"``, ``"queue"`` or ``"cancel"``.
        max_queued: With ``overlap="queue"``, the most events kept waiting, an int >= 1.
        fail_fast: Whether the first failing call stops the run.

    Returns:
        A :class:`TriggerRun`: await it (``await run_on(...)``) to run, read its
        ``statistics()`` at any time.

    Raises:
        TypeError: ``trigger`` is not an async iterable, ``fn`` not an async callable, or an
            option of the wrong type.
        ValueError: An option out of range.
    """
    if not hasattr(trigger, "__aiter__"):
        raise TypeError(f"trigger must be an async iterable, got {describe(trigger)}")
    check_async_callable(fn, "fn")
    check_int(limit, "limit", minimum=1)
    if not isinstance(overlap, str):
        raise TypeError(f"overlap must be 'skip', 'queue' or 'cancel', got {describe(overlap)}")
    if overlap not in _OVERLAPS:
        raise ValueError(f"overlap must be 'skip', 'queue' or 'cancel', got {describe(overlap)}")
    check_int(max_queued, "max_queued", minimum=1)
    check_bool(fail_fast, "fail_fast")
    return TriggerRun(
        trigger, fn, limit=limit, overlap=overlap, max_queued=max_queued, fail_fast=fail_fast
    )
