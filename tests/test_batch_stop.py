"""The stop rule of a batch: once a failure is seen (or the batch stops), nothing more starts.

Every path of the engine keeps it: the lean path (no timeout, retry or progress), the general
path, the ResourceManager chain, an async input, ``amap`` and ``as_completed``. Operations
taken but never started are recorded cancelled, with 0 attempts.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _helpers import CANCELLED, FAILED, Boom
from trioflow import (
    BatchResult,
    ResourceManager,
    RetryPolicy,
    amap,
    as_completed,
    run_batch,
)
from trioflow.testing import virtual_time_backends

pytestmark = pytest.mark.anyio


class Journal:
    """Records, in order, each operation entering its function and each failure it reports."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def op(
        self,
        index: int,
        seconds: float,
        *,
        fail: bool = False,
        attempts: int = 1,
        timeout: float | None = None,
    ) -> Callable[[], Awaitable[int]]:
        tries = 0

        async def operation() -> int:
            nonlocal tries
            tries += 1
            self.events.append(("enter", index))
            start = anyio.current_time()
            try:
                await anyio.sleep(seconds)
            except anyio.get_cancelled_exc_class():
                # Cancelled at its deadline: the engine sees a TimeoutError next, with no
                # checkpoint in between.
                if timeout is not None and anyio.current_time() - start == timeout:
                    self.events.append(("fail", index))
                raise
            if fail:
                if tries == attempts:  # the last try: the engine sees the failure now
                    self.events.append(("fail", index))
                raise Boom(index)
            return index

        return operation

    def entered(self) -> set[int]:
        return {index for event, index in self.events if event == "enter"}

    def entered_after_the_first_failure(self) -> list[int]:
        kinds = [event for event, _ in self.events]
        if "fail" not in kinds:
            return []
        first = kinds.index("fail")
        return [index for event, index in self.events[first:] if event == "enter"]


async def _aiter(items: Iterable[Any]) -> AsyncGenerator[Any, None]:
    for item in items:
        await anyio.lowlevel.checkpoint()
        yield item


PATHS: dict[str, dict[str, Any]] = {
    "lean, limit": {"limit": 3},
    "lean, no limit": {},
    "general, limit": {"limit": 3, "timeout": 100},
    "general, no limit": {"timeout": 100},
    "progress": {"limit": 3, "on_progress": lambda progress: None},
    "retry": {"limit": 3, "retry": RetryPolicy(attempts=1)},
}


def _check_never_started(result: BatchResult[int], journal: Journal) -> None:
    for outcome in result.outcomes:
        if outcome.index not in journal.entered():
            assert outcome.status is CANCELLED
            assert outcome.attempts == 0
            assert outcome.error is None


@pytest.mark.parametrize("options", PATHS.values(), ids=PATHS.keys())
async def test_nothing_starts_after_an_immediate_failure(options: dict[str, Any]) -> None:
    journal = Journal()
    ops = [journal.op(0, 0, fail=True), journal.op(1, 1), journal.op(2, 1)]
    result = await run_batch(ops, fail_fast=True, **options)
    assert journal.entered_after_the_first_failure() == []
    assert result.outcomes[0].status is FAILED
    assert result.failed == 1
    _check_never_started(result, journal)


@pytest.mark.parametrize("options", PATHS.values(), ids=PATHS.keys())
async def test_nothing_starts_after_an_immediate_failure_of_an_async_input(
    options: dict[str, Any],
) -> None:
    journal = Journal()
    ops = [journal.op(0, 0, fail=True), journal.op(1, 1), journal.op(2, 1)]
    async with contextlib.aclosing(_aiter(ops)) as operations:
        result = await run_batch(operations, fail_fast=True, **options)
    assert journal.entered_after_the_first_failure() == []
    _check_never_started(result, journal)


async def test_a_slot_freed_in_the_instant_of_a_failure_starts_nothing() -> None:
    # Operation 0 ends in the same instant as operation 1 fails; operation 2, waiting for the
    # slot operation 0 frees, must not start.
    journal = Journal()
    rm = ResourceManager(limit=2)
    ops = [journal.op(0, 1), journal.op(1, 1, fail=True), journal.op(2, 1), journal.op(3, 1)]
    result = await run_batch(ops, limit=rm, fail_fast=True)
    assert journal.entered_after_the_first_failure() == []
    assert 2 not in journal.entered()
    assert anyio.current_time() == 1
    _check_never_started(result, journal)
    assert rm.statistics().executing == 0


