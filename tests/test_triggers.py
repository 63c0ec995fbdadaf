"""Triggers (every, cron, file_changes) and run_on, in virtual time on both backends."""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import anyio
import pytest
import structlog

import trioflow
from _helpers import Boom
from trioflow import TriggerRunStatistics, cron, every, file_changes, run_on

pytestmark = pytest.mark.anyio


def calls_recorder(seconds: float) -> tuple[list[float], Any]:
    calls: list[float] = []

    async def fn(event: object) -> None:
        calls.append(anyio.current_time())
        await anyio.sleep(seconds)

    return calls, fn


# --- every --------------------------------------------------------------------------------


async def test_every_ticks_from_the_start_and_a_late_tick_comes_at_once() -> None:
    seen: list[tuple[float, float]] = []
    start = anyio.current_time()
    async for due in every(10):
        seen.append((due - start, anyio.current_time() - start))
        if len(seen) == 1:
            await anyio.sleep(25)  # busy past the ticks due at 20 and 30
        if len(seen) == 4:
            break
    assert seen == [(10, 10), (20, 35), (30, 35), (40, 40)]


async def test_every_never_drifts() -> None:
    start = anyio.current_time()
    ticks = 0
    async for due in every(0.1):
        ticks += 1
        assert due == start + ticks * 0.1  # computed, never accumulated
        await anyio.sleep(0.03)
        if ticks == 1000:
            break
    assert anyio.current_time() == start + 1000 * 0.1 + 0.03


async def test_each_iteration_of_every_has_its_own_schedule() -> None:
    trigger = every(5)
    await anyio.sleep(3)
    async for due in trigger:
        assert due == 8
        break
    async for due in trigger:
        assert due == 13
        break
    assert repr(trigger) == "every(5)"


@pytest.mark.parametrize(
    ("seconds", "error"), [(0, ValueError), (-1, ValueError), (float("inf"), ValueError)]
)
def test_every_refuses_a_bad_period(seconds: float, error: type[Exception]) -> None:
    with pytest.raises(error, match="seconds must be a finite number > 0"):
        every(seconds)
    with pytest.raises(TypeError, match="seconds must be a finite number > 0, got '1'"):
        every("1")  # type: ignore[arg-type]


# --- run_on: the examples -----------------------------------------------------------------


async def test_run_on_every_10_calls_at_10_20_30_when_cancelled_at_35() -> None:
    calls, fn = calls_recorder(1)
    run = run_on(every(10), fn)
    with anyio.move_on_after(35):
        await run
    assert calls == [10, 20, 30]
    assert run.statistics() == TriggerRunStatistics(
        events=3,
        started=3,
        succeeded=3,
        failed=0,
        cancelled=0,
        skipped=0,
        dropped=0,
        running=0,
        queued=0,
    )


async def test_a_slow_call_makes_skip_drop_the_tick_that_overlaps_it() -> None:
    calls, fn = calls_recorder(15)
    run = run_on(every(10), fn, overlap="skip")
    with anyio.move_on_after(35):
        await run
    assert calls == [10, 30]
    stats = run.statistics()
    assert (stats.skipped, stats.started, stats.succeeded, stats.failed) == (1, 2, 1, 0)
    assert stats.running == 0  # the call at 30 was cancelled with the run


async def test_queue_keeps_max_queued_events_and_drops_the_rest() -> None:
    calls, fn = calls_recorder(24)
    run = run_on(every(10), fn, overlap="queue", max_queued=1)
    with anyio.move_on_after(65):
        await run
    # 10 runs until 34; 20 waits, runs 34-58; 30 dropped; 40 waits, runs 58-; 50 dropped
    assert calls == [10, 34, 58]
    stats = run.statistics()
    assert (stats.events, stats.started, stats.dropped, stats.skipped) == (6, 3, 2, 0)


