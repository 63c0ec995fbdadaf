"""Running a workflow: one task group per run, in-degree counters, durable step records.

How a run works (the policy ``run_workflow`` documents):

* Each step has a counter of the steps it still waits for; when a step is done, the counters of
  the steps after it go down and those that reach zero join the ready queue (FIFO). Work per
  step is O(its edges): nothing rescans the graph.
* Admission is strict FIFO: the head of the ready queue starts when it may (``limit`` not
  reached and no exclusive step in flight; for an exclusive step, nothing in flight), and nothing
  behind it starts before it. So an exclusive step that is ready holds back later starts until
  the steps in flight end, runs alone, and cannot starve.
* Steps run in worker tasks of the run's task group. A worker that ends a step goes on with the
  next admissible ready step itself, so a chain of steps runs in one task and a step that
  finishes without waiting costs no task start. When a worker starts a step while more ready
  steps are admissible, it wakes a supervisor task, which starts one more worker once the first
  is actually waiting; the next worker does the same, so there are as many workers as steps
  waiting at once, and never a task per step that does not need one. Everything runs in the
  task group opened by ``run_workflow``: no task outlives the call. A worker whose step changed
  its context variables ends after it (checked in O(1) when it did not), so every step starts
  from the run's context variables, as with a task per step.
* A step runs in one place, :meth:`Run._worker`. A step with nothing but its function (no
  condition, retry, timeout or resource slot) is awaited directly; any other goes through
  :meth:`Run._attempts`, which adds those features around the same call.
* With a store, a step's record goes to the run's :class:`~._journal.Journal`, and the steps
  after it are released only once the journal says it is written. A worker that has another
  admissible step to run queues the record and goes on; the run's write-behind task writes
  every queued record in one transaction as soon as the workers let it run (a step waits, or
  a worker checkpoints), so a wide run commits in groups. A worker with nothing else to run
  writes itself, at once (a chain pays one transaction per step and no task switch).
* On progress reports: a report's ``running`` reads the live set of running steps and is
  fixed (copied) only when someone still holds the report as the set next changes, so a
  callback that reads counts costs O(1) per report, not O(steps in flight). The run keeps its
  last report, and when nobody else holds it (nor a weak reference to it) by the next report,
  it sets that report's fields again instead of building a new one: nobody can tell the
  difference, as nobody can reach the old one (CPython's ``zip`` reuses its result tuple the
  same way). A report the callback keeps, or hands on, is never touched again.
"""

from __future__ import annotations

import contextvars
import inspect
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, final
from weakref import getweakrefcount

import anyio
import anyio.abc
import anyio.lowlevel

from .._backend import current_clock
from .._checks import check_bool, check_int, check_number, describe
from .._errors import UnstorableValueError, ValueTooLargeError, WorkflowDefinitionError
from .._limits import Capacity, ResourceManager, as_manager
from .._logs import EngineLog, check_logger, open_log
from .._telemetry import Instrumentation, hooks
from ._codec import decode_value, encode_value, return_hint
from ._context import Context, RunShared, run_context
from ._graph import Graph, Step, StepStatus, Workflow
from ._journal import Journal
from ._lease import DEFAULT_LEASE_TTL, Lease
from ._result import (
    RunningSteps,
    StepResults,
    StepTable,
    WorkflowProgress,
    WorkflowResult,
    progress_refill_elapsed,
    progress_refill_running,
    progress_snapshot,
)
from ._store import RunStatus, StepRecord, StepRow, StoredValue, WorkflowStore

__all__ = ("run_workflow",)

_SUCCEEDED = StepStatus.SUCCEEDED
_FAILED = StepStatus.FAILED
_SKIPPED = StepStatus.SKIPPED
_CANCELLED = StepStatus.CANCELLED
_NOT_RUN = StepStatus.NOT_RUN
_COMPENSATED = StepStatus.COMPENSATED
_CHECKPOINT_EVERY = 256  # a worker running many instant steps in a row yields this often
_MAX_LEASE_TTL = 365 * 24 * 3600.0  # a year
_SKIP: Any = object()  # what Run._attempts returns for a step whose condition said no
_NONE_STORED = encode_value("", None)  # the stored form of None (a step returning nothing)


# A run reuses its last progress report when nobody else holds it (see Run._report), which
# it can tell only where references are counted; elsewhere every report counts as held.
if hasattr(sys, "getrefcount"):
    _getrefcount = sys.getrefcount

    @final
    class _Probe:
        __slots__ = ("last",)

        def __init__(self) -> None:
            self.last = object()  # held by the probe alone

        def references(self) -> int:
            # Counted as the run counts the references to its last report: the same
            # expression, inline (a call of a helper per count costs more than the count).
            return _getrefcount(self.last)

    # What the count says of a report only its run holds: measured, not assumed, since the
    # interpreter's own temporary references differ between versions (3.14 borrows some).
    _ALONE = _Probe().references()
