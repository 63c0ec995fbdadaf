"""The bounded queue between ``as_completed``'s workers and its one consumer.

It has the few members of anyio's memory object streams that ``as_completed`` uses, with the
same meaning (``send_nowait`` raises ``WouldBlock`` when full, ``send`` waits for room, the
consumer's ``receive`` waits for an outcome and raises ``EndOfStream`` once the producers have
closed and every outcome was taken, a producer gets ``BrokenResourceError`` once the consumer
has left), at a fraction of the cost per item: a deque, and an event only when someone has to
wait. A memory stream pair costs about six times a deque's append and pop, which is a tenth of
an ``as_completed`` operation's whole budget.

Waiting producers are served first come, first served: as the consumer takes an item, the
oldest waiting producer's item moves into the queue and that producer is woken (as anyio's
streams do), so a producer waits at most once per item.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar, final

import anyio

__all__ = ("Handoff",)

T = TypeVar("T")


@final
class Handoff(Generic[T]):
    """A bounded first-in, first-out queue from any number of tasks to one consumer task."""

    __slots__ = ("_buffer", "_capacity", "_closed", "_consumer", "_gone", "_producers")

    def __init__(self, capacity: int) -> None:
        self._buffer: deque[T] = deque()
        self._capacity = capacity
        self._consumer: anyio.Event | None = None  # set when an item comes or the end does
        # Producers waiting for room, in arrival order, with their items; each event is set
        # once its item is in the queue.
        self._producers: dict[anyio.Event, T] = {}
        self._closed = False  # the producers are done
        self._gone = False  # the consumer has left

    # -- the producers' side ------------------------------------------------------------------

    def send_nowait(self, item: T) -> None:
        """Queue ``item`` now.

        Raises:
            anyio.WouldBlock: The queue is full.
            anyio.BrokenResourceError: The consumer has left.
        """
        if self._gone:
            raise anyio.BrokenResourceError
        if len(self._buffer) >= self._capacity:
            raise anyio.WouldBlock
        self._buffer.append(item)
        consumer = self._consumer
        if consumer is not None:
            self._consumer = None
            consumer.set()

    async def send(self, item: T) -> None:
        """Queue ``item``, waiting for room.

        A waiting producer's item is moved into the queue by the consumer as it takes one
        out, so it never has to compete again for the place it waited for.

        Raises:
            anyio.BrokenResourceError: The consumer has left.
        """
        try:
            self.send_nowait(item)
        except anyio.WouldBlock:
            pass
        else:
            return
        room = anyio.Event()
        self._producers[room] = item
        try:
            await room.wait()
        except BaseException:
            self._producers.pop(room, None)  # not moved in yet: withdrawn
            raise
        if self._gone:
            raise anyio.BrokenResourceError

    def close(self) -> None:
        """Say the producers are done: the consumer gets ``EndOfStream`` after the last item."""
        self._closed = True
        consumer = self._consumer
        if consumer is not None:
            self._consumer = None
            consumer.set()

    # -- the consumer's side ------------------------------------------------------------------

    def receive_nowait(self) -> T:
        """Take the oldest item now.

        Raises:
            anyio.WouldBlock: The queue is empty and the producers are not done.
            anyio.EndOfStream: The queue is empty and the producers are done.
        """
        buffer = self._buffer
        if buffer:
            item = buffer.popleft()
            producers = self._producers
            if producers:
                room = next(iter(producers))
                buffer.append(producers.pop(room))
                room.set()
            return item
        if self._closed:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def receive(self) -> T:
        """Take the oldest item, waiting for one.

        Raises:
            anyio.EndOfStream: The producers are done and every item was taken.
        """
        while True:
            try:
                return self.receive_nowait()
            except anyio.WouldBlock:
                pass
            self._consumer = arrived = anyio.Event()
            await arrived.wait()

    def leave(self) -> None:
        """Say the consumer has left: each producer, waiting or not, gets a broken resource."""
        self._gone = True
        self._buffer.clear()
        producers, self._producers = self._producers, {}
        for room in producers:
            room.set()
