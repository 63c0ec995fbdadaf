"""run_batch reads its input lazily, sync or async, endless or not."""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from _helpers import Boom, Tracker, napping
from trioflow import (
    run_batch,
)

pytestmark = pytest.mark.anyio


# --- laziness ------------------------------------------------------------------------------


async def test_an_endless_generator_stops_at_the_first_failure() -> None:
    tracker = Tracker()
    pulled = 0

    def endless() -> Iterator[Callable[[], Awaitable[Any]]]:
        nonlocal pulled
        for i in range(1000):  # endless enough; a broken fail_fast fails the test, not hangs
            pulled += 1
            yield tracker.op(i, 1 + i % 3, fail=i == 20)

    result = await run_batch(endless(), limit=3, fail_fast=True)
    assert result.failed == 1
    assert result.errors[0].index == 20
    assert pulled == result.total
    assert pulled <= result.succeeded + result.failed + 3
    assert result.cancelled == len(tracker.cancelled) <= 2


async def test_an_endless_generator_without_a_limit_stops_at_the_first_failure() -> None:
    # Without a limit, the batch reads the input as fast as it can, yielding to the operations
    # every few hundred; so the failure must come without time passing (a virtual clock only
    # moves when every task waits, and reading an endless input never waits).
    pulled = 0

    async def fails() -> None:
        await anyio.lowlevel.checkpoint()
        raise Boom

    async def waits() -> None:
        await anyio.sleep(2)

    def endless() -> Iterator[Callable[[], Awaitable[Any]]]:
        nonlocal pulled
        yield fails
        for _ in range(20_000):  # endless enough; a broken fail_fast fails the test, not hangs
            pulled += 1
            yield waits

    result = await run_batch(endless(), fail_fast=True)
    assert result.failed == 1
    assert result.cancelled == pulled == result.total - 1
    assert result.total < 2000  # a few rounds of spawning: it stopped
    assert anyio.current_time() == 0


async def test_an_endless_generator_stops_with_the_callers_cancel_scope() -> None:
    tracker = Tracker()
    pulled = 0

    def endless() -> Iterator[Callable[[], Awaitable[Any]]]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield tracker.op(i, 2)

    with anyio.move_on_after(9):
        await run_batch(endless(), limit=3)
    assert len(tracker.finished) == 12
    assert pulled == 15
    assert sorted(tracker.cancelled) == [12, 13, 14]


async def test_async_iterable_input_is_read_lazily() -> None:
    tracker = Tracker()
    pulled_ahead: list[int] = []

    async def operations() -> AsyncGenerator[Callable[[], Awaitable[Any]], None]:
        for i in range(10):
            await anyio.sleep(0.5)
            pulled_ahead.append(tracker.running)
            yield tracker.op(i, 2)

    async with contextlib.aclosing(operations()) as ops:
        result = await run_batch(ops, limit=2)
    assert result.values == tuple(range(10))
    assert max(pulled_ahead) <= 1
    assert tracker.peak == 2


async def test_async_iterable_input_without_a_limit() -> None:
    async def operations() -> AsyncGenerator[Callable[[], Awaitable[int]], None]:
        for i in range(600):
            yield functools.partial(napping, 1, i)

    async with contextlib.aclosing(operations()) as ops:
        result = await run_batch(ops)
    assert result.total == 600
    assert anyio.current_time() == 1
