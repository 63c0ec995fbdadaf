"""The bookkeeping of one workflow run: what each step did, and what the run reports.

:class:`RunState` holds a run's per-step records (status, value, error, attempts, times) and
its counters, and turns them into what leaves the run: the record a store keeps for a step, the
progress reports, the :class:`WorkflowResult`. It also restores the steps of a stored run and
runs the compensations of a failed run. The scheduling itself (``_scheduler.Run``) builds on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio

from ._context import Context, RunShared
from ._graph import Graph, Step, StepStatus
from ._result import StepResults, StepTable, WorkflowProgress, WorkflowResult
from ._store import StepRecord, StoredValue, decode_value, return_hint

__all__ = ("RunState",)

_SUCCEEDED = StepStatus.SUCCEEDED
_SKIPPED = StepStatus.SKIPPED
_COMPENSATED = StepStatus.COMPENSATED


def _error_text(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    message = str(exc)
    return f"{type(exc).__qualname__}: {message}" if message else type(exc).__qualname__


class RunState:
    """The records and counters of one run (internal). Everything here runs in one thread."""

    def __init__(
        self,
        name: str,
        graph: Graph,
        *,
        run_id: str,
        on_progress: Callable[[WorkflowProgress], object] | None,
        state: Mapping[str, Any] | None,
    ) -> None:
        n = len(graph.steps)
        self.name = name
        self.graph = graph
        self.steps: tuple[Step, ...] = graph.steps
        self.succs = graph.succs
        self.run_id = run_id
        self.on_progress = on_progress
        self.shared = RunShared(run_id, state)
        # Per step, by index.
        self.status: list[StepStatus | None] = [None] * n
        self.value: list[Any] = [None] * n
        self.error: list[Exception | None] = [None] * n
        self.attempts = [0] * n
        self.started: list[float | None] = [None] * n
        self.finished: list[float | None] = [None] * n
        self.duration: list[float | None] = [None] * n  # of restored steps
        self.restored = [False] * n
        self.comp_error: list[Exception | None] = [None] * n
        self.seq: list[int | None] = [None] * n
        self.stored: list[StoredValue | None] = [None] * n
        self.remaining = [len(p) for p in graph.preds]
        self.running: dict[int, None] = {}  # steps in flight, tracked for progress reports
        self.completion: list[int] = []  # SUCCEEDED steps in order of completion
        self.next_seq = 0
        self.completed = self.succeeded = self.failed = self.skipped = 0
        self.hard_failures = 0  # FAILED steps without continue_on_error
        self.now: Callable[[], float] = anyio.current_time
        self.t0 = 0.0
        self.wall0 = 0.0

    # --- a stored run -------------------------------------------------------------------------
    def _restore(
        self, records: Mapping[str, StepRecord], state: Mapping[str, StoredValue]
    ) -> None:
        index = self.graph.index
        done = []
        for record in records.values():
            i = index[record.name]
            if record.status is not _SUCCEEDED and record.status is not _SKIPPED:
                continue
            self.status[i] = record.status
            self.restored[i] = True
            # Never ready (decrements keep it below 0): a step it comes after may run again (it
            # FAILED with continue_on_error, or was COMPENSATED), and its end must not rerun it.
            self.remaining[i] = -1
            self.attempts[i] = record.attempts
            self.duration[i] = record.duration
            self.seq[i] = record.seq
            self.completed += 1
            if record.status is _SUCCEEDED:
                self.succeeded += 1
                self.stored[i] = record.value
                if record.value is not None:
                    self.value[i] = decode_value(record.value, return_hint(self.steps[i].fn))
                self.shared.results[record.name] = self.value[i]
                done.append(i)
            else:
                self.skipped += 1
            for s in self.succs[i]:
                self.remaining[s] -= 1
        done.sort(key=lambda i: self.seq[i] or 0)
        self.completion.extend(done)
        self.next_seq = 1 + max((s for s in self.seq if s is not None), default=-1)
        for key, stored in state.items():
            self.shared.state[key] = decode_value(stored)

    # --- the outcome --------------------------------------------------------------------------
    def _ok(self) -> bool:
        # Every step completed (nothing CANCELLED or NOT_RUN) and none failed for good.
        return self.completed == len(self.steps) and not self.hard_failures

    def _duration(self, i: int) -> float | None:
        started, finished = self.started[i], self.finished[i]
        if started is None or finished is None:
            return self.duration[i]
        return finished - started

    # --- a failed run -------------------------------------------------------------------------
    async def _compensate(self) -> None:
        with anyio.CancelScope(shield=True):
            for i in reversed(self.completion):
                step = self.steps[i]
                if step.compensate is None or self.status[i] is not _SUCCEEDED:
                    continue
                # Each in a task of its own, one after the other: context variables it sets
                # reach neither the caller nor the other compensations.
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._undo, i, step.compensate)

    async def _undo(self, i: int, compensate: Callable[[Context], Any]) -> None:
        try:
            await compensate(Context._for(self.shared, self.steps[i].name))
        except Exception as exc:
            self.comp_error[i] = exc
        else:
            self.status[i] = _COMPENSATED

    # --- what leaves the run ------------------------------------------------------------------
    def _wall(self, t: float | None) -> datetime | None:
        return None if t is None else datetime.fromtimestamp(self.wall0 + (t - self.t0), UTC)

    def record(self, i: int) -> StepRecord:
        """Return the record of step ``i`` as the store keeps it."""
        status = self.status[i]
        assert status is not None
        keeps_value = status is _SUCCEEDED or status is _COMPENSATED
        return StepRecord(
            name=self.steps[i].name,
            status=status,
            attempts=self.attempts[i],
            value=self.stored[i] if keeps_value else None,
            error=_error_text(self.error[i]),
            compensation_error=_error_text(self.comp_error[i]),
            started_at=self._wall(self.started[i]),
            finished_at=self._wall(self.finished[i]),
            duration=self._duration(i),
            seq=self.seq[i],
        )

    def _report(self) -> None:
        if self.on_progress is None:
            return
        names = self.steps
        self.on_progress(
            WorkflowProgress(
                total=len(names),
                completed=self.completed,
                succeeded=self.succeeded,
                failed=self.failed,
                skipped=self.skipped,
                running=tuple(names[i].name for i in self.running),
                elapsed=self.now() - self.t0,
            )
        )

    def _result(self) -> WorkflowResult:
        table = StepTable(
            names=tuple(self.graph.index),
            status=self.status,
            value=self.value,
            error=self.error,
            attempts=self.attempts,
            started=self.started,
            finished=self.finished,
            duration=self.duration,
            restored=self.restored,
            compensation_error=self.comp_error,
            continue_on_error=[step.continue_on_error for step in self.steps],
        )
        return WorkflowResult(
            workflow=self.name,
            run_id=self.run_id,
            ok=self._ok(),
            steps=StepResults(table),
            context=Context._for(self.shared, None),
            duration=self.now() - self.t0,
        )
