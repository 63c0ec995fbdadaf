"""Durable workflow runs: the store protocol, what it stores, and MemoryStore.

A run is saved as one :class:`RunRecord` (id, workflow name and shape, status, times) plus one
:class:`StepRecord` per step and the run's shared state, and the run's lease while a process
executes it (a :class:`~trioflow.RunOwner`, see ``_lease``). Values are kept as a
:class:`StoredValue`: JSON text and the name of the original type (made by ``_codec``), so a
resumed run can give back the original type. Stores implement the small
:class:`WorkflowStore` protocol: :class:`MemoryStore` here, ``SQLiteStore`` beside it, and any
other store (Redis, Postgres) that implements the same eight methods. A run hands
``save_steps`` its records as :class:`StepRows`: a sequence of :class:`StepRecord` to any
store, whose rows (tuples of the fields) the stores of trioflow read without building the
records. A store may also implement ``delete_run`` (the three stores of trioflow do;
``trioflow prune`` uses it); it is not part of the protocol, so a store written for an
earlier trioflow keeps working.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Protocol, TypeAlias, final, overload, runtime_checkable

import anyio.lowlevel
import attrs

from .._backend import checkpoint_if_cancelled
from .._errors import RunLeasedError
from .._status import Status
from .._values import builder, lazy_field
from ._lease import RunOwner, live_owner
from ._step_status import StepStatus

__all__ = (
    "MemoryStore",
    "RunRecord",
    "RunStatus",
    "StepRecord",
    "StepRow",
    "StepRows",
    "StoredValue",
    "WorkflowStore",
    "as_record",
    "as_row",
    "record_row",
    "step_record",
    "step_times_text",
    "time_text",
    "utc_text",
)


class RunStatus(Status):
    """The state of a stored run.

    Attributes:
        RUNNING: Started and not ended; when no live process holds its lease (it died), the
            record says ``interrupted``: resume it.
        SUCCEEDED: Every step SUCCEEDED, was SKIPPED, or FAILED being ``optional``.
        FAILED: A step failed (or the store failed); resuming reruns what did not succeed.
        CANCELLED: The run was cancelled by its caller; resuming finishes it.
    """

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@final
@attrs.frozen(kw_only=True)
class StoredValue:
    """A value as a store keeps it: JSON text and the name of the original type.

    Attributes:
        json: The JSON text of the value's unstructured form.
        type: ``"module:qualname"`` of the value's type, or None.
    """

    json: str
    type: str | None = None

    def data(self) -> Any:
        """Return the JSON data (dicts, lists, strings, numbers), without restoring the type.

        Returns:
            ``json.loads(self.json)``.
        """
        return json.loads(self.json)


@final
@attrs.frozen(kw_only=True)
class StepRecord:
    """One step of a stored run.

    Attributes:
        name: The step's name.
        status: Its :class:`StepStatus`.
        attempts: How many times the step function was called.
        value: The step's value when it SUCCEEDED (or was COMPENSATED), else None.
        error: ``"ExceptionType: message"`` of the error that failed it, else None.
        compensation_error: The same for an error raised by its compensation.
        started_at: When it started (UTC).
        finished_at: When it ended (UTC).
        duration: Seconds it ran.
        seq: Its place in the run's order of completion (compensation goes in reverse).
        fingerprint: The step's ``fingerprint`` (a digest of its definition) when it ran, or
            None; a resume reruns a done step whose fingerprint changed.
    """

    name: str
    status: StepStatus
    attempts: int = 0
    value: StoredValue | None = None
    error: str | None = None
    compensation_error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration: float | None = None
    seq: int | None = None
    fingerprint: str | None = None


step_record: Callable[..., StepRecord] = builder(StepRecord)
"""``step_record(name, status, attempts, value, error, compensation_error, started_at, ...)``.