async def test_cancel_replaces_the_oldest_running_call() -> None:
    ended: list[float] = []
    cancelled: list[float] = []

    async def fn(due: float) -> None:
        try:
            await anyio.sleep(15)
            ended.append(due)
        except anyio.get_cancelled_exc_class():
            cancelled.append(due)
            raise

    run = run_on(every(10), fn, overlap="cancel")
    with anyio.move_on_after(55):
        await run
    assert cancelled == [10, 20, 30, 40, 50]  # the last one with the run
    assert ended == []
    stats = run.statistics()
    assert (stats.started, stats.cancelled, stats.failed, stats.succeeded) == (5, 4, 0, 0)


async def test_limit_lets_that_many_calls_overlap() -> None:
    calls, fn = calls_recorder(25)
    run = run_on(every(10), fn, limit=2)
    with anyio.move_on_after(45):
        await run
    # 10 (to 35) and 20 (to 45) run; 30 skipped; 40 starts as 10 has ended
    assert calls == [10, 20, 40]
    assert run.statistics().skipped == 1


# --- run_on: failures, ends, cancellation -------------------------------------------------


async def test_a_failing_call_is_logged_and_counted_and_the_trigger_goes_on() -> None:
    async def fn(due: float) -> None:
        if due == 20:
            raise Boom("tick 20")

    with structlog.testing.capture_logs() as logs:
        run = run_on(every(10), fn)
        with anyio.move_on_after(45):
            await run
    stats = run.statistics()
    assert (stats.started, stats.succeeded, stats.failed) == (4, 3, 1)
    assert [(e["event"], e["trigger_event"], e["log_level"]) for e in logs] == [
        ("trioflow.trigger.call_failed", 20, "error")
    ]
    assert isinstance(logs[0]["exc_info"], Boom)


async def test_fail_fast_stops_on_the_first_failure_and_raises_it_as_itself() -> None:
    cancelled: list[float] = []

    async def fn(due: float) -> None:
        if due == 20:
            await anyio.sleep(1)
            raise Boom("tick 20")
        try:
            await anyio.sleep(100)
        except anyio.get_cancelled_exc_class():
            cancelled.append(due)
            raise

    run = run_on(every(10), fn, limit=5, fail_fast=True)
    with structlog.testing.capture_logs(), pytest.raises(Boom, match="tick 20"):
        await run
    assert anyio.current_time() == 21
    assert cancelled == [10]
    stats = run.statistics()
    assert (stats.events, stats.failed, stats.running) == (2, 1, 0)


async def test_the_run_ends_with_its_trigger_after_the_calls_it_started() -> None:
    send, receive = anyio.create_memory_object_stream[str](10)
    done: list[tuple[str, float]] = []

    async def fn(item: str) -> None:
        await anyio.sleep(5)
        done.append((item, anyio.current_time()))

    async with send:
        for item in ("a", "b", "c"):
            await send.send(item)
    async with receive:
        stats = await run_on(receive, fn, overlap="queue", max_queued=5)
    assert done == [("a", 5), ("b", 10), ("c", 15)]
    assert (stats.events, stats.succeeded, stats.queued, stats.running) == (3, 3, 0, 0)


async def test_an_async_generator_trigger_is_closed_when_the_run_is_cancelled() -> None:
    finished: list[str] = []

    async def ticks() -> AsyncIterator[int]:
        try:
            for n in range(100):
                await anyio.sleep(1)
                yield n
        finally:
            finished.append("closed")

    calls, fn = calls_recorder(0)
    with anyio.move_on_after(3.5):
        await run_on(ticks(), fn)
    assert calls == [1, 2, 3]
    assert finished == ["closed"]


async def test_cancellation_is_never_a_failure() -> None:
    async def fn(due: float) -> None:
        await anyio.sleep(100)

    run = run_on(every(1), fn)
    with anyio.move_on_after(5.5):
        await run
    stats = run.statistics()
    assert (stats.failed, stats.cancelled, stats.succeeded) == (0, 0, 0)


async def test_a_function_that_returns_no_awaitable_counts_as_a_failure() -> None:
    run = run_on(every(1), lambda _: None, fail_fast=True)  # type: ignore[arg-type,return-value]
    with structlog.testing.capture_logs(), pytest.raises(TypeError, match="fn must return an"):
        await run
    assert run.statistics().failed == 1


