"""The few event-loop primitives the batch engine needs, bound to the running backend.

On trio, the engine uses trio's nursery, clock and cancel scopes directly: anyio >= 4.14 wraps
every ``start_soon`` in a handle, which makes an unbounded batch (one task per operation)
1.6-2.6x slower. On any other backend it uses anyio's. The engine runs the same code on both;
only these primitives differ, and every test runs on both backends.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Protocol, final

import anyio
import anyio.lowlevel

__all__ = ("Backend", "CancelScope", "TaskGroup", "current_backend")


class CancelScope(Protocol):
    @property
    def cancelled_caught(self) -> bool: ...

    def cancel(self) -> None: ...


class TaskGroup(Protocol):
    @property
    def cancel_scope(self) -> CancelScope: ...

    def start_soon(self, fn: Callable[..., Awaitable[Any]], /, *args: Any) -> object: ...


@final
class Backend:
    """The handful of primitives the engine needs, bound to the running event loop."""

    __slots__ = ("checkpoint", "checkpoint_if_cancelled", "clock", "move_on_after", "open_group")

    def __init__(
        self,
        open_group: Callable[[], AbstractAsyncContextManager[TaskGroup]],
        move_on_after: Callable[[float], AbstractContextManager[CancelScope]],
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


def current_backend() -> Backend:
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_task():
        clock = trio.lowlevel.current_clock()
        timer: Callable[[], float] = clock.current_time
        if type(clock).__qualname__ == "SystemClock" and type(clock).__module__.startswith("trio"):
            # trio's default clock reads offset + perf_counter(), and the engine only ever
            # subtracts two readings: read perf_counter directly, a C call instead of a method.
            timer = time.perf_counter
        return Backend(
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
    return Backend(
        anyio.create_task_group,  # type: ignore[arg-type]
        anyio.move_on_after,
        anyio.lowlevel.checkpoint,
        anyio.lowlevel.checkpoint_if_cancelled,
        timer,
    )
