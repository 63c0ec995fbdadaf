"""Regressions of durable runs: active time, step fingerprints, values too large for the store,
malformed rows, and state files of trioflow 0.1."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _redis_server import STORE_KINDS, open_store
from trioflow import (
    Context,
    MemoryStore,
    RunStatus,
    SQLiteStore,
    StepRecord,
    StepStatus,
    StoreError,
    UnstorableValueError,
    ValueTooLargeError,
    Workflow,
    WorkflowShapeChangedError,
    WorkflowStore,
    run_workflow,
)
from trioflow.redis._store import _stamps

pytestmark = pytest.mark.anyio


@pytest.fixture(params=STORE_KINDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: object
) -> AsyncIterator[WorkflowStore]:
    async with open_store(request, tmp_path / "state.db") as opened:
        yield opened


async def noop(ctx: Context) -> None:
    pass


# --- active time: the idle gap between an interruption and a resume does not count ----------
async def test_a_resumed_runs_active_seconds_leave_out_the_idle_gap() -> None:
    store = MemoryStore()

    async def work(ctx: Context) -> None:
        await anyio.sleep(10)

    wf = Workflow("w").step("a", work)
    with anyio.move_on_after(5):  # Ctrl-C in the middle of a
        await run_workflow(wf, store=store, run_id="r")
    await anyio.sleep(60)  # idle
    result = await run_workflow(wf, store=store, run_id="r")
    assert result.ok
    record = await store.load_run("r")
    assert record is not None
    assert record.active_seconds == 15  # 5 + 10, not the 75 of the wall span
    [listed] = await store.list_runs()
    assert listed.active_seconds == 15


class Clock:
    """A wall clock the test moves (what the stores stamp their rows with)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = datetime.now(UTC)  # steps' own times are real: never in its future
        monkeypatch.setattr("trioflow._workflow._store._now", lambda: self.now)
        monkeypatch.setattr("trioflow._workflow._sqlite._now", lambda: self.now.isoformat())
        monkeypatch.setattr("trioflow.redis._store._now", lambda: _stamps(self.now))

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def test_active_seconds_sum_the_sessions_of_a_run(
    store: WorkflowStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    shape = {"a": ()}
    await store.begin_run("r", workflow="w", fingerprint="f", shape=shape)
    clock.advance(7)
    await store.save_steps(
        "r",
        [StepRecord(name="a", status=StepStatus.FAILED, finished_at=clock.now)],
        {},
    )
    record = await store.load_run("r")
    assert record is not None
    assert record.active_seconds == 7  # a session in progress: up to its last write
    clock.advance(3600)  # the process died; an hour later, a resume
    await store.begin_run("r", workflow="w", fingerprint="f", shape=shape)
    clock.advance(100)
    await store.finish_run("r", RunStatus.SUCCEEDED, elapsed=2.5)
    record = await store.load_run("r")
    assert record is not None
    assert record.active_seconds == 9.5  # 7 of the dead session, 2.5 of the resume
    assert (record.updated_at - record.created_at).total_seconds() == 3707


@pytest.mark.real_time
async def test_sqlite_active_seconds_of_a_resumed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(monkeypatch)
    fail = [True]

    async def flaky(ctx: Context) -> None:
        if fail[0]:
            raise ConnectionError("down")

    wf = Workflow("w").step("a", flaky)
    async with SQLiteStore(tmp_path / "state.db") as store:
        first = await run_workflow(wf, store=store, run_id="r")
        clock.advance(75)
        fail[0] = False
        second = await run_workflow(wf, store=store, run_id="r")
        assert second.ok
        [record] = await store.list_runs()
    assert (record.updated_at - record.created_at).total_seconds() == 75
    assert 0 < record.active_seconds <= first.duration + second.duration < 30


# --- a step whose definition changed runs again on resume -----------------------------------
async def test_a_done_step_whose_fingerprint_changed_runs_again(store: WorkflowStore) -> None:
    calls: list[str] = []
    fail = [True]

    async def build(ctx: Context) -> str:
        calls.append("build")
        return f"built {len(calls)}"

    async def test(ctx: Context) -> str:
        calls.append("test")
        if fail[0]:
            raise AssertionError("red")
        return str(ctx.results["build"])

    def workflow(build_print: str | None, lint_print: str | None = "l1") -> Workflow:
        wf = Workflow("w")
        wf.step("build", build, fingerprint=build_print)
        wf.step("lint", noop, fingerprint=lint_print)
        wf.step("test", test, after=["build", "lint"])
        return wf

    first = await run_workflow(workflow("b1"), store=store, run_id="r")
    assert not first.ok
    assert first.changed == ()
    record = await store.load_run("r")
    assert record is not None
    assert record.steps["build"].fingerprint == "b1"
    assert record.steps["test"].fingerprint is None

    calls.clear()
    second = await run_workflow(workflow("b2"), store=store, run_id="r")  # build changed
    assert second.changed == ("build",)
    assert not second.steps["build"].restored
    assert second.steps["lint"].restored
    assert calls == ["build", "test"]
    record = await store.load_run("r")
    assert record is not None
    assert record.steps["build"].fingerprint == "b2"

    calls.clear()
    fail[0] = False
    # Unchanged, or no fingerprint now: done steps stay done.
    third = await run_workflow(workflow("b2", lint_print=None), store=store, run_id="r")
    assert third.ok
    assert third.changed == ()
    assert calls == ["test"]
    assert third.values["test"] == "built 1"


def test_a_fingerprint_must_be_a_non_empty_string() -> None:
    wf = Workflow("w")
    with pytest.raises(TypeError, match="fingerprint of step 'a' must be a non-empty str"):
        wf.step("a", noop, fingerprint=5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="fingerprint of step 'a'"):
        wf.step("a", noop, fingerprint="")
    assert wf.step("a", noop, fingerprint="abc").steps["a"].fingerprint == "abc"


# --- a value too large for the store fails its step, not the run ----------------------------
@pytest.fixture
def small_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite's length limit is 1 GB: lower it on every connection instead of allocating that.
    connect = sqlite3.connect

    def small(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100_000)
        return conn

    monkeypatch.setattr(sqlite3, "connect", small)


@pytest.mark.real_time
@pytest.mark.usefixtures("small_sqlite")
@pytest.mark.parametrize("optional", [False, True])
async def test_a_value_too_large_for_sqlite_fails_its_step(tmp_path: Path, optional: bool) -> None:
    ran: list[str] = []

    async def big(ctx: Context) -> str:
        ran.append("big")
        return "x" * 200_000

    async def after(ctx: Context) -> None:
        ran.append("after")

    async def other(ctx: Context) -> int:
        return 1

    wf = Workflow("w").step("big", big, optional=optional).step("after", after, after="big")
    wf.step("other", other)
    async with SQLiteStore(tmp_path / "state.db") as store:
        for _ in range(2):  # a resume goes the same way: the run can finish
            result = await run_workflow(wf, store=store, run_id="r")
            error = result.steps["big"].error
            assert result.steps["big"].status is StepStatus.FAILED
            assert isinstance(error, ValueTooLargeError)
            assert isinstance(error, UnstorableValueError)
            assert error.step == "big"
            assert error.value_type is str
            assert error.limit == 100_000
            assert error.size == 200_002
            assert str(error) == (
                "step 'big' returned a value of type 'str' whose JSON form (200002 bytes) is "
                "larger than the store can hold (100000 bytes)"
            )
            assert result.ok is optional
            assert result.steps["after"].status is (
                StepStatus.SUCCEEDED if optional else StepStatus.NOT_RUN
            )
            assert "big" not in result.values
            record = await store.load_run("r")
            assert record is not None
            assert record.status is (RunStatus.SUCCEEDED if optional else RunStatus.FAILED)
            assert record.steps["big"].status is StepStatus.FAILED
            assert record.steps["big"].value is None
            assert record.steps["big"].error is not None
            assert record.steps["big"].error.startswith("ValueTooLargeError: step 'big'")
            if optional:
                break
    assert ran.count("big") == (1 if optional else 2)


# --- malformed rows are StoreErrors naming the file and the run -----------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


async def _template(path: Path) -> None:
    async def value(ctx: Context) -> int:
        ctx.set("k", 1)
        return 1

    wf = Workflow("w").step("a", value).step("b", noop, after="a")
    async with SQLiteStore(path) as store:
        await run_workflow(wf, store=store, run_id="bad-run")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "state.db"
    anyio.run(_template, path)
    return path


def _read_everything(path: Path) -> list[str]:
    # What `trioflow runs` and a resume do; returns the errors seen.
    errors: list[str] = []

    async def main() -> None:
        async with SQLiteStore(path) as store:
            for read in (store.list_runs, lambda: store.load_run("bad-run")):
                try:
                    await read()
                except StoreError as exc:
                    errors.append(str(exc))
            wf = Workflow("w").step("a", noop).step("b", noop, after="a")
            try:
                await run_workflow(wf, store=store, run_id="bad-run")
            except StoreError as exc:
                errors.append(str(exc))
            except WorkflowShapeChangedError:
                pass

    anyio.run(main)
    return errors


def _corrupt(template: Path, directory: Path, statement: str, *params: object) -> Path:
    path = directory / "state.db"
    path.unlink(missing_ok=True)
    shutil.copy(template, path)
    with sqlite3.connect(path) as conn:
        conn.execute(statement, params)
    conn.close()
    return path


def _valid_shape(data: object) -> bool:
    return isinstance(data, dict) and all(
        isinstance(v, list) and all(isinstance(a, str) for a in v) for v in data.values()
    )


COLUMNS = [
    ("UPDATE runs SET shape = ?", "shape"),
    ("UPDATE steps SET value = ? WHERE name = 'a'", "value"),
    ("UPDATE state SET value = ?", "state"),
]


@pytest.mark.parametrize(("statement", "column"), COLUMNS)
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=json_values)
def test_valid_json_of_the_wrong_shape_is_a_store_error(
    template: Path, tmp_path: Path, statement: str, column: str, data: object
) -> None:
    path = _corrupt(template, tmp_path, statement, json.dumps(data))
    errors = _read_everything(path)
    for error in errors:
        assert f"workflow store {str(path)!r}" in error
        assert "run 'bad-run'" in error
        assert "malformed record" in error
    if column == "shape" and not _valid_shape(data):
        assert len(errors) == 3  # list_runs, load_run and the resume


