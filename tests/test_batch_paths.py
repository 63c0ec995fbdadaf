"""The same behaviour on every path of the batch engine, on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from _helpers import CANCELLED, FAILED, SUCCEEDED, Tracker
from trioflow import (
    Progress,
    ResourceManager,
    run_batch,
)

pytestmark = pytest.mark.anyio


# --- the same behaviour on every path --------------------------------------------------------
# The engine has a lean path (int limit or none, plain sync input), a general path (timeout,
# retry, progress or an async input) and a ResourceManager path; the trio and asyncio backends
# differ only in their primitives. Each case below runs on every path and on both backends.

LIMITS = ["none", "int", "manager"]
INPUTS = ["sync", "async"]


def make_limit(kind: str) -> int | ResourceManager | None:
    return {"none": None, "int": 2, "manager": ResourceManager(limit=2)}[kind]


def feed(kind: str, ops: list[Any], error: Exception | None = None) -> Any:
    """The operations as a list or an async generator, optionally raising after the last."""
    if kind == "sync":
        if error is None:
            return ops

        def broken() -> Iterator[Any]:
            yield from ops
            raise error

        return broken()

    async def agen() -> AsyncIterator[Any]:
        for op in ops:
            yield op
        if error is not None:
            raise error

    return agen()


@pytest.mark.parametrize("source", INPUTS)
@pytest.mark.parametrize("limit", LIMITS)
async def test_every_path_propagates_the_callers_cancellation_as_itself(
    limit: str, source: str
) -> None:
    tracker = Tracker()
    baseline = len(anyio.get_running_tasks())
    seen: BaseException | None = None
    with anyio.move_on_after(5) as scope:
        try:
            await run_batch(feed(source, tracker.ops([1, 10, 10])), limit=make_limit(limit))
        except BaseException as exc:
            seen = exc
            raise
    assert scope.cancelled_caught
    assert type(seen) is anyio.get_cancelled_exc_class()
    assert anyio.current_time() == 5
    assert tracker.finished == [0]
    assert sorted(tracker.cancelled) == [1, 2]
    assert tracker.running == 0
    assert len(anyio.get_running_tasks()) == baseline


@pytest.mark.parametrize("source", INPUTS)
@pytest.mark.parametrize("limit", LIMITS)
async def test_every_path_fails_fast_the_same_way(limit: str, source: str) -> None:
    tracker = Tracker()
    result = await run_batch(
        feed(source, tracker.ops([5, 1, 10], failing=(1,))),
        limit=make_limit(limit) if limit != "int" else 3,
        fail_fast=True,
    )
    if limit == "manager":  # a manager of 2: the third waited for a slot and never started
        assert sorted(tracker.started) == [0, 1]
        assert [o.attempts for o in result.outcomes] == [1, 1, 0]
    else:  # (without a limit, trio starts the tasks in any order)
        assert sorted(tracker.started) == [0, 1, 2]
    assert [o.status for o in result.outcomes] == [CANCELLED, FAILED, CANCELLED]
    assert (result.succeeded, result.failed, result.cancelled) == (0, 1, 2)
    assert anyio.current_time() == 1


@pytest.mark.parametrize("source", INPUTS)
@pytest.mark.parametrize("limit", LIMITS)
async def test_every_path_times_out_operations_the_same_way(limit: str, source: str) -> None:
    tracker = Tracker()
    result = await run_batch(
        feed(source, tracker.ops([1, 4, 1])), limit=make_limit(limit), timeout=2
    )
    assert [o.status for o in result.outcomes] == [SUCCEEDED, FAILED, SUCCEEDED]
    assert type(result.outcomes[1].error) is TimeoutError
    assert [o.duration for o in result.outcomes] == [1, 2, 1]
    assert tracker.cancelled == [1]
    assert anyio.current_time() == 2


@pytest.mark.parametrize("source", INPUTS)
@pytest.mark.parametrize("limit", LIMITS)
async def test_every_path_raises_the_inputs_error_as_itself(limit: str, source: str) -> None:
    tracker = Tracker()
    with pytest.raises(OSError, match="disk gone") as info:
        await run_batch(
            feed(source, tracker.ops([1, 5]), OSError("disk gone")), limit=make_limit(limit)
        )
    assert info.value.__notes__ == ["raised by the operations iterable after 2 operations"]
    if limit == "int":
        # Two workers run the two operations; one reads the input again only once it is free.
        assert anyio.current_time() == 1
        assert (tracker.finished, tracker.cancelled) == ([0], [1])
    else:
        # Without a limit the input is read at once; with a manager, one operation (here, the
        # end of the input) is read ahead, while the others hold their slots.
        assert anyio.current_time() == 0
        if limit == "none":
            # The tasks spawned but not yet run when the input fails never start (read in one
            # go, a sync input fails before any has run); those that started are cancelled.
            assert tracker.finished == []
            assert sorted(tracker.cancelled) == sorted(tracker.started)
            if source == "sync":
                assert tracker.started == []
        else:
            assert (tracker.finished, sorted(tracker.cancelled)) == ([], [0, 1])


@pytest.mark.parametrize("source", INPUTS)
@pytest.mark.parametrize("limit", LIMITS)
async def test_every_path_raises_the_progress_callbacks_error_as_itself(
    limit: str, source: str
) -> None:
    tracker = Tracker()

    def explode(progress: Progress) -> None:
        raise RuntimeError("progress bar broke")

    with pytest.raises(RuntimeError, match="progress bar broke") as info:
        await run_batch(
            feed(source, tracker.ops([1, 5, 5])), limit=make_limit(limit), on_progress=explode
        )
    assert info.value.__notes__ == ["raised by on_progress"]
    assert anyio.current_time() == 1
    assert tracker.finished == [0]
    assert tracker.running == 0
