"""SQLiteStore.save_steps: writes of any size, records or a run's rows, read back as written.

Whatever the number of records in one write (none, one, a few, a large group), given as
records (times as datetimes) or as a run gives them (rows, times as timestamps), every record
reads back as written, the steps table keeps one row per step, and the rows stand in the order
of the last write of each step: of two records of a step in one write the later one stays. A
value too large for SQLite in a large write names its step and nothing of the write is kept.
"""

from __future__ import annotations

import itertools
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trioflow import SQLiteStore, StepRecord, StepStatus, StoredValue, ValueTooLargeError
from trioflow._workflow._store import StepRows, record_row, step_record

pytestmark = pytest.mark.anyio

NAMES = [f"s{i}" for i in range(80)]
# Sizes around powers of two, and any size up to a large group.
SIZES = st.sampled_from([0, 1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 97]) | st.integers(
    0, 100
)


def _record(name: str, k: int) -> StepRecord:
    # Fields that differ from record to record, absent ones too, so a row read back in the
    # place of another is seen. An odd k's times are timestamps, as a run's records hold them.
    when = datetime(2026, 1, 2, 3, 4, 5, k * 7919 % 1_000_000, tzinfo=UTC)
    if k % 2:
        stamp = when.timestamp() + k / 1024
        return step_record(
            name,
            StepStatus.SUCCEEDED if k % 3 else StepStatus.FAILED,
            k,
            StoredValue(json=str(k)) if k % 3 else None,
            None if k % 3 else f"OSError: {k}",
            None if k % 5 else "",
            stamp if k % 4 != 1 else None,
            stamp + 1e-6,
            k / 8 if k % 6 else None,
            k if k % 7 else None,
            f"f{k}",
        )
    return StepRecord(
        name=name,
        status=StepStatus.SUCCEEDED if k % 3 else StepStatus.FAILED,
        attempts=k,
        value=StoredValue(json=str(k), type="builtins:int") if k % 3 else None,
        error=None if k % 3 else f"OSError: {k}",
        compensation_error=None if k % 5 else "",
        started_at=when if k % 4 else None,
        finished_at=when,
        duration=k / 8 if k % 6 else None,
        seq=k if k % 7 else None,
        fingerprint=None,
    )


@st.composite
def writes(draw: st.DrawFn) -> list[list[StepRecord]]:
    counter = itertools.count()
    return [
        [_record(draw(st.sampled_from(NAMES)), next(counter)) for _ in range(draw(SIZES))]
        for _ in range(draw(st.integers(1, 3)))
    ]


_run_ids = itertools.count()


def _rows(path: Path, run_id: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT name FROM steps WHERE run_id = ? ORDER BY rowid", (run_id,)
        ).fetchall()
    conn.close()
    return [name for (name,) in rows]


@pytest.mark.real_time
@pytest.mark.parametrize("anyio_backend", ["trio"])
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=writes())
def test_records_in_writes_of_any_size_read_back_as_written(
    tmp_path: Path, anyio_backend: str, batches: list[list[StepRecord]]
) -> None:
    run_id = f"r{next(_run_ids)}"
    path = tmp_path / "chunks.db"

    async def main() -> dict[str, StepRecord]:
        async with SQLiteStore(path) as store:
            await store.begin_run(
                run_id, workflow="w", fingerprint="f", shape=dict.fromkeys(NAMES, ())
            )
            for k, batch in enumerate(batches):
                # As a run gives them (rows), or as records.
                given = StepRows([record_row(r) for r in batch]) if k % 2 else batch
                await store.save_steps(run_id, given, {})
            loaded = await store.load_run(run_id)
        assert loaded is not None
        return dict(loaded.steps)

    steps = anyio.run(main, backend=anyio_backend)
    latest: dict[str, StepRecord] = {}
    for batch in batches:
        for record in batch:
            latest.pop(record.name, None)  # a replaced row goes to the end
            latest[record.name] = record
    assert steps == latest
    assert _rows(path, run_id) == list(latest)


@pytest.mark.real_time
async def test_a_value_too_large_in_a_large_write_names_its_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect = sqlite3.connect

    def small(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)  # type: ignore[call-overload]
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100_000)
        return conn

    monkeypatch.setattr(sqlite3, "connect", small)
    records = [_record(name, k + 1) for k, name in enumerate(NAMES[:70])]
    big = StoredValue(json='"' + "x" * 120_000 + '"')
    records[50] = StepRecord(name=records[50].name, status=StepStatus.SUCCEEDED, value=big)
    async with SQLiteStore(tmp_path / "big.db") as store:
        await store.begin_run("r", workflow="w", fingerprint="f", shape=dict.fromkeys(NAMES, ()))
        with pytest.raises(ValueTooLargeError) as info:
            await store.save_steps("r", records, {})
        assert info.value.step == "s50"
        loaded = await store.load_run("r")
        assert loaded is not None
        assert loaded.steps == {}  # nothing of the write was kept
        del records[50]
        await store.save_steps("r", records, {})
        loaded = await store.load_run("r")
    assert loaded is not None
    assert loaded.steps == {r.name: r for r in records}
