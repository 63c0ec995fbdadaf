"""run_batch's progress callback."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from _helpers import Tracker
from trioflow import (
    Progress,
    ResourceManager,
    run_batch,
)

pytestmark = pytest.mark.anyio


# --- progress --------------------------------------------------------------------------------


async def test_progress_is_reported_after_each_operation() -> None:
    tracker = Tracker()
    progress: list[Progress] = []
    await run_batch(tracker.ops([1, 2, 3], failing=(1,)), limit=2, on_progress=progress.append)
    assert progress == [
        Progress(total=3, completed=1, failed=0, running=1),
        Progress(total=3, completed=2, failed=1, running=1),
        Progress(total=3, completed=3, failed=1, running=0),
    ]
    assert [p.percent for p in progress] == [100 / 3, 200 / 3, 100.0]


async def test_progress_total_is_unknown_until_a_generator_is_exhausted() -> None:
    tracker = Tracker()
    progress: list[Progress] = []
    await run_batch((op for op in tracker.ops([1, 2, 3])), limit=2, on_progress=progress.append)
    assert [(p.total, p.completed, p.percent) for p in progress] == [
        (None, 1, None),
        (None, 2, None),
        (3, 3, 100.0),
    ]


def test_progress_percent() -> None:
    assert Progress(total=4, completed=1, failed=0, running=0).percent == 25.0
    assert Progress(total=0, completed=0, failed=0, running=0).percent == 100.0
    assert Progress(total=None, completed=5, failed=0, running=1).percent is None
    assert Progress(total=4, completed=1, failed=1, running=0, cancelled=3).percent == 100.0
    assert Progress(total=4, completed=1, failed=0, running=0).cancelled == 0


@pytest.mark.parametrize("limit", ["int", "none", "manager"])
@pytest.mark.parametrize("generator", [False, True])
async def test_after_a_fail_fast_stop_the_last_report_counts_the_cancelled(
    limit: str, generator: bool
) -> None:
    tracker = Tracker()
    progress: list[Progress] = []
    ops = tracker.ops([5, 1, 10, 2, 2], failing=(1,))
    checked_limit = {"int": 3, "none": None, "manager": ResourceManager(limit=3)}[limit]
    result = await run_batch(
        (op for op in ops) if generator else ops,
        limit=checked_limit,
        fail_fast=True,
        on_progress=progress.append,
    )
    assert anyio.current_time() == 1
    first, last = progress
    assert (first.completed, first.failed, first.cancelled) == (1, 1, 0)
    assert last == Progress(
        total=result.total,
        completed=1,
        failed=1,
        running=0,
        cancelled=result.cancelled,
    )
    assert result.cancelled == result.total - 1 >= 2
    assert last.percent == 100.0


async def test_the_last_report_is_sent_when_the_failure_was_the_last_operation() -> None:
    tracker = Tracker()
    progress: list[Progress] = []
    await run_batch(
        tracker.ops([1, 2], failing=(1,)), limit=1, fail_fast=True, on_progress=progress.append
    )
    assert progress == [
        Progress(total=2, completed=1, failed=0, running=0),
        Progress(total=2, completed=2, failed=1, running=0),
        Progress(total=2, completed=2, failed=1, running=0, cancelled=0),
    ]


async def test_an_exception_from_the_last_report_propagates_with_a_note() -> None:
    tracker = Tracker()
    seen: list[Progress] = []

    def explode_at_the_end(progress: Progress) -> None:
        seen.append(progress)
        if progress.running == 0 and progress.cancelled:
            raise RuntimeError("progress bar broke")

    with pytest.raises(RuntimeError, match="progress bar broke") as info:
        await run_batch(
            tracker.ops([5, 1, 5], failing=(1,)),
            limit=3,
            fail_fast=True,
            on_progress=explode_at_the_end,
        )
    assert info.value.__notes__ == ["raised by on_progress"]
    assert len(seen) == 2


async def test_an_exception_from_on_progress_aborts_the_batch() -> None:
    tracker = Tracker()

    def explode(progress: Progress) -> None:
        raise RuntimeError("progress bar broke")

    with pytest.raises(RuntimeError, match="progress bar broke") as info:
        await run_batch(tracker.ops([1, 5, 5]), limit=3, on_progress=explode)
    assert info.value.__notes__ == ["raised by on_progress"]
    assert sorted(tracker.cancelled) == [1, 2]
    assert anyio.current_time() == 1
