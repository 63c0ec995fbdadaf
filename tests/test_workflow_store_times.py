"""A step record's times: what a run stores is what a record built with datetimes holds.

A run gives its records POSIX timestamps that become datetimes when first read, and
SQLiteStore writes their text without building the datetimes; neither may show.
"""

from __future__ import annotations

import copy
import pickle
import threading
from datetime import UTC, datetime
from pathlib import Path

import anyio
import attrs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from trioflow import (
    Context,
    MemoryStore,
    SQLiteStore,
    StepRecord,
    StepStatus,
    StoredValue,
    Workflow,
    run_workflow,
)
from trioflow._workflow._store import step_record, step_times_text, utc_text

# From 1970 to 2200; with halves of a microsecond, whole seconds and values just below them.
timestamps = st.one_of(
    st.floats(0, 7.3e9, allow_nan=False),
    st.integers(0, 7_300_000_000).map(float),
    st.builds(
        lambda s, u: s + (u + 0.5) / 1e6, st.integers(0, 7_300_000_000), st.integers(0, 999_999)
    ),
    st.builds(lambda s, k: s - k * 1e-7, st.integers(1, 7_300_000_000), st.integers(0, 20)),
)


@given(timestamps)
@example(1.0e9 + 0.9999995)
@example(1.0e9 + 0.0000005)
@example(1_700_000_000.0)
@example(0.0)
def test_utc_text_is_isoformat_of_fromtimestamp(timestamp: float) -> None:
    assert utc_text(timestamp) == datetime.fromtimestamp(timestamp, UTC).isoformat()


def record(started: float | None, finished: float | None) -> StepRecord:
    return step_record(
        "s",
        StepStatus.SUCCEEDED,
        1,
        StoredValue(json="1"),
        None,
        None,
        started,
        finished,
        0.5,
        0,
        None,
    )


def with_datetimes(started: float | None, finished: float | None) -> StepRecord:
    return StepRecord(
        name="s",
        status=StepStatus.SUCCEEDED,
        attempts=1,
        value=StoredValue(json="1"),
        started_at=None if started is None else datetime.fromtimestamp(started, UTC),
        finished_at=None if finished is None else datetime.fromtimestamp(finished, UTC),
        duration=0.5,
        seq=0,
    )


@given(st.none() | timestamps, st.none() | timestamps)
def test_a_record_with_timestamps_is_the_record_with_their_datetimes(
    started: float | None, finished: float | None
) -> None:
    expected = with_datetimes(started, finished)
    # Its text before anything read it, then every way a record is seen.
    texts = step_times_text(record(started, finished))
    assert texts == tuple(
        None if t is None else t.isoformat() for t in attrs.astuple(expected)[6:8]
    )
    for seen in (
        lambda r: r,
        repr,
        hash,
        attrs.asdict,
        attrs.astuple,
        lambda r: attrs.evolve(r, attempts=2),
        lambda r: pickle.loads(pickle.dumps(r)),
        copy.copy,
        copy.deepcopy,
        lambda r: (r.started_at, r.finished_at),
    ):
        assert seen(record(started, finished)) == seen(expected)
    read = record(started, finished)
    assert read.started_at is read.started_at  # made once, then kept
    assert step_times_text(read) == texts


def test_records_read_on_threads_at_once_agree() -> None:
    records = [record(1.7e9 + k / 7, 1.7e9 + k / 3) for k in range(2_000)]
    seen: list[list[tuple[datetime | None, datetime | None]]] = [[], []]

    def read(into: list[tuple[datetime | None, datetime | None]]) -> None:
        for r in records:
            into.append((r.started_at, r.finished_at))

    threads = [threading.Thread(target=read, args=(into,)) for into in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen[0] == seen[1] == [(r.started_at, r.finished_at) for r in records]


async def steps(ctx: Context) -> int:
    await anyio.sleep(0)
    return 1


def wide() -> Workflow:
    wf = Workflow("times")
    for i in range(30):
        wf.step(f"s{i}", steps, after=[f"s{i // 3}"] if i else [])
    return wf


@pytest.mark.anyio
async def test_a_memory_store_keeps_datetimes_of_the_run() -> None:
    store = MemoryStore()
    result = await run_workflow(wide(), store=store, run_id="r")
    stored = await store.load_run("r")
    assert stored is not None
    for name, step in stored.steps.items():
        assert type(step.started_at) is datetime
        assert type(step.finished_at) is datetime
        assert step.started_at.tzinfo is UTC
        assert step.started_at <= step.finished_at
        assert step == attrs.evolve(step)  # the same through __init__
        assert step.duration == result.steps[name].duration


@pytest.mark.anyio
@pytest.mark.real_time
async def test_sqlite_stores_the_times_a_memory_store_holds(tmp_path: Path) -> None:
    # The same records, saved by a run to both stores: what SQLite reads back is equal.
    memory = MemoryStore()
    await run_workflow(wide(), store=memory, run_id="r")
    kept = await memory.load_run("r")
    assert kept is not None
    async with SQLiteStore(tmp_path / "state.db") as sqlite:
        await sqlite.begin_run(
            "r", workflow="times", fingerprint=kept.fingerprint, shape=kept.shape
        )
        fresh = [record(1.7e9 + k * 0.1234567, 1.7e9 + k * 0.7654321) for k in range(50)]
        await sqlite.save_steps("r", [*kept.steps.values()], {})
        loaded = await sqlite.load_run("r")
        assert loaded is not None
        assert dict(loaded.steps) == dict(kept.steps)
        for k, r in enumerate(fresh):
            await sqlite.save_steps("r", [attrs.evolve(r, name=f"s{k % 30}")], {})
            back = await sqlite.load_run("r")
            assert back is not None
            assert back.steps[f"s{k % 30}"] == attrs.evolve(r, name=f"s{k % 30}")
