"""run_batch rejects bad arguments and operations, and passes the input's errors on."""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from _helpers import Tracker
from trioflow import (
    as_completed,
    run_batch,
)

pytestmark = pytest.mark.anyio


# --- bad input -----------------------------------------------------------------------------

_TIMEOUT = r"timeout must be a number of seconds >= 0 or None \(no deadline\)"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"limit": 0}, ValueError, "limit must be an int >= 1, got 0"),
        ({"limit": -3}, ValueError, "limit must be an int >= 1, got -3"),
        (
            {"limit": 2.0},
            TypeError,
            "limit must be an int >= 1, a ResourceManager or None, got 2.0",
        ),
        (
            {"limit": True},
            TypeError,
            "limit must be an int >= 1, a ResourceManager or None, got True",
        ),
        ({"timeout": -1}, ValueError, rf"{_TIMEOUT}, got -1 \(int\)"),
        ({"timeout": math.nan}, ValueError, rf"{_TIMEOUT}, got nan \(float\)"),
        ({"timeout": -math.inf}, ValueError, rf"{_TIMEOUT}, got -inf \(float\)"),
        ({"timeout": "5"}, TypeError, rf"{_TIMEOUT}, got '5' \(str\)"),
        ({"timeout": False}, TypeError, "timeout must be a number"),
        ({"fail_fast": 1}, TypeError, "fail_fast must be a bool, got 1"),
        ({"retry": 3}, TypeError, "retry must be a RetryPolicy or None, got 3"),
        ({"on_progress": "print"}, TypeError, "on_progress must be a callable"),
    ],
)
async def test_bad_arguments_are_rejected_before_anything_runs(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    tracker = Tracker()
    with pytest.raises(error, match=message):
        await run_batch(tracker.ops([1]), **kwargs)
    if set(kwargs) <= {"limit", "timeout", "retry"}:
        with pytest.raises(error, match=message):
            as_completed(tracker.ops([1]), **kwargs)  # raised at the call, not at entry
    assert tracker.started == []


async def test_operations_must_be_iterable() -> None:
    with pytest.raises(
        TypeError, match=r"operations must be an iterable or async iterable .* got 42 \(int\)"
    ):
        await run_batch(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [None, 1, 3])
async def test_a_non_callable_operation_raises_naming_its_index_and_cancels_the_batch(
    limit: int | None,
) -> None:
    tracker = Tracker()
    ops: list[Any] = [*tracker.ops([5, 5]), "not an operation", tracker.op(3, 5)]
    message = r"operation 2 must be a zero-argument async callable, got 'not an operation' \(str\)"
    with pytest.raises(TypeError, match=message):
        await run_batch(ops, limit=limit)
    assert 3 not in tracker.started
    if limit == 1:  # found only once the worker reaches it
        assert tracker.finished == [0, 1]
        assert anyio.current_time() == 10
    elif limit == 3:  # found at once; what runs is cancelled
        assert tracker.finished == []
        assert sorted(tracker.cancelled) == [0, 1]
        assert anyio.current_time() == 0
    else:  # found while spawning: the operations spawned before it never start
        assert tracker.started == []
        assert anyio.current_time() == 0


async def test_a_coroutine_instead_of_a_callable_gets_a_hint() -> None:
    async def fetch() -> int:
        return 1

    with pytest.raises(TypeError, match=r"operation 1 .* not a coroutine"):
        await run_batch([fetch, fetch()], timeout=1)  # type: ignore[arg-type]


async def test_an_exception_from_the_input_iterator_propagates() -> None:
    tracker = Tracker()

    def broken() -> Iterator[Callable[[], Awaitable[Any]]]:
        yield tracker.op(0, 1)
        yield tracker.op(1, 5)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone") as info:
        await run_batch(broken(), limit=3)
    assert info.value.__notes__ == ["raised by the operations iterable after 2 operations"]
    assert anyio.current_time() == 0
    assert sorted(tracker.cancelled) == [0, 1]


async def test_an_exception_from_an_async_input_propagates() -> None:
    async def broken() -> AsyncIterator[Callable[[], Awaitable[Any]]]:
        yield functools.partial(anyio.sleep, 1)
        await anyio.sleep(2)
        raise OSError("socket gone")

    with pytest.raises(OSError, match="socket gone"):
        await run_batch(broken())