else:  # pragma: no cover - an interpreter without reference counts

    def _getrefcount(obj: object) -> int:
        return -1

    _ALONE = -2  # never: every report counts as held


def _error_text(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    message = str(exc)
    return f"{type(exc).__qualname__}: {message}" if message else type(exc).__qualname__


def _check_limit(limit: object) -> tuple[int, ResourceManager | None]:
    if limit is None:
        return sys.maxsize, None
    if isinstance(limit, ResourceManager):
        return sys.maxsize, limit
    manager = as_manager(limit)  # a Capacity (e.g. shared by processes): a manager around it
    if manager is not None:
        return sys.maxsize, manager
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(
            "limit must be an int >= 1, a ResourceManager, a Capacity or None, got "
            f"{describe(limit)}"
        )
    return check_int(limit, "limit", minimum=1), None


def _check_pools(graph: Graph, manager: ResourceManager | None, limit: object) -> None:
    for step in graph.steps:
        if not step.options.pools:
            continue
        if manager is None:
            raise WorkflowDefinitionError(
                f"step {step.name!r} takes tokens of pools {list(step.pools)!r}, but limit is "
                f"not a ResourceManager (got {limit!r}); pass "
                "limit=ResourceManager(pools={...}) with those pools"
            )
        unknown = [pool for pool in step.pools if pool not in manager.pools]
        if unknown:
            known = ", ".join(repr(p) for p in manager.pools) or "none"
            raise WorkflowDefinitionError(
                f"step {step.name!r} takes tokens of unknown pool"
                f"{'s' if len(unknown) > 1 else ''} {', '.join(repr(p) for p in unknown)}; "
                f"the ResourceManager has pools: {known}"
            )


async def run_workflow(
    workflow: Workflow,
    *,
    context: Mapping[str, Any] | None = None,
    limit: int | ResourceManager | Capacity | None = None,
    fail_fast: bool = True,
    store: WorkflowStore | None = None,
    run_id: str | None = None,
    on_progress: Callable[[WorkflowProgress], object] | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
    logger: Any = None,
) -> WorkflowResult:
    """Run a workflow: each step starts as soon as the steps it comes after are done.

    A step is done when it SUCCEEDED, was SKIPPED, or FAILED being ``optional``.
    Independent steps run concurrently, at most ``limit`` at once. Starts are first come,
    first served in the order steps became ready: an ``exclusive`` step waits for the steps in
    flight to end while later steps wait behind it, then runs alone (so it cannot starve).

    Failures are recorded in the result, never raised. With ``fail_fast`` (the default), the
    first failure cancels the running steps (CANCELLED) and starts no more (NOT_RUN); without
    it, independent branches go on and only the steps after a failure are NOT_RUN. Either way,
    when the run failed, the ``compensate`` of every SUCCEEDED step then runs, in reverse order
    of completion, shielded from cancellation, each at most once: COMPENSATED when it succeeds;
    when it raises, the step stays SUCCEEDED with ``compensation_error`` set (the original
    failure stays the step's ``error``). If the caller cancels the run, running steps are
    cancelled, compensations run the same way, and the cancellation propagates.

    Context variables behave as with a task per step: each step and each compensation starts
    with the caller's, and what one sets is seen by no other step nor by the caller.

    With a ``store``, the run is durable: each step's record (status, attempts, value) and the
    state set with ``ctx.set`` are written, in one transaction, before any step after it
    starts; the records of every step that ended since the last write share the next one.
    Running again with the same ``store`` and ``run_id`` resumes: SUCCEEDED and SKIPPED steps
    do not run again and their values come back into ``ctx.results`` (with the type of
    the step function's return annotation, or of the stored type when it can be imported) and
    their state into the context; every other step runs. A done step defined with a
    ``fingerprint`` that differs from the one stored with it runs again
    (``WorkflowResult.changed`` names it).

    With a store, the process executing a run holds the run's lease: it takes it before
    anything is read, a heartbeat in the run's task group renews it every ``lease_ttl / 3``
    seconds, and it is given back (shielded) when the run ends, fails or is cancelled. Another
    process (or another call in this one) asking to run or resume the run meanwhile is refused
    with ``RunLeasedError`` before any step starts. The lease of a process that died is free
    at once on its own host (its pid is gone), and elsewhere once it expires.

    Args:
        workflow: The workflow to run.
        context: Initial shared state (``ctx.get``); state restored from a store wins.
        limit: Most steps in flight at once (an int >= 1), or a :class:`ResourceManager` whose
            slots the steps take (needed for steps with ``pools``), or a :class:`Capacity`
            (such as one shared by several processes), or None for no limit.
        fail_fast: Stop the run at the first failure (see above).
        store: A :class:`WorkflowStore` (``SQLiteStore``, ``MemoryStore``) to make the run
            durable and resumable.
        run_id: The run's id: pass a stored run's id to resume it. A fresh uuid4 hex when None.
        on_progress: Called with a :class:`WorkflowProgress` whenever a step starts or ends
            (synchronously, in the run: keep it quick; an exception it raises ends the
            run).
        lease_ttl: Seconds the run's lease lives unless renewed (wall-clock; used with a
            ``store`` only): how long another host waits before it may resume a run whose
            owner vanished.
        logger: Where to write a ``workflow started`` event (``workflow``, ``run_id``,
            ``steps``, ``limit``) and a ``workflow completed`` one (``ok``, how many steps
            ended ``succeeded``, ``failed``, ``cancelled``, ``skipped``, ``not_run`` and
            ``compensated``, the names in ``failed_steps``, the ``duration``); or ``workflow
            cancelled`` / ``workflow aborted`` (``error_type``) when the call raises. A
            stdlib :class:`logging.Logger` or any structlog logger, at info level (asked once
            per run). Steps are not logged one by one (``on_progress`` sees them). None (the
            default) writes nothing.

    Returns:
        The run's :class:`WorkflowResult`.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``limit`` is below 1, or ``lease_ttl`` is below 0.1 or above a year.
        RunLeasedError: Another live owner holds the lease of the stored run ``run_id``;
            nothing ran. (Also raised, with the run stopped, if this run's lease expired and
            another owner took it.)
        WorkflowDefinitionError: The workflow is invalid (unknown dependency, cycle), or a step
            takes pools that ``limit`` does not have. Nothing runs and nothing is stored.
        WorkflowShapeChangedError: The stored run ``run_id`` has other steps or edges (or another
            workflow); the message says what changed.
        StoreError: The store failed. Steps in flight are cancelled; no compensation runs, so
            the run can be resumed once the store works again.
    """
    if not isinstance(workflow, Workflow):
        raise TypeError(f"workflow must be a Workflow, got {workflow!r}")
    graph = workflow.graph()
    cap, manager = _check_limit(limit)
    _check_pools(graph, manager, limit)
    check_bool(fail_fast, "fail_fast")
    if context is not None and not isinstance(context, Mapping):
        raise TypeError(f"context must be a mapping of initial state or None, got {context!r}")
    if store is not None and not isinstance(store, WorkflowStore):
        raise TypeError(f"store must implement WorkflowStore (or be None), got {store!r}")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise TypeError(f"run_id must be a non-empty string or None, got {run_id!r}")
    if on_progress is not None and not callable(on_progress):
        raise TypeError(f"on_progress must be callable or None, got {on_progress!r}")
    if lease_ttl != DEFAULT_LEASE_TTL:
        check_number(lease_ttl, "lease_ttl", minimum=0.1, maximum=_MAX_LEASE_TTL)
    log = open_log(check_logger(logger))
    run = Run(
        workflow.name,
        graph,
        cap=cap,
        manager=manager,
        fail_fast=fail_fast,
        store=store,
        run_id=run_id or uuid.uuid4().hex,
        on_progress=on_progress,
        state=context,
        lease_ttl=lease_ttl,
    )
    telemetry = hooks.current
    if telemetry is None and log is None:  # the one branch they cost a run while they are off
        return await run.run()
    slots = manager.limit if manager is not None else limit
    if telemetry is not None:
        return await _traced_run(telemetry, run, log, slots)
    assert log is not None
    return await _run_logged(run, log, slots)


# --- telemetry: the run's span (trioflow.telemetry.enable); each step's is in Run._attempts ---


async def _traced_run(
    telemetry: Instrumentation, run: Run, log: EngineLog | None, limit: object
) -> WorkflowResult:
    """Run the workflow in a ``trioflow.workflow`` span; count its steps' outcomes."""
    attributes = {"trioflow.workflow.name": run.name, "trioflow.run.id": run.run_id}
    with telemetry.span("trioflow.workflow", attributes) as span:
        result = await (run.run() if log is None else _run_logged(run, log, limit))
        ran = [step for step in result.steps.values() if not step.restored]
        telemetry.steps_ended(result.workflow, [step.status.value for step in ran])
        span.set({"trioflow.workflow.ok": result.ok, "trioflow.workflow.steps": len(ran)})
        if not result.ok:
            span.fail(f"steps failed: {', '.join(sorted(result.errors))}")
    return result


async def _run_logged(run: Run, log: EngineLog, limit: object) -> WorkflowResult:
    """Run ``run`` between its ``workflow started`` and ``workflow completed`` events."""
    names = {"workflow": run.name, "run_id": run.run_id}
    log.info("workflow started", **names, steps=len(run.steps), limit=limit)
    started = anyio.current_time()
    try:
        result = await run.run()
    except BaseException as exc:
        cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
        log.info(
            "workflow cancelled" if cancelled else "workflow aborted",
            **names,
            error_type=type(exc).__qualname__,
            duration=anyio.current_time() - started,
        )
        raise
    steps = result.steps.values()
    log.info(
        "workflow completed",
        **names,
        ok=result.ok,
        **{status.value: result.count(status) for status in _LOGGED},
        failed_steps=[step.name for step in steps if step.status is StepStatus.FAILED],
        duration=result.duration,
    )
    return result


# The step counts of a ``workflow completed`` event, in this order.
_LOGGED = (
    StepStatus.SUCCEEDED,
    StepStatus.FAILED,
    StepStatus.CANCELLED,
    StepStatus.SKIPPED,
    StepStatus.NOT_RUN,
    StepStatus.COMPENSATED,
)


@final
class Run:
    """One run of a workflow: its records, its scheduling, its end (internal).

    Everything here runs in one thread, in the run's tasks: no locks. Per-step records are
    lists indexed like the graph's steps.
    """

    def __init__(
        self,
        name: str,
        graph: Graph,
        *,
        cap: int,
        manager: ResourceManager | None,
        fail_fast: bool,
        store: WorkflowStore | None,
        run_id: str,
        on_progress: Callable[[WorkflowProgress], object] | None,
        state: Mapping[str, Any] | None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> None:
        steps = graph.steps
        n = len(steps)
        self.name = name
        self.graph = graph
        self.steps: tuple[Step, ...] = steps
        self.succs = graph.succs
        self.run_id = run_id
        self.on_progress = on_progress
        self.shared = RunShared(run_id, state)
        self.cap = cap
        self.manager = manager
        self.fail_fast = fail_fast
        self.journal = (
            None
            if store is None
            else Journal(store, run_id, self.shared, n, self._refused, graph.index)
        )
        self.lease = None if store is None else Lease(store, run_id, lease_ttl)
        self.changed: list[str] = []  # done steps rerun because their fingerprint changed
        # Per step, by index: what the graph says...
        self.exclusive = [step.exclusive for step in steps]
        # ...whether its function is all there is to it (no condition, retry, timeout, slot)...
        self.bare = [
            hooks.current is None  # a traced step opens its span in _attempts
            and manager is None
            and step.when is None
            and step.options.retry is None
            and step.options.timeout is None
            for step in steps
        ]
        # ...and what it did.
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
        # What the last report's ``running`` reads (the live ``running`` until frozen), and
        # the report, while it lives: see _running_changes().
        self.names = RunningSteps(self.running, steps)
        self.last: WorkflowProgress | None = None  # the last report (reused when unheld)
        self.shown: object = None  # what the last report's ``running`` holds
        self.viewing = False  # whether the last report's running reads the live ``names``
        # Whether nobody else can reach the last report (nor a weak reference to it): once so,
        # it stays so until the run hands it out again, so it is checked once.
        self.free = False
        self.total = n
        self.completion: list[int] = []  # SUCCEEDED steps in order of completion
        self.next_seq = 0
        # Counters.
        self.completed = self.succeeded = self.failed = self.skipped = 0
        self.hard_failures = 0  # FAILED steps that are not optional
        # Scheduling.
        self.ready: deque[int] = deque()
        self.in_flight = 0
        self.exclusive_running = False
        self.active = 0  # claimed and not completed (running, or waiting for the store)
        self.aborted = False
        self.finished_all = False
        self.tg: anyio.abc.TaskGroup | None = None
        self.wake = anyio.Event()
        self.poked = False
        self.flush = anyio.Event()  # wakes _write_behind: records wait for a write
        self.flush_poked = False
        # Time.
        self.now: Callable[[], float] = anyio.current_time
        self.t0 = 0.0
        self.wall0 = 0.0

    # --- the run ------------------------------------------------------------------------------
    async def run(self) -> WorkflowResult:
        """Run the workflow to its end and return the result.

        Returns:
            The run's result.

        Raises:
            RunLeasedError: Another owner holds the run's lease.
            WorkflowShapeChangedError: The stored run has another shape.
            Exception: What the store raised (the first failure).
        """
        self.now = current_clock()
        self.t0 = self.now()
        self.wall0 = time.time()
        lease = self.lease
        if lease is None:
            return await self._execute()
        await lease.acquire()
        result: WorkflowResult | None = None
        failure: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                # The heartbeat is shielded: whatever happens from here on it must be stopped,
                # or the group waits on it. Started with start_soon, not start: a cancellation
                # landing in start() would make it wait for the shielded task to end.
                try:
                    tg.start_soon(lease.keep, self._lease_lost)
                    # Held here, raised after the task group: what the run raises stays itself,
                    # not an exception group.
                    try:
                        result = await self._execute()
                    except BaseException as exc:
                        failure = exc
                finally:
                    lease.stop()
        finally:
            released = await lease.release()
        if failure is not None:
            if released is not None:
                failure.add_note(f"trioflow: could not release the run's lease: {released!r}")
            raise failure
        assert result is not None
        return result

    async def _execute(self) -> WorkflowResult:
        journal = self.journal
        if journal is not None:
            record = await journal.open(self.name, self.graph)
            if record is not None:
                self._restore(record.steps, record.state)
            self.shared.encode = encode_value
        self.ready.extend(
            i for i, n in enumerate(self.remaining) if n == 0 and self.status[i] is None
        )
        self._report(self.now())
        try:
            if self.ready:
                async with anyio.create_task_group() as tg:
                    self.tg = tg
                    if self.aborted:  # the lease was lost already
                        tg.cancel_scope.cancel()
                    tg.start_soon(self._supervise)
                    if journal is not None:
                        tg.start_soon(self._write_behind)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._wrap_up(exc)
            raise
        await self._wrap_up(None)
        if journal is not None and journal.error is not None:
            raise journal.error
        return self._result()

    def _lease_lost(self, error: Exception) -> None:
        # The heartbeat could not renew the lease: stop the run, and write nothing more if
        # another owner has it now.
        assert self.journal is not None
        self.journal.lose(error)
        self._abort()

    def _refused(self, i: int, error: UnstorableValueError) -> StepRow:
        # The store cannot hold step i's value: the step FAILED with the error, by the
        # fail-fast rules, as when its value cannot be encoded.
        if isinstance(error, ValueTooLargeError):
            error = ValueTooLargeError(
                error.step, type(self.value[i]), size=error.size, limit=error.limit
            )
        self.status[i] = _FAILED
        self.error[i] = error
        self.value[i] = self.stored[i] = self.seq[i] = None
        if i in self.completion:
            self.completion.remove(i)
        return self.record(i)

    def _restore(
        self, records: Mapping[str, StepRecord], state: Mapping[str, StoredValue]
    ) -> None:
        index = self.graph.index
        done = []
        for record in records.values():
            i = index[record.name]
            if record.status is not _SUCCEEDED and record.status is not _SKIPPED:
                continue
            now = self.steps[i].fingerprint
            if now is not None and record.fingerprint is not None and record.fingerprint != now:
                self.changed.append(record.name)  # its definition changed: it runs again
                continue
            self.status[i] = record.status
            self.restored[i] = True
            # Never ready (decrements keep it below 0): a step it comes after may run again (it
            # FAILED being optional, or was COMPENSATED), and its end must not rerun it.
            self.remaining[i] = -1
            self.attempts[i] = record.attempts
            self.duration[i] = record.duration
            self.seq[i] = record.seq
            self.completed += 1
            self.shared.statuses[record.name] = record.status
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

    # --- scheduling ---------------------------------------------------------------------------
    def _can_claim(self) -> bool:
        if self.aborted or not self.ready:
            return False
        if self.exclusive[self.ready[0]]:
            return self.in_flight == 0
        return not self.exclusive_running and self.in_flight < self.cap

    def _claim(self) -> int:
        if not self._can_claim():
            return -1
        i = self.ready.popleft()
        if self.exclusive[i]:
            self.exclusive_running = True
        self.in_flight += 1
        self.active += 1
        if self.on_progress is not None:
            if self.viewing:
                self._running_changes()
            self.running[i] = None
        return i

    def _poke(self) -> None:
        if not self.poked:
            self.poked = True
            self.wake.set()

    async def _supervise(self) -> None:
        tg = self.tg
        assert tg is not None
        while True:
            self.poked = False
            self.wake = anyio.Event()
            if self.finished_all:
                return
            i = self._claim()
            if i >= 0:
                tg.start_soon(self._worker, i)
            await self.wake.wait()

    def _abort(self) -> None:
        # Stop the run: cancel the steps in flight and start no more.
        self.aborted = True
        if self.tg is not None:
            self.tg.cancel_scope.cancel()

    # --- steps --------------------------------------------------------------------------------
    async def _worker(self, i: int) -> None:
        # Runs step i, then the next admissible ready step, and so on: the one place a step
        # runs. Hot: locals instead of attribute lookups, and no call a bare step can skip.
        budget = _CHECKPOINT_EVERY
        bare, steps, shared, now = self.bare, self.steps, self.shared, self.now
        journal, reporting, context = self.journal, self.on_progress is not None, run_context
        copy_context = contextvars.copy_context
        fresh = copy_context()  # the run's context variables, as each step must find them
        while True:
            if not self.poked and self.ready and self._can_claim():
                self._poke()  # another worker may start once this one waits
            step = steps[i]
            if reporting:
                started = now()
                self._report(started)
            ctx = context(shared, step.name)
            try:
                if self.aborted:
                    # Claimed, then the run stopped before this task first ran: start nothing.
                    await anyio.sleep_forever()
                if bare[i]:
                    self.attempts[i] = 1
                    # Reported as it starts: the report's reading of the clock is its start.
                    self.started[i] = started if reporting else now()
                    value = await step.fn(ctx)
                else:
                    value = await self._attempts(i, step, ctx)
            except Exception as exc:
                self.finished[i] = finished = now()
                if self.started[i] is None:  # it failed before its first attempt
                    self.started[i] = finished
                self.error[i] = exc
                status = _FAILED
            except BaseException:
                if self.started[i] is not None:  # a step that never started stays NOT_RUN
                    self.status[i] = _CANCELLED
                    self.finished[i] = now()
                self._leave(i)
                raise
            else:
                self.finished[i] = finished = now()
                if value is _SKIP:
                    self.started[i] = finished
                    status = _SKIPPED
                elif journal is not None and value is not None and not self._encode(i, value):
                    status = _FAILED
                else:
                    if journal is not None and value is None:  # most steps: no codec call
                        self.stored[i] = _NONE_STORED
                    self.value[i] = value
                    self.seq[i] = self.next_seq
                    self.next_seq += 1
                    self.completion.append(i)
                    status = _SUCCEEDED
            self.status[i] = status
            self.in_flight -= 1
            if reporting:
                if self.viewing:
                    self._running_changes()
                del self.running[i]
            if step.exclusive:
                self.exclusive_running = False
            if journal is None:
                self._complete(i, finished)
            else:
                if status is _FAILED and self.fail_fast and not step.options.optional:
                    # Start nothing more while the failure is written; _complete() then
                    # cancels the steps in flight.
                    self.aborted = True
                if not journal.queue(i, self.record(i)):  # no writer at work takes it
                    if self._can_claim():
                        # More to run: run it, and let _write_behind write this record, with
                        # those of the steps that end before it runs, in one transaction.
                        if not self.flush_poked:
                            self._flush_soon()
                    else:
                        await self._write()
            budget -= 1
            if not budget:
                budget = _CHECKPOINT_EVERY
                await anyio.lowlevel.checkpoint()
            if copy_context() != fresh:
                # The step set context variables in this task (O(1) to check when it did not:
                # the two contexts then share one mapping). Steps must not see each other's, as
                # with a task per step: this worker ends, and a new one (a fresh copy of the
                # run's context) takes the next ready step.
                if self._can_claim():
                    self._poke()
                return
            i = self._claim()
            if i < 0:
                return

    def _encode(self, i: int, value: Any) -> bool:
        # With a store: keep the stored form of the step's value, or fail the step.
        try:
            self.stored[i] = encode_value(self.steps[i].name, value)
        except UnstorableValueError as exc:
            self.error[i] = exc
            return False
        return True

    def _leave(self, i: int) -> None:
        self.in_flight -= 1
        if self.on_progress is not None:
            if self.viewing:
                self._running_changes()
            del self.running[i]
        if self.steps[i].exclusive:
            self.exclusive_running = False

    async def _attempts(self, i: int, step: Step, ctx: Context) -> Any:
        telemetry = hooks.current
        if telemetry is None:
            return await self._step(i, step, ctx)
        attributes = {"trioflow.step.name": step.name, "trioflow.run.id": self.run_id}
        with telemetry.span("trioflow.step", attributes) as span:
            status = StepStatus.CANCELLED
            try:
                value = await self._step(i, step, ctx)
                status = StepStatus.SKIPPED if value is _SKIP else StepStatus.SUCCEEDED
            except Exception:
                status = StepStatus.FAILED
                raise
            finally:
                span.set(
                    {
                        "trioflow.step.status": status.value,
                        "trioflow.step.attempts": self.attempts[i],
                    }
                )
        return value

    async def _step(self, i: int, step: Step, ctx: Context) -> Any:
        # What a step is besides its function: its condition, its retries, and per attempt its
        # resource slot (released while it waits to retry) and its timeout.
        when = step.when
        if when is not None:
            go = when(ctx)
            if inspect.isawaitable(go):
                go = await go
            if not go:
                return _SKIP
        retry = step.options.retry
        if retry is None:
            return await self._attempt(i, step, ctx)
        return await retry.call(self._attempt, i, step, ctx)

    async def _attempt(self, i: int, step: Step, ctx: Context) -> Any:
        manager = self.manager
        if manager is None:
            return await self._call(i, step, ctx)
        async with manager.slot(*step.options.pools):
            return await self._call(i, step, ctx)

    async def _call(self, i: int, step: Step, ctx: Context) -> Any:
        if self.aborted:
            # A failure was seen while this step waited (for its slot, its condition): once a
            # failure is seen nothing more starts; the run's cancellation ends the wait.
            await anyio.sleep_forever()
        if self.started[i] is None:
            self.started[i] = self.now()
        self.attempts[i] += 1
        timeout = step.options.timeout
        if timeout is None:
            return await step.fn(ctx)
        with anyio.fail_after(timeout):
            return await step.fn(ctx)

    async def _write(self) -> None:
        # Be the journal's writer while records are queued: each write takes every record
        # queued since the last; then the steps after the saved ones may start.
        journal = self.journal
        assert journal is not None
        if not journal.begin():
            return
        while saved := await journal.write():
            for j in saved:
                self._complete(j, None)
        if journal.error is not None:
            self._abort()

    def _flush_soon(self) -> None:
        if not self.flush_poked:
            self.flush_poked = True
            self.flush.set()

    async def _write_behind(self) -> None:
        # With a store: writes the records of steps whose worker went on with another step,
        # as soon as the workers let it run (a step waits, or a worker's checkpoint).
        while True:
            self.flush_poked = False
            self.flush = anyio.Event()
            if self.finished_all:
                return
            await self._write()
            if self._can_claim():
                self._poke()  # the steps after those it saved may start: no worker takes them
            await self.flush.wait()

    def _complete(self, i: int, now: float | None) -> None:
        # The step's end is final (and stored): release the steps after it, or fail the run.
        # ``now`` is the time, when the caller just read it.
        self.active -= 1
        self.completed += 1
        status = self.status[i]
        assert status is not None
        name = self.steps[i].name
        self.shared.statuses[name] = status
        if status is _SUCCEEDED:
            self.succeeded += 1
            self.shared.results[name] = self.value[i]
            release = True
        elif status is _SKIPPED:
            self.skipped += 1
            release = True
        else:
            self.failed += 1
            error = self.error[i]
            if error is not None:
                self.shared.errors[name] = error
            release = self.steps[i].options.optional
            if not release:
                self.hard_failures += 1
                if self.fail_fast:
                    self._abort()
        if release:
            remaining, ready = self.remaining, self.ready
            for s in self.succs[i]:
                remaining[s] -= 1
                if not remaining[s]:
                    ready.append(s)
        if self.on_progress is not None:
            self._report(self.now() if now is None else now)
        if not self.active and (self.aborted or not self.ready):
            self.finished_all = True
            self._poke()
            self._flush_soon()

    # --- the end ------------------------------------------------------------------------------
    def _ok(self) -> bool:
        # Every step completed (nothing CANCELLED or NOT_RUN) and none failed for good.
        return self.completed == len(self.steps) and not self.hard_failures

    async def _wrap_up(self, interrupted: BaseException | None) -> None:
        ok = interrupted is None and self._ok()
        if not ok:
            self.status = [_NOT_RUN if s is None else s for s in self.status]
        journal = self.journal
        if not ok and (journal is None or journal.error is None):
            await self._compensate()
        if journal is None:
            return
        if interrupted is None:
            final = RunStatus.SUCCEEDED if ok else RunStatus.FAILED
        elif isinstance(interrupted, anyio.get_cancelled_exc_class()):
            final = RunStatus.CANCELLED
        else:
            final = RunStatus.FAILED
        changed = [
            self.record(i)
            for i, (status, saved, comp_error) in enumerate(
                zip(self.status, journal.saved, self.comp_error, strict=True)
            )
            if status is not saved or comp_error is not None
        ]
        try:
            await journal.close(changed, final, self.now() - self.t0)
        except Exception as exc:
            if interrupted is not None:
                interrupted.add_note(f"trioflow: could not record the end of the run: {exc!r}")
            elif journal.error is None:
                raise

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
            await compensate(run_context(self.shared, self.steps[i].name))
        except Exception as exc:
            self.comp_error[i] = exc
        else:
            self.status[i] = _COMPENSATED

    # --- what leaves the run ------------------------------------------------------------------
    def record(self, i: int) -> StepRow:
        """Return the record of step ``i`` as the store keeps it, as a row.

        Args:
            i: The step's index; the step ended.

        Returns:
            Its record's :data:`~._store.StepRow` (the journal hands rows to the store).
        """
        # One per step of a durable run: no helper calls, each list read once.
        status = self.status[i]
        assert status is not None
        step = self.steps[i]
        started, finished = self.started[i], self.finished[i]
        error, comp_error = self.error[i], self.comp_error[i]
        wall0, t0 = self.wall0, self.t0
        return (
            step.name,
            status,
            self.attempts[i],
            self.stored[i] if status is _SUCCEEDED or status is _COMPENSATED else None,
            None if error is None else _error_text(error),
            None if comp_error is None else _error_text(comp_error),
            # POSIX timestamps, the record's datetimes once it is read (see step_record).
            None if started is None else wall0 + (started - t0),
            None if finished is None else wall0 + (finished - t0),
            self.duration[i] if started is None or finished is None else finished - started,
            self.seq[i],
            step.fingerprint,
        )

    def _report(self, now: float) -> None:
        on_progress = self.on_progress
        if on_progress is None:
            return
        running = self.running
        names = self.names if running else ()  # nothing running: it shares nothing with the run
        # When nobody but the run holds its last report (nor a weak reference to it), nobody
        # can reach it, nor tell it from a new one (a view of the running steps it read is
        # still live and unread: see _running_changes).
        if self.last is not None and (
            self.free or (_getrefcount(self.last) == _ALONE and not getweakrefcount(self.last))
        ):
            last = self.last
            if last.completed == self.completed:
                # A step started: only its running steps changed, and they are read through
                # the same view unless it was read or frozen since. Set what changed again
                # (a slot's descriptor costs about as much per field as a new report's
                # whole build costs for seven).
                if names is self.shown:
                    progress_refill_elapsed(last, now - self.t0)
                else:
                    progress_refill_running(last, names, now - self.t0)
                progress = last
            else:
                # A step ended: most fields changed, and a new report costs less than
                # setting them again. The last one goes, and its view with it: the new one
                # takes the view over.
                progress = self.last = progress_snapshot(
                    self.total,
                    self.completed,
                    self.succeeded,
                    self.failed,
                    self.skipped,
                    names,
                    now - self.t0,
                )
        else:
            if self.viewing:  # the last report is held: it shares no view with this one
                self._running_changes()
                names = self.names if running else ()
            progress = self.last = progress_snapshot(
                self.total,
                self.completed,
                self.succeeded,
                self.failed,
                self.skipped,
                names,
                now - self.t0,
            )
        self.shown = names
        self.viewing = bool(running)
        self.free = False
        on_progress(progress)

    def _running_changes(self) -> None:
        # Called before a step joins or leaves ``running`` (and before a new report that
        # follows a held one), when the last report reads the live mapping (``viewing``): if
        # anyone else still holds that report (or a weak reference to it), its names are fixed
        # now (O(steps in flight), as a tuple built for each report would cost every time), and
        # the next report reads a new view; so does it once someone read the names. A report
        # nobody kept costs nothing here.
        self.viewing = False
        if not self.free:
            if _getrefcount(self.last) != _ALONE or getweakrefcount(self.last):
                self.names.freeze()
                self.names = RunningSteps(self.running, self.steps)
                return
            self.free = True
        if self.names.read:
            self.names = RunningSteps(self.running, self.steps)

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
            optional=[step.options.optional for step in self.steps],
        )
        return WorkflowResult(
            workflow=self.name,
            run_id=self.run_id,
            ok=self._ok(),
            steps=StepResults(table),
            context=run_context(self.shared, None),
            duration=self.now() - self.t0,
            changed=tuple(sorted(self.changed, key=self.graph.index.__getitem__)),
        )
