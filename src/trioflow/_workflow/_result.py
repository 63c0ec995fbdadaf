"""What a workflow run reports: per-step results, the run's result, and progress snapshots."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, final

import attrs

from .._deprecate import warn_renamed
from .._values import builder, lazy_field, refiller
from ._context import Context
from ._graph import StepStatus

__all__ = (
    "RunningSteps",
    "progress_refill_elapsed",
    "progress_refill_running",
    "progress_snapshot",
    "StepResult",
    "StepResults",
    "StepTable",
    "WorkflowProgress",
    "WorkflowResult",
)


def _read_only(value: Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(value, MappingProxyType | StepResults):
        return value
    return MappingProxyType(dict(value))


@final
@attrs.frozen(kw_only=True)
class StepResult:
    """How one step of a run ended.

    Times are on the running backend's clock (``anyio.current_time()``), so they are exact in
    virtual-time tests; a step restored from a store has no times from this run (None).

    Attributes:
        name: The step's name.
        status: A :class:`StepStatus`.
        value: What the step returned (None unless SUCCEEDED or COMPENSATED).
        error: The exception that failed the step (the last attempt's), else None.
        attempts: How many times the step function was called (0 when it never ran).
        started_at: When the step started (after its condition and its resource slot).
        finished_at: When it ended.
        duration: ``finished_at - started_at`` (for a restored step: the stored duration).
        restored: Whether the result comes from a stored run instead of running again.
        compensation_error: The exception its ``compensate`` raised, if it did; the status
            stays SUCCEEDED then (COMPENSATED means the compensation succeeded).
        optional: Whether the step was defined ``optional`` (its failure then does not make
            the run fail).
    """

    name: str
    status: StepStatus
    value: Any = None
    error: Exception | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    restored: bool = False
    compensation_error: Exception | None = None
    optional: bool = False

    @property
    def ok(self) -> bool:
        """Whether the step SUCCEEDED or was SKIPPED."""
        return self.status is StepStatus.SUCCEEDED or self.status is StepStatus.SKIPPED

    @property
    def continue_on_error(self) -> bool:
        """Deprecated name of :attr:`optional`."""
        warn_renamed("StepResult.continue_on_error", "StepResult.optional")
        return self.optional


@final
class StepTable:
    """The per-step arrays of a finished run, indexed like its steps (internal)."""

    __slots__ = (
        "attempts",
        "compensation_error",
        "duration",
        "error",
        "finished",
        "names",
        "optional",
        "restored",
        "started",
        "status",
        "value",
    )

    def __init__(
        self,
        *,
        names: Sequence[str],
        status: Sequence[StepStatus | None],
        value: Sequence[Any],
        error: Sequence[Exception | None],
        attempts: Sequence[int],
        started: Sequence[float | None],
        finished: Sequence[float | None],
        duration: Sequence[float | None],
        restored: Sequence[bool],
        compensation_error: Sequence[Exception | None],
        optional: Sequence[bool],
    ) -> None:
        self.names = names
        self.status = status
        self.value = value
        self.error = error
        self.attempts = attempts
        self.started = started
        self.finished = finished
        self.duration = duration
        self.restored = restored
        self.compensation_error = compensation_error
        self.optional = optional


@final
class StepResults(Mapping[str, StepResult]):
    """Read-only mapping of step name -> :class:`StepResult`, in definition order.

    Each :class:`StepResult` is made when first looked up, so a run of many steps does not pay
    for results nobody reads.
    """

    __slots__ = ("_cache", "_index", "_table")

    def __init__(self, table: StepTable) -> None:
        self._table = table
        self._index = {name: i for i, name in enumerate(table.names)}
        self._cache: dict[str, StepResult] = {}

    def __getitem__(self, name: str) -> StepResult:
        result = self._cache.get(name)
        if result is not None:
            return result
        i = self._index[name]
        t = self._table
        started, finished = t.started[i], t.finished[i]
        result = self._cache[name] = StepResult(
            name=name,
            status=t.status[i] or StepStatus.NOT_RUN,
            value=t.value[i],
            error=t.error[i],
            attempts=t.attempts[i],
            started_at=started,
            finished_at=finished,
            duration=t.duration[i] if started is None or finished is None else finished - started,
            restored=t.restored[i],
            compensation_error=t.compensation_error[i],
            optional=t.optional[i],
        )
        return result

    def __iter__(self) -> Iterator[str]:
        return iter(self._table.names)

    def __len__(self) -> int:
        return len(self._table.names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __repr__(self) -> str:
        return f"StepResults({dict(self)!r})"


@final
@attrs.frozen(kw_only=True)
class WorkflowResult:
    """The outcome of ``run_workflow``: one :class:`StepResult` per step.

    Step failures are recorded here, never raised by ``run_workflow``; call
    :meth:`raise_for_errors` to turn them into an ``ExceptionGroup``.

    Attributes:
        workflow: The workflow's name.
        run_id: The run's id (pass it again with the same store to resume).
        ok: True when every step SUCCEEDED or was SKIPPED, or FAILED being ``optional``.
        steps: Step name -> :class:`StepResult`, in definition order.
        context: The run's final :class:`Context` (results and state; ``step`` is None).
        duration: Seconds from the start to the end of the run, compensation included.
        changed: Names of the steps a resumed run ran again, although they were done, because
            their ``fingerprint`` changed since (definition order).
    """

    workflow: str
    run_id: str
    ok: bool
    steps: Mapping[str, StepResult] = attrs.field(converter=_read_only)
    context: Context
    duration: float
    changed: tuple[str, ...] = ()

    @property
    def values(self) -> Mapping[str, Any]:
        """Step name -> value of every step that succeeded (the context's results)."""
        return self.context.results

    @property
    def errors(self) -> Mapping[str, Exception]:
        """Step name -> exception of every FAILED step (``optional`` ones included)."""
        return {name: r.error for name, r in self.steps.items() if r.error is not None}

    def count(self, status: StepStatus) -> int:
        """Return how many steps ended with a status.

        Args:
            status: A :class:`StepStatus`.

        Returns:
            The number of steps with that status.
        """
        return sum(1 for r in self.steps.values() if r.status is status)

    def raise_for_errors(self) -> None:
        """Raise the failures of the run, if it failed.

        Raises:
            ExceptionGroup: ``ok`` is False; it holds the error of every FAILED step that is not
                ``optional``, in definition order, and its message names the steps.
        """
        if self.ok:
            return
        failed = [
            (name, r.error)
            for name, r in self.steps.items()
            if r.status is StepStatus.FAILED and r.error is not None and not r.optional
        ]
        names = ", ".join(repr(name) for name, _ in failed)
        raise ExceptionGroup(
            f"workflow {self.workflow!r} (run {self.run_id}) failed: step"
            f"{'s' if len(failed) > 1 else ''} {names}",
            [error for _, error in failed],
        )


_BUILDING = threading.Lock()


@final
class RunningSteps:
    """The names of a run's steps in flight at one report, built only when read (internal).

    A run reports whenever a step starts or ends; building the tuple of every running step's
    name for each report would cost O(steps x width). This holds the run's live mapping of
    running step indices instead, and turns it into the tuple when :meth:`names` is first
    called, or when :meth:`freeze` is (the run calls it before it next changes the mapping,
    if the report is still held by anyone). So a report nobody keeps costs O(1), and one that
    is kept reads exactly the steps that were running when it was made.

    Args:
        running: Step index -> anything, in start order: the run's live mapping.
        steps: The run's steps, by index (anything with a ``name``).

    Attributes:
        read: Whether the names are built (read, or frozen): the view no longer reads the
            live mapping.
    """

    __slots__ = ("__weakref__", "_names", "_running", "_steps", "read")

    def __init__(self, running: Mapping[int, object] | None, steps: Sequence[Any]) -> None:
        self._running = running
        self._steps = steps
        self._names: tuple[str, ...] | None = None if running is not None else ()
        self.read = running is None  # whether the names are built (no longer read live)

    def names(self) -> tuple[str, ...]:
        """Return the names, in the order the steps started (built on the first call)."""
        names = self._names
        if names is None:
            # Under a lock: a snapshot handed to another thread may be read there while the
            # run freezes it, and the run changes the mapping only once it is frozen.
            with _BUILDING:
                names = self._names
                if names is None:
                    assert self._running is not None
                    steps = self._steps
                    names = self._names = tuple([steps[i].name for i in self._running])
                    self._running = None
                    self.read = True
        return names

    freeze = names


@final
@attrs.frozen(kw_only=True)
class WorkflowProgress:
    """A snapshot of a run, given to ``on_progress`` whenever a step starts or ends.

    A snapshot stays true after the callback returns: one kept for later reads the steps that
    were running when it was made. (The names of the running steps are only put together when
    ``running`` is read, or when the run next changes while the snapshot is still held, so a
    callback that looks only at the counts costs the run O(1) per report.)

    Attributes:
        total: Number of steps in the workflow.
        completed: Steps that ended, however (restored ones included).
        succeeded: Steps that SUCCEEDED (restored ones included).
        failed: Steps that FAILED.
        skipped: Steps that were SKIPPED.
        running: Names of the steps in flight, in the order they started.
        elapsed: Seconds since the run started.
    """

    total: int
    completed: int
    succeeded: int
    failed: int
    skipped: int
    running: tuple[str, ...]
    elapsed: float


progress_snapshot: Callable[..., WorkflowProgress] = builder(WorkflowProgress)
"""``progress_snapshot(total, completed, succeeded, failed, skipped, running, elapsed)``.

A :class:`WorkflowProgress` built from a run's own counters without the checks of its
``__init__`` (the run's hot path); ``running`` may be a :class:`RunningSteps`.
"""

progress_refill_running: Callable[..., None] = refiller(WorkflowProgress, "running", "elapsed")
"""``progress_refill_running(progress, running, elapsed)``.

Sets the fields of a :class:`WorkflowProgress` that change when a step starts, for a run
reusing its last report: only once nobody else holds it nor a weak reference to it, so that to
everyone else the report is a new value. (When a step ends, most fields change, and the run
builds a new report: setting a slot through its descriptor costs about as much per field as
:data:`progress_snapshot` costs for all seven.)
"""

progress_refill_elapsed: Callable[..., None] = refiller(WorkflowProgress, "elapsed")
"""``progress_refill_elapsed(progress, elapsed)``: :data:`progress_refill_running` for a report
whose ``running`` already holds what it must (the same view of the running steps)."""


# After progress_snapshot and the refillers took the slot's own setter.
lazy_field(WorkflowProgress, "running", RunningSteps, RunningSteps.names, keep=False)