@pytest.mark.parametrize(
    ("statement", "value"),
    [
        # (A TEXT column turns a number into text: a blob is what it cannot hold.)
        ("UPDATE runs SET shape = ?", "{not json"),
        ("UPDATE runs SET status = ?", "exploded"),
        ("UPDATE runs SET status = ?", 5),
        ("UPDATE runs SET created_at = ?", "yesterday"),
        ("UPDATE runs SET created_at = ?", 5),
        ("UPDATE runs SET workflow = ?", b"x"),
        ("UPDATE runs SET active_seconds = ?", "long"),
        ("UPDATE runs SET session_started = ?", "now"),
        ("UPDATE steps SET status = ? WHERE name = 'a'", "bogus"),
        ("UPDATE steps SET attempts = ? WHERE name = 'a'", "x"),
        ("UPDATE steps SET duration = ? WHERE name = 'a'", "x"),
        ("UPDATE steps SET seq = ? WHERE name = 'a'", 1.5),
        ("UPDATE steps SET started_at = ? WHERE name = 'a'", 3),
        ("UPDATE steps SET error = ? WHERE name = 'a'", b"x"),
        ("UPDATE steps SET value = ? WHERE name = 'a'", "{not json"),
        ("UPDATE steps SET value_type = ? WHERE name = 'a'", b"x"),
        ("UPDATE steps SET fingerprint = ? WHERE name = 'a'", b"x"),
        ("UPDATE steps SET name = ? WHERE name = 'a'", "not-in-the-shape"),
        ("UPDATE state SET value = ?", "{not json"),
        ("UPDATE state SET key = ?", b"x"),
        (
            "INSERT INTO leases VALUES ('bad-run', 'h', ?, 't', NULL, '2026-01-01', "
            "'2999-01-01T00:00:00+00:00')",
            "pid",
        ),
        (
            "INSERT INTO leases VALUES ('bad-run', 'h', 1, 't', NULL, '2026-01-01', ?)",
            "soon",
        ),
    ],
)
def test_a_malformed_column_is_a_store_error_naming_the_file_and_the_run(
    template: Path, tmp_path: Path, statement: str, value: object
) -> None:
    path = _corrupt(template, tmp_path, statement, value)
    errors = _read_everything(path)
    assert errors, "no StoreError"
    for error in errors:
        assert error.startswith(f"workflow store {str(path)!r}: ")
        assert "(a malformed record): run 'bad-run': " in error