async def test_a_run_runs_once_and_can_be_started_in_a_task_group() -> None:
    calls, fn = calls_recorder(0)
    run = run_on(every(10), fn)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run.run)
        await anyio.sleep(25)
        assert run.statistics().succeeded == 2
        with pytest.raises(RuntimeError, match="awaited once"):
            await run
        tg.cancel_scope.cancel()
    assert calls == [10, 20]


async def fn_ok(event: object) -> None:
    return None


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"limit": 0}, ValueError, "limit must be an int >= 1, got 0"),
        ({"limit": 1.5}, TypeError, "limit must be an int >= 1, got 1.5"),
        ({"overlap": "drop"}, ValueError, "overlap must be 'skip', 'queue' or 'cancel'"),
        ({"overlap": 1}, TypeError, "overlap must be 'skip', 'queue' or 'cancel'"),
        ({"max_queued": 0}, ValueError, "max_queued must be an int >= 1"),
        ({"fail_fast": 1}, TypeError, "fail_fast must be"),
    ],
)
def test_run_on_refuses_bad_options(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        run_on(every(1), fn_ok, **kwargs)


def test_run_on_refuses_what_is_not_a_trigger_or_not_async() -> None:
    with pytest.raises(TypeError, match="trigger must be an async iterable, got"):
        run_on([1, 2], fn_ok)  # type: ignore[arg-type]

    def plain(event: object) -> None:
        return None

    with pytest.raises(TypeError, match="fn must be an async callable"):
        run_on(every(1), plain)  # type: ignore[arg-type]


# --- cron ---------------------------------------------------------------------------------


def wall_clock(start: datetime) -> Any:
    """A wall clock that starts at ``start`` and follows the (virtual) loop clock."""
    origin = anyio.current_time()
    zone = start.tzinfo
    utc = start.astimezone(UTC)  # aware arithmetic in a zone would be wall-clock
    return lambda: (utc + timedelta(seconds=anyio.current_time() - origin)).astimezone(zone)


async def test_cron_fires_at_the_matching_wall_clock_times() -> None:
    start = datetime(2026, 1, 5, 8, 50, tzinfo=UTC)  # a Monday
    origin = anyio.current_time()
    seen: list[tuple[str, float]] = []
    async for when in cron("*/30 9-10 * * mon", now=wall_clock(start)):
        seen.append((when.isoformat(), anyio.current_time() - origin))
        if len(seen) == 5:
            break
    assert seen == [
        ("2026-01-05T09:00:00+00:00", 600),
        ("2026-01-05T09:30:00+00:00", 2400),
        ("2026-01-05T10:00:00+00:00", 4200),
        ("2026-01-05T10:30:00+00:00", 6000),
        ("2026-01-12T09:00:00+00:00", 600 + 7 * 86400),
    ]


async def test_cron_reads_its_fields_in_the_named_time_zone() -> None:
    start = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)
    async for when in cron("0 9 * * *", timezone="America/New_York", now=wall_clock(start)):
        assert when.isoformat() == "2026-07-01T09:00:00-04:00"
        assert when.astimezone(UTC).hour == 13
        break
    assert anyio.current_time() == 13 * 3600


async def test_cron_across_a_daylight_saving_change() -> None:
    paris = ZoneInfo("Europe/Paris")
    start = datetime(2026, 3, 28, 12, 0, tzinfo=paris)
    seen = []
    async for when in cron("30 2 * * *", timezone=paris, now=wall_clock(start)):
        seen.append(when.isoformat())
        if len(seen) == 2:
            break
    # 02:30 does not exist on 29 March: it fires when the clock jumps to 03:00
    assert seen == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
    assert anyio.current_time() == (24 + 14.5 - 1) * 3600  # the night was an hour short


async def test_cron_delivers_a_time_that_passed_while_the_consumer_was_busy_at_once() -> None:
    start = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    origin = anyio.current_time()
    seen: list[tuple[int, float]] = []
    async for when in cron("* * * * *", now=wall_clock(start)):
        seen.append((when.minute, anyio.current_time() - origin))
        if len(seen) == 1:
            await anyio.sleep(150)  # busy past 00:02 and 00:03
        if len(seen) == 4:
            break
    assert seen == [(1, 30), (2, 180), (3, 180), (4, 210)]


