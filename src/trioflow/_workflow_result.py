"""What a workflow run reports: per-step results, the run's result, and progress snapshots."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, final

import attrs

from ._context import Context
from ._workflow import StepStatus

__all__ = ("StepResult", "WorkflowProgress", "WorkflowResult")


def _read_only(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return value if isinstance(value, MappingProxyType) else MappingProxyType(dict(value))


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

    @property
    def ok(self) -> bool:
        """Whether the step SUCCEEDED or was SKIPPED."""
        return self.status is StepStatus.SUCCEEDED or self.status is StepStatus.SKIPPED


@final
@attrs.frozen(kw_only=True)
class WorkflowResult:
    """The outcome of ``run_workflow``: one :class:`StepResult` per step.

    Step failures are recorded here, never raised by ``run_workflow``; call
    :meth:`raise_for_errors` to turn them into an ``ExceptionGroup``.

    Attributes:
        workflow: The workflow's name.
        run_id: The run's id (pass it again with the same store to resume).
        ok: True when every step SUCCEEDED or was SKIPPED, or FAILED with
            ``continue_on_error``.
        steps: Step name -> :class:`StepResult`, in definition order.
        context: The run's final :class:`Context` (results and state; ``step`` is None).
        duration: Seconds from the start to the end of the run, compensation included.
    """

    workflow: str
    run_id: str
    ok: bool
    steps: Mapping[str, StepResult] = attrs.field(converter=_read_only)
    context: Context
    duration: float

    @property
    def values(self) -> Mapping[str, Any]:
        """Step name -> value of every step that succeeded (the context's results)."""
        return self.context.results

    @property
    def errors(self) -> Mapping[str, Exception]:
        """Step name -> exception of every FAILED step (``continue_on_error`` ones included)."""
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
            ExceptionGroup: ``ok`` is False; it holds the error of every FAILED step (without
                ``continue_on_error``), in definition order, and its message names the steps.
        """
        if self.ok:
            return
        failed = [
            (name, r.error)
            for name, r in self.steps.items()
            if r.status is StepStatus.FAILED and r.error is not None
        ]
        names = ", ".join(repr(name) for name, _ in failed)
        raise ExceptionGroup(
            f"workflow {self.workflow!r} (run {self.run_id}) failed: step"
            f"{'s' if len(failed) > 1 else ''} {names}",
            [error for _, error in failed],
        )


@final
@attrs.frozen(kw_only=True)
class WorkflowProgress:
    """A snapshot of a run, given to ``on_progress`` whenever a step starts or ends.

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
