"""SQLiteStore: durable workflow runs in one SQLite file, the embedded default store.

The stdlib ``sqlite3`` module is used from anyio worker threads (one connection per store,
guarded by a lock), in WAL mode with ``synchronous=NORMAL``: a committed transaction survives
the process being killed, and readers never block the writer. A busy timeout lets several
processes share one file. The schema is versioned with ``PRAGMA user_version``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, final

import anyio.to_thread

from .._checks import check_number
from .._errors import StoreError
from ._graph import StepStatus
from ._store import RunRecord, RunStatus, StepRecord, StoredValue

__all__ = ("SQLiteStore",)

# SQLite keeps the busy timeout in a C int of milliseconds (at most about 2147483 s).
_MAX_BUSY_TIMEOUT = 2_000_000

T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    shape TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
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
    PRIMARY KEY (run_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    value_type TEXT,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_by_creation ON runs (created_at);
"""

_SAVE_STEP = (
    "INSERT OR REPLACE INTO steps (run_id, name, status, attempts, value, value_type, error, "
    "compensation_error, started_at, finished_at, duration, seq) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SAVE_STATE = "INSERT OR REPLACE INTO state (run_id, key, value, value_type) VALUES (?, ?, ?, ?)"
_RUN_COLUMNS = (
    "run_id, workflow, status, created_at, max(updated_at, coalesce((SELECT max(finished_at) "
    "FROM steps WHERE steps.run_id = runs.run_id), '')), fingerprint, shape"
)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _now() -> str:
    return datetime.now(UTC).isoformat()


@final
class SQLiteStore:
    """A :class:`WorkflowStore` in one SQLite file: runs survive crashes and restarts.

    The file (and its parent directory) is created on first use. Several processes may use the
    same file at once. Close the store when done (``await store.aclose()``, or ``async with``);
    ``run_workflow`` never closes a store it is given.

    Example::

        async with SQLiteStore(".trioflow/state.db") as store:
            result = await run_workflow(wf, store=store, run_id="nightly-2024-06-01")

    Args:
        path: The database file.
        busy_timeout: Seconds to wait for another process's write lock before failing.

    Raises:
        TypeError: ``path`` is not a string or path, or ``busy_timeout`` is not a number.
        ValueError: ``busy_timeout`` is negative, NaN, infinite or above 2000000 (23 days).
    """

    __slots__ = ("_busy_ms", "_closed", "_conn", "_lock", "_path")

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a str or a path, got {path!r}")
        check_number(busy_timeout, "busy_timeout", minimum=0, maximum=_MAX_BUSY_TIMEOUT)
        self._path = Path(path)
        self._busy_ms = int(busy_timeout * 1000)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<SQLiteStore {str(self._path)!r}>"

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    async def __aenter__(self) -> SQLiteStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the database connection (on a worker thread); the store cannot be used after."""
        await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        """Close the database connection now, blocking; the store cannot be used after."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __del__(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()

    # --- plumbing -----------------------------------------------------------------------------
    def _error(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"workflow store {str(self._path)!r}: {what}: {exc}")

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"workflow store {str(self._path)!r} is closed")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._error("cannot open", exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(conn)
        except StoreError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise self._error("cannot open (is it a trioflow store?)", exc) from exc
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL takes an exclusive lock, and SQLite answers "database is
        # locked" at once, without its busy handler, when another process opening the same new
        # file does the same: retry for up to the busy timeout.
        deadline = time.monotonic() + self._busy_ms / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)
            else:
                return

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"workflow store {str(self._path)!r} has schema version {version}; this "
                f"trioflow reads version {SCHEMA_VERSION} (upgrade trioflow)"
            )
        # Another process may be creating the schema right now: take the write lock first.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                foreign = conn.execute(
                    "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND name "
                    "NOT IN ('runs', 'steps', 'state', 'runs_by_creation')"
                ).fetchone()[0]
                if foreign:
                    raise StoreError(
                        f"workflow store {str(self._path)!r} is an SQLite database with other "
                        "tables, not a trioflow store"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _run_locked(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            conn = self._conn
            if conn is None:
                conn = self._conn = self._connect()
            try:
                return fn(conn)
            except (sqlite3.Error, ValueError) as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if not isinstance(exc, sqlite3.Error):  # a row it cannot parse (JSON, a status)
                    what = f"{what} (a malformed record)"
                raise self._error(what, exc) from exc

    async def _call(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._run_locked, what, fn)

    # --- the store protocol -----------------------------------------------------------------
    async def load_run(self, run_id: str) -> RunRecord | None:
        """Return a stored run with its steps and state, or None when there is none.

        Args:
            run_id: The run's id.

        Returns:
            The run's record, or None.

        Raises:
            StoreError: The file cannot be opened or read.
        """

        def load(conn: sqlite3.Connection) -> RunRecord | None:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                return None
            steps = {
                r[0]: StepRecord(
                    name=r[0],
                    status=StepStatus(r[1]),
                    attempts=r[2],
                    value=None if r[3] is None else StoredValue(json=r[3], type=r[4]),
                    error=r[5],
                    compensation_error=r[6],
                    started_at=_dt(r[7]),
                    finished_at=_dt(r[8]),
                    duration=r[9],
                    seq=r[10],
                )
                for r in conn.execute(
                    "SELECT name, status, attempts, value, value_type, error, "
                    "compensation_error, started_at, finished_at, duration, seq "
                    "FROM steps WHERE run_id = ?",
                    (run_id,),
                )
            }
            state = {
                key: StoredValue(json=value, type=value_type)
                for key, value, value_type in conn.execute(
                    "SELECT key, value, value_type FROM state WHERE run_id = ?", (run_id,)
                )
            }
            counts: dict[StepStatus, int] = {}
            for record in steps.values():
                counts[record.status] = counts.get(record.status, 0) + 1
            return _run_record(row, counts, steps, state)

        return await self._call("cannot read", load)

    async def list_runs(self) -> tuple[RunRecord, ...]:
        """Return every stored run, newest first, without steps and state (counts only).

        Returns:
            The runs' records.

        Raises:
            StoreError: The file cannot be opened or read.
        """

        def runs(conn: sqlite3.Connection) -> tuple[RunRecord, ...]:
            counts: dict[str, dict[StepStatus, int]] = {}
            for run_id, status, n in conn.execute(
                "SELECT run_id, status, count(*) FROM steps GROUP BY run_id, status"
            ):
                counts.setdefault(run_id, {})[StepStatus(status)] = n
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY created_at DESC, rowid DESC"
            ).fetchall()
            return tuple(_run_record(row, counts.get(row[0], {}), {}, {}) for row in rows)

        return await self._call("cannot read", runs)

    async def begin_run(
        self, run_id: str, *, workflow: str, fingerprint: str, shape: Mapping[str, Sequence[str]]
    ) -> None:
        """Create a run, or mark an existing one RUNNING again (a resume).

        Args:
            run_id: The run's id.
            workflow: The workflow's name.
            fingerprint: Digest of the workflow's shape.
            shape: Step name -> names it comes after.

        Raises:
            StoreError: The file cannot be opened or written.
        """
        shape_text = json.dumps({name: list(after) for name, after in shape.items()})

        def begin(conn: sqlite3.Connection) -> None:
            now = _now()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO runs (run_id, workflow, status, created_at, updated_at, "
                "fingerprint, shape) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO "
                "UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
                (run_id, workflow, RunStatus.RUNNING.value, now, now, fingerprint, shape_text),
            )
            conn.execute("COMMIT")

        await self._call("cannot write", begin)

    async def save_steps(
        self, run_id: str, steps: Sequence[StepRecord], state: Mapping[str, StoredValue]
    ) -> None:
        """Write step records and changed state of a run, in one transaction.

        Args:
            run_id: The run's id (begun with :meth:`begin_run`).
            steps: Records that replace earlier records of the same steps.
            state: State values that replace earlier values of the same keys.

        Raises:
            StoreError: The file cannot be written.
        """
        step_rows = [
            (
                run_id,
                r.name,
                r.status.value,
                r.attempts,
                None if r.value is None else r.value.json,
                None if r.value is None else r.value.type,
                r.error,
                r.compensation_error,
                _iso(r.started_at),
                _iso(r.finished_at),
                r.duration,
                r.seq,
            )
            for r in steps
        ]
        state_rows = [(run_id, key, v.json, v.type) for key, v in state.items()]

        def save(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_SAVE_STEP, step_rows)
            if state_rows:
                conn.executemany(_SAVE_STATE, state_rows)
            # runs.updated_at is not touched here (one more write per transaction): readers
            # take the latest of it and the steps' end times.
            conn.execute("COMMIT")

        await self._call("cannot write", save)

    async def finish_run(self, run_id: str, status: RunStatus) -> None:
        """Record how a run ended.

        Args:
            run_id: The run's id.
            status: The final status.

        Raises:
            StoreError: The file cannot be written.
        """

        def finish(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE runs SET status = ?, updated_at = ? WHERE run_id = ?",
                (status.value, _now(), run_id),
            )

        await self._call("cannot write", finish)


def _run_record(
    row: tuple[Any, ...],
    counts: Mapping[StepStatus, int],
    steps: Mapping[str, StepRecord],
    state: Mapping[str, StoredValue],
) -> RunRecord:
    run_id, workflow, status, created, updated, fingerprint, shape = row
    return RunRecord(
        run_id=run_id,
        workflow=workflow,
        status=RunStatus(status),
        created_at=datetime.fromisoformat(created),
        updated_at=datetime.fromisoformat(updated),
        fingerprint=fingerprint,
        shape={name: tuple(after) for name, after in json.loads(shape).items()},
        step_counts=counts,
        steps=steps,
        state=state,
    )
