"""run_batch's progress callback."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from _helpers import Tracker
from trioflow import (
    Progress,
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


async def test_an_exception_from_on_progress_aborts_the_batch() -> None:
    tracker = Tracker()

    def explode(progress: Progress) -> None:
        raise RuntimeError("progress bar broke")

    with pytest.raises(RuntimeError, match="progress bar broke") as info:
        await run_batch(tracker.ops([1, 5, 5]), limit=3, on_progress=explode)
    assert info.value.__notes__ == ["raised by on_progress"]
    assert sorted(tracker.cancelled) == [1, 2]
    assert anyio.current_time() == 1