async def test_a_worker_freed_in_the_instant_of_a_failure_starts_nothing() -> None:
    journal = Journal()
    ops = [journal.op(0, 1), journal.op(1, 1, fail=True), journal.op(2, 1), journal.op(3, 1)]
    result = await run_batch(ops, limit=2, fail_fast=True)
    assert journal.entered_after_the_first_failure() == []
    _check_never_started(result, journal)


async def test_amap_starts_nothing_after_the_first_failure() -> None:
    journal = Journal()
    ops = {0: journal.op(0, 0, fail=True), 1: journal.op(1, 1), 2: journal.op(2, 1)}

    async def call(index: int) -> int:
        return await ops[index]()

    with pytest.raises(ExceptionGroup):
        await amap(call, [0, 1, 2], limit=3)
    assert journal.entered_after_the_first_failure() == []


async def test_as_completed_starts_nothing_after_a_bad_operation_stops_it() -> None:
    journal = Journal()
    ops: list[Any] = [journal.op(0, 1), journal.op(1, 1), 42]

    async def consume() -> None:
        async with as_completed(ops) as outcomes:
            async for _ in outcomes:
                pass

    with pytest.raises(TypeError, match="operation 2"):
        await consume()
    assert journal.entered() == set()


async def test_as_completed_starts_nothing_once_the_consumer_has_left() -> None:
    journal = Journal()
    rm = ResourceManager(limit=1)
    ops = [journal.op(0, 1), journal.op(1, 1), journal.op(2, 1)]
    async with as_completed(ops, limit=rm) as outcomes:
        async for outcome in outcomes:
            assert outcome.index == 0
            journal.events.append(("fail", -1))  # the consumer leaves: the batch stops
            break
    assert journal.entered_after_the_first_failure() == []


# --- property: random schedules on every path -------------------------------------------------


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 10))
    return {
        "durations": draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)),
        "failing": draw(st.sets(st.integers(0, n - 1))),
        "limit": draw(st.one_of(st.none(), st.integers(1, 4))),
        "shared": draw(st.booleans()),  # the limit as a ResourceManager
        # Half-seconds never tie with the integer durations.
        "timeout": draw(st.one_of(st.none(), st.integers(0, 4).map(lambda k: k + 0.5))),
        "attempts": draw(st.one_of(st.none(), st.integers(1, 3))),
        "progress": draw(st.booleans()),
        "async_input": draw(st.booleans()),
    }


@pytest.mark.parametrize("backend", range(2), ids=["trio", "asyncio"])
@settings(max_examples=80)
@given(case=schedules())
def test_no_operation_starts_after_the_first_failure(backend: int, case: dict[str, Any]) -> None:
    journal = Journal()
    attempts: int | None = case["attempts"]
    retry = None if attempts is None else RetryPolicy(attempts=attempts, initial_delay=0, on=Boom)
    ops = [
        journal.op(
            index,
            seconds,
            fail=index in case["failing"],
            attempts=attempts or 1,
            timeout=case["timeout"],
        )
        for index, seconds in enumerate(case["durations"])
    ]
    results: list[BatchResult[int]] = []

    async def main() -> None:
        limit: Any = case["limit"]
        if limit is not None and case["shared"]:
            limit = ResourceManager(limit=limit)
        async with contextlib.AsyncExitStack() as stack:
            operations: Any = ops
            if case["async_input"]:
                operations = await stack.enter_async_context(contextlib.aclosing(_aiter(ops)))
            results.append(
                await run_batch(
                    operations,
                    limit=limit,
                    timeout=case["timeout"],
                    retry=retry,
                    fail_fast=True,
                    on_progress=(lambda progress: None) if case["progress"] else None,
                )
            )

    name, options = virtual_time_backends()[backend]
    anyio.run(main, backend=name, backend_options=options)
    ((result,),) = [results]
    assert journal.entered_after_the_first_failure() == []
    _check_never_started(result, journal)


async def test_as_completed_left_before_the_batch_first_ran_starts_nothing() -> None:
    journal = Journal()
    with pytest.raises(KeyError):
        async with as_completed([journal.op(0, 1)]):
            raise KeyError("left at once")
    async with as_completed([journal.op(1, 1)]):
        pass
    assert journal.entered() == set()
