"""Virtual time for tests, on both backends.

trio ships :class:`trio.testing.MockClock`; with ``autojump_threshold=0`` time jumps to the next
deadline as soon as every task is blocked, so a test of timeouts and rate limits runs in
milliseconds and can assert exact times. :class:`VirtualTimeEventLoop` gives asyncio the same
behaviour, and :func:`virtual_time_backends` returns anyio backend specifications for both, ready
for anyio's pytest plugin or :func:`anyio.run`::

    import anyio
    from trioflow.testing import virtual_time_backends

    async def main() -> None:
        await anyio.sleep(3600)
        assert anyio.current_time() == 3600  # an hour passes in no real time

    for backend, options in virtual_time_backends():
        anyio.run(main, backend=backend, backend_options=options)

Like MockClock's autojump, the virtual clock jumps whenever nothing is runnable and no I/O is
ready, including while a worker thread or process is busy: use the real clock for tests that
wait on threads, processes or files.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Mapping
from typing import Any

__all__ = ("VirtualTimeEventLoop", "virtual_time_backends")


class _AutojumpSelector(selectors.BaseSelector):
    """A selector that turns 'sleep until the next timer' into an instant jump of the clock."""

    def __init__(self, loop_time: list[float]) -> None:
        self._inner = selectors.DefaultSelector()
        self._now = loop_time
        self.loop: asyncio.BaseEventLoop | None = None

    def register(
        self, fileobj: Any, events: int, data: Any = None
    ) -> selectors.SelectorKey:  # pragma: no cover - delegation
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._inner.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # Nothing scheduled: only I/O (a thread finishing, a process exiting) can wake us.
            return self._inner.select(None)
        scheduled = getattr(self.loop, "_scheduled", None)
        if scheduled:
            # Jump exactly to the earliest timer so that exact time assertions hold.
            self._now[0] = max(self._now[0], scheduled[0].when())
        else:  # pragma: no cover - asyncio always has a timer when timeout is finite
            self._now[0] += timeout
        return []

    def close(self) -> None:
        self._inner.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()


class VirtualTimeEventLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose clock starts at 0 and jumps to the next timer when idle.

    The asyncio counterpart of ``trio.testing.MockClock(autojump_threshold=0)``. Pass it as
    ``loop_factory`` to :func:`asyncio.run` (or in anyio's asyncio backend options) to run a test
    of timeouts, rate limits and schedules in virtual time.
    """

    def __init__(self) -> None:
        self._virtual_now = [0.0]
        selector = _AutojumpSelector(self._virtual_now)
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        """Return the virtual time in seconds (starts at 0)."""
        return self._virtual_now[0]

    # asyncio runs a timer once ``when < time() + _clock_resolution``. With the real clock's
    # resolution (1 ns), far from 0 (1e9 s: one float step is 119 ns) that sum rounds back to
    # time(): a timer the clock jumped to exactly would never be due, and the loop would spin
    # without end. One float step at the current time is the resolution of a virtual clock.
    @property
    def _clock_resolution(self) -> float:
        return max(1e-9, math.ulp(self._virtual_now[0]))

    @_clock_resolution.setter
    def _clock_resolution(self, value: float) -> None:
        pass  # BaseEventLoop.__init__ sets the real clock's; the virtual one is computed


def virtual_time_backends() -> list[tuple[str, dict[str, Any]]]:
    """Return ``(backend, backend_options)`` pairs that run anyio code in virtual time.

    Each call returns fresh clocks, so use one pair per run. trio comes first (the primary
    backend), with ``MockClock(autojump_threshold=0)``; asyncio follows, with
    :class:`VirtualTimeEventLoop`.

    Returns:
        A list of two ``(backend name, options)`` pairs for :func:`anyio.run`.
    """
    import trio.testing

    return [
        ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}),
        ("asyncio", {"loop_factory": VirtualTimeEventLoop}),
    ]
