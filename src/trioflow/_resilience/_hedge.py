"""Hedged calls: start a backup when the first call is slow; the first success wins."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, TypeVarTuple

import anyio

from .._checks import (
    NotAwaitableError,
    check_async_callable,
    check_int,
    check_number,
    is_awaitable,
    not_awaitable,
)

__all__ = ("hedge",)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def check_delay(value: object, name: str = "delay") -> float:
    """Validate a hedging delay: a finite number >= 0.

    Args:
        value: The delay to check.
        name: The argument's name for the error message.

    Returns:
        The delay, as a float.

    Raises:
        TypeError: If it is not a number.
        ValueError: If it is not a finite number >= 0.
    """
    return check_number(value, name, minimum=0)


def check_attempts(value: object, name: str = "max_attempts") -> int:
    """Validate a number of hedged attempts: an int >= 1.

    Args:
        value: The number to check.
        name: The argument's name for the error message.

    Returns:
        The number.

    Raises:
        TypeError: If it is not an int.
        ValueError: If it is not an int >= 1.
    """
    return check_int(value, name, minimum=1)


async def hedge(
    fn: Callable[[*Ts], Awaitable[T]],
    *args: *Ts,
    delay: float,
    max_attempts: int = 2,
) -> T:
    """Call ``fn(*args)``, starting another concurrent attempt each time ``delay`` passes.

    Hedging trades extra load for lower tail latency: if the first call has not finished
    after ``delay`` seconds (say, the service's 95th percentile latency), a second identical
    call starts, and so on up to ``max_attempts`` calls in flight. The first call to succeed
    wins and every other attempt is cancelled. An attempt that fails does not end the hedge:
    the next attempt starts at once (without waiting for the rest of ``delay``), and only
    when every attempt has failed does ``hedge`` raise, with all their exceptions::

        value = await hedge(fetch, url, delay=0.2, max_attempts=3)

    Every attempt runs in a task group scoped by this call, so nothing outlives it;
    cancelling the caller cancels every attempt. Only hedge calls that are safe to repeat
    (idempotent reads, or writes with an idempotency key).

    Args:
        fn: An async function.
        *args: Positional arguments for ``fn`` (use ``functools.partial`` for keywords).
        delay: Seconds to wait for an attempt before starting the next one, >= 0 (0 starts
            every attempt at once).
        max_attempts: The most attempts in total, an int >= 1.

    Returns:
        The value of the first attempt that succeeded.

    Raises:
        ExceptionGroup: If every attempt failed; its exceptions are in attempt order.
        ValueError: If ``delay`` or ``max_attempts`` is out of range (before any attempt).
        TypeError: If ``fn`` is not callable or is a plain ``def`` function (before any
            attempt); or an attempt's call of ``fn`` returned something that cannot be awaited
            (raised at once, by itself: no other attempt starts).
    """
    check_async_callable(fn, "fn")
    check_delay(delay)
    check_attempts(max_attempts)
    errors: list[Exception | None] = [None] * max_attempts
    won: list[T] = []
    # A call of fn whose result cannot be awaited: the caller's bug, which ends the hedge.
    refused: list[NotAwaitableError] = []
    # Each failure lets one more attempt start at once instead of after the delay.
    unanswered_failures = 0
    failed = anyio.Event()

    async def attempt(index: int) -> None:
        nonlocal unanswered_failures
        if won or refused:
            # Another attempt won (or was refused) before this task first ran: it may have
            # been started in that instant, before the cancellation reached the loop.
            return
        try:
            awaitable = fn(*args)
            if not is_awaitable(awaitable):
                raise not_awaitable("fn", awaitable)
            value = await awaitable
        except NotAwaitableError as exc:
            refused.append(exc)
            tg.cancel_scope.cancel()
            return
        except Exception as exc:
            errors[index] = exc
            unanswered_failures += 1
            failed.set()
            return
        if not won:
            won.append(value)
            tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(attempt, 0)
        for index in range(1, max_attempts):
            if not unanswered_failures:
                with anyio.move_on_after(delay):
                    await failed.wait()
            if unanswered_failures:
                unanswered_failures -= 1
            if not unanswered_failures:
                failed = anyio.Event()
            if refused:
                break
            tg.start_soon(attempt, index)
    if refused:
        raise refused[0]
    if won:
        return won[0]
    raise ExceptionGroup(
        f"all {max_attempts} hedged attempts failed", [e for e in errors if e is not None]
    )
