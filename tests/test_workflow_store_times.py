"""What a run hands its store: the records a store built with datetimes would hold.

A run gives its records POSIX timestamps that become datetimes when first read, and
SQLiteStore writes their text without building the datetimes. A run hands its store the
records as rows (``StepRows``): the stores of trioflow read the rows, any other store sees a
sequence of ``StepRecord``. None of it may show.
"""

from __future__ import annotations

import copy
import pickle
import threading
from collections.abc import Mapping, Sequence
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
    WorkflowStore,
    run_workflow,
)
from trioflow._workflow._store import (
    StepRows,
    as_record,
    as_row,
    record_row,
    step_record,
    step_times_text,
    utc_text,
)

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


class Recording:
    """A store written for trioflow's protocol: keeps what it is given, as records."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.given: list[list[StepRecord]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def save_steps(
        self, run_id: str, steps: Sequence[StepRecord], state: Mapping[str, StoredValue]
    ) -> None:
        assert isinstance(steps, Sequence)
        records = list(steps)
        assert all(type(record) is StepRecord for record in records)
        assert [steps[k] for k in range(len(steps))] == records
        assert steps[1:] == records[1:]
        assert steps[-1] == records[-1]
        self.given.append(records)
        await self.inner.save_steps(run_id, steps, state)


def workflow() -> Workflow:
    async def ok(ctx: Context) -> int:
        await anyio.sleep(0)
        return 7

    async def broken(ctx: Context) -> None:
        raise ValueError("no")

    wf = Workflow("rows")
    for i in range(12):
        wf.step(f"s{i}", ok, after=[f"s{i // 2}"] if i else [])
    wf.step("maybe", broken, after=["s3"], optional=True)
    return wf


@pytest.mark.anyio
@pytest.mark.real_time
async def test_every_store_gets_the_same_records(tmp_path: Path) -> None:
    recording = Recording()
    assert isinstance(recording, WorkflowStore)
    result = await run_workflow(workflow(), store=recording, run_id="r")
    assert result.ok
    given = {record.name: record for batch in recording.given for record in batch}
    assert set(given) == {f"s{i}" for i in range(12)} | {"maybe"}
    assert given["maybe"].status is StepStatus.FAILED
    assert given["maybe"].error == "ValueError: no"
    assert given["s0"].value == StoredValue(json="7", type=None)
    stored = await recording.inner.load_run("r")
    assert stored is not None
    assert dict(stored.steps) == given
    # The rows of those records, written to SQLite and read back, are the same records.
    async with SQLiteStore(tmp_path / "state.db") as sqlite:
        await sqlite.begin_run(
            "r", workflow="rows", fingerprint=stored.fingerprint, shape=stored.shape
        )
        await sqlite.save_steps("r", StepRows([as_row(r) for r in given.values()]), {})
        loaded = await sqlite.load_run("r")
        assert loaded is not None
        assert dict(loaded.steps) == given


@pytest.mark.anyio
async def test_a_memory_store_gives_records_for_rows() -> None:
    store = MemoryStore()
    await run_workflow(workflow(), store=store, run_id="r")
    listed = await store.list_runs()  # counts read from rows
    assert listed[0].step_counts == {StepStatus.SUCCEEDED: 12, StepStatus.FAILED: 1}
    first = await store.load_run("r")
    again = await store.load_run("r")
    assert first is not None
    assert again is not None
    assert all(type(record) is StepRecord for record in first.steps.values())
    assert dict(first.steps) == dict(again.steps)
    assert first.step_counts == listed[0].step_counts
    # A record given as it is stays itself, beside rows.
    own = attrs.evolve(first.steps["s1"], attempts=5)
    await store.save_steps("r", [own], {})
    third = await store.load_run("r")
    assert third is not None
    assert third.steps["s1"] is own
    assert dict(third.steps) == {**dict(first.steps), "s1": own}


def test_rows_and_records_turn_into_each_other() -> None:
    record = step_record(
        "s",
        StepStatus.SUCCEEDED,
        2,
        StoredValue(json="1"),
        None,
        None,
        1.7e9,
        1.7e9 + 1,
        1.0,
        3,
        "f",
    )
    row = record_row(record)
    assert as_row(row) is row
    assert as_row(record) == row
    assert as_record(record) is record
    assert as_record(row) == record
    rows = StepRows([row, row])
    assert len(rows) == 2
    assert rows[0] is rows[0]  # built once
    assert list(rows) == [record, record]
    assert repr(rows) == f"StepRows({[record, record]!r})"
