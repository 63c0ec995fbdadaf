"""The durable side of a workflow run: check a stored run, write step records in batches.

A run with a store keeps one :class:`Journal`. The journal is a sink: it is given records and
says which it saved; it never reads nor drives the run. Before the first step it loads the
stored run (refusing one whose shape changed) and begins it. Whenever a step ends, the run adds
its record; the first record added while no write is in progress makes its caller the writer,
and records added during a write wait for the next one, so steps that end together share one
transaction. The run lets the steps after a step start only once :meth:`Journal.write` says
its record is saved. At the end :meth:`Journal.close` writes what changed since, and the run's
final status.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

import anyio

from .._errors import WorkflowShapeChangedError
from ._context import RunShared
from ._graph import Graph, StepStatus, describe_shape_change
from ._store import RunRecord, RunStatus, StepRecord, WorkflowStore

__all__ = ("Journal",)


@final
class Journal:
    """Writes the records of one run to its store (internal).

    Args:
        store: The store.
        run_id: The run's id.
        shared: The run's shared state: its values set since the last write are written with
            the next records.
        size: The number of steps of the workflow.

    Attributes:
        store: The store.
        run_id: The run's id.
        saved: For each step (by index), the status its stored record has (None: no record).
        error: The first exception the store raised while the run went on, if any; nothing
            more is written once it is set.
    """

    __slots__ = ("_queued", "_shared", "_writing", "error", "run_id", "saved", "store")

    def __init__(self, store: WorkflowStore, run_id: str, shared: RunShared, size: int) -> None:
        self.store = store
        self.run_id = run_id
        self.saved: list[StepStatus | None] = [None] * size
        self.error: Exception | None = None
        self._shared = shared
        self._queued: list[tuple[int, StepRecord]] = []
        self._writing = False

    async def open(self, workflow: str, graph: Graph) -> RunRecord | None:
        """Load the stored run, check it is one of this workflow's shape, and begin the run.

        Args:
            workflow: The workflow's name.
            graph: Its validated graph.

        Returns:
            The stored run to resume, or None for a new run.

        Raises:
            WorkflowShapeChangedError: The stored run is of another workflow, or another shape
                (and nothing is written).
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

    def add(self, i: int, record: StepRecord) -> bool:
        """Queue the record of step ``i``, which ended, for the next write.

        Args:
            i: The step's index.
            record: Its record.

        Returns:
            True when no write is in progress: the caller is now the writer and must call
            :meth:`write` until it returns nothing. False when the write in progress (or the
            next one its writer makes) takes the record.
        """
        self._queued.append((i, record))
        if self._writing:
            return False
        self._writing = True
        return True

    async def write(self) -> tuple[int, ...]:
        """Write every queued record, with the state set since the last write, in one transaction.

        Only the writer (see :meth:`add`) calls it, until it returns nothing.

        Returns:
            The indices of the steps whose records this call saved; empty when nothing was
            queued, or when the store failed (:attr:`error` then says why). The writer is
            released when it returns nothing.

        Raises:
            BaseException: Cancellation, or what else interrupted the write: the records and
                state it took are not known to be written, so :meth:`close` writes them.
        """
        if not self._queued or self.error is not None:
            self._writing = False
            return ()
        batch, self._queued = self._queued, []
        state = self._shared.take_dirty()
        try:
            await self.store.save_steps(self.run_id, [record for _, record in batch], state)
        except Exception as exc:
            self.error = exc
            self._writing = False
            return ()
        except BaseException:
            self._shared.put_back(state)
            self._writing = False
            raise
        saved = self.saved
        for i, record in batch:
            saved[i] = record.status
        return tuple([i for i, _ in batch])

    async def close(self, records: Sequence[StepRecord], final: RunStatus) -> None:
        """Write the records that changed since they were saved, the state, and the final status.

        Runs shielded from cancellation.

        Args:
            records: The records of the steps whose stored record is missing or out of date
                (see :attr:`saved`).
            final: How the run ended.

        Raises:
            Exception: What the store raised.
        """
        with anyio.CancelScope(shield=True):
            state = self._shared.take_dirty()
            if records or state:
                await self.store.save_steps(self.run_id, records, state)
            await self.store.finish_run(self.run_id, final)
