"""SQLiteStore's steps table: rows appended in completion order, one row per step.

A file whose steps table has the first layout of schema version 2 (WITHOUT ROWID, keyed by run
and step name) is rebuilt when it is opened, and a run in it resumes as before. A record's
absent fields are bound as sentinels that SQL makes NULL: every field, present, absent, empty
or zero, reads back as written.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trioflow import (
    Context,
    SQLiteStore,
    StepRecord,
    StepStatus,
    StoredValue,
    Workflow,
    run_workflow,
)

pytestmark = pytest.mark.anyio

# The schema version 2 files were written with before the steps table became a rowid table.
SCHEMA_2_KEYED = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    shape TEXT NOT NULL,
    active_seconds REAL NOT NULL DEFAULT 0,
    session_started TEXT
);
CREATE TABLE steps (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    value TEXT,
    value_type TEXT,
    error TEXT,
    compensation_error TEXT,
    started_at TEXT,
    finished_at TEXT,
    duration REAL,
    seq INTEGER,
    fingerprint TEXT,
    PRIMARY KEY (run_id, name)
) WITHOUT ROWID;
CREATE TABLE state (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    value_type TEXT,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE INDEX runs_by_creation ON runs (created_at);
CREATE TABLE leases (
    run_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    token TEXT NOT NULL,
    process_started REAL,
    since TEXT NOT NULL,
    expires_at TEXT NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 2;
"""


def _steps_sql(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'steps'").fetchone()
    conn.close()
    assert isinstance(sql, str)
    return sql


def _rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT run_id, name, status FROM steps ORDER BY rowid").fetchall()
    conn.close()
    return rows


@pytest.mark.real_time
async def test_a_file_of_the_keyed_layout_is_rebuilt_and_its_run_resumes(tmp_path: Path) -> None:
    ran: list[str] = []

    def step(name: str) -> Callable[[Context], Awaitable[int]]:
        async def fn(ctx: Context) -> int:
            ran.append(name)
            return len(name)

        return fn

    wf = Workflow("w")
    wf.step("a", step("a"))
    wf.step("bb", step("bb"), after="a")
    wf.step("ccc", step("ccc"), after="bb")
    graph = wf.graph()
    path = tmp_path / "keyed.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_2_KEYED)
        conn.execute(
            "INSERT INTO runs VALUES ('died', 'w', 'running', '2026-01-02T10:00:00+00:00', "
            "'2026-01-02T10:00:30+00:00', ?, ?, 12.5, NULL)",
            (graph.fingerprint, json.dumps(dict(graph.shape))),
        )
        # Written in key order, as that layout kept them; "bb" ended first.
        conn.executemany(
            "INSERT INTO steps VALUES ('died', ?, ?, 1, ?, NULL, ?, NULL, "
            "'2026-01-02T10:00:00+00:00', ?, 1.0, ?, NULL)",
            [
                ("a", "succeeded", "1", None, "2026-01-02T10:00:20+00:00", 1),
                ("bb", "failed", None, "OSError: disk", "2026-01-02T10:00:10+00:00", 0),
            ],
        )
        conn.execute("INSERT INTO state VALUES ('died', 'k', '\"v\"', NULL)")
    conn.close()
    assert "WITHOUT ROWID" in _steps_sql(path)

    async with SQLiteStore(path) as store:
        listed = await store.list_runs()
        assert [(r.run_id, r.step_counts) for r in listed] == [
            ("died", {StepStatus.SUCCEEDED: 1, StepStatus.FAILED: 1})
        ]
        assert "WITHOUT ROWID" not in _steps_sql(path).upper()
        # Every row kept, each run's in the order its steps ended.
        assert _rows(path) == [("died", "bb", "failed"), ("died", "a", "succeeded")]
        record = await store.load_run("died")
        assert record is not None
        assert record.active_seconds == 12.5
        assert record.state == {"k": StoredValue(json='"v"')}
        assert record.steps["bb"].error == "OSError: disk"
        assert record.steps["a"].finished_at == datetime(2026, 1, 2, 10, 0, 20, tzinfo=UTC)
        result = await run_workflow(wf, store=store, run_id="died")
    assert result.ok
    assert result.steps["a"].restored
    assert ran == ["bb", "ccc"]  # the durable step did not run again
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    # One row per step: "bb" replaced, "ccc" appended after it.
    assert _rows(path) == [
        ("died", "a", "succeeded"),
        ("died", "bb", "succeeded"),
        ("died", "ccc", "succeeded"),
    ]
    async with SQLiteStore(path) as store:  # opened again: nothing left to rebuild
        again = await store.load_run("died")
    assert again is not None
    assert {name: r.status for name, r in again.steps.items()} == dict.fromkeys(
        ("a", "bb", "ccc"), StepStatus.SUCCEEDED
    )


texts = st.none() | st.sampled_from(["", "0", "x", "OSError: disk full"])
times = st.none() | st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
records = st.builds(
    StepRecord,
    name=st.sampled_from(["a", "b", "c"]),
    status=st.sampled_from(StepStatus),
    attempts=st.integers(0, 5),
    value=st.none()
    | st.builds(
        StoredValue,
        json=st.sampled_from(["null", "0", '""', '{"x": [1]}']),
        type=st.none() | st.sampled_from(["", "builtins:int"]),
    ),
    error=texts,
    compensation_error=texts,
    started_at=times,
    finished_at=times,
    duration=st.none() | st.sampled_from([0.0, 1e-6, 2.5]),
    seq=st.none() | st.integers(0, 3),
    fingerprint=texts,
)
_run_ids = itertools.count()


@pytest.mark.real_time
@pytest.mark.parametrize("anyio_backend", ["trio"])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.lists(records, max_size=4), min_size=1, max_size=3))
def test_every_field_reads_back_as_written(
    tmp_path: Path, anyio_backend: str, batches: list[list[StepRecord]]
) -> None:
    run_id = f"r{next(_run_ids)}"

    async def main() -> None:
        async with SQLiteStore(tmp_path / "fields.db") as store:
            await store.begin_run(
                run_id, workflow="w", fingerprint="f", shape={"a": [], "b": [], "c": []}
            )
            latest: dict[str, StepRecord] = {}
            for batch in batches:
                await store.save_steps(run_id, batch, {})
                latest.update((r.name, r) for r in batch)
            loaded = await store.load_run(run_id)
        assert loaded is not None
        assert dict(loaded.steps) == latest
        with sqlite3.connect(tmp_path / "fields.db") as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM steps WHERE run_id = ?", (run_id,)
            ).fetchone()
        conn.close()
        assert count == len(latest)  # one row per step, whatever was written before

    anyio.run(main, backend=anyio_backend)