# --- state files of trioflow 0.1 keep opening ------------------------------------------------
SCHEMA_0_1 = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, status TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, fingerprint TEXT NOT NULL,
    shape TEXT NOT NULL
);
CREATE TABLE steps (
    run_id TEXT NOT NULL REFERENCES runs(run_id), name TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL, value TEXT, value_type TEXT, error TEXT,
    compensation_error TEXT, started_at TEXT, finished_at TEXT, duration REAL, seq INTEGER,
    PRIMARY KEY (run_id, name)
) WITHOUT ROWID;
CREATE TABLE state (
    run_id TEXT NOT NULL REFERENCES runs(run_id), key TEXT NOT NULL, value TEXT NOT NULL,
    value_type TEXT, PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE INDEX runs_by_creation ON runs (created_at);
PRAGMA user_version = 1;
"""


@pytest.mark.real_time
async def test_a_state_file_of_trioflow_0_1_is_migrated(tmp_path: Path) -> None:
    wf = Workflow("w").step("a", noop).step("b", noop, after="a")
    graph = wf.graph()
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_0_1)
        for run_id, status, created, updated in [
            ("done", "succeeded", "2025-01-01T10:00:00+00:00", "2025-01-01T10:01:15+00:00"),
            ("died", "running", "2025-01-02T10:00:00+00:00", "2025-01-02T10:00:30+00:00"),
        ]:
            conn.execute(
                "INSERT INTO runs VALUES (?, 'w', ?, ?, ?, ?, ?)",
                (
                    run_id,
                    status,
                    created,
                    updated,
                    graph.fingerprint,
                    json.dumps(dict(graph.shape)),
                ),
            )
        conn.execute(
            "INSERT INTO steps VALUES ('died', 'a', 'succeeded', 1, '1', NULL, NULL, NULL, "
            "'2025-01-02T10:00:00+00:00', '2025-01-02T10:00:40+00:00', 40.0, 0)"
        )
    conn.close()
    async with SQLiteStore(path) as store:
        listed = {r.run_id: r for r in await store.list_runs()}
        assert listed["done"].active_seconds == 75  # 0.1 kept no active time: its wall span
        assert listed["done"].owner is None
        assert not listed["done"].interrupted
        assert listed["died"].interrupted
        assert listed["died"].active_seconds == 40
        record = await store.load_run("died")
        assert record is not None
        assert record.steps["a"].fingerprint is None
        result = await run_workflow(wf, store=store, run_id="died")
        assert result.ok
        assert result.steps["a"].restored
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()
