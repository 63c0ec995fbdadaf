"""A capacity limiter whose waiters are served by priority: the token queue of every limit.

trio's and anyio's ``CapacityLimiter`` serve waiters first come, first served, and that is all
they can do. A :class:`ResourceManager` needs more: when a token frees, the waiter with the
highest priority gets it, waiters of equal priority first in, first out, and optionally a
waiter rises one priority step for every ``aging`` seconds it has waited, so that low-priority
work is never starved. :class:`PriorityLimiter` is that limiter, with the borrower-based
interface of trio's (``acquire_on_behalf_of_nowait``, ``acquire_on_behalf_of``,
``release_on_behalf_of``, a settable ``total_tokens``).

How it works:

* Waiters sit in a heap ordered by ``(-effective priority, arrival)``. With aging, a waiter's
  effective priority at time ``now`` is ``priority + (now - arrival) / aging``; every waiter
  gains at the same rate, so the order between two waiters never changes while they wait, and
  the heap key ``priority - arrival / aging`` is fixed at arrival.
* A freed token is handed to the best waiter at once (the waiter wakes up holding it), so a
  task that arrives later can never take it first, and free tokens and waiters never coexist.
* A cancelled waiter is marked and skipped when it reaches the top of the heap (no O(n)
  removal); one cancelled after it was handed a token passes the token on at once. Either way
  it leaves without a trace.

It is used from one event loop (it is not thread-safe), like anyio's.
"""

from __future__ import annotations

import heapq
from typing import final

import anyio

from ._backend import current_time

__all__ = ("PriorityLimiter",)

# Cancelled waiters are dropped from the heap when it holds more of them than this and more
# than live ones, so memory stays bounded when waiters keep timing out while no token frees.
_COMPACT_AT = 64


@final
class _Waiter:
    __slots__ = ("borrower", "cancelled", "event", "granted", "key", "order")

    def __init__(self, key: float, order: int, borrower: object) -> None:
        self.key = key
        self.order = order
        self.borrower = borrower
        self.event = anyio.Event()
        self.granted = False
        self.cancelled = False

    def __lt__(self, other: _Waiter) -> bool:
        # Highest key first; equal keys in arrival order.
        if self.key != other.key:
            return self.key > other.key
        return self.order < other.order


@final
class PriorityLimiter:
    """A limit of ``total_tokens`` held at once, whose waiters are served by priority.

    Args:
        total_tokens: The most tokens held at once, an int >= 1 (checked by the caller).
        aging: Seconds of waiting that raise a waiter by one priority step, or None for no
            aging.
    """

    __slots__ = (
        "_aging",
        "_arrivals",
        "_borrowers",
        "_cancelled",
        "_total",
        "_waiters",
        "_waiting",
    )

    def __init__(self, total_tokens: int, *, aging: float | None = None) -> None:
        self._total = total_tokens
        self._aging = aging
        self._borrowers: set[object] = set()
        self._waiters: list[_Waiter] = []  # a heap; cancelled ones are skipped when popped
        self._waiting = 0  # waiters neither cancelled nor served
        self._cancelled = 0  # cancelled waiters still in the heap
        self._arrivals = 0

    @property
    def total_tokens(self) -> int:
        """The most tokens held at once; growing it hands the new tokens to waiters at once."""
        return self._total

    @total_tokens.setter
    def total_tokens(self, value: int) -> None:
        self._total = value
        self._hand_out()

    @property
    def borrowed_tokens(self) -> int:
        """How many tokens are held."""
        return len(self._borrowers)

    @property
    def waiting(self) -> int:
        """How many tasks wait for a token."""
        return self._waiting

    def wanted_only_by(self, borrower: object | None) -> bool:
        """Whether a held token may stay with its holder: nobody else wants one.

        That is: no task waits, or only ``borrower`` does (a waiter that was not served yet),
        and the tokens held do not exceed ``total_tokens`` (it was not lowered below them).
        One call on a hot path (a batch handing a slot on), where four would cost a tenth of
        it.
        """
        borrowers = self._borrowers
        waiting = self._waiting
        if waiting and (waiting > 1 or borrower is None or borrower in borrowers):
            return False
        return len(borrowers) <= self._total

    def acquire_on_behalf_of_nowait(self, borrower: object) -> None:
        """Take a token for ``borrower`` now.

        Raises:
            anyio.WouldBlock: No token is free.
            RuntimeError: ``borrower`` holds a token already.
        """
        borrowers = self._borrowers
        if borrower in borrowers:
            raise RuntimeError("this borrower already holds a token of this limiter")
        if len(borrowers) >= self._total:
            raise anyio.WouldBlock
        borrowers.add(borrower)

    async def acquire_on_behalf_of(self, borrower: object, priority: int = 0) -> None:
        """Take a token for ``borrower``, waiting behind every waiter of higher priority.

        It does not yield when a token is free (the caller checkpoints). Cancelled while
        waiting, it takes no token.

        Args:
            borrower: Who holds the token (given back with :meth:`release_on_behalf_of`).
            priority: Larger is served first; equal priorities first come, first served.

        Raises:
            RuntimeError: ``borrower`` holds a token already.
        """
        try:
            self.acquire_on_behalf_of_nowait(borrower)
        except anyio.WouldBlock:
            pass
        else:
            return
        key: float = priority
        if self._aging is not None:
            key = priority - current_time() / self._aging
        self._arrivals += 1
        waiter = _Waiter(key, self._arrivals, borrower)
        heapq.heappush(self._waiters, waiter)
        self._waiting += 1
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.granted:  # handed a token as it was cancelled: pass it on
                self.release_on_behalf_of(borrower)
            else:
                waiter.cancelled = True
                self._waiting -= 1
                self._cancelled += 1
                if self._cancelled > _COMPACT_AT and self._cancelled > self._waiting:
                    self._compact()
            raise

    def release_on_behalf_of(self, borrower: object) -> None:
        """Give back ``borrower``'s token; the best waiter, if any, gets it at once.

        Raises:
            RuntimeError: ``borrower`` holds no token of this limiter.
        """
        try:
            self._borrowers.remove(borrower)
        except KeyError:
            raise RuntimeError("this borrower holds no token of this limiter") from None
        if self._waiters:
            self._hand_out()

    def _hand_out(self) -> None:
        waiters = self._waiters
        borrowers = self._borrowers
        while waiters and len(borrowers) < self._total:
            waiter = heapq.heappop(waiters)
            if waiter.cancelled:
                self._cancelled -= 1
                continue
            self._waiting -= 1
            waiter.granted = True
            borrowers.add(waiter.borrower)
            waiter.event.set()

    def _compact(self) -> None:
        """Drop the cancelled waiters (many cancellations while no token frees)."""
        self._waiters = [waiter for waiter in self._waiters if not waiter.cancelled]
        heapq.heapify(self._waiters)
        self._cancelled = 0
