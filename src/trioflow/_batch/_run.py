"""The batch executor's functions: ``run_batch`` and ``amap``.

The engine behind them is in ``_batch.py``; ``as_completed`` (the streaming form) is in
``_as_completed.py``; ``in_process`` and ``in_thread`` are in ``_workers.py``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable, Sized
from typing import Any, TypeVar

import anyio

from .._checks import check_async_callable
from .._limits import Capacity, ResourceManager
from .._logs import EngineLog, check_logger, open_log
from .._retry import RetryPolicy
from .._telemetry import Instrumentation, hooks
from ._engine import Batch, Operation, Operations, check_operations, validate
from ._outcomes import BatchResult, Progress

__all__ = ("amap", "run_batch")

T = TypeVar("T")
R = TypeVar("R")


async def run_batch(
    operations: Operations[T],
    *,
    limit: int | ResourceManager | Capacity | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - per operation, not for this call
    fail_fast: bool = False,
    retry: RetryPolicy | None = None,
    on_progress: Callable[[Progress], object] | None = None,
    logger: Any = None,
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
            ``functools.partial(fetch, url)`` or ``lambda: fetch(url)``; not coroutines, and
            not plain ``def`` functions: wrap blocking code with :func:`~trioflow.in_thread`).
        limit: The most operations in flight: an int >= 1; None for no limit (every operation
            starts as soon as it is read); or a :class:`~trioflow.ResourceManager`, whose slots
            several batches then share (each operation holds one slot while it runs); or a
            :class:`~trioflow.Capacity` (such as one shared by several processes), whose
            tokens the operations hold the same way.
        timeout: Seconds each operation may take; one past it is cancelled and recorded as
            failed with the builtin ``TimeoutError``. With ``retry``, the timeout applies to
            each attempt, and ``TimeoutError`` is retried if the policy says so. None or
            ``math.inf`` means no deadline.
        fail_fast: False runs everything and collects every failure. True stops at the first
            failure: operations in flight are cancelled (recorded as cancelled, not failed),
            no more are taken from the input, and none starts after the failure, even in the
            same instant (one already taken but not started is recorded cancelled, with 0
            attempts).
        retry: A :class:`~trioflow.RetryPolicy` applied to each operation. An operation waiting
            to retry keeps its slot.
        on_progress: Called with a :class:`~trioflow.Progress` after each operation succeeds
            or fails; after a ``fail_fast`` stop, once more when every operation has ended,
            with the cancelled ones counted (``Progress.cancelled``). It runs in the batch's
            task, so keep it quick.
        logger: Where to write a ``batch started`` event (``total``, None for an input of
            unknown length, and ``limit``) and a ``batch completed`` one (``total``,
            ``succeeded``, ``failed``, ``cancelled``, ``limit``, ``duration``); or ``batch
            cancelled`` / ``batch aborted`` (``error_type``, ``duration``) when the call
            raises. A stdlib :class:`logging.Logger` or any structlog logger, at info level
            (asked once per batch: nothing is built when it is off). None (the default)
            writes nothing and costs nothing.

    Returns:
        A :class:`~trioflow.BatchResult` with every operation's outcome, in input order.

    Raises:
        TypeError: An argument has the wrong type; or the operation at some index is not
            callable, is a plain ``def`` function (refused before it is called, so its side
            effects never happen), or returned something that cannot be awaited (a lambda
            returning an int: it is never retried, never called again, and not recorded as a
            failure). That is found when the operation is reached (the input is read lazily):
            the batch is then cancelled and the error, naming the index, is raised, so bad
            input is never lost among the outcomes.
        ValueError: ``limit`` < 1, or ``timeout`` negative or NaN.
        Exception: Whatever the operations iterable itself raised, or ``on_progress`` raised:
            the batch is cancelled and the exception propagates, with a note saying where it
            came from.
    """
    checked_limit, checked_timeout = validate(
        operations, limit, timeout, fail_fast, retry, on_progress
    )
    log = open_log(check_logger(logger))
    make = functools.partial(
        Batch,
        limit=checked_limit,
        timeout=checked_timeout,
        fail_fast=fail_fast,
        retry=retry,
        on_progress=on_progress,
    )
    telemetry = hooks.current
    if telemetry is not None:  # the one branch telemetry costs a batch while it is off
        return await _traced_batch(telemetry, log, operations, checked_limit, make)
    batch = make(operations)
    if log is not None:
        return await _run_logged(batch, log, operations, checked_limit)
    duration = await batch.run()
    return batch.result(duration)


