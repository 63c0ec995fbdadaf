"""Durable workflow runs: the store protocol, its records, the JSON codec, and MemoryStore.

A run is saved as one :class:`RunRecord` (id, workflow name and shape, status, times) plus one
:class:`StepRecord` per step and the run's shared state. Values are stored as JSON text made by a
cattrs converter (attrs classes, dataclasses, datetimes, enums, paths, sets and tuples), together
with the name of their type, so a resumed run can give back the original type. Stores implement
the small :class:`WorkflowStore` protocol: :class:`MemoryStore` here, ``SQLiteStore`` beside it,
and later Redis or Postgres.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import pathlib
import typing
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType, NoneType
from typing import Any, Protocol, final, runtime_checkable

import anyio.lowlevel
import attrs
import cattrs
from cattrs.preconf.json import make_converter

from .._errors import UnstorableValueError
from .._status import Status
from ._graph import StepStatus

__all__ = (
    "MemoryStore",
    "RunRecord",
    "RunStatus",
    "StepRecord",
    "StoredValue",
    "WorkflowStore",
    "converter",
    "decode_value",
    "encode_value",
)

converter: cattrs.Converter = make_converter()
"""The cattrs converter that turns step values and state into JSON-ready data and back."""
converter.register_unstructure_hook(pathlib.PurePath, str)
converter.register_structure_hook_func(
    lambda t: isinstance(t, type) and issubclass(t, pathlib.PurePath),
    lambda value, t: t(value),
)

_JSON_NATIVE = (str, int, float, bool, NoneType)


class RunStatus(Status):
    """The state of a stored run.

    Attributes:
        RUNNING: Started and not ended (or the process running it died: resume it).
        SUCCEEDED: Every step SUCCEEDED, was SKIPPED, or FAILED with ``continue_on_error``.
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


class _Unstorable(Exception):
    def __init__(self, culprit: type) -> None:
        super().__init__(culprit)
        self.culprit = culprit


def _refuse(obj: object) -> Any:
    raise _Unstorable(type(obj))


def _type_name(tp: type) -> str:
    return f"{tp.__module__}:{tp.__qualname__}"


def encode_value(step: str, value: Any) -> StoredValue:
    """Encode a value as JSON through :data:`converter`.

    Args:
        step: The step the value belongs to (for the error message).
        value: Any value.

    Returns:
        Its :class:`StoredValue`.

    Raises:
        UnstorableValueError: The value (or something inside it) cannot be stored as JSON; the
            error names the step and the type that could not be stored.
    """
    tp = type(value)
    try:
        data = value if tp in _JSON_NATIVE else converter.unstructure(value)
        text = json.dumps(data, default=_refuse, separators=(",", ":"))
    except _Unstorable as exc:
        raise UnstorableValueError(step, exc.culprit) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise UnstorableValueError(step, tp) from exc
    return StoredValue(json=text, type=None if tp in _JSON_NATIVE else _type_name(tp))


def _resolve(name: str) -> Any:
    module_name, _, qualname = name.partition(":")
    if "<" in qualname:  # a local class: cannot be found again
        return None
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return obj if isinstance(obj, type) else None


def decode_value(stored: StoredValue, hint: Any = None) -> Any:
    """Decode a stored value, giving back its type when it can be known.

    The type is taken from ``hint`` (a step function's return annotation) when given, else from
    the stored type name when that type can be imported; otherwise the JSON data comes back as
    it is (dicts, lists, strings, numbers).

    Args:
        stored: The stored value.
        hint: A type to structure the data into, or None.

    Returns:
        The value.
    """
    data = stored.data()
    for target in (hint, _resolve(stored.type) if stored.type else None):
        if target is None or target is Any or target is object:
            continue
        try:
            return converter.structure(data, target)
        except Exception:
            continue
    return data


def return_hint(fn: Callable[..., Any]) -> Any:
    """Return the resolved return annotation of a step function, or None.

    Args:
        fn: A step function (or a callable object with an async ``__call__``).

    Returns:
        The annotation, or None when there is none or it cannot be resolved.
    """
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(type(target), "__call__", None)  # noqa: B004 - a callable object
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        return None
    return hints.get("return")
