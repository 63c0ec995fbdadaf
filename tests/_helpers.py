"""Helpers shared by the test files: operations that sleep and record what ran."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from trioflow import OutcomeStatus

SUCCEEDED = OutcomeStatus.SUCCEEDED
FAILED = OutcomeStatus.FAILED
CANCELLED = OutcomeStatus.CANCELLED


class Boom(Exception):
    """The failure the test operations raise."""


async def napping(seconds: float, value: int) -> int:
    await anyio.sleep(seconds)
    return value


class Tracker:
    """Makes operations that sleep, then return or raise; records what ran and how many at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.started: list[int] = []
        self.finished: list[int] = []
        self.cancelled: list[int] = []

    def op(
        self, index: int, seconds: float, *, fail: bool = False, value: Any = None
    ) -> Callable[[], Awaitable[Any]]:
        async def operation() -> Any:
            self.started.append(index)
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                await anyio.sleep(seconds)
            except anyio.get_cancelled_exc_class():
                self.cancelled.append(index)
                raise
            finally:
                self.running -= 1
            self.finished.append(index)
            if fail:
                raise Boom(f"op {index}")
            return index if value is None else value

        return operation

    def ops(self, durations: list[float], failing: tuple[int, ...] = ()) -> list[Any]:
        return [self.op(i, d, fail=i in failing) for i, d in enumerate(durations)]
