"""Durable workflow runs: the store protocol, what it stores, and MemoryStore.

A run is saved as one :class:`RunRecord` (id, workflow name and shape, status, times) plus one
:class:`StepRecord` per step and the run's shared state. Values are kept as a
:class:`StoredValue`: JSON text and the name of the original type (made by ``_codec``), so a
resumed run can give back the original type. Stores implement the small
:class:`WorkflowStore` protocol: :class:`MemoryStore` here, ``SQLiteStore`` beside it, and any
other store (Redis, Postgres) that implements the same five methods.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol, final, runtime_checkable

import anyio.lowlevel
import attrs

from .._status import Status
from ._graph import StepStatus

__all__ = (
    "MemoryStore",
    "RunRecord",
    "RunStatus",
    "StepRecord",
    "StoredValue",
    "WorkflowStore",
)


class RunStatus(Status):
    """The state of a stored run.

    Attributes:
        RUNNING: Started and not ended (or the process running it died: resume it).
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
        updated_at: When it was last written (UTC).
        fingerprint: Digest of the workflow's shape (steps and edges).
        shape: Step name -> names it comes after, as the run was started.
        step_counts: :class:`StepStatus` -> number of recorded steps with it.
        steps: Step name -> :class:`StepRecord` (empty in ``list_runs()``).
        state: The shared state set with ``ctx.set`` (empty in ``list_runs()``).
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

    @property
    def total(self) -> int:
        """Number of steps of the workflow."""
        return len(self.shape)


@runtime_checkable
class WorkflowStore(Protocol):
    """Where durable workflow runs are kept: what a store must implement.

    ``run_workflow`` calls :meth:`load_run` and :meth:`begin_run` before the first step,
    :meth:`save_steps` whenever steps end (before any step after them starts), and
    :meth:`finish_run` at the end. Every method is async; a store that does blocking I/O runs it
    on a worker thread. A store raises ``trioflow.StoreError`` when it cannot read or write.
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
        """Create a run, or mark an existing one RUNNING again (a resume).

        Args:
            run_id: The run's id.
            workflow: The workflow's name.
            fingerprint: Digest of the workflow's shape.
            shape: Step name -> names it comes after.
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

    async def finish_run(self, run_id: str, status: RunStatus) -> None:
        """Record how a run ended.

        Args:
            run_id: The run's id.
            status: The final status.
        """
        ...


def _now() -> datetime:
    return datetime.now(UTC)


@final
class _MemoryRun:
    __slots__ = ("head", "state", "status", "steps", "updated_at")

    def __init__(self, head: RunRecord) -> None:
        self.head = head
        self.status = head.status
        self.updated_at = head.updated_at
        self.steps: dict[str, StepRecord] = {}
        self.state: dict[str, StoredValue] = {}

    def record(self, *, full: bool) -> RunRecord:
        return attrs.evolve(
            self.head,
            status=self.status,
            updated_at=self.updated_at,
            step_counts=_count(self.steps.values()),
            # Copies: a record handed out never changes under its reader.
            steps=dict(self.steps) if full else {},
            state=dict(self.state) if full else {},
        )


@final
class MemoryStore:
    """A :class:`WorkflowStore` that keeps runs in this process's memory.

    Resuming works within one process (a retry loop, a test); use ``SQLiteStore`` to survive a
    crash.
    """

    __slots__ = ("_runs",)

    def __init__(self) -> None:
        self._runs: dict[str, _MemoryRun] = {}

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
        return None if run is None else run.record(full=True)

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
        return tuple(run.record(full=False) for run in runs)

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
                shape={name: tuple(after) for name, after in shape.items()},
            )
        )

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
        await anyio.lowlevel.checkpoint()
        run = self._runs[run_id]
        for record in steps:
            run.steps[record.name] = record
        run.state.update(state)
        run.updated_at = _now()

    async def finish_run(self, run_id: str, status: RunStatus) -> None:
        """Record how a run ended.

        Args:
            run_id: The run's id.
            status: The final status.

        Raises:
            KeyError: The run was never begun.
        """
        await anyio.lowlevel.checkpoint()
        run = self._runs[run_id]
        run.status = status
        run.updated_at = _now()


def _count(records: Any) -> dict[StepStatus, int]:
    counts: dict[StepStatus, int] = {}
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    return counts