A :class:`StepRecord` from every field, in order, without the checks of its ``__init__`` (a
run's hot path: one record per step). ``started_at`` and ``finished_at`` may be POSIX
timestamps (floats): the record turns each into its UTC ``datetime`` when it is first read
(see :func:`trioflow._values.lazy_field`), and a store that writes text gets it from
:func:`step_times_text` without building the ``datetime``.
"""

_utc_from = datetime.fromtimestamp
# The last whole second formatted, and its text: consecutive records mostly share it. One
# tuple, replaced whole, so that threads (SQLiteStore writes on worker threads) never see a
# second with another second's text.
_second: tuple[float, str] = (math.nan, "")


def utc_text(timestamp: float) -> str:
    """Return ``datetime.fromtimestamp(timestamp, UTC).isoformat()``, without the ``datetime``.

    The microseconds are rounded as ``fromtimestamp`` rounds them (half to even), and are left
    out when they are 0, as ``isoformat`` leaves them out.

    Args:
        timestamp: A POSIX timestamp.

    Returns:
        The ISO 8601 text, ending in ``+00:00``.
    """
    global _second
    fraction, whole = math.modf(timestamp)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        micro -= 1_000_000
        whole += 1.0
    elif micro < 0:
        micro += 1_000_000
        whole -= 1.0
    second = _second
    if second[0] != whole:
        second = _second = (whole, _utc_from(whole, UTC).isoformat()[:-6])
    if micro:
        # The six digits from two table entries: about 1,000 instructions less than
        # formatting them ("%06d"), twice a record.
        return "".join((second[1], ".", _DIGITS[micro // 1000], _DIGITS[micro % 1000], "+00:00"))
    return second[1] + "+00:00"


_DIGITS = tuple(f"{k:03d}" for k in range(1000))


def _utc(timestamp: float) -> datetime:
    return _utc_from(timestamp, UTC)


# StepRecord.started_at / finished_at: a run fills their slots with POSIX timestamps, each the
# UTC datetime once read (and kept), so that a record nobody reads costs no datetime. After
# step_record took the slots' own setters.
_started_slot = lazy_field(StepRecord, "started_at", float, _utc, keep=True)
_finished_slot = lazy_field(StepRecord, "finished_at", float, _utc, keep=True)


StepRow: TypeAlias = tuple[
    str,
    StepStatus,
    int,
    StoredValue | None,
    str | None,
    str | None,
    float | None,
    float | None,
    float | None,
    int | None,
    str | None,
]
"""A step record's fields as a tuple, in :class:`StepRecord`'s order, times as timestamps."""


@final
class StepRows(Sequence[StepRecord]):
    """The step records a run hands its store, kept as rows until a record is asked for.

    A run makes one record per step; a store of trioflow (``MemoryStore``, ``SQLiteStore``)
    reads :attr:`rows` instead and never builds the records, while any other store sees a
    sequence of :class:`StepRecord` (each built once, when first read).

    Args:
        rows: One :data:`StepRow` per record.

    Attributes:
        rows: The rows.
    """

    __slots__ = ("_built", "rows")

    def __init__(self, rows: list[StepRow]) -> None:
        self.rows = rows
        self._built: list[StepRecord | None] = [None] * len(rows)

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, k: int) -> StepRecord: ...

    @overload
    def __getitem__(self, k: slice) -> list[StepRecord]: ...

    def __getitem__(self, k: int | slice) -> StepRecord | list[StepRecord]:
        if isinstance(k, slice):
            return [self[j] for j in range(len(self.rows))[k]]
        record = self._built[k]
        if record is None:
            record = self._built[k] = step_record(*self.rows[k])
        return record

    def __repr__(self) -> str:
        return f"StepRows({list(self)!r})"


def as_record(entry: StepRecord | StepRow) -> StepRecord:
    """Return a record, given a record or a :data:`StepRow`.

    Args:
        entry: A record, or the row of one.

    Returns:
        The record.
    """
    return entry if type(entry) is StepRecord else step_record(*entry)


def time_text(value: datetime | float | None) -> str | None:
    """Return a record's time as ISO 8601 text: ``isoformat()`` of its datetime.

    Args:
        value: A datetime, a POSIX timestamp that stands for its UTC datetime, or None.

    Returns:
        The text, or None.
    """
    if value is None:
        return None
    if type(value) is float:
        return utc_text(value)
    assert isinstance(value, datetime)
    return value.isoformat()


def as_row(entry: StepRecord | StepRow) -> StepRow:
    """Return a :data:`StepRow`, given a record or a row.

    Args:
        entry: A record, or the row of one.

    Returns:
        The row.
    """
    return record_row(entry) if type(entry) is StepRecord else entry


def record_row(record: StepRecord) -> StepRow:
    """Return a record's :data:`StepRow` (its times as the record holds them, unread).

    Args:
        record: A step record.

    Returns:
        Its fields, in order.
    """
    return (
        record.name,
        record.status,
        record.attempts,
        record.value,
        record.error,
        record.compensation_error,
        _started_slot.__get__(record),
        _finished_slot.__get__(record),
        record.duration,
        record.seq,
        record.fingerprint,
    )


def step_times_text(record: StepRecord) -> tuple[str | None, str | None]:
    """Return a record's ``started_at`` and ``finished_at`` as ISO 8601 text (None: no time).

    Equal to ``record.started_at.isoformat()`` (and the same for ``finished_at``), without
    building a datetime the record does not hold yet.

    Args:
        record: A step record.

    Returns:
        ``(started, finished)``.
    """
    return time_text(_started_slot.__get__(record)), time_text(_finished_slot.__get__(record))


def _frozen_mapping(value: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return value if isinstance(value, MappingProxyType) else MappingProxyType(dict(value))


@final
@attrs.frozen(kw_only=True)
class RunRecord:
    """A stored run, as ``list_runs()`` and ``load_run()`` return it.

    Attributes:
        run_id: The run's id.
        workflow: The workflow's name.
        status: A :class:`RunStatus`.
        created_at: When the run was first started (UTC).
        updated_at: When it was last written (UTC). ``updated_at - created_at`` is the wall
            span, idle time between an interruption and a resume included.
        active_seconds: Seconds the run spent running, summed over every session of it (a
            first run and each resume); for a session that died, up to its last write.
        fingerprint: Digest of the workflow's shape (steps and edges).
        shape: Step name -> names it comes after, as the run was started.
        step_counts: :class:`StepStatus` -> number of recorded steps with it.
        steps: Step name -> :class:`StepRecord` (empty in ``list_runs()``).
        state: The shared state set with ``ctx.set`` (empty in ``list_runs()``).
        owner: The :class:`~trioflow.RunOwner` holding the run's lease (the process executing
            it), or None when nobody does or the lease expired or its process is gone.
    """

    run_id: str
    workflow: str
    status: RunStatus
    created_at: datetime
    updated_at: datetime
    fingerprint: str
    shape: Mapping[str, tuple[str, ...]] = attrs.field(converter=_frozen_mapping)
    step_counts: Mapping[StepStatus, int] = attrs.field(factory=dict, converter=_frozen_mapping)
    steps: Mapping[str, StepRecord] = attrs.field(factory=dict, converter=_frozen_mapping)
    state: Mapping[str, StoredValue] = attrs.field(factory=dict, converter=_frozen_mapping)
    active_seconds: float = 0.0
    owner: RunOwner | None = None

    @property
    def total(self) -> int:
        """Number of steps of the workflow."""
        return len(self.shape)

    @property
    def interrupted(self) -> bool:
        """Whether the run is RUNNING but no live process executes it: resume it.

        Its owner died (on this host, seen at once; elsewhere, once its lease expired), or the
        run was stored by a trioflow without leases.
        """
        return self.status is RunStatus.RUNNING and self.owner is None


@runtime_checkable
class WorkflowStore(Protocol):
    """Where durable workflow runs are kept: what a store must implement.

    ``run_workflow`` calls :meth:`acquire_lease`, then :meth:`load_run` and :meth:`begin_run`
    before the first step, :meth:`save_steps` whenever steps end (before any step after them
    starts), :meth:`renew_lease` every third of the lease's time to live, :meth:`finish_run`
    at the end, and :meth:`release_lease` last. Every method is async; a store that does
    blocking I/O runs it on a worker thread. A store raises ``trioflow.StoreError`` when it
    cannot read or write. The lease methods are each one atomic check-and-set (one
    transaction); lease times are wall-clock, since processes share them.
    """

    async def load_run(self, run_id: str) -> RunRecord | None:
        """Return a stored run with its steps and state, or None when there is none.

        Args:
            run_id: The run's id.
        """
        ...

    async def list_runs(self) -> tuple[RunRecord, ...]:
        """Return every stored run, newest first, without steps and state (counts only)."""
        ...

    async def begin_run(
        self, run_id: str, *, workflow: str, fingerprint: str, shape: Mapping[str, Sequence[str]]
    ) -> None:
        """Create a run, or mark an existing one RUNNING again (a resume: a new session).

        Args:
            run_id: The run's id.
            workflow: The workflow's name.
            fingerprint: Digest of the workflow's shape.
            shape: Step name -> names it comes after.
        """
        ...

    async def acquire_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None:
        """Take the lease of a run (stored or not yet) for ``ttl`` seconds, atomically.

        The lease is taken when nobody holds it, or its holder's lease expired, or its holder
        is gone (:func:`live_owner` decides), or ``owner`` holds it already (same token).

        Args:
            run_id: The run's id.
            owner: Who takes it.
            ttl: Seconds it lives unless renewed.

        Returns:
            None when ``owner`` now holds the lease; else the live owner that holds it.
        """
        ...

    async def renew_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None:
        """Extend ``owner``'s lease to ``ttl`` seconds from now, atomically.

        Args:
            run_id: The run's id.
            owner: The owner that holds it.
            ttl: Seconds it lives from now unless renewed again.

        Returns:
            None when renewed (or taken again, when it was free); else the owner that took it
            meanwhile (``owner``'s lease had expired).
        """
        ...

    async def release_lease(self, run_id: str, owner: RunOwner) -> None:
        """Give a lease back, if ``owner`` (same token) still holds it.

        Args:
            run_id: The run's id.
            owner: The owner that took it.
        """
        ...

    async def save_steps(
        self, run_id: str, steps: Sequence[StepRecord], state: Mapping[str, StoredValue]
    ) -> None:
        """Write step records and changed state of a run, all in one transaction.

        Args:
            run_id: The run's id (begun with :meth:`begin_run`).
            steps: Records that replace earlier records of the same steps.
            state: State values that replace earlier values of the same keys.
        """
        ...

    async def finish_run(self, run_id: str, status: RunStatus, *, elapsed: float) -> None:
        """Record how a run ended, and how long this session of it ran.

        Args:
            run_id: The run's id.
            status: The final status.
            elapsed: Seconds the session begun by the last :meth:`begin_run` ran; added to
                the run's ``active_seconds``.
        """
        ...


def _now() -> datetime:
    return datetime.now(UTC)


def active_seconds(
    finished: float, session_started: datetime | None, updated_at: datetime
) -> float:
    """Return a run's time spent running: its finished sessions, and the current one so far.

    Args:
        finished: Seconds of the sessions that ended (with ``finish_run``).
        session_started: When the session in progress (or one that died) began, or None.
        updated_at: When the run was last written.

    Returns:
        The seconds.
    """
    if session_started is None:
        return finished
    return finished + max(0.0, (updated_at - session_started).total_seconds())


@final
class _MemoryRun:
    __slots__ = ("active", "head", "session", "state", "status", "steps", "updated_at")

    def __init__(self, head: RunRecord) -> None:
        self.head = head
        self.status = head.status
        self.updated_at = head.updated_at
        # A record, or its row (what a run saves) until a reader asks for the record.
        self.steps: dict[str, StepRecord | StepRow] = {}
        self.state: dict[str, StoredValue] = {}
        self.active = 0.0
        self.session: datetime | None = head.created_at

    def record(self, *, full: bool, owner: RunOwner | None) -> RunRecord:
        steps = self.steps
        if full:
            for name, entry in steps.items():
                if type(entry) is not StepRecord:
                    steps[name] = as_record(entry)
        return attrs.evolve(
            self.head,
            status=self.status,
            updated_at=self.updated_at,
            step_counts=_count(self.steps.values()),
            # Copies: a record handed out never changes under its reader.
            steps=dict(self.steps) if full else {},
            state=dict(self.state) if full else {},
            active_seconds=active_seconds(self.active, self.session, self.updated_at),
            owner=owner,
        )


@final
class MemoryStore:
    """A :class:`WorkflowStore` that keeps runs in this process's memory.

    Resuming works within one process (a retry loop, a test); use ``SQLiteStore`` to survive a
    crash.
    """

    __slots__ = ("_leases", "_runs")

    def __init__(self) -> None:
        self._runs: dict[str, _MemoryRun] = {}
        self._leases: dict[str, tuple[RunOwner, datetime]] = {}

    def _owner(self, run_id: str, now: datetime) -> RunOwner | None:
        lease = self._leases.get(run_id)
        return None if lease is None else live_owner(lease[0], lease[1], now)

    def __repr__(self) -> str:
        return f"<MemoryStore with {len(self._runs)} runs>"

    async def load_run(self, run_id: str) -> RunRecord | None:
        """Return a stored run with its steps and state, or None when there is none.

        Args:
            run_id: The run's id.

        Returns:
            The run's record, or None.
        """
        await anyio.lowlevel.checkpoint()
        run = self._runs.get(run_id)
        return None if run is None else run.record(full=True, owner=self._owner(run_id, _now()))

    async def list_runs(self) -> tuple[RunRecord, ...]:
        """Return every stored run, newest first, without steps and state (counts only).

        Returns:
            The runs' records.
        """
        await anyio.lowlevel.checkpoint()
        # Newest first; runs created in the same microsecond: the one begun last first.
        runs = sorted(
            reversed(self._runs.values()), key=lambda run: run.head.created_at, reverse=True
        )
        now = _now()
        return tuple(
            run.record(full=False, owner=self._owner(run.head.run_id, now)) for run in runs
        )

    async def begin_run(
        self, run_id: str, *, workflow: str, fingerprint: str, shape: Mapping[str, Sequence[str]]
    ) -> None:
        """Create a run, or mark an existing one RUNNING again (a resume).

        Args:
            run_id: The run's id.
            workflow: The workflow's name.
            fingerprint: Digest of the workflow's shape.
            shape: Step name -> names it comes after.
        """
        await anyio.lowlevel.checkpoint()
        now = _now()
        run = self._runs.get(run_id)
        if run is not None:
            # A session that died without finish_run counts up to its last write.
            run.active = active_seconds(run.active, run.session, run.updated_at)
            run.session = now
            run.status = RunStatus.RUNNING
            run.updated_at = now
            return
        self._runs[run_id] = _MemoryRun(
            RunRecord(
                run_id=run_id,
                workflow=workflow,
                status=RunStatus.RUNNING,
                created_at=now,
                updated_at=now,
                fingerprint=fingerprint,
                # Copied once: the record's converter keeps a read-only mapping as it is.
                shape=MappingProxyType({name: tuple(after) for name, after in shape.items()}),
            )
        )

    async def acquire_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None:
        """Take the lease of a run for ``ttl`` seconds, unless a live owner holds it.

        Args:
            run_id: The run's id.
            owner: Who takes it.
            ttl: Seconds it lives unless renewed.

        Returns:
            None when ``owner`` now holds the lease; else the live owner that holds it.
        """
        await anyio.lowlevel.checkpoint()
        now = _now()
        holder = self._owner(run_id, now)
        if holder is not None and holder.token != owner.token:
            return holder
        self._leases[run_id] = (owner, now + timedelta(seconds=ttl))
        return None

    async def renew_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None:
        """Extend ``owner``'s lease to ``ttl`` seconds from now.

        Args:
            run_id: The run's id.
            owner: The owner that holds it.
            ttl: Seconds it lives from now.

        Returns:
            None when renewed; else the owner that took it meanwhile.
        """
        return await self.acquire_lease(run_id, owner, ttl)

    async def release_lease(self, run_id: str, owner: RunOwner) -> None:
        """Give a lease back, if ``owner`` still holds it.

        Args:
            run_id: The run's id.
            owner: The owner that took it.
        """
        await anyio.lowlevel.checkpoint()
        lease = self._leases.get(run_id)
        if lease is not None and lease[0].token == owner.token:
            del self._leases[run_id]

    async def save_steps(
        self, run_id: str, steps: Sequence[StepRecord], state: Mapping[str, StoredValue]
    ) -> None:
        """Write step records and changed state of a run (atomically: no await in between).

        Args:
            run_id: The run's id (begun with :meth:`begin_run`).
            steps: Records that replace earlier records of the same steps.
            state: State values that replace earlier values of the same keys.

        Raises:
            KeyError: The run was never begun.
        """
        # A cancellation point but no schedule point: the write is a few dict updates, and a
        # run over a chain of steps saves after every step (bench/workflow.py).
        await checkpoint_if_cancelled()
        run = self._runs[run_id]
        if type(steps) is StepRows:  # a run's: kept as rows, records made when read
            for row in steps.rows:
                run.steps[row[0]] = row
        else:
            for record in steps:
                run.steps[record.name] = record
        run.state.update(state)
        run.updated_at = _now()

    async def finish_run(self, run_id: str, status: RunStatus, *, elapsed: float) -> None:
        """Record how a run ended, and how long this session of it ran.

        Args:
            run_id: The run's id.
            status: The final status.
            elapsed: Seconds this session ran (added to ``active_seconds``).

        Raises:
            KeyError: The run was never begun.
        """
        await anyio.lowlevel.checkpoint()
        run = self._runs[run_id]
        run.status = status
        run.updated_at = _now()
        run.active += elapsed
        run.session = None

    async def delete_run(self, run_id: str) -> bool:
        """Delete a run with its steps, state and lease, unless a live owner holds its lease.

        Args:
            run_id: The run's id.

        Returns:
            True when the run was deleted, False when there was no such run.

        Raises:
            RunLeasedError: A live owner holds the run's lease (it is running); nothing was
                deleted.
        """
        await anyio.lowlevel.checkpoint()
        holder = self._owner(run_id, _now())
        if holder is not None:
            raise RunLeasedError(run_id, holder)
        self._leases.pop(run_id, None)
        return self._runs.pop(run_id, None) is not None


def _count(records: Any) -> dict[StepStatus, int]:
    counts: dict[StepStatus, int] = {}
    for record in records:
        status = record.status if type(record) is StepRecord else record[1]
        counts[status] = counts.get(status, 0) + 1
    return counts