# --- telemetry: the batch's span (trioflow.telemetry.enable) --------------------------------


async def _traced_batch(
    telemetry: Instrumentation,
    log: EngineLog | None,
    operations: Operations[T],
    limit: int | ResourceManager | None,
    make: Callable[[Operations[T]], Batch],
) -> BatchResult[T]:
    """Run the batch in a ``trioflow.batch`` span; its counts are recorded as it ends."""
    most = limit.limit if isinstance(limit, ResourceManager) else limit
    attributes = {} if most is None else {"trioflow.batch.limit": most}
    with telemetry.span("trioflow.batch", attributes) as span:
        if telemetry.trace_operations:
            operations = telemetry.traced(operations)
        batch = make(operations)
        result: BatchResult[T]
        if log is not None:
            result = await _run_logged(batch, log, operations, limit)
        else:
            result = batch.result(await batch.run())
        telemetry.batch_ended(
            span,
            succeeded=result.succeeded,
            failed=result.failed,
            cancelled=result.cancelled,
            duration=result.duration,
            durations=batch.durations(),
        )
    return result


async def _run_logged(
    batch: Batch, log: EngineLog, operations: object, limit: int | ResourceManager | None
) -> BatchResult[Any]:
    """Run ``batch`` between its ``batch started`` and ``batch completed`` events."""
    total = len(operations) if isinstance(operations, Sized) else None
    slots = limit.limit if isinstance(limit, ResourceManager) else limit
    log.info("batch started", total=total, limit=slots)
    started = anyio.current_time()
    try:
        duration = await batch.run()
    except BaseException as exc:
        cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
        log.info(
            "batch cancelled" if cancelled else "batch aborted",
            error_type=type(exc).__qualname__,
            duration=anyio.current_time() - started,
        )
        raise
    result = batch.result(duration)
    log.info(
        "batch completed",
        total=result.total,
        succeeded=result.succeeded,
        failed=result.failed,
        cancelled=result.cancelled,
        limit=slots,
        duration=result.duration,
    )
    return result


async def _bind(
    fn: Callable[[Any], Awaitable[R]], items: AsyncIterable[Any]
) -> AsyncGenerator[Operation[R], None]:
    async for item in items:
        yield functools.partial(fn, item)


async def amap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    limit: int | ResourceManager | Capacity | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - per operation, not for this call
) -> list[R]:
    """Call ``fn`` on every item concurrently; return the results in the items' order.

    Example::

        sizes = await trioflow.amap(download_size, urls, limit=8)

    Args:
        fn: An async function of one argument (or a callable returning an awaitable).
        items: An iterable or async iterable of arguments, read lazily.
        limit: The most calls in flight (an int >= 1, None, a ResourceManager or a
            Capacity), as for :func:`run_batch`.
        timeout: Seconds each call may take; one past it fails with ``TimeoutError``. None
            or ``math.inf`` means no deadline.

    Returns:
        ``[await fn(item) for item in items]``, computed concurrently.

    Raises:
        ExceptionGroup: A call failed: the first failure cancels the calls in flight and no
            more start, not even in the same instant. The group holds the failures, each with
            a note naming its index.
        TypeError: ``fn`` is not callable or is a plain ``def`` function (refused before any
            call), or another argument has the wrong type; or a call of ``fn`` returned
            something that cannot be awaited (the calls are cancelled and the error, naming
            the index, is raised by itself).
        ValueError: ``limit`` or ``timeout`` is out of range.
    """
    check_async_callable(fn, "fn", "an async callable of one argument")
    check_operations(items, "items")
    validate(items, limit, timeout)
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
