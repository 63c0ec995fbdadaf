"""The durable side of a workflow run: check a stored run, write step records in batches.

``run_workflow`` keeps one :class:`Journal` per run with a store. Before the first step it
loads the stored run (refusing one whose shape changed) and begins it; whenever steps end it
writes their records, steps that end while a write is in progress sharing the next
transaction, and only then lets the run release the steps after them; at the end it writes
what changed since and the run's final status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import anyio

from .._errors import WorkflowShapeChangedError
from ._graph import Graph, StepStatus, describe_shape_change
from ._store import RunRecord, RunStatus, WorkflowStore

if TYPE_CHECKING:
    from ._scheduler import Run

__all__ = ("Journal",)


@final
class Journal:
    """Writes the records of one run to its store (internal).

    Attributes:
        store: The store.
        run_id: The run's id.
        saved: For each step, the status its stored record has (None: no record).
        error: The first exception the store raised while the run went on, if any.
    """

    __slots__ = ("_flushing", "_unsaved", "error", "run_id", "saved", "store")

    def __init__(self, store: WorkflowStore, run_id: str, size: int) -> None:
        self.store = store
        self.run_id = run_id
        self.saved: list[StepStatus | None] = [None] * size
        self.error: Exception | None = None
        self._unsaved: list[int] = []
        self._flushing = False

    async def open(self, workflow: str, graph: Graph) -> RunRecord | None:
        """Load the stored run, check it is one of this workflow's shape, and begin the run.

        Args:
            workflow: The workflow's name.
            graph: Its validated graph.

        Returns:
            The stored run to resume, or None for a new run.

        Raises:
            WorkflowShapeChangedError: The stored run is of another workflow, or another shape (and
                nothing is written).
        """
        run_id = self.run_id
        record = await self.store.load_run(run_id)
        if record is not None:
            if record.workflow != workflow:
                raise WorkflowShapeChangedError(
                    f"cannot resume run {run_id!r}: it is a run of workflow "
                    f"{record.workflow!r}, not {workflow!r}"
                )
            if record.fingerprint != graph.fingerprint:
                change = describe_shape_change(record.shape, graph.shape) or "edges changed"
                raise WorkflowShapeChangedError(
                    f"cannot resume run {run_id!r}: workflow {workflow!r} changed since the "
                    f"run was stored ({change})"
                )
            for name, step in record.steps.items():
                self.saved[graph.index[name]] = step.status
        await self.store.begin_run(
            run_id, workflow=workflow, fingerprint=graph.fingerprint, shape=graph.shape
        )
        return record

    async def save(self, run: Run, i: int) -> None:
        """Write the record of step ``i``, then complete it (and any step written with it).

        The first caller writes; steps that end while it writes are appended and written by
        it in the next transaction, so their callers return at once.

        Args:
            run: The run.
            i: The index of a step that ended.
        """
        self._unsaved.append(i)
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._unsaved and self.error is None:
                batch, self._unsaved = self._unsaved, []
                records = [run.record(j) for j in batch]
                state = run.shared.take_dirty()
                try:
                    await self.store.save_steps(self.run_id, records, state)
                except Exception as exc:
                    self.error = exc
                    run.abort()
                    return
                except BaseException:
                    # Not known to be written: the closing write of the run retries.
                    run.shared.dirty = {**state, **run.shared.dirty}
                    raise
                for j in batch:
                    self.saved[j] = run.status[j]
                    run.complete(j)
        finally:
            self._flushing = False

    async def close(self, run: Run, final: RunStatus) -> None:
        """Write every record that changed since it was saved, and the run's final status.

        Runs shielded from cancellation.

        Args:
            run: The run, ended.
            final: Its final status.

        Raises:
            Exception: What the store raised.
        """
        changed = [
            i
            for i, status in enumerate(run.status)
            if status is not self.saved[i] or run.comp_error[i] is not None
        ]
        with anyio.CancelScope(shield=True):
            dirty = run.shared.take_dirty()
            if changed or dirty:
                records = [run.record(i) for i in changed]
                await self.store.save_steps(self.run_id, records, dirty)
            await self.store.finish_run(self.run_id, final)
