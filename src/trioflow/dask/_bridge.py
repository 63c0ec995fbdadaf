"""The bridge between an event loop and a Dask client: two helper threads, one handoff.

Dask's asynchronous client needs an asyncio loop of its own, so trioflow uses the synchronous
``distributed.Client``, whose IO loop runs in a background thread. Nothing here blocks the
event loop:

* an operation creates a :class:`Pending` and queues it (:meth:`Bridge.submit`); the
  *submitter* thread takes whatever is queued and submits it in one ``client.map`` call
  (building and pickling a task costs about half a millisecond of Python: a thousand
  submissions made on the loop would stall it for half a second);
* the *collector* thread iterates ``distributed.as_completed(with_results=True)``, which
  fetches the results on the client's IO loop, and hands each finished batch to the event
  loop through :func:`trioflow._backend.loop_caller` (``future.result()`` called on the
  event loop's thread round-trips through the client's loop and stalls it);
* a cancelled operation releases its future (:meth:`Bridge.cancel`, non-blocking): the
  scheduler forgets the task, a queued one never starts, and the worker marks a running one
  cancelled (which an ``async def`` or an isolated function notices; see ``_worker``).

Statistics are counted on the event loop's thread only, so they need no lock; the registry
of submitted futures is shared with the threads under one lock held for a few lines.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final, final

import anyio
import attrs
import distributed

from ._errors import WorkerLostError
from ._worker import RemoteCall, run_call

__all__ = ("Bridge", "ClusterStatistics", "Pending")

_BATCH: Final = 50
"""The most calls the submitter hands to one ``client.map``."""

_STOP: Final = object()


@final
@attrs.frozen(kw_only=True)
class ClusterStatistics:
    """A snapshot of the work a :class:`~trioflow.dask.Cluster` handed to its cluster.

    Attributes:
        submitted: Calls handed to the cluster (each attempt of a retried operation counts).
        in_flight: Calls waiting for their result now (queued, waiting for a worker, or
            running).
        succeeded: Calls whose value came back.
        failed: Calls whose function raised (or whose arguments could not be sent).
        lost: Calls whose worker died under them, or that the cluster dropped
            (:class:`~trioflow.dask.WorkerLostError`).
        cancelled: Calls cancelled by the caller (a timeout, a cancel scope, a ``fail_fast``
            stop) before their result came back.
    """

    submitted: int
    in_flight: int
    succeeded: int
    failed: int
    lost: int
    cancelled: int


@final
class Pending:
    """One call on its way to the cluster and back (event loop side).

    Attributes:
        call: What runs on the worker.
        done: Set on the event loop when the outcome is in.
        future: The Dask future, once submitted (set by the submitter, under the lock).
        cancelled: Whether the caller gave up on it (set under the lock).
    """

    __slots__ = ("_error", "_value", "call", "cancelled", "done", "future")

    def __init__(self, call: RemoteCall) -> None:
        self.call = call
        self.done = anyio.Event()
        self.future: Any = None  # a distributed.Future (untyped)
        self.cancelled = False
        self._value: Any = None
        self._error: BaseException | None = None

    def settle(self, value: Any, error: BaseException | None) -> None:
        """Record the outcome and wake the operation (on the event loop's thread)."""
        self._value = value
        self._error = error
        self.done.set()

    def outcome(self) -> Any:
        """Return the value, or raise the exception, that came back."""
        error = self._error
        if error is not None:
            self._error = None  # no cycle through the traceback
            raise error
        return self._value


def _closed_error() -> RuntimeError:
    return RuntimeError("the Dask cluster is closed: open_cluster()'s block has ended")


def _lost(key: str, cause: BaseException | None, what: str) -> WorkerLostError:
    error = WorkerLostError(f"task {key!r}: {what}")
    error.__cause__ = cause
    return error


@final
class Bridge:
    """The threads between one event loop and one Dask client (internal to trioflow.dask).

    Args:
        client: A connected synchronous ``distributed.Client``.
        call_soon: The event loop's thread-safe handoff (``_backend.loop_caller()``).
    """

    def __init__(self, client: distributed.Client, call_soon: Callable[..., object]) -> None:
        self._client: Any = client  # untyped: its methods are called through Any
        self._call_soon = call_soon
        self._requests: queue.SimpleQueue[list[Pending] | object] = queue.SimpleQueue()
        self._outbox: list[Pending] = []  # submitted on the loop, not handed over yet
        self._lock = threading.Lock()
        self._registry: dict[str, Pending] = {}  # key -> pending, while in flight
        self._completed: Any = distributed.as_completed(  # type: ignore[no-untyped-call]
            loop=client.loop, with_results=True, raise_errors=False
        )
        self._wake = threading.Event()
        self._closing = False
        self._threads = (
            threading.Thread(
                target=self._guarded,
                args=(self._submit_loop,),
                name="trioflow-dask-submit",
                daemon=True,  # always joined; daemon in case the interpreter dies first
            ),
            threading.Thread(
                target=self._guarded,
                args=(self._collect_loop,),
                name="trioflow-dask-collect",
                daemon=True,
            ),
        )
        self._submitted = self._succeeded = self._failed = self._lost = self._cancelled = 0
        self._in_flight = 0
        self._closed = False
        self._prefix = uuid.uuid4().hex
        self._count = itertools.count()

    def start(self) -> None:
        """Start the two threads."""
        for thread in self._threads:
            thread.start()

    # --- the event loop's side -------------------------------------------------------------

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        is_async: bool,
        isolate: bool,
    ) -> Pending:
        """Queue one call for the cluster; returns at once.

        Raises:
            RuntimeError: The cluster is closed.
        """
        if self._closed:
            raise _closed_error()
        name = getattr(fn, "__name__", None) or type(fn).__name__
        # Unique on the cluster: this bridge's random prefix, and a count (no syscall per key).
        key = f"{name}-{self._prefix}-{next(self._count)}"
        pending = Pending(
            RemoteCall(fn, args, kwargs, is_async=is_async, isolate=isolate, key=key)
        )
        self._submitted += 1
        self._in_flight += 1
        self._outbox.append(pending)
        if len(self._outbox) == 1:
            # Handed to the submitter once the loop has run what is ready now: a batch that
            # starts a thousand operations in one go wakes it once, not in the middle.
            self._call_soon(self._flush)
        return pending

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if self._closed:  # the block ended meanwhile: the submitter is stopping
            self._settle_all([(pending, None, _closed_error()) for pending in outbox])
        else:
            self._requests.put(outbox)

    def cancel(self, pending: Pending) -> None:
        """Give up on a call: release its future, so the cluster drops the task (non-blocking)."""
        with self._lock:
            if pending.cancelled or pending.done.is_set():
                return
            pending.cancelled = True
            future = pending.future
            if future is not None:
                self._registry.pop(future.key, None)
        if future is not None:
            future.release()  # a callback on the client's loop, never a wait
        self._cancelled += 1
        self._in_flight -= 1

    def statistics(self) -> ClusterStatistics:
        """Return the counters (on the event loop's thread)."""
        return ClusterStatistics(
            submitted=self._submitted,
            in_flight=self._in_flight,
            succeeded=self._succeeded,
            failed=self._failed,
            lost=self._lost,
            cancelled=self._cancelled,
        )

    def _settle_all(self, outcomes: list[tuple[Pending, Any, BaseException | None]]) -> None:
        # On the event loop, from the collector (or the submitter, for a call it could not
        # send). A call cancelled meanwhile was counted then; its outcome is dropped.
        for pending, value, error in outcomes:
            if pending.cancelled or pending.done.is_set():
                continue
            self._in_flight -= 1
            if error is None:
                self._succeeded += 1
            elif isinstance(error, WorkerLostError):
                self._lost += 1
            else:
                self._failed += 1
            pending.settle(value, error)

    def refuse_new_calls(self) -> None:
        """Refuse calls from now on (on the event loop's thread, before :meth:`close`)."""
        self._closed = True

    def close(self) -> None:
        """Stop and join the threads (blocking: run it in a worker thread).

        A call still in flight (an operation awaited outside the cluster's block) is released
        on the cluster and fails with ``RuntimeError``.
        """
        self._closed = True
        self._requests.put(_STOP)
        self._threads[0].join()
        left: list[Pending] = []
        while True:  # what was queued behind the stop
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, list):
                left.extend(item)
        with self._lock:
            left.extend(self._registry.values())
            self._registry.clear()
        for pending in left:
            if pending.future is not None:
                pending.future.release()
        if left:
            self._hand_over([(pending, None, _closed_error()) for pending in left])
        self._closing = True
        self._wake.set()
        self._threads[1].join()

    def _guarded(self, loop: Callable[[], None]) -> None:
        # A bug in a helper thread must not leave operations waiting forever: fail them all.
        try:
            loop()
        except BaseException as exc:
            self._closed = True
            with self._lock:
                left = list(self._registry.values())
                self._registry.clear()
            error = RuntimeError(f"trioflow.dask's helper thread failed: {exc!r}")
            error.__cause__ = exc
            self._hand_over([(pending, None, error) for pending in left])
            raise

    # --- the submitter thread ----------------------------------------------------------------

    def _submit_loop(self) -> None:
        while True:
            item = self._requests.get()
            if item is _STOP:
                return
            assert isinstance(item, list)
            for start in range(0, len(item), _BATCH):
                self._send(item[start : start + _BATCH])

    def _send(self, batch: list[Pending]) -> None:
        with self._lock:
            batch = [pending for pending in batch if not pending.cancelled]
        if not batch:
            return
        try:
            futures: list[Any] = self._client.map(
                run_call, [p.call for p in batch], key=[p.call.key for p in batch], pure=False
            )
        except Exception as exc:
            if len(batch) > 1:  # find which call cannot be sent: the others go on
                for pending in batch:
                    self._send([pending])
                return
            self._hand_over([(batch[0], None, _unsendable(batch[0].call, exc))])
            return
        tracked = []
        for pending, future in zip(batch, futures, strict=True):
            with self._lock:
                if pending.cancelled:
                    future.release()
                    continue
                pending.future = future
                self._registry[future.key] = pending
            tracked.append(future)
        self._completed.update(tracked)
        self._wake.set()

    # --- the collector thread ----------------------------------------------------------------

    def _collect_loop(self) -> None:
        completed = self._completed
        while True:
            try:
                batch = completed.next_batch(block=True)
            except StopIteration:  # nothing in flight
                if self._closing:
                    return
                self._wake.wait()
                self._wake.clear()
                continue
            outcomes = []
            for future, result in batch:
                with self._lock:
                    pending = self._registry.pop(future.key, None)
                if pending is not None:  # read the status before the release changes it
                    outcomes.append(_outcome(pending, future, result))
                future.release()  # the value is here now: let the worker free its memory
            if outcomes:
                self._hand_over(outcomes)

    def _hand_over(self, outcomes: list[tuple[Pending, Any, BaseException | None]]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has ended: nobody waits any more
            self._call_soon(self._settle_all, outcomes)


def _unsendable(call: RemoteCall, exc: Exception) -> TypeError:
    root: BaseException = exc
    while root.__cause__ is not None or root.__context__ is not None:
        inner = root.__cause__ or root.__context__
        assert inner is not None
        root = inner
    name = getattr(call.fn, "__qualname__", call.fn)
    error = TypeError(f"the call of {name} cannot be sent to the Dask cluster: {root}")
    error.__cause__ = exc
    return error


def _outcome(
    pending: Pending, future: Any, result: Any
) -> tuple[Pending, Any, BaseException | None]:
    key = pending.call.key
    status = future.status
    if status == "error" and isinstance(result, tuple) and len(result) == 3:
        _, error, traceback = result
        if isinstance(error, distributed.KilledWorker):
            return pending, None, _lost(key, error, "its worker died while running it")
        if isinstance(error, BaseException):
            return pending, None, error.with_traceback(traceback)
    if isinstance(result, distributed.CancelledError):
        return pending, None, _lost(key, result, f"the cluster dropped it ({result})")
    return pending, result, None
