"""Request state, persisted: the record of every request, its stores, and the coordinator's writer.

``open_coordinator(..., requests=store)`` records every request it processes as a
:class:`RequestRecord` (id, state, user, kind, source, the stages it completed, its error
category, created and updated times, and the process that handles it) in a
:class:`RequestStore`: :class:`MemoryRequestStore`, :class:`SQLiteRequestStore` (the embedded
default) or ``trioflow.redis.RedisRequestStore``. A finished request expires ``ttl`` seconds
after it ended.

Writes are off the request's path: the coordinator's transitions only note which requests
changed; one writer task in the coordinator's task group writes the latest state of the
requests that changed, in batches: arrivals and ends within 5 ms, a request's progress at
most once a second (a request that arrived and ended within one batch is written once). A
store that fails never fails a request: the writer reports the failure once (structlog),
keeps the records and tries again, with backoff.

Each coordinator is an owner (a :class:`~trioflow.RunOwner`) registered in the store with a
heartbeat. ``await coordinator.recover()`` marks FAILED (category ``internal``, reason
``interrupted``) every request that is not finished and whose owner is gone: its registration
expired or was given back, or, on this host, its process died.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, final, runtime_checkable

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs

from .._backend import open_body_group
from .._checks import check_number
from .._errors import StoreError
from .._workflow._lease import DEFAULT_LEASE_TTL, RunOwner
from ._request import ErrorCategory, ProcessingResult, ProcessingStatus, Request, RequestState

__all__ = (
    "INTERRUPTED",
    "MemoryRequestStore",
    "Recorder",
    "RequestRecord",
    "RequestStore",
    "SQLiteRequestStore",
    "open_recorder",
)

T = TypeVar("T")

INTERRUPTED = "interrupted"
"""The ``reason`` of a request that :meth:`Coordinator.recover` found interrupted."""

_FINISHED = frozenset({RequestState.COMPLETED, RequestState.FAILED, RequestState.CANCELLED})
_UNFINISHED = tuple(state for state in RequestState if state not in _FINISHED)
_REASON_LIMIT = 1000  # characters of an error's text kept as a reason
_PRUNE_EVERY = 1.0  # seconds between deletions of what expired


@final
@attrs.frozen(kw_only=True)
class RequestRecord:
    """A request as a :class:`RequestStore` keeps it.

    Attributes:
        request_id: The request's id.
        state: Its :class:`~trioflow.lifecycle.RequestState` when last written.
        user_id: Who asked.
        source: Where it came from (``"cli"``, ``"mcp"``, ...).
        kind: Its kind, or None while it has not been routed.
        stages: The names of the stages it completed, in order (optional stages that failed
            are left out).
        category: The :class:`~trioflow.lifecycle.ErrorCategory` of a FAILED request, else
            None.
        reason: Why it failed: ``"ExceptionType: message"`` of the error, or ``"interrupted"``
            for a request whose process died (see :attr:`interrupted`); else None.
        created_at: When the coordinator received it (UTC).
        updated_at: When its state last changed (UTC). A finished request expires ``ttl``
            seconds after this.
        owner: The :class:`~trioflow.RunOwner` of the coordinator that handles (or handled)
            it, or None.
    """

    request_id: str
    state: RequestState
    user_id: str = "anonymous"
    source: str = "other"
    kind: str | None = None
    stages: tuple[str, ...] = ()
    category: ErrorCategory | None = None
    reason: str | None = None
    created_at: datetime
    updated_at: datetime
    owner: RunOwner | None = None

    @property
    def finished(self) -> bool:
        """Whether the request ended (COMPLETED, FAILED or CANCELLED)."""
        return self.state in _FINISHED

    @property
    def interrupted(self) -> bool:
        """Whether the request was in flight in a process that died (found by ``recover()``)."""
        return self.state is RequestState.FAILED and self.reason == INTERRUPTED


@runtime_checkable
class RequestStore(Protocol):
    """Where the state of requests is kept: what a request store must implement.

    A coordinator opened with ``requests=store`` calls :meth:`renew_owner` when it opens and
    every third of the owner's time to live, :meth:`save` with the latest records of the
    requests that changed, :meth:`fail_interrupted` from :meth:`Coordinator.recover
    <trioflow.lifecycle.Coordinator.recover>`, and :meth:`release_owner` when it closes. It
    never closes the store. A store raises :class:`~trioflow.StoreError` when it cannot read
    or write. Times are wall-clock (UTC), as processes on several hosts share them. A
    finished record is dropped ``ttl`` seconds after its ``updated_at``; an unfinished one
    is kept until it finishes or is found interrupted.
    """

    async def save(self, records: Sequence[RequestRecord]) -> None:
        """Write records, each replacing the stored record with its id, in one batch.

        Args:
            records: The records.
        """
        ...

    async def load(self, request_id: str) -> RequestRecord | None:
        """Return the record of a request, or None when there is none (or it expired).

        Args:
            request_id: The request's id.
        """
        ...

    async def list(
        self, *, state: RequestState | None = None, user_id: str | None = None
    ) -> tuple[RequestRecord, ...]:
        """Return the stored records, newest first, of a state and of a user if given.

        Args:
            state: Only records in this state.
            user_id: Only records of this user.
        """
        ...

    async def renew_owner(self, owner: RunOwner, ttl: float) -> None:
        """Register ``owner`` (a live coordinator) for ``ttl`` seconds from now.

        Args:
            owner: The owner.
            ttl: Seconds its registration lives unless renewed.
        """
        ...

    async def release_owner(self, owner: RunOwner) -> None:
        """End ``owner``'s registration: its unfinished requests count as interrupted.

        Args:
            owner: The owner.
        """
        ...

    async def fail_interrupted(self) -> tuple[RequestRecord, ...]:
        """Mark FAILED each unfinished request whose owner is gone; return them as marked.

        An owner is gone when its registration expired or was released, or it is on this
        host and its process died (:meth:`RunOwner.alive <trioflow.RunOwner.alive>`). Each
        record becomes FAILED, category ``internal``, reason ``"interrupted"``, updated now;
        each is marked by one caller only, even when several recover at once.
        """
        ...


def _wall() -> datetime:
    return datetime.now(UTC)


def _check_ttl(ttl: object) -> float:
    return check_number(ttl, "ttl", minimum=0, strict=True)


def _check_filters(state: object, user_id: object) -> None:
    if state is not None and not isinstance(state, RequestState):
        raise TypeError(f"state must be a RequestState or None, got {state!r}")
    if user_id is not None and not isinstance(user_id, str):
        raise TypeError(f"user_id must be a str or None, got {user_id!r}")


def _check_records(records: Sequence[RequestRecord]) -> None:
    for record in records:
        if not isinstance(record, RequestRecord):
            raise TypeError(f"records must be RequestRecords, got {record!r}")


def _interrupted(record: RequestRecord, now: datetime) -> RequestRecord:
    return attrs.evolve(
        record,
        state=RequestState.FAILED,
        category=ErrorCategory.INTERNAL,
        reason=INTERRUPTED,
        updated_at=now,
    )


def _newest_first(records: Iterable[RequestRecord]) -> tuple[RequestRecord, ...]:
    return tuple(sorted(records, key=lambda r: (r.created_at, r.request_id), reverse=True))


# --- memory --------------------------------------------------------------------------------
@final
class MemoryRequestStore:
    """A :class:`RequestStore` in this process's memory (for tests and single processes).

    Args:
        ttl: Seconds a finished request is kept after it ended.

    Raises:
        TypeError: ``ttl`` is not a number.
        ValueError: ``ttl`` is not > 0, or is NaN or infinite.
    """

    __slots__ = ("_owners", "_pruned", "_records", "_ttl")

    def __init__(self, *, ttl: float = 3600.0) -> None:
        self._ttl = _check_ttl(ttl)
        self._records: dict[str, RequestRecord] = {}
        self._owners: dict[str, float] = {}  # token -> expiry (time.time())
        self._pruned = 0.0

    def __repr__(self) -> str:
        return f"<MemoryRequestStore with {len(self._records)} requests>"

    @property
    def ttl(self) -> float:
        """Seconds a finished request is kept after it ended."""
        return self._ttl

    def _alive(self, record: RequestRecord, now: float) -> bool:
        expiry = record.updated_at.timestamp() + self._ttl
        return not record.finished or expiry > now

    def _prune(self) -> None:
        now = time.time()
        if now - self._pruned < _PRUNE_EVERY:
            return  # reads skip what expired meanwhile
        self._pruned = now
        expired = [k for k, r in self._records.items() if not self._alive(r, now)]
        for key in expired:
            del self._records[key]

    async def save(self, records: Sequence[RequestRecord]) -> None:
        """Write records, each replacing the stored record with its id.

        Args:
            records: The records.

        Raises:
            TypeError: An item is not a RequestRecord.
        """
        _check_records(records)
        await anyio.lowlevel.checkpoint()
        for record in records:
            self._records[record.request_id] = record
        self._prune()

    async def load(self, request_id: str) -> RequestRecord | None:
        """Return the record of a request, or None.

        Args:
            request_id: The request's id.

        Returns:
            The record, or None when there is none or it expired.
        """
        await anyio.lowlevel.checkpoint()
        record = self._records.get(request_id)
        if record is None or not self._alive(record, time.time()):
            return None
        return record

    async def list(
        self, *, state: RequestState | None = None, user_id: str | None = None
    ) -> tuple[RequestRecord, ...]:
        """Return the stored records, newest first, of a state and of a user if given.

        Args:
            state: Only records in this state.
            user_id: Only records of this user.

        Returns:
            The records.

        Raises:
            TypeError: ``state`` is not a RequestState, or ``user_id`` not a str.
        """
        _check_filters(state, user_id)
        await anyio.lowlevel.checkpoint()
        now = time.time()
        return _newest_first(
            r
            for r in self._records.values()
            if (state is None or r.state is state)
            and (user_id is None or r.user_id == user_id)
            and self._alive(r, now)
        )

    async def renew_owner(self, owner: RunOwner, ttl: float) -> None:
        """Register ``owner`` for ``ttl`` seconds from now.

        Args:
            owner: The owner.
            ttl: Seconds its registration lives.
        """
        await anyio.lowlevel.checkpoint()
        self._owners[owner.token] = time.time() + ttl

    async def release_owner(self, owner: RunOwner) -> None:
        """End ``owner``'s registration.

        Args:
            owner: The owner.
        """
        await anyio.lowlevel.checkpoint()
        self._owners.pop(owner.token, None)

    async def fail_interrupted(self) -> tuple[RequestRecord, ...]:
        """Mark FAILED (``internal``, ``"interrupted"``) each unfinished request of a gone owner.

        Returns:
            The records as marked.
        """
        await anyio.lowlevel.checkpoint()
        now = time.time()
        wall = _wall()
        marked = []
        for key, record in list(self._records.items()):
            if record.finished or _owner_lives(record.owner, self._owners, now):
                continue
            self._records[key] = record = _interrupted(record, wall)
            marked.append(record)
        self._owners = {t: e for t, e in self._owners.items() if e > now}
        return _newest_first(marked)


def _owner_lives(owner: RunOwner | None, registered: dict[str, float], now: float) -> bool:
    if owner is None:
        return False
    expiry = registered.get(owner.token)
    return expiry is not None and expiry > now and owner.alive()


# --- SQLite --------------------------------------------------------------------------------
_SCHEMA_VERSION = 1
_TABLES = ("requests", "request_owners")
_SCHEMA = (
    # A rowid table: rows are appended in write order, and only the id's index takes a random
    # insert (a table keyed by the id itself costs three times as much per write).
    """CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT NOT NULL,
    state TEXT NOT NULL,
    user_id TEXT NOT NULL,
    source TEXT NOT NULL,
    kind TEXT,
    stages TEXT NOT NULL,
    category TEXT,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL,
    host TEXT,
    pid INTEGER,
    token TEXT,
    process_started REAL,
    since REAL
)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS requests_by_id ON requests (request_id)",
    "CREATE INDEX IF NOT EXISTS requests_by_state ON requests (state)",
    "CREATE INDEX IF NOT EXISTS requests_by_user ON requests (user_id)",
    "CREATE INDEX IF NOT EXISTS requests_by_expiry ON requests (expires_at) "
    "WHERE expires_at IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS request_owners (
    token TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID""",
)
_COLUMNS = (
    "request_id, state, user_id, source, kind, stages, category, reason, created_at, "
    "updated_at, expires_at, host, pid, token, process_started, since"
)
_ONE_ROW = f"({', '.join('?' * 16)})"
_MOST_ROWS = 256  # rows per INSERT: 4,096 parameters, far below SQLite's 32,766
# One INSERT of 2**k rows for each k: a batch is a few statements (each prepared once), and
# the worker thread takes the GIL back once per statement, not once per row (each time, the
# event loop's thread would wait for it).
_SAVE = {
    2**k: f"INSERT OR REPLACE INTO requests ({_COLUMNS}) VALUES " + ", ".join([_ONE_ROW] * 2**k)
    for k in range(_MOST_ROWS.bit_length())
}


def _inserts(rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, list[Any]]]:
    """The statements that write ``rows``, in order, with their flat parameters."""
    statements = []
    start, size = 0, _MOST_ROWS
    while start < len(rows):
        while size > len(rows) - start:
            size //= 2
        chunk = rows[start : start + size]
        statements.append((_SAVE[size], [value for row in chunk for value in row]))
        start += size
    return statements


_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_MAX_BUSY_TIMEOUT = 2_000_000  # SQLite keeps it in a C int of milliseconds


def _row(record: RequestRecord, ttl: float) -> tuple[Any, ...]:
    updated = record.updated_at.timestamp()
    owner = record.owner
    return (
        record.request_id,
        record.state.value,
        record.user_id,
        record.source,
        record.kind,
        _stages_json(record.stages),
        None if record.category is None else record.category.value,
        record.reason,
        record.created_at.timestamp(),
        updated,
        updated + ttl if record.state in _FINISHED else None,
        None if owner is None else owner.host,
        None if owner is None else owner.pid,
        None if owner is None else owner.token,
        None if owner is None else owner.process_started,
        None if owner is None else owner.since.timestamp(),
    )


_STAGES_JSON: dict[tuple[str, ...], str] = {}


def _stages_json(stages: tuple[str, ...]) -> str:
    # Requests of one pipeline complete the same stages: encode each tuple once.
    text = _STAGES_JSON.get(stages)
    if text is None:
        text = json.dumps(stages)
        if len(_STAGES_JSON) < 1024:
            _STAGES_JSON[stages] = text
    return text


def _typed(value: object, kind: type[T], what: str) -> T:
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise ValueError(f"{what} is {value!r}, not {kind.__name__}")
    return value


def _optional(value: object, kind: type[T], what: str) -> T | None:
    return None if value is None else _typed(value, kind, what)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _record_of_row(row: tuple[Any, ...]) -> RequestRecord:
    (rid, state, user, source, kind, stages, category, reason, created, updated) = row[:10]
    host, pid, token, started, since = row[11:]
    names = json.loads(_typed(stages, str, "stages"))
    if type(names) is not list or not all(type(n) is str for n in names):
        raise ValueError(f"stages is {names!r}, not a list of names")
    owner = None
    if token is not None:
        owner = RunOwner(
            host=_typed(host, str, "host"),
            pid=_typed(pid, int, "pid"),
            token=_typed(token, str, "token"),
            process_started=_optional(started, float, "process_started"),
            since=_utc(_typed(since, float, "since")),
        )
    return RequestRecord(
        request_id=_typed(rid, str, "request_id"),
        state=RequestState(state),
        user_id=_typed(user, str, "user_id"),
        source=_typed(source, str, "source"),
        kind=_optional(kind, str, "kind"),
        stages=tuple(names),
        category=None if category is None else ErrorCategory(category),
        reason=_optional(reason, str, "reason"),
        created_at=_utc(_typed(created, float, "created_at")),
        updated_at=_utc(_typed(updated, float, "updated_at")),
        owner=owner,
    )


@final
class SQLiteRequestStore:
    """A :class:`RequestStore` in one SQLite file, the embedded default.

    The stdlib ``sqlite3`` module runs on anyio worker threads (one connection, guarded by a
    lock), in WAL mode with ``synchronous=NORMAL``: a committed batch survives the process
    being killed. Several processes (coordinators) may share one file. Use a file of its
    own, not a workflow store's. Close the store when done (``await store.aclose()``, or
    ``async with``); a coordinator never closes a store it is given.

    Example::

        async with SQLiteRequestStore(".trioflow/requests.db", ttl=3600) as store:
            async with open_coordinator(config, router=router, requests=store) as c:
                for record in await c.recover():
                    ...  # retry what a crash interrupted

    Args:
        path: The database file (created, with its directory, on first use).
        ttl: Seconds a finished request is kept after it ended.
        busy_timeout: Seconds to wait for another process's write lock before failing.

    Raises:
        TypeError: ``path`` is not a str or a path, or ``ttl`` or ``busy_timeout`` not a
            number.
        ValueError: ``ttl`` is not > 0, or ``busy_timeout`` negative or above 2000000; either
            NaN or infinite.
    """

    __slots__ = ("_busy", "_closed", "_conn", "_lock", "_path", "_pruned", "_ttl")

    def __init__(
        self, path: str | os.PathLike[str], *, ttl: float = 3600.0, busy_timeout: float = 30.0
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a str or a path, got {path!r}")
        self._ttl = _check_ttl(ttl)
        self._busy = check_number(
            busy_timeout, "busy_timeout", minimum=0, maximum=_MAX_BUSY_TIMEOUT
        )
        self._path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._pruned = 0.0

    def __repr__(self) -> str:
        return f"<SQLiteRequestStore {str(self._path)!r}>"

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def ttl(self) -> float:
        """Seconds a finished request is kept after it ended."""
        return self._ttl

    async def __aenter__(self) -> SQLiteRequestStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the database connection (on a worker thread); the store cannot be used after.

        Closing twice is fine.
        """

        def close() -> None:
            with self._lock:
                self._closed = True
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()

        await anyio.to_thread.run_sync(close)

    # --- plumbing -----------------------------------------------------------------------------
    def _fail(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"request store {str(self._path)!r}: {what}: {exc}")

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"request store {str(self._path)!r} is closed")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self._path, timeout=self._busy, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy * 1000)}")
            # A new file's switch to WAL answers "locked" at once, without the busy handler,
            # when another process opens the same new file: try again until the busy timeout.
            deadline = time.monotonic() + self._busy
            while True:
                try:
                    conn.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() >= deadline:
                        raise
                    time.sleep(0.005)
            conn.execute("PRAGMA synchronous = NORMAL")
            if conn.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
                self._create(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _create(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # another process may be creating it right now
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise StoreError(
                    f"request store {str(self._path)!r} has schema version {version}; this "
                    f"trioflow reads version {_SCHEMA_VERSION} (upgrade trioflow)"
                )
            if version == 0:
                foreign = conn.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                    "'sqlite_%' AND name NOT IN (?, ?)",
                    _TABLES,
                ).fetchone()[0]
                if foreign:
                    raise StoreError(
                        f"request store {str(self._path)!r} is an SQLite database with other "
                        "tables, not a trioflow request store"
                    )
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _locked(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                conn = self._conn
                if conn is None:
                    conn = self._conn = self._connect()
                try:
                    return fn(conn)
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            except StoreError:
                raise
            except (OSError, sqlite3.Error, ValueError, TypeError) as exc:
                # ValueError/TypeError: a row that does not hold what its columns should.
                raise self._fail(what, exc) from exc

    async def _call(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._locked, what, fn)

    # --- the protocol -------------------------------------------------------------------------
    async def save(self, records: Sequence[RequestRecord]) -> None:
        """Write records, each replacing the stored record with its id, in one transaction.

        Args:
            records: The records.

        Raises:
            TypeError: An item is not a RequestRecord.
            StoreError: The file cannot be opened or written.
        """
        _check_records(records)
        await self._save_rows([_row(record, self._ttl) for record in records])

    async def _save_rows(self, rows: list[tuple[Any, ...]]) -> None:
        # The recorder's path: rows made straight from its notes, with no RequestRecord.
        statements = _inserts(rows)

        def save(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            for statement, values in statements:
                conn.execute(statement, values)
            if now - self._pruned >= _PRUNE_EVERY:
                self._pruned = now
                conn.execute("DELETE FROM requests WHERE expires_at <= ?", (now,))
                conn.execute("DELETE FROM request_owners WHERE expires_at <= ?", (now,))
            conn.execute("COMMIT")

        await self._call("cannot write", save)

    async def load(self, request_id: str) -> RequestRecord | None:
        """Return the record of a request, or None.

        Args:
            request_id: The request's id.

        Returns:
            The record, or None when there is none or it expired.

        Raises:
            StoreError: The file cannot be opened or read, or the row is malformed.
        """

        def load(conn: sqlite3.Connection) -> RequestRecord | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM requests WHERE request_id = ? AND {_LIVE}",
                (request_id, time.time()),
            ).fetchone()
            return None if row is None else _record_of_row(row)

        return await self._call(f"cannot read request {request_id!r}", load)

    async def list(
        self, *, state: RequestState | None = None, user_id: str | None = None
    ) -> tuple[RequestRecord, ...]:
        """Return the stored records, newest first, of a state and of a user if given.

        Args:
            state: Only records in this state.
            user_id: Only records of this user.

        Returns:
            The records.

        Raises:
            TypeError: ``state`` is not a RequestState, or ``user_id`` not a str.
            StoreError: The file cannot be opened or read, or a row is malformed.
        """
        _check_filters(state, user_id)
        where = [_LIVE]
        params: list[Any] = [time.time()]
        if state is not None:
            where.append("state = ?")
            params.append(state.value)
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        query = (
            f"SELECT {_COLUMNS} FROM requests WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, request_id DESC"
        )

        def rows(conn: sqlite3.Connection) -> tuple[RequestRecord, ...]:
            return tuple(_record_of_row(row) for row in conn.execute(query, params))

        return await self._call("cannot read", rows)

    async def renew_owner(self, owner: RunOwner, ttl: float) -> None:
        """Register ``owner`` for ``ttl`` seconds from now.

        Args:
            owner: The owner.
            ttl: Seconds its registration lives.

        Raises:
            StoreError: The file cannot be opened or written.
        """

        def renew(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO request_owners (token, expires_at) VALUES (?, ?)",
                (owner.token, time.time() + ttl),
            )

        await self._call("cannot register the coordinator", renew)

    async def release_owner(self, owner: RunOwner) -> None:
        """End ``owner``'s registration.

        Args:
            owner: The owner.

        Raises:
            StoreError: The file cannot be opened or written.
        """

        def release(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM request_owners WHERE token = ?", (owner.token,))

        await self._call("cannot release the coordinator", release)

    async def fail_interrupted(self) -> tuple[RequestRecord, ...]:
        """Mark FAILED (``internal``, ``"interrupted"``) each unfinished request of a gone owner.

        One ``BEGIN IMMEDIATE`` transaction: two processes never mark the same request.

        Returns:
            The records as marked.

        Raises:
            StoreError: The file cannot be opened, read or written, or a row is malformed.
        """
        states = tuple(state.value for state in _UNFINISHED)

        def fail(conn: sqlite3.Connection) -> tuple[RequestRecord, ...]:
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            registered = dict(
                conn.execute("SELECT token, expires_at FROM request_owners WHERE expires_at > ?",
                             (now,)).fetchall()
            )  # fmt: skip
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM requests WHERE state IN ({', '.join('?' * len(states))})",
                states,
            ).fetchall()
            wall = _utc(now)
            marked = [
                _interrupted(record, wall)
                for record in map(_record_of_row, rows)
                if not _owner_lives(record.owner, registered, now)
            ]
            for statement, values in _inserts([_row(record, self._ttl) for record in marked]):
                conn.execute(statement, values)
            conn.execute("COMMIT")
            return _newest_first(marked)

        return await self._call("cannot recover interrupted requests", fail)


# --- the coordinator's writer --------------------------------------------------------------
_WINDOW = 0.005  # seconds of arrivals and ends written in one batch
_PROGRESS_EVERY = 1.0  # seconds between writes of one request's progress (its transitions)
_CLOSE_TIMEOUT = 10.0  # seconds a closing coordinator waits for its last writes
_MAX_BACKOFF = 5.0
_MAX_PENDING = 100_000  # finished records kept while the store fails; the oldest go first


@final
class _Pending:
    __slots__ = ("arrived", "created", "final", "request", "written")

    def __init__(self, request: Request, now: float, arrived: float) -> None:
        # The request while it is in flight; once it ended, only its last row (``final``), so
        # that a finished request is freed at once instead of surviving until it is written
        # (requests kept alive for a batch are promoted by the garbage collector, whose full
        # collections then cost more than the writes).
        self.request: Request | None = request
        self.final: tuple[Any, ...] | None = None
        self.created = now  # wall clock
        self.arrived = arrived  # the event loop's clock
        self.written = -math.inf  # when last written, on the event loop's clock


def _plain(text: str) -> str:
    # A str subclass (a RequestKind, a StrEnum member) is stored as its plain value.
    return text if type(text) is str else str.__str__(text)


def _reason(result: ProcessingResult | None) -> str | None:
    error = None if result is None else result.error
    if error is None:
        return None
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."


@final
class Recorder:
    """Records a coordinator's requests in a :class:`RequestStore`, off their path (internal).

    The coordinator calls :meth:`arrived`, :meth:`moved` on every transition and
    :meth:`ended`: each only notes the change. :meth:`run` (a task in the coordinator's task
    group) writes the latest record of every changed request in batches and keeps the owner
    registered.

    Args:
        store: The store.
        logger: The coordinator's structlog logger (store failures are reported on it).
    """

    def __init__(self, store: RequestStore, logger: Any) -> None:
        self.store = store
        self.owner = RunOwner.current()
        owner = self.owner
        self._owner_row = (
            owner.host,
            owner.pid,
            owner.token,
            owner.process_started,
            owner.since.timestamp(),
        )
        # An SQLite store takes the rows as they are made (no RequestRecord in between), and
        # its ttl gives the finished rows their expiry; other stores take records.
        self._rows_to: Callable[[list[tuple[Any, ...]]], Awaitable[None]] | None = None
        self._expiry: float | None = None
        if type(store) is SQLiteRequestStore:
            self._rows_to = store._save_rows
            self._expiry = store.ttl
        self._log = logger
        self._ttl = DEFAULT_LEASE_TTL
        self._entries: dict[str, _Pending] = {}
        # Arrivals and ends, written within _WINDOW; transitions, written once _PROGRESS_EVERY
        # passed since the request was last written (so a long request costs a few writes,
        # not one per transition).
        self._dirty: dict[str, _Pending] = {}
        self._progress: dict[str, _Pending] = {}
        self._wake = anyio.Event()
        self._renewed = -math.inf
        self._failures = 0
        self._dropped = 0

    # --- on the request's path: note the change, nothing else -------------------------------
    def arrived(self, request: Request) -> None:
        """Note a request the coordinator received."""
        entry = _Pending(request, time.time(), anyio.current_time())
        self._entries[request.id] = self._dirty[request.id] = entry
        self._wake.set()

    def moved(self, request: Request, change: object = None) -> None:
        """Note a transition of a request (a pipeline's ``on_transition`` observer)."""
        entry = self._entries.get(request.id)
        if entry is not None:
            self._progress[request.id] = entry

    def ended(self, request: Request, result: ProcessingResult | None) -> None:
        """Note the end of a request, with its result (None when none was made)."""
        entry = self._entries.get(request.id)
        if entry is None:
            return
        category = reason = None
        if result is not None and result.status is ProcessingStatus.FAILED:
            category = result.category
            reason = _reason(result)
        entry.final = self._row_of(entry, request, category, reason)
        entry.request = None
        self._dirty[request.id] = entry
        self._wake.set()

    # --- the writer ---------------------------------------------------------------------------
    def _row_of(
        self,
        entry: _Pending,
        request: Request,
        category: ErrorCategory | None = None,
        reason: str | None = None,
    ) -> tuple[Any, ...]:
        """The request's row as SQLite keeps it (``_COLUMNS``), made of plain values only."""
        history = request.history
        changed = history[-1].at if history else entry.arrived
        # A change's wall-clock time, from its time on the event loop's clock (the history).
        updated = max(entry.created, time.time() - anyio.current_time() + changed)
        state = request.state
        expiry = self._expiry
        kind = request.kind
        return (
            _plain(request.id),
            state.value,
            _plain(request.user_id),
            _plain(request.source),
            None if kind is None else _plain(kind),
            _stages_json(tuple(request.results)),
            None if category is None else category.value,
            reason,
            entry.created,
            updated,
            updated + expiry if expiry is not None and state in _FINISHED else None,
            *self._owner_row,
        )

    def _snapshot(self, taken: dict[str, _Pending]) -> list[tuple[Any, ...]]:
        rows = []
        for entry in taken.values():
            row = entry.final
            if row is None:
                request = entry.request
                assert request is not None  # only an ended entry drops its request
                if request.state in _FINISHED:
                    continue  # ended() is on its way, with the category: written then
                row = self._row_of(entry, request)
            rows.append(row)
        return rows

    def _take(self, now: float, everything: bool) -> dict[str, _Pending]:
        taken, self._dirty = self._dirty, {}
        progress = self._progress
        if progress:
            for key in taken:
                progress.pop(key, None)
            due = [
                k for k, e in progress.items() if everything or now - e.written >= _PROGRESS_EVERY
            ]
            for key in due:
                taken[key] = progress.pop(key)
        return taken

    async def write(self, *, everything: bool = False) -> bool:
        """Write what is due (registering the owner first when due); False if the store failed.

        Args:
            everything: Write the progress of every request too, due or not.
        """
        try:
            now = anyio.current_time()
            if now - self._renewed >= self._ttl / 3:
                await self.store.renew_owner(self.owner, self._ttl)
                self._renewed = now = anyio.current_time()
            taken = self._take(now, everything)
            if self._wake.is_set():
                self._wake = anyio.Event()
            rows = self._snapshot(taken)
            try:
                if rows:
                    if self._rows_to is not None:
                        await self._rows_to(rows)
                    else:
                        await self.store.save([_record_of_row(row) for row in rows])
            except BaseException:
                for key, entry in taken.items():
                    self._dirty.setdefault(key, entry)
                raise
        except Exception as exc:
            self._failed(exc)
            return False
        for key, entry in taken.items():
            entry.written = now
            if entry.final is not None and key not in self._dirty:
                del self._entries[key]
        if self._failures:
            self._log.info(
                "request store recovered",
                store=repr(self.store),
                failed_writes=self._failures,
                dropped=self._dropped,
            )
            self._failures = self._dropped = 0
        return True

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        if self._failures == 1:  # once per incident: until a write succeeds again
            self._log.warning(
                "request store failed",
                store=repr(self.store),
                error=f"{type(exc).__name__}: {exc}",
            )
        excess = len(self._dirty) - _MAX_PENDING
        if excess > 0:
            for key in [k for k, e in self._dirty.items() if e.final is not None][:excess]:
                del self._dirty[key]
                del self._entries[key]
                self._dropped += 1

    async def run(self) -> None:
        """Write changes in batches every few milliseconds, and keep the owner registered."""
        backoff = 0.0
        while True:
            with anyio.move_on_after(_PROGRESS_EVERY if self._progress else self._ttl / 3):
                await self._wake.wait()
            if self._dirty:
                await anyio.sleep(_WINDOW)  # let the changes of the next few ms join
            if await self.write():
                backoff = 0.0
            else:
                backoff = min(_MAX_BACKOFF, max(0.1, backoff * 2))
                await anyio.sleep(backoff)

    async def close(self) -> None:
        """Write what is left and release the owner (shielded, for at most 10 seconds)."""
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            while self._dirty or self._progress:
                if not await self.write(everything=True):
                    break
            else:
                with contextlib.suppress(Exception):  # the registration expires by itself
                    await self.store.release_owner(self.owner)
                return
        self._log.warning(
            "request store: records not written at close",
            store=repr(self.store),
            unwritten=len(self._dirty.keys() | self._progress.keys()),
        )

    async def recover(self) -> tuple[RequestRecord, ...]:
        """Mark the interrupted requests of dead owners FAILED and return them.

        Raises:
            StoreError: What the store raised.
        """
        # Registered first: this coordinator's own requests must not look interrupted.
        await self.store.renew_owner(self.owner, self._ttl)
        self._renewed = anyio.current_time()
        return await self.store.fail_interrupted()


@contextlib.asynccontextmanager
async def open_recorder(store: RequestStore, logger: Any) -> AsyncIterator[Recorder]:
    """Run a :class:`Recorder`'s writer for the block; its last writes are made on the way out.

    Args:
        store: The store.
        logger: The logger store failures are reported on.

    Yields:
        The recorder.
    """
    # The writer registers the owner before its first write: opening never waits on the store.
    recorder = Recorder(store, logger)
    try:
        async with open_body_group() as tg:
            tg.start_soon(recorder.run, name="trioflow request store writer")
            try:
                yield recorder
            finally:
                tg.cancel_scope.cancel()
    finally:
        await recorder.close()
