"""Progress notifications from code that reports synchronously (a batch, a workflow run).

``async with open_progress(send) as report`` gives a plain ``report(done, total, message)``
function; a task of the block sends each report to the client, in order, through an unbounded
channel (a call reports a bounded number of events), and sends what is left when the block
ends normally. Nothing outlives the block.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from .._backend import open_body_group

__all__ = ("Progress", "Report", "open_progress")

Progress = Callable[[float, float | None, str | None], Awaitable[None]]
"""``await progress(done, total, message)``: one MCP progress notification."""

Report = Callable[[float, float | None, str], None]
"""``report(done, total, message)``: queue one progress notification."""


@contextlib.asynccontextmanager
async def open_progress(progress: Progress) -> AsyncIterator[Report]:
    """Yield a synchronous ``report`` whose calls reach ``progress`` in order."""
    send, receive = anyio.create_memory_object_stream[tuple[float, float | None, str]](math.inf)

    async def forward() -> None:
        with receive:
            async for done, total, message in receive:
                await progress(done, total, message)

    def report(done: float, total: float | None, message: str) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            send.send_nowait((done, total, message))

    async with open_body_group() as tg:  # the block's own errors come out as themselves
        tg.start_soon(forward)
        with send:  # closed on the way out: forward() sends what is left, then ends
            yield report
