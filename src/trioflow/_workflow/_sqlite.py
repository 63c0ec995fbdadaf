"""SQLiteStore: durable workflow runs in one SQLite file, the embedded default store.

The stdlib ``sqlite3`` module is used through one connection per store, guarded by a lock, in
WAL mode with ``synchronous=NORMAL``: a committed transaction survives the process being
killed, and readers never block the writer. Reads, leases and large writes run on anyio worker
threads; a small write is committed on the event loop's thread when nothing would make it wait
(the connection is free and no other connection holds the write lock), since a commit without
an fsync costs less than a thread's round trip. The log's checkpoints (which fsync) run on a
worker thread, every few MB written. A busy timeout lets several processes share one file.
The schema is versioned with ``PRAGMA user_version``; a file of an older version is migrated
when it is opened.

Every row read is checked (types, JSON shapes): a malformed row raises ``StoreError`` naming
the file and the run, never another exception.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar, final

import anyio.to_thread

from .._backend import checkpoint_if_cancelled
from .._checks import check_number
from .._errors import RunLeasedError, StoreError, ValueTooLargeError
from ._lease import RunOwner, live_owner
from ._step_status import StepStatus
from ._store import (
    RunRecord,
    RunStatus,
    StepRecord,
    StepRows,
    StoredValue,
    active_seconds,
    record_row,
    time_text,
)

__all__ = ("SQLiteStore",)

# SQLite keeps the busy timeout in a C int of milliseconds (at most about 2147483 s).
_MAX_BUSY_TIMEOUT = 2_000_000

T = TypeVar("T")

SCHEMA_VERSION = 2
# 1 (trioflow 0.1): runs, steps, state.
# 2: runs.active_seconds and runs.session_started (time spent running), steps.fingerprint,
#    and the leases table.
# Within version 2, the steps table was first WITHOUT ROWID, keyed by (run_id, name). Steps
# end in an order unrelated to their names, so each transaction rewrote pages all over the
# run's rows (an insert and its share of the commit: 8-11 us a row against 6 appended). It is
# now a rowid table: rows are appended in completion order, and the unique index on (run_id,
# name), whose entries are small, keeps one row per step. Both layouts hold the same columns
# and answer the same statements (a trioflow that wrote the old one reads and writes the
# new), so the version stays 2; a file of the old layout is rebuilt when it is opened.

_LEASES = """
CREATE TABLE IF NOT EXISTS leases (
    run_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    token TEXT NOT NULL,
    process_started REAL,
    since TEXT NOT NULL,
    expires_at TEXT NOT NULL
) WITHOUT ROWID
"""

_STEPS = """
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
    fingerprint TEXT,
    UNIQUE (run_id, name)
)
"""
_STEP_COLUMNS = (
    "run_id, name, status, attempts, value, value_type, error, compensation_error, "
    "started_at, finished_at, duration, seq, fingerprint"
)

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS runs (
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
"""
    + _STEPS
    + """;
CREATE TABLE IF NOT EXISTS state (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    value_type TEXT,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_by_creation ON runs (created_at);
"""
    + ";"
    + _LEASES
)

_MIGRATE_FROM_1 = (
    "ALTER TABLE runs ADD COLUMN active_seconds REAL NOT NULL DEFAULT 0",
    "ALTER TABLE runs ADD COLUMN session_started TEXT",
    "ALTER TABLE steps ADD COLUMN fingerprint TEXT",
    _LEASES,
)

