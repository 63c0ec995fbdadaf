"""run_batch: timeouts, failures (collected or fail-fast) and the caller's cancellation."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from _helpers import CANCELLED, FAILED, SUCCEEDED, Boom, Tracker
from trioflow import (
    OperationFailure,
    Progress,
    RetryPolicy,
    run_batch,
)

pytestmark = pytest.mark.anyio


# --- timeouts ------------------------------------------------------------------------------


async def test_an_operation_past_its_timeout_fails_with_timeout_error() -> None:
    tracker = Tracker()
    result = await run_batch(tracker.ops([10, 2, 3.5]), timeout=3, limit=3)
    assert anyio.current_time() == 3
    slow, fast, late = result.outcomes
    assert slow.status is FAILED
    assert type(slow.error) is TimeoutError
    assert slow.duration == 3
    assert (fast.status, fast.value, fast.duration) == (SUCCEEDED, 1, 2)
    assert late.status is FAILED
    assert late.duration == 3
    assert sorted(tracker.cancelled) == [0, 2]
    assert (
        result.errors[0].message
        == "operation 0 failed: TimeoutError: operation timed out after 3 seconds"
    )


async def test_a_zero_timeout_fails_every_operation_that_waits() -> None:
    tracker = Tracker()
    result = await run_batch(tracker.ops([1, 1]), timeout=0)
    assert [o.status for o in result.outcomes] == [FAILED, FAILED]
    assert anyio.current_time() == 0


# --- failures ------------------------------------------------------------------------------


async def test_without_fail_fast_every_failure_is_collected() -> None:
    tracker = Tracker()
    result = await run_batch(tracker.ops([1, 2, 3, 4, 5], failing=(1, 3)), limit=2)
    assert anyio.current_time() == 9
    assert [o.status for o in result.outcomes] == [SUCCEEDED, FAILED, SUCCEEDED, FAILED, SUCCEEDED]
    assert result.values == (0, 2, 4)
    assert (result.succeeded, result.failed, result.cancelled) == (3, 2, 0)
    assert not result.ok
    assert [e.index for e in result.errors] == [1, 3]
    error = result.errors[0]
    assert isinstance(error, OperationFailure)
    assert isinstance(error.exception, Boom)
    assert error.message == "operation 1 failed: Boom: op 1"


async def test_raise_for_errors_raises_every_failure_with_its_index() -> None:
    tracker = Tracker()
    result = await run_batch(tracker.ops([1, 2, 3], failing=(0, 2)))
    with pytest.raises(ExceptionGroup) as info:
        result.raise_for_errors()
    assert str(info.value) == "2 of 3 operations failed (2 sub-exceptions)"
    assert [e.__notes__ for e in info.value.exceptions] == [["operation 0"], ["operation 2"]]
    with pytest.raises(ExceptionGroup) as again:
        result.raise_for_errors()
    assert [e.__notes__ for e in again.value.exceptions] == [["operation 0"], ["operation 2"]]


async def test_raise_for_errors_returns_none_when_nothing_failed() -> None:
    result = await run_batch(Tracker().ops([1]))
    result.raise_for_errors()  # does not raise
    assert result.errors == ()


async def test_fail_fast_cancels_what_is_in_flight_and_starts_nothing_more() -> None:
    tracker = Tracker()
    result = await run_batch(
        tracker.ops([5, 1, 10, 1, 1, 1], failing=(1,)), limit=3, fail_fast=True
    )
    assert anyio.current_time() == 1
    assert result.duration == 1
    assert tracker.started == [0, 1, 2]
    assert sorted(tracker.cancelled) == [0, 2]
    assert [o.status for o in result.outcomes] == [CANCELLED, FAILED, CANCELLED]
    assert [o.duration for o in result.outcomes] == [1, 1, 1]
    assert (result.total, result.succeeded, result.failed, result.cancelled) == (3, 0, 1, 2)
    assert result.outcomes[0].error is None
    assert [e.index for e in result.errors] == [1]


async def test_fail_fast_with_the_general_path_behaves_the_same() -> None:
    tracker = Tracker()
    progress: list[Progress] = []
    result = await run_batch(
        tracker.ops([5, 1, 10, 1], failing=(1,)),
        limit=3,
        fail_fast=True,
        timeout=100,
        on_progress=progress.append,
    )
    assert anyio.current_time() == 1
    assert [o.status for o in result.outcomes] == [CANCELLED, FAILED, CANCELLED]
    assert progress == [
        Progress(total=4, completed=1, failed=1, running=2),
        Progress(total=3, completed=1, failed=1, running=0, cancelled=2),  # the end
    ]


# --- cancellation by the caller ------------------------------------------------------------


@pytest.mark.parametrize("limit", [None, 2])
@pytest.mark.parametrize("general", [False, True])
async def test_the_callers_cancellation_cancels_everything_and_propagates(
    limit: int | None, general: bool
) -> None:
    tracker = Tracker()
    progress: list[Progress] = []
    baseline = len(anyio.get_running_tasks())
    seen: BaseException | None = None
    options: dict[str, Any] = {"on_progress": progress.append, "retry": RetryPolicy()}
    with anyio.move_on_after(5) as scope:
        try:
            await run_batch(
                tracker.ops([1, 10, 10, 10]), limit=limit, **(options if general else {})
            )
        except BaseException as exc:
            seen = exc
            raise
    assert scope.cancelled_caught
    assert isinstance(seen, anyio.get_cancelled_exc_class())  # itself, not in a group
    assert anyio.current_time() == 5
    assert tracker.finished == [0]
    assert sorted(tracker.cancelled) == [1, 2, 3][: (2 if limit else 3)]
    assert tracker.running == 0
    assert tracker.started.count(1) == 1  # cancellation is never retried
    assert len(anyio.get_running_tasks()) == baseline
    if general:
        assert progress == [Progress(total=4, completed=1, failed=0, running=1 if limit else 3)]
