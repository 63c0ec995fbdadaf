"""amap: values in input order, the first failure raised."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import pytest

import trioflow
from _helpers import Boom

pytestmark = pytest.mark.anyio


# --- map -----------------------------------------------------------------------------------


async def test_map_returns_values_in_order() -> None:
    async def double(x: int) -> int:
        await anyio.sleep(10 - x)
        return 2 * x

    assert await trioflow.amap(double, range(10), limit=3) == [2 * x for x in range(10)]


async def test_map_over_an_async_iterable() -> None:
    async def items() -> AsyncIterator[int]:
        for i in range(5):
            yield i

    async def square(x: int) -> int:
        await anyio.sleep(1)
        return x * x

    assert await trioflow.amap(square, items(), limit=2) == [0, 1, 4, 9, 16]
    assert anyio.current_time() == 3


async def test_map_raises_the_first_failure_and_cancels_the_rest() -> None:
    started: list[int] = []

    async def fn(x: int) -> int:
        started.append(x)
        await anyio.sleep(x)
        if x == 2:
            raise Boom("two")
        return x

    with pytest.raises(ExceptionGroup) as info:
        await trioflow.amap(fn, [5, 2, 9, 1, 1], limit=3, timeout=100)
    (error,) = info.value.exceptions
    assert isinstance(error, Boom)
    assert error.__notes__ == ["operation 1"]
    assert anyio.current_time() == 2
    assert started == [5, 2, 9]


async def test_map_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="fn must be an async callable of one argument, got 3"):
        await trioflow.amap(3, [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="items must be an iterable"):
        await trioflow.amap(anyio.sleep, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit must be an int >= 1, got 0"):
        await trioflow.amap(anyio.sleep, [1], limit=0)
