"""Streaming: stages and tools that yield chunks while a request is in flight.

A streaming stage (or tool) is an async generator function. :func:`drain` runs one, handing
each chunk to a sink as it is produced and collecting them all (the stage's value). A
:class:`RequestStream` is what ``coordinator.stream(request)`` yields: the chunks of the
request's streaming stages, read from a bounded memory channel (a slow reader holds the stages
back), ending when the request reaches its terminal state; its :attr:`RequestStream.result`
is then the :class:`~trioflow.lifecycle.ProcessingResult`.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ._request import ProcessingResult

__all__ = ("ChunkSink", "RequestStream", "drain", "is_streaming")

ChunkSink = Callable[[Any], Awaitable[object]]
"""``await on_chunk(chunk)``: where a streaming stage's or tool's chunks go, one at a time."""


def is_streaming(fn: object) -> bool:
    """Whether ``fn`` is an async generator function (a streaming stage or tool)."""
    return inspect.isasyncgenfunction(fn) or inspect.isasyncgenfunction(
        inspect.unwrap(fn)  # type: ignore[arg-type]
    )


async def drain(chunks: AsyncIterator[Any], on_chunk: ChunkSink | None) -> list[Any]:
    """Hand every chunk of an async generator to ``on_chunk`` as it comes; return them all.

    The generator is closed (``aclose()``) on any exit, so its ``finally`` blocks run at
    once, in the caller's task and under its cancel scopes, not whenever it is collected.
    """
    collected: list[Any] = []
    try:
        async for chunk in chunks:
            collected.append(chunk)
            if on_chunk is not None:
                await on_chunk(chunk)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    return collected


@final
class RequestStream:
    """The chunks of one request in flight, then its result.

    Yielded by :meth:`Coordinator.stream <trioflow.lifecycle.Coordinator.stream>`; iterate
    it with ``async for``. Iteration ends when the request has reached its terminal state,
    whatever it is (a failed or cancelled request ends the iteration too; read
    :attr:`result`). Not constructed directly.
    """

    __slots__ = ("_receive", "_result", "request_id")

    def __init__(self, request_id: str, receive: MemoryObjectReceiveStream[Any]) -> None:
        self.request_id = request_id
        self._receive = receive
        self._result: ProcessingResult | None = None

    def __repr__(self) -> str:
        state = "finished" if self._result is not None else "in flight"
        return f"RequestStream(request_id={self.request_id!r}, {state})"

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Any:
        """Return the next chunk, waiting for it.

        Raises:
            StopAsyncIteration: The request has reached its terminal state.
        """
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):  # the request ended
            raise StopAsyncIteration from None

    def finish(self, result: ProcessingResult) -> None:
        """Record the request's result (the coordinator calls it when the request ends)."""
        self._result = result

    @property
    def done(self) -> bool:
        """Whether the request has reached its terminal state."""
        return self._result is not None

    @property
    def result(self) -> ProcessingResult:
        """The request's :class:`~trioflow.lifecycle.ProcessingResult`, once it has ended.

        Raises:
            RuntimeError: The request has not reached its terminal state yet.
        """
        if self._result is None:
            raise RuntimeError(
                f"request {self.request_id!r} is still in flight: read every chunk first"
            )
        return self._result
