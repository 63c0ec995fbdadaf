"""``as_completed``: a batch's outcomes handed out in completion order, with backpressure."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from .._backend import cancel_probe, current_backend
from .._limits import ResourceManager
from .._retry import RetryPolicy
from ._engine import Batch, Operations, validate
from ._handoff import Handoff
from ._outcomes import Outcome

__all__ = ("as_completed",)

T = TypeVar("T")

# The channel between as_completed's operations and its consumer holds min(limit, this)
# outcomes (this many without an int limit); a slow consumer holds the operations back once it
# is full. About one outcome per worker lets a whole scheduling round of outcomes through; a
# smaller buffer makes the workers wait on the consumer every round (bench/executor.py).
_AS_COMPLETED_BUFFER = 256


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
    in flight, and none starts after that. Every outcome is handed out, failures included
    (there is no fail-fast).

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
            yields a failed outcome with ``TimeoutError``. None or ``math.inf`` means no
            deadline.
        retry: A :class:`~trioflow.RetryPolicy` applied to each operation.

    Returns:
        An async context manager; entering it gives an async iterator of
        :class:`~trioflow.Outcome` in completion order.

    Raises:
        TypeError: An argument has the wrong type, or an operation is not callable, is a plain
            ``def`` function or returned something that cannot be awaited (raised by the
            iteration once the outcomes before it are handed out, or when the block exits).
        ValueError: ``limit`` or ``timeout`` is out of range.
        Exception: Whatever the operations iterable raised, handed out the same way.
    """
    checked_limit, checked_timeout = validate(operations, limit, timeout, retry=retry)
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
    backend = current_backend()
    # Each outcome handed out is a cancellation point (the probe, where the loop has one,
    # spares the check's coroutine while nothing is cancelled).
    handoff = Handoff[Outcome[T]](
        buffer,
        backend.event,
        checkpoint_if_cancelled=backend.checkpoint_if_cancelled,
        cancelled=cancel_probe(),
    )
    batch = Batch(
        operations,
        limit=checked_limit,
        timeout=checked_timeout,
        fail_fast=False,
        retry=retry,
        on_progress=None,
        send=handoff,
    )

    async def drive() -> None:
        error: Exception | None = None
        try:
            await batch.run()
        except Exception as exc:
            error = exc
        finally:
            handoff.close(error)  # the iteration ends with the input's error, if any

    body_error: Exception | None = None
    try:
        async with backend.open_group() as group:
            group.start_soon(drive)
            try:
                yield handoff
            except Exception as exc:
                # Re-raised below, once the operations are cancelled, as itself rather than
                # wrapped in the task group's ExceptionGroup.
                body_error = exc
            finally:
                batch.stop()  # nothing more starts, even a task already given its turn
                group.cancel_scope.cancel()
    finally:
        handoff.leave()
    if body_error is not None:
        raise body_error
    error = handoff.unraised()  # the body left before the iteration reached the error
    if error is not None:
        raise error
