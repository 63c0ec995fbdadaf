"""The durable side of a workflow run: check a stored run, write step records in batches.

A run with a store keeps one :class:`Journal`. The journal is a sink: it is given records and
says which it saved; it never reads nor drives the run. Before the first step it loads the
stored run (refusing one whose shape changed) and begins it. Whenever a step ends, the run adds
its record; one task at a time is the writer (:meth:`Journal.begin`), and each of its writes
takes every record queued since the last one, so steps that end while a write is in progress,
or before the writer runs, share one transaction. The run lets the steps after a step start
only once :meth:`Journal.write` says its record is saved. At the end :meth:`Journal.close`
writes what changed since, and the run's final status. A record whose value the store cannot
hold (``ValueTooLargeError``) is handed back to the run, which fails its step and gives the
record to write instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import final

import anyio

from .._errors import RunLeasedError, UnstorableValueError, WorkflowShapeChangedError
from ._context import RunShared
from ._graph import Graph, StepStatus, describe_shape_change
from ._store import (
    RunRecord,
    RunStatus,
    StepRecord,
    StepRow,
    StepRows,
    StoredValue,
    WorkflowStore,
    as_row,
)

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
        refuse: ``refuse(i, error)`` is called when the store cannot hold the value of step
            ``i``'s record: the run fails the step and returns its new record (or its row).

    Attributes:
        store: The store.
        run_id: The run's id.
        saved: For each step (by index), the status its stored record has (None: no record).
        error: The first exception the store raised while the run went on (or the
            ``RunLeasedError`` of a lease another owner took), if any; nothing more is written
            once it is set, but the run's end (unless the lease was lost).
    """

    __slots__ = (
        "_index",
        "_lost",
        "_queued",
        "_queued_rows",
        "_refuse",
        "_shared",
        "_writing",
        "error",
        "run_id",
        "saved",
        "store",
    )

    def __init__(
        self,
        store: WorkflowStore,
        run_id: str,
        shared: RunShared,
        size: int,
        refuse: Callable[[int, UnstorableValueError], StepRecord | StepRow],
        index: Mapping[str, int],
    ) -> None:
        self.store = store
        self._refuse = refuse
        self._index = index
        self._lost = False
        self.run_id = run_id
        self.saved: list[StepStatus | None] = [None] * size
        self.error: Exception | None = None
        self._shared = shared
        # The queued records: the steps' indices, and their rows (what the store is given).
        self._queued: list[int] = []
        self._queued_rows: list[StepRow] = []
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

    def add(self, i: int, record: StepRecord | StepRow) -> bool:
        """Queue the record of step ``i``, which ended, and become the writer if there is none.

        Args:
            i: The step's index.
            record: Its record, or the record's row (:data:`~._store.StepRow`).

        Returns:
            True when no write is in progress: the caller is now the writer and must call
            :meth:`write` until it returns nothing. False when the write in progress (or the
            next one its writer makes) takes the record.
        """
        self._queued.append(i)
        self._queued_rows.append(as_row(record))
        return self.begin()

    def queue(self, i: int, record: StepRow) -> bool:
        """Queue the record of step ``i``, which ended, for the next write (see :meth:`begin`).

        Args:
            i: The step's index.
            record: Its record's row (:data:`~._store.StepRow`).

        Returns:
            Whether a writer is at work (:attr:`writing`): it takes the record.
        """
        self._queued.append(i)
        self._queued_rows.append(record)
        return self._writing

    @property
    def writing(self) -> bool:
        """Whether a writer (see :meth:`begin`) is at work: it takes every queued record."""
        return self._writing

    def begin(self) -> bool:
        """Become the writer, if there is none and records are queued.

        Returns:
            True when the caller is now the writer and must call :meth:`write` until it
            returns nothing; False when another writer takes the queued records (or there are
            none).
        """
        if self._writing or not self._queued:
            return False
        self._writing = True
        return True

    async def write(self) -> tuple[int, ...]:
        """Write every queued record, with the state set since the last write, in one transaction.

        Only the writer (see :meth:`begin`) calls it, until it returns nothing.

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
        batch, rows = self._queued, self._queued_rows
        self._queued, self._queued_rows = [], []
        state = self._shared.take_dirty()
        try:
            rows = await self._save(batch, rows, state)
        except Exception as exc:
            self.error = exc
            self._writing = False
            return ()
        except BaseException:
            self._shared.put_back(state)
            self._writing = False
            raise
        saved = self.saved
        for i, row in zip(batch, rows, strict=True):
            saved[i] = row[1]
        return tuple(batch)

    def lose(self, error: Exception) -> None:
        """Stop writing: the run's lease is lost (``RunLeasedError``) or cannot be renewed.

        Args:
            error: Why; it becomes :attr:`error` unless the store failed first.
        """
        if self.error is None:
            self.error = error
        if isinstance(error, RunLeasedError):
            self._lost = True  # another owner writes the run now

    async def _save(
        self, batch: list[int], rows: list[StepRow], state: Mapping[str, StoredValue]
    ) -> list[StepRow]:
        # One transaction of the rows of the steps in batch; a record whose value is too large
        # goes back to the run, which fails its step, and the transaction is tried again with
        # the new record (in a new list: the store may hold the one it was given). The store
        # is given the rows (StepRows): a store of trioflow reads them, any other sees records.
        while True:
            try:
                await self.store.save_steps(self.run_id, StepRows(rows), state)
            except UnstorableValueError as exc:
                i = self._index.get(exc.step, -1)
                k = next((k for k, j in enumerate(batch) if j == i), -1)
                if k < 0 or rows[k][3] is None:
                    raise
                rows = list(rows)
                rows[k] = as_row(self._refuse(i, exc))
            else:
                return rows

    async def close(
        self, records: Sequence[StepRecord | StepRow], final: RunStatus, elapsed: float
    ) -> None:
        """Write the records that changed since they were saved, the state, and the final status.

        Runs shielded from cancellation. Writes nothing once the run's lease was lost.

        Args:
            records: The records (or their rows) of the steps whose stored record is missing
                or out of date (see :attr:`saved`).
            final: How the run ended.
            elapsed: Seconds this session of the run ran.

        Raises:
            Exception: What the store raised.
        """
        if self._lost:
            return
        with anyio.CancelScope(shield=True):
            state = self._shared.take_dirty()
            if records or state:
                index = self._index
                rows = [as_row(r) for r in records]
                await self._save([index[r[0]] for r in rows], rows, state)
            await self.store.finish_run(self.run_id, final, elapsed=elapsed)