# The sqlite3 module binds None through its adapter lookup (about 0.5 us a parameter, as much
# as the rest of a row's insert), and an int or a str directly: an absent text is bound as the
# int 0 and an absent number as '', which NULLIF makes NULL (no text equals 0, no number '').
_SAVE_STEP = (
    "INSERT OR REPLACE INTO steps (run_id, name, status, attempts, value, value_type, error, "
    "compensation_error, started_at, finished_at, duration, seq, fingerprint) "
    "VALUES (?, ?, ?, ?, NULLIF(?, 0), NULLIF(?, 0), NULLIF(?, 0), NULLIF(?, 0), NULLIF(?, 0), "
    "NULLIF(?, 0), NULLIF(?, ''), NULLIF(?, ''), NULLIF(?, 0))"
)
_SAVE_LEASE = (
    "INSERT OR REPLACE INTO leases (run_id, host, pid, token, process_started, since, "
    "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_LEASE_COLUMNS = "run_id, host, pid, token, process_started, since, expires_at"
_SAVE_STATE = "INSERT OR REPLACE INTO state (run_id, key, value, value_type) VALUES (?, ?, ?, ?)"
_UPDATED = (
    "max(updated_at, coalesce((SELECT max(finished_at) FROM steps WHERE steps.run_id = "
    "runs.run_id), ''))"
)
_RUN_COLUMNS = (
    f"run_id, workflow, status, created_at, {_UPDATED}, fingerprint, shape, active_seconds, "
    "session_started"
)
# Room left in a row for everything but a step's value (SQLITE_LIMIT_LENGTH bounds rows too).
_ROW_MARGIN = 4096
# What a row costs besides its value (about), what may be committed on the event loop's
# thread, and how much (counted so) is written between two checkpoints: the log then grows to
# a few MB, as with SQLite's default checkpoint every 1000 pages.
_ROW_BYTES = 256
_INLINE_BYTES = 16 * 1024
_CHECKPOINT_BYTES = 2 * 1024 * 1024


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

    __slots__ = (
        "_busy_ms",
        "_closed",
        "_conn",
        "_lock",
        "_now_ok",
        "_path",
        "_unchecked",
        "_waits",
    )

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a str or a path, got {path!r}")
        check_number(busy_timeout, "busy_timeout", minimum=0, maximum=_MAX_BUSY_TIMEOUT)
        self._path = Path(path)
        self._busy_ms = int(busy_timeout * 1000)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._unchecked = 0  # bytes (about) written to the WAL since the last checkpoint
        self._now_ok = False  # the file is in WAL mode: a commit does not fsync
        # The connection's busy timeout is busy_timeout (True) or 0 (False, as a write on the
        # event loop's thread needs it): set only when it changes, not around every write.
        self._waits = True

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
            # Checkpoints (which fsync) run on a worker thread, never in a commit made on the
            # event loop's thread: see save_steps.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
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
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)
            else:
                # Some file systems cannot hold a WAL; SQLite then keeps its rollback journal,
                # whose commits fsync: those are never made on the event loop's thread.
                self._now_ok = str(mode).lower() == "wal"
                return

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION and not _keyed_steps(conn):
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
            if version == 1:
                _migrate_from_1(conn)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if version in (1, SCHEMA_VERSION) and _keyed_steps(conn):
                _append_steps(conn)
            elif version == 0:
                foreign = conn.execute(
                    "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND name "
                    "NOT IN ('runs', 'steps', 'state', 'runs_by_creation', 'leases')"
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
                self._waits = True
            return self._run(conn, what, fn, waits=True)

    def _run(
        self,
        conn: sqlite3.Connection,
        what: str,
        fn: Callable[[sqlite3.Connection], T],
        *,
        waits: bool,
    ) -> T:
        # With the lock held: run fn, rolling back what it began, and say what failed. With
        # ``waits``, a lock another connection holds is waited for up to the busy timeout;
        # without, SQLite answers "database is locked" at once.
        try:
            if self._waits is not waits:
                conn.execute(f"PRAGMA busy_timeout = {self._busy_ms if waits else 0}")
                self._waits = waits
            return fn(conn)
        except (sqlite3.Error, _Malformed, ValueTooLargeError) as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, ValueTooLargeError):
                raise
            if isinstance(exc, _Malformed):
                raise StoreError(
                    f"workflow store {str(self._path)!r}: {what} (a malformed record): "
                    f"run {exc.run_id!r}: {exc}"
                ) from exc
            raise self._error(what, exc) from exc
        except BaseException:
            # On the event loop's thread, a KeyboardInterrupt may land in the middle of a
            # write: leave no transaction open behind it.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def _try_now(self, what: str, fn: Callable[[sqlite3.Connection], None]) -> bool:
        # Run a small write on this thread if it cannot wait: the connection is free (no
        # worker thread uses it) and no other connection holds the file's write lock (the
        # busy timeout is 0 meanwhile, so BEGIN IMMEDIATE answers at once). False: nothing
        # was written, write on a worker thread instead.
        if not self._lock.acquire(blocking=False):
            return False
        try:
            conn = self._conn
            if conn is None or not self._now_ok:
                return False
            try:
                self._run(conn, what, fn, waits=False)
            except StoreError as exc:
                if _busy(exc.__cause__):
                    return False
                raise
            return True
        finally:
            self._lock.release()

    async def _call(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._run_locked, what, fn)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

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
            with _checking(run_id):
                steps: dict[str, StepRecord] = {}
                for r in conn.execute(
                    "SELECT name, status, attempts, value, value_type, error, "
                    "compensation_error, started_at, finished_at, duration, seq, fingerprint "
                    "FROM steps WHERE run_id = ?",
                    (run_id,),
                ):
                    record = _step_record(r)
                    steps[record.name] = record
                state = {
                    _text(key, "a state key"): _stored(value, value_type, f"state {key!r}")
                    for key, value, value_type in conn.execute(
                        "SELECT key, value, value_type FROM state WHERE run_id = ?", (run_id,)
                    )
                }
                counts: dict[StepStatus, int] = {}
                for record in steps.values():
                    counts[record.status] = counts.get(record.status, 0) + 1
                lease = conn.execute(
                    f"SELECT {_LEASE_COLUMNS} FROM leases WHERE run_id = ?", (run_id,)
                ).fetchone()
                owner = None if lease is None else _live(lease, datetime.now(UTC))
                run = _run_record(row, counts, steps, state, owner)
                unknown = [name for name in steps if name not in run.shape]
                if unknown:
                    raise _Malformed(f"steps not in its shape: {unknown!r}")
                return run

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
                with _checking(run_id):
                    counts.setdefault(run_id, {})[_status(StepStatus, status)] = n
            now = datetime.now(UTC)
            owners: dict[str, RunOwner | None] = {}
            for lease in conn.execute(f"SELECT {_LEASE_COLUMNS} FROM leases"):
                with _checking(lease[0]):
                    owners[lease[0]] = _live(lease, now)
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY created_at DESC, rowid DESC"
            ).fetchall()
            listed = []
            for row in rows:
                with _checking(row[0]):
                    listed.append(
                        _run_record(row, counts.get(row[0], {}), {}, {}, owners.get(row[0]))
                    )
            return tuple(listed)

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
        shape_text = _shape_text(shape)

        def begin(conn: sqlite3.Connection) -> None:
            now = _now()
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                f"SELECT active_seconds, session_started, {_UPDATED} FROM runs WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO runs (run_id, workflow, status, created_at, updated_at, "
                    "fingerprint, shape, active_seconds, session_started) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                    (
                        run_id,
                        workflow,
                        RunStatus.RUNNING.value,
                        now,
                        now,
                        fingerprint,
                        shape_text,
                        now,
                    ),
                )
            else:
                with _checking(run_id):
                    # A session that died without finish_run counts up to its last write.
                    active = active_seconds(
                        _real(row[0], "active_seconds"),
                        _time(row[1], "session_started"),
                        _when(row[2], "updated_at"),
                    )
                conn.execute(
                    "UPDATE runs SET status = ?, updated_at = ?, active_seconds = ?, "
                    "session_started = ? WHERE run_id = ?",
                    (RunStatus.RUNNING.value, now, active, now, run_id),
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
            ValueTooLargeError: A step's value is larger than SQLite holds in one value
                (``SQLITE_LIMIT_LENGTH``, 1 GB by default, less a few KiB for the rest of the
                row); its ``step`` says which; nothing is written.
            StoreError: The file cannot be written.
        """
        # What is written is what was given now, whatever the caller changes meanwhile.
        # A run's records come as rows (StepRows), read as they are; any other records are
        # read into rows. Rows are tuples: what is written is what was given now.
        rows = list(steps.rows) if type(steps) is StepRows else [record_row(r) for r in steps]
        state = dict(state)

        def save(conn: sqlite3.Connection) -> None:
            room = conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
            for r in rows:
                # A value over the limit fails its step, not the store (which would fail every
                # resume the same way). Most values are far below: bytes <= 4 * characters.
                value = r[3]
                if value is not None and 4 * len(value.json) + _ROW_MARGIN > room:
                    size = len(value.json.encode())
                    if size + _ROW_MARGIN > room:
                        raise ValueTooLargeError(r[0], str, size=size, limit=room)
            # The rows are built here, where the write runs: on a worker thread for a large
            # batch, so the event loop's thread goes on running steps meanwhile.
            # Absent values as _SAVE_STEP binds them: 0 for a text, '' for a number.
            step_rows = [
                (
                    run_id,
                    r[0],
                    r[1]._value_,  # an Enum's own slot: .value is a property, 3x the cost
                    r[2],
                    0 if r[3] is None else r[3].json,
                    0 if r[3] is None or r[3].type is None else r[3].type,
                    0 if r[4] is None else r[4],
                    0 if r[5] is None else r[5],
                    0 if r[6] is None else time_text(r[6]),
                    0 if r[7] is None else time_text(r[7]),
                    "" if r[8] is None else r[8],
                    "" if r[9] is None else r[9],
                    0 if r[10] is None else r[10],
                )
                for r in rows
            ]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_SAVE_STEP, step_rows)
            if state:
                conn.executemany(
                    _SAVE_STATE, [(run_id, key, v.json, v.type) for key, v in state.items()]
                )
            # runs.updated_at is not touched here (one more write per transaction): readers
            # take the latest of it and the steps' end times.
            conn.execute("COMMIT")

        # A small transaction (a step of a chain) is committed on this thread when nothing
        # makes it wait: in WAL mode with synchronous=NORMAL a commit appends to the WAL file
        # and does not fsync, a few tens of microseconds, where a worker thread's round trip
        # costs several times that. Anything larger, or that would wait for a lock, goes to a
        # worker thread, and so do the checkpoints that fsync (every few MB written).
        size = _ROW_BYTES * (len(rows) + len(state))
        for r in rows:
            if r[3] is not None:
                size += len(r[3].json)
        for v in state.values():
            size += len(v.json)
        if size > _INLINE_BYTES:
            await self._call("cannot write", save)
        else:
            # A cancellation point but no schedule point (as MemoryStore's): a chain commits
            # after every step, and a scheduling round costs about what the commit does.
            await checkpoint_if_cancelled()
            if not self._try_now("cannot write", save):
                await self._call("cannot write", save)
        self._unchecked += size
        if self._unchecked >= _CHECKPOINT_BYTES:
            self._unchecked = 0
            # The records are committed: a checkpoint that fails does not undo that (the log
            # only grows until the next one), so it does not fail the write.
            with contextlib.suppress(StoreError):
                await self._call("cannot checkpoint", self._checkpoint)

    async def finish_run(self, run_id: str, status: RunStatus, *, elapsed: float) -> None:
        """Record how a run ended, and how long this session of it ran.

        Args:
            run_id: The run's id.
            status: The final status.
            elapsed: Seconds this session ran (added to ``active_seconds``).

        Raises:
            StoreError: The file cannot be written.
        """

        def finish(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE runs SET status = ?, updated_at = ?, active_seconds = active_seconds + "
                "?, session_started = NULL WHERE run_id = ?",
                (status.value, _now(), elapsed, run_id),
            )

        await self._call("cannot write", finish)

    async def acquire_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None:
        """Take the lease of a run for ``ttl`` seconds unless a live owner holds it.

        One ``BEGIN IMMEDIATE`` transaction: two processes cannot both take it.

        Args:
            run_id: The run's id.
            owner: Who takes it.
            ttl: Seconds it lives unless renewed.

        Returns:
            None when ``owner`` now holds the lease; else the live owner that holds it.

        Raises:
            StoreError: The file cannot be read or written.
        """

        def acquire(conn: sqlite3.Connection) -> RunOwner | None:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                f"SELECT {_LEASE_COLUMNS} FROM leases WHERE run_id = ?", (run_id,)
            ).fetchone()
            now = datetime.now(UTC)
            if row is not None:
                with _checking(run_id):
                    holder = _live(row, now)
                if holder is not None and holder.token != owner.token:
                    conn.execute("COMMIT")
                    return holder
            conn.execute(
                _SAVE_LEASE,
                (
                    run_id,
                    owner.host,
                    owner.pid,
                    owner.token,
                    owner.process_started,
                    owner.since.isoformat(),
                    (now + timedelta(seconds=ttl)).isoformat(),
                ),
            )
            conn.execute("COMMIT")
            return None

        return await self._call("cannot take the run's lease", acquire)

    async def renew_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None:
        """Extend ``owner``'s lease to ``ttl`` seconds from now (one transaction).

        Args:
            run_id: The run's id.
            owner: The owner that holds it.
            ttl: Seconds it lives from now.

        Returns:
            None when renewed; else the owner that took it meanwhile.

        Raises:
            StoreError: The file cannot be read or written.
        """
        return await self.acquire_lease(run_id, owner, ttl)

    async def release_lease(self, run_id: str, owner: RunOwner) -> None:
        """Give a lease back, if ``owner`` still holds it.

        Args:
            run_id: The run's id.
            owner: The owner that took it.

        Raises:
            StoreError: The file cannot be written.
        """

        def release(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM leases WHERE run_id = ? AND token = ?", (run_id, owner.token)
            )

        await self._call("cannot release the run's lease", release)

    async def delete_run(self, run_id: str) -> bool:
        """Delete a run with its steps, state and lease, unless a live owner holds its lease.

        One ``BEGIN IMMEDIATE`` transaction: a run cannot take its lease between the check and
        the delete.

        Args:
            run_id: The run's id.

        Returns:
            True when the run was deleted, False when there was no such run.

        Raises:
            RunLeasedError: A live owner holds the run's lease (it is running); nothing was
                deleted.
            StoreError: The file cannot be read or written.
        """

        def delete(conn: sqlite3.Connection) -> RunOwner | bool:
            conn.execute("BEGIN IMMEDIATE")
            lease = conn.execute(
                f"SELECT {_LEASE_COLUMNS} FROM leases WHERE run_id = ?", (run_id,)
            ).fetchone()
            if lease is not None:
                with _checking(run_id):
                    holder = _live(lease, datetime.now(UTC))
                if holder is not None:
                    conn.execute("COMMIT")
                    return holder
            for table in ("steps", "state", "leases"):
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            deleted = conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount > 0
            conn.execute("COMMIT")
            return deleted

        found = await self._call("cannot delete the run", delete)
        if isinstance(found, RunOwner):
            raise RunLeasedError(run_id, found)
        return found


def _busy(exc: BaseException | None) -> bool:
    # SQLITE_BUSY: another connection holds the write lock.
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY or "locked" in str(exc)
    )


def _keyed_steps(conn: sqlite3.Connection) -> bool:
    # The steps table of the first layout (0.1's, and version 2's at first): WITHOUT ROWID.
    row = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'steps' AND sql "
        "LIKE '%WITHOUT ROWID%'"
    ).fetchone()
    return bool(row[0])


def _append_steps(conn: sqlite3.Connection) -> None:
    # Rebuild a steps table of the first layout as the rowid table new rows are appended to
    # (see SCHEMA_VERSION), in the transaction that migrates the file: every row is kept as it
    # is, each run's in the order its steps ended.
    conn.execute("ALTER TABLE steps RENAME TO steps_by_name")
    conn.execute(_STEPS)
    conn.execute(
        f"INSERT INTO steps ({_STEP_COLUMNS}) SELECT {_STEP_COLUMNS} FROM steps_by_name "
        "ORDER BY run_id, seq"
    )
    conn.execute("DROP TABLE steps_by_name")


def _migrate_from_1(conn: sqlite3.Connection) -> None:
    # 0.1 files: add the new columns and the leases table; a run's active time, which 0.1 did
    # not keep, is taken to be its wall span (what 0.1 reported as its duration).
    for statement in _MIGRATE_FROM_1:
        conn.execute(statement)
    spans = []
    for run_id, created, updated in conn.execute(
        f"SELECT run_id, created_at, {_UPDATED} FROM runs"
    ):
        try:
            span = (
                datetime.fromisoformat(updated) - datetime.fromisoformat(created)
            ).total_seconds()
        except (TypeError, ValueError):  # a malformed row: reading it will say so
            continue
        spans.append((max(0.0, span), run_id))
    conn.executemany("UPDATE runs SET active_seconds = ? WHERE run_id = ?", spans)


class _Malformed(Exception):
    """A row that does not hold what its columns should (internal).

    Attributes:
        run_id: The run the row belongs to.
    """

    def __init__(self, message: str, run_id: object = None) -> None:
        super().__init__(message)
        self.run_id = run_id


@contextlib.contextmanager
def _checking(run_id: object) -> Iterator[None]:
    # Any failure to parse the rows of one run becomes _Malformed naming the run.
    try:
        yield
    except _Malformed as exc:
        if exc.run_id is None:
            exc.run_id = run_id
        raise
    except sqlite3.Error:
        raise
    except Exception as exc:
        raise _Malformed(f"{type(exc).__name__}: {exc}", run_id) from exc


def _text(value: object, what: str) -> str:
    if type(value) is not str:
        raise _Malformed(f"{what} is {value!r}, not text")
    return value


def _opt_text(value: object, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _int(value: object, what: str) -> int:
    if type(value) is not int:
        raise _Malformed(f"{what} is {value!r}, not an integer")
    return value


def _real(value: object, what: str) -> float:
    if type(value) is not int and type(value) is not float:
        raise _Malformed(f"{what} is {value!r}, not a number")
    return float(value)


def _opt_real(value: object, what: str) -> float | None:
    return None if value is None else _real(value, what)


def _when(value: object, what: str) -> datetime:
    text = _text(value, what)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise _Malformed(f"{what} is {text!r}, not an ISO date and time") from None


def _time(value: object, what: str) -> datetime | None:
    return None if value is None else _when(value, what)


E = TypeVar("E", StepStatus, RunStatus)


def _status(kind: type[E], value: object) -> E:
    try:
        return kind(_text(value, "status"))
    except ValueError:
        raise _Malformed(f"status {value!r} is not a {kind.__name__}") from None


def _stored(value: object, value_type: object, what: str) -> StoredValue:
    text = _text(value, what)
    try:
        json.loads(text)
    except ValueError:
        raise _Malformed(f"{what} is not JSON: {text[:80]!r}") from None
    return StoredValue(json=text, type=_opt_text(value_type, f"the type of {what}"))


def _shape_text(shape: Mapping[str, Sequence[str]]) -> str:
    # The shape as a JSON object of lists of names, in the shape's own order. A mapping whose
    # values are tuples or lists (a run's: names -> tuples, which the encoder writes as lists)
    # is encoded as it is, without a list made per step; any other is copied into lists first.
    if (type(shape) is MappingProxyType or type(shape) is dict) and all(
        type(after) is tuple or type(after) is list for after in shape.values()
    ):
        return json.dumps(shape if type(shape) is dict else shape.copy())
    return json.dumps({name: list(after) for name, after in shape.items()})


def _shape(text: object) -> dict[str, tuple[str, ...]]:
    try:
        data = json.loads(_text(text, "shape"))
    except ValueError:
        raise _Malformed("shape is not JSON") from None
    if type(data) is not dict:
        raise _Malformed(f"shape is {data!r}, not an object of step names")
    shape = {}
    for name, after in data.items():
        if type(after) is not list or not all(type(a) is str for a in after):
            raise _Malformed(f"shape of step {name!r} is {after!r}, not a list of names")
        shape[name] = tuple(after)
    return shape


def _step_record(r: tuple[Any, ...]) -> StepRecord:
    name = _text(r[0], "a step name")
    what = f"step {name!r}"
    return StepRecord(
        name=name,
        status=_status(StepStatus, r[1]),
        attempts=_int(r[2], f"attempts of {what}"),
        value=None if r[3] is None else _stored(r[3], r[4], f"the value of {what}"),
        error=_opt_text(r[5], f"error of {what}"),
        compensation_error=_opt_text(r[6], f"compensation_error of {what}"),
        started_at=_time(r[7], f"started_at of {what}"),
        finished_at=_time(r[8], f"finished_at of {what}"),
        duration=_opt_real(r[9], f"duration of {what}"),
        seq=None if r[10] is None else _int(r[10], f"seq of {what}"),
        fingerprint=_opt_text(r[11], f"fingerprint of {what}"),
    )


def _live(row: tuple[Any, ...], now: datetime) -> RunOwner | None:
    _, host, pid, token, started, since, expires = row
    holder = RunOwner(
        host=_text(host, "lease host"),
        pid=_int(pid, "lease pid"),
        token=_text(token, "lease token"),
        process_started=_opt_real(started, "lease process_started"),
        since=_when(since, "lease since"),
    )
    return live_owner(holder, _when(expires, "lease expires_at"), now)


def _run_record(
    row: tuple[Any, ...],
    counts: Mapping[StepStatus, int],
    steps: Mapping[str, StepRecord],
    state: Mapping[str, StoredValue],
    owner: RunOwner | None,
) -> RunRecord:
    run_id, workflow, status, created, updated, fingerprint, shape, active, session = row
    updated_at = _when(updated, "updated_at")
    return RunRecord(
        run_id=_text(run_id, "run_id"),
        workflow=_text(workflow, "workflow"),
        status=_status(RunStatus, status),
        created_at=_when(created, "created_at"),
        updated_at=updated_at,
        fingerprint=_text(fingerprint, "fingerprint"),
        shape=_shape(shape),
        step_counts=counts,
        steps=steps,
        state=state,
        active_seconds=active_seconds(
            _real(active, "active_seconds"), _time(session, "session_started"), updated_at
        ),
        owner=owner,
    )
