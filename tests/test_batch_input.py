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
    ResourceManager,
    RetryPolicy,
    amap,
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
            "limit must be an int >= 1, a ResourceManager, a Capacity or None, got 2.0",
        ),
        (
            {"limit": True},
            TypeError,
            "limit must be an int >= 1, a ResourceManager, a Capacity or None, got True",
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


# --- async callables: a plain def is refused before it runs; a result must be awaitable -------

SHAPES: dict[str, dict[str, Any]] = {
    "lean, limit": {"limit": 2},
    "lean, no limit": {},
    "general": {"limit": 2, "timeout": 100},
    "retry": {"limit": 2, "retry": RetryPolicy(attempts=3, initial_delay=0, on=Exception)},
    "manager": {"limit": "manager"},
}


def _options(shape: str) -> dict[str, Any]:
    options = dict(SHAPES[shape])
    if options.get("limit") == "manager":
        options["limit"] = ResourceManager(limit=2)
    return options


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("wrap", [False, True], ids=["function", "partial"])
@pytest.mark.parametrize("fail_fast", [False, True])
async def test_a_plain_def_operation_is_refused_before_it_runs(
    shape: str, wrap: bool, fail_fast: bool
) -> None:
    calls: list[int] = []
    tracker = Tracker()

    def save(n: int = 1) -> int:
        calls.append(n)
        return n

    bad: Any = functools.partial(save, 7) if wrap else save
    with pytest.raises(TypeError, match=r"^operation 1 must be a zero-argument async callable"):
        await run_batch(
            [tracker.op(0, 5), bad, tracker.op(2, 5)], fail_fast=fail_fast, **_options(shape)
        )
    assert calls == []
    assert 2 not in tracker.started


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_non_awaitable_result_aborts_the_batch_naming_the_index(shape: str) -> None:
    calls: list[int] = []
    tracker = Tracker()

    def save() -> int:
        calls.append(1)
        return 5

    bad: Any = lambda: save()  # noqa: E731 - a lambda is judged by its result
    with pytest.raises(TypeError, match=r"^operation 1 must return an awaitable, got 5 \(int\)$"):
        await run_batch([tracker.op(0, 5), bad, tracker.op(2, 5)], **_options(shape))
    assert calls == [1]  # called once: never retried, never called again
    assert tracker.finished == []  # what started is cancelled


async def test_a_non_awaitable_result_is_not_an_outcome_of_as_completed() -> None:
    seen: list[Any] = []
    ops: list[Any] = [lambda: 5]

    async def consume() -> None:
        async with as_completed(ops) as outcomes:
            async for outcome in outcomes:
                seen.append(outcome)

    with pytest.raises(TypeError, match="operation 0 must return an awaitable"):
        await consume()
    assert seen == []


async def test_as_completed_refuses_a_plain_def_operation() -> None:
    calls: list[int] = []

    def save() -> int:
        calls.append(1)
        return 1

    ops: list[Any] = [save]

    async def consume() -> None:
        async with as_completed(ops) as outcomes:
            async for _ in outcomes:
                pass

    with pytest.raises(TypeError, match="operation 0 must be a zero-argument async callable"):
        await consume()
    assert calls == []


class _AsyncCall:
    async def __call__(self) -> int:
        await anyio.lowlevel.checkpoint()
        return 3


async def _fetch(n: int) -> int:
    await anyio.lowlevel.checkpoint()
    return n


@pytest.mark.parametrize("shape", SHAPES)
async def test_every_kind_of_async_callable_is_accepted(shape: str) -> None:
    def sync_wrapper() -> Awaitable[int]:  # a def returning a coroutine, declared as wrapping
        return _fetch(4)

    wrapped = functools.wraps(_fetch)(sync_wrapper)
    ops: list[Any] = [
        functools.partial(_fetch, 0),
        lambda: _fetch(1),
        functools.partial(functools.partial(_fetch), 2),
        _AsyncCall(),
        wrapped,
    ]
    result = await run_batch(ops, **_options(shape))
    assert result.values == (0, 1, 2, 3, 4)


async def test_a_batch_of_closures_judges_each_one() -> None:
    def make(n: int) -> Any:
        if n == 2:

            def plain() -> int:
                return n

            return plain

        async def op() -> int:
            return n

        return op

    with pytest.raises(TypeError, match="operation 2"):
        await run_batch([make(n) for n in range(4)], limit=1)


async def test_amap_refuses_a_plain_def_function_up_front() -> None:
    calls: list[int] = []

    def double(n: int) -> int:
        calls.append(n)
        return 2 * n

    with pytest.raises(TypeError, match=r"^fn must be an async callable of one argument, got"):
        await amap(double, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^fn must be an async callable"):
        await amap(functools.partial(double), [1, 2])  # type: ignore[arg-type]
    assert calls == []


async def test_amap_with_a_callable_returning_no_awaitable_raises_naming_the_index() -> None:
    calls: list[int] = []

    def double(n: int) -> int:
        calls.append(n)
        return 2 * n

    with pytest.raises(TypeError, match=r"^operation 0 must return an awaitable, got 2 \(int\)"):
        await amap(lambda n: double(n), [1, 2, 3], limit=1)  # type: ignore[arg-type,return-value]
    assert calls == [1]