async def test_run_on_cron_queues_a_time_that_comes_while_the_call_runs() -> None:
    start = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    calls, fn = calls_recorder(90)
    run = run_on(cron("* * * * *", now=wall_clock(start)), fn, overlap="queue")
    with anyio.move_on_after(200):
        await run
    # due at 30 (runs to 120), 90 (queued, runs from 120), 150 (queued when cancelled)
    assert calls == [30, 120]
    assert run.statistics().events == 3


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "five-field cron expression"),
        ("0 * * * * *", "five-field cron expression"),
        ("61 * * * *", "five-field cron expression.*: "),
        ("* * * * funday", "five-field cron expression"),
    ],
)
def test_cron_refuses_a_bad_expression(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cron(expression)


def test_cron_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError, match="expression must be a str, got 5"):
        cron(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone must be a known time zone name"):
        cron("* * * * *", timezone="Mars/Olympus")
    with pytest.raises(TypeError, match="timezone must be a time zone name or a tzinfo"):
        cron("* * * * *", timezone=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="now must be a callable"):
        cron("* * * * *", now=5)  # type: ignore[arg-type]


async def test_cron_refuses_a_naive_wall_clock() -> None:
    trigger = cron("* * * * *", now=lambda: datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="now\\(\\) must return an aware datetime"):
        async for _ in trigger:
            pass


def test_cron_without_cronsim_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cronsim", None)
    with pytest.raises(ImportError, match=r"pip install 'trioflow\[cron\]'"):
        cron("* * * * *")


# --- file_changes (real files, real time) -------------------------------------------------


@pytest.mark.real_time
async def test_file_changes_yields_a_debounced_batch_per_change(tmp_path: pathlib.Path) -> None:
    from watchfiles import Change

    seen: list[set[tuple[Change, str]]] = []

    async def writer() -> None:
        await anyio.sleep(0.3)  # the watch is set up
        (tmp_path / "a.txt").write_text("one")
        (tmp_path / "b.txt").write_text("two")

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            watch = cast(AsyncGenerator[Any, None], aiter(file_changes(tmp_path, debounce=0.2)))
            async with contextlib.aclosing(watch) as it:
                async for changes in it:
                    seen.append(changes)
                    names = {pathlib.Path(path).name for batch in seen for _, path in batch}
                    if names >= {"a.txt", "b.txt"}:
                        break
    kinds = {change for batch in seen for change, _ in batch}
    assert Change.added in kinds


@pytest.mark.real_time
async def test_run_on_file_changes_calls_for_each_batch(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "config.toml"
    target.write_text("v = 1")
    got = anyio.Event()
    seen: list[object] = []

    async def on_change(changes: object) -> None:
        seen.append(changes)
        got.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_on(file_changes(str(target), debounce=0.1), on_change).run)
            while not got.is_set():
                await anyio.sleep(0.2)
                target.write_text("v = 2")
            tg.cancel_scope.cancel()
    assert seen


def test_file_changes_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one path"):
        file_changes()
    with pytest.raises(TypeError, match=r"paths\[1\] must be a str or a path, got 3"):
        file_changes(".", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="debounce must be a finite number > 0"):
        file_changes(".", debounce=0)
    with pytest.raises(TypeError, match="recursive must be a bool"):
        file_changes(".", recursive=1)  # type: ignore[arg-type]
    assert repr(file_changes("a", pathlib.Path("b"))) == "file_changes('a', 'b')"


# --- the core does not load the optional libraries ----------------------------------------


def test_import_trioflow_loads_neither_cronsim_nor_watchfiles() -> None:
    program = (
        "import sys, trioflow\n"
        "trioflow.every(1); trioflow.file_changes('.')\n"
        "print(sorted(m for m in ('cronsim', 'watchfiles') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(trioflow.__file__).parent.parent)}
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
