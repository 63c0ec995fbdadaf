"""The coordinator: admits requests within limits, routes them and runs their pipelines.

``async with open_coordinator(config, router=...) as coordinator`` opens a task group that scopes
every background task (the health monitor, the metrics reporter); ``await
coordinator.process(request)`` admits the request (rate limits, a queue-depth cap, health
backpressure, a per-user limit, then the global limit), routes it, runs its pipeline with the
configured pools, retry policies, timeout and optional stages, and returns a
:class:`~trioflow.lifecycle.ProcessingResult`. Whatever happens, the request ends in exactly
one terminal state; cancellation of the caller ends it CANCELLED (shielded) and propagates.
``async with coordinator.stream(request) as chunks`` processes a request the same way while
the caller reads the chunks of its streaming stages.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import EllipsisType, MappingProxyType
from typing import Any, final

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from .._backend import current_backend, open_body_group
from .._backend import current_clock as clock
from .._batch._outcomes import BatchResult
from .._batch._run import run_batch
from .._checks import check_async_callable, check_int, check_timeout
from .._events import Listeners
from .._limits import HealthSource, PoolStatistics, ResourceManager, SharedLimits
from .._resilience._health import HealthMonitor
from .._resilience._policies import RetryPolicies
from .._retry import RetryPolicy
from .._telemetry import Instrumentation, hooks
from ._admission import Admission, CancelRequested, Ticket, connect_shared
from ._alerts import AdmissionRefused, Alerts, CoordinatorEvent, RequestFinished
from ._config import OrchestrationConfig, load_config
from ._machine import StateChange, StateMachine
from ._pipeline import Pipeline
from ._request import (
    REQUEST_TRANSITIONS,
    ErrorCategory,
    ProcessingResult,
    ProcessingStatus,
    Request,
    RequestState,
    make_result,
)
from ._requests import Recorder, RequestRecord, RequestStore, open_recorder
from ._router import Router, pick
from ._stream import ChunkSink, RequestStream
from ._tools import Arguments, ToolRegistry, check_calls

__all__ = ("Coordinator", "CoordinatorStatistics", "open_coordinator")

_INF = math.inf
_FAILED = ProcessingStatus.FAILED  # an Enum member is looked up once, not per request
_CANCELLED = ProcessingStatus.CANCELLED
_STATUS_OF_STATE = {
    RequestState.COMPLETED: ProcessingStatus.SUCCEEDED,
    RequestState.FAILED: ProcessingStatus.FAILED,
    RequestState.CANCELLED: ProcessingStatus.CANCELLED,
}


@attrs.frozen(kw_only=True)
class CoordinatorStatistics:
    """A snapshot of a :class:`Coordinator`, returned by its ``statistics()``.

    Attributes:
        uptime: Seconds since the coordinator opened.
        finished: Requests that reached a terminal state.
        completed: Requests that completed with every stage succeeding.
        degraded: Requests that completed with optional stages skipped.
        failed: Requests that failed (refused at admission included).
        cancelled: Requests that were cancelled.
        in_flight: Requests admitted and not finished.
        queue_depth: Requests waiting for admission.
        users: Users with requests in flight or waiting (each holds a per-user limiter, dropped
            when the user has none left).
        throttled: Throttling events: a request had to wait for (or was refused by) a rate
            limit, the queue-depth cap, health, the per-user limit or the global limit.
        requests_per_second: ``finished / uptime``.
        mean_time: Mean seconds from arrival to terminal state of the finished requests.
        success_ratio: ``(completed + degraded) / (completed + degraded + failed)``;
            cancellations are left out; 1.0 when nothing finished.
        failures: Failed requests by :class:`~trioflow.lifecycle.ErrorCategory`.
        state_times: Mean seconds a finished request spent in each state it went through.
        pools: The pools' statistics, by pool name.
        background_running: Background tasks running (:meth:`Coordinator.start_background`).
        background_waiting: Background tasks waiting for a place (``background_limit``).
        background_completed: Background tasks that returned.
        background_failed: Background tasks that raised (each logged as it failed);
            cancelled ones count as neither.
    """

    uptime: float
    finished: int
    completed: int
    degraded: int
    failed: int
    cancelled: int
    in_flight: int
    queue_depth: int
    users: int
    throttled: int
    requests_per_second: float
    mean_time: float
    success_ratio: float
    failures: Mapping[ErrorCategory, int]
    state_times: Mapping[RequestState, float]
    pools: Mapping[str, PoolStatistics]
    background_running: int = 0
    background_waiting: int = 0
    background_completed: int = 0
    background_failed: int = 0


def _debug_enabled(logger: Any) -> bool:
    check = getattr(logger, "is_enabled_for", None) or getattr(logger, "isEnabledFor", None)
    if check is None:
        return True
    try:
        return bool(check(logging.DEBUG))
    except Exception:  # a logger that cannot tell: log
        return True


@final
class Coordinator:
    """Admits, routes and processes requests within the configured limits.

    Made by :func:`open_coordinator`, which scopes its background tasks; not constructed
    directly. Stage functions that call tools use :meth:`call_tool` or :meth:`run_tools`
    (through the ``"tool"`` pool, when there is one); give such stages no ``"tool"`` pool of
    their own, or they would hold a token while waiting for another.
    """

    def __init__(
        self,
        config: OrchestrationConfig,
        router: Router,
        registry: ToolRegistry | None,
        health: HealthSource | None,
        logger: Any,
        machine: StateMachine[RequestState] | None = None,
        recorder: Recorder | None = None,
        shared_limits: SharedLimits | None = None,
    ) -> None:
        self._config = config
        self._router = router
        self._registry = registry
        self._log = logger
        self._debug = _debug_enabled(logger)
        if machine is None:
            # One machine moves a request from arrival to its end, so that hooks registered on
            # it see every transition: the router's pipelines' machine when they share one.
            shared = {id(p.machine): p.machine for p in router.pipelines.values()}
            if len(shared) == 1:
                (machine,) = shared.values()
            else:
                machine = StateMachine(REQUEST_TRANSITIONS, RequestState.RECEIVED)
        self._machine = machine
        self._terminal = machine.terminal  # a machine's table never changes
        # Every slot names a pool and the general limit is the sum of the pool sizes, so only
        # the pools ever bind (stages never wait on the general limit of this manager).
        pools = dict(config.pools)
        self._resources = ResourceManager(limit=max(1, sum(pools.values())), pools=pools)
        self._retry = RetryPolicies(config.retry_policy_map())
        # Bound once: Pipeline.run checks its run options once per distinct objects.
        self._resolve_policy = self._policy
        self._observer = self._on_transition if self._debug else None
        self._recorder = recorder
        if recorder is not None:
            self._observer = self._on_transition_recorded if self._debug else recorder.moved
        self._load = health if isinstance(health, HealthMonitor) else 0.0
        self._admission = Admission(config, health, shared_limits)
        self._active: dict[str, Ticket] = {}
        self._opened_at = anyio.current_time()
        # The running loop's own checkpoint (trio's on trio), without anyio's dispatch per call.
        self._checkpoint = current_backend().checkpoint
        self._now = clock()
        self._closed = False
        self._running = 0
        self._counts = dict.fromkeys(ProcessingStatus, 0)
        self._failures = dict.fromkeys(ErrorCategory, 0)
        self._total_time = 0.0
        self._state_time = dict.fromkeys(RequestState, 0.0)
        self._state_visits = dict.fromkeys(RequestState, 0)
        # Background tasks: run in the coordinator's task group (set by open_coordinator).
        self._group: anyio.abc.TaskGroup | None = None
        self._background_places = anyio.CapacityLimiter(config.background_limit)
        self._background = dict.fromkeys(("running", "waiting", "completed", "failed"), 0)
        # Listeners and alerts (add_listener, config.alerts).
        self._listeners: Listeners[CoordinatorEvent] = Listeners("Coordinator", logger)
        self._alerts = Alerts(config.alerts, self._listeners.emit, logger)
        self._watches_failures = self._alerts.watches_failures
        if self._alerts.watches_queue:
            self._admission.on_depth = self._alerts.queue_depth

    def __repr__(self) -> str:
        return f"Coordinator(kinds={list(self._router.kinds)}, in_flight={self._running})"

    @property
    def config(self) -> OrchestrationConfig:
        """The configuration."""
        return self._config

    @property
    def router(self) -> Router:
        """The router."""
        return self._router

    @property
    def resources(self) -> ResourceManager:
        """The pools stages take tokens of (``config.pools``)."""
        return self._resources

    @property
    def machine(self) -> StateMachine[RequestState]:
        """The machine that moves every request this coordinator processes (register hooks on it).

        Requests refused before they reach a pipeline end through it, and every pipeline runs
        the coordinator's requests on it: its hooks see every transition of every request. It
        is the ``machine=`` given to :func:`open_coordinator`, else the one machine all the
        router's pipelines share, else a new one over
        :data:`~trioflow.lifecycle.REQUEST_TRANSITIONS`.
        """
        return self._machine

    # --- processing -----------------------------------------------------------------------
    async def process(
        self,
        request: Request,
        *,
        timeout: float | EllipsisType | None = ...,  # noqa: ASYNC109 - the request's budget
        on_chunk: ChunkSink | None = None,
    ) -> ProcessingResult:
        """Admit, route and process one request; it ends in exactly one terminal state.

        Failures are results, not exceptions: a request refused at admission (rate limit,
        queue depth, unhealthy system, admission past its timeout), an unknown kind,
        a failing stage, all end FAILED with an :class:`~trioflow.lifecycle.ErrorCategory`.
        :meth:`cancel` ends it CANCELLED. Cancellation of the caller ends it CANCELLED too
        (shielded) and then propagates.

        Args:
            request: A request in a state that is not terminal, with an id not being processed.
            timeout: Seconds the request may take from its arrival (waiting for admission
                counts) to its terminal state; ``...`` (the default) for the configuration's
                ``default_timeout``; ``None`` for no limit (a request bounded by its stages'
                own timeouts, such as a workflow run).
            on_chunk: ``async on_chunk(chunk)``, awaited with each chunk of the request's
                streaming stages as it is produced (see :meth:`stream`).

        Returns:
            The :class:`~trioflow.lifecycle.ProcessingResult`.

        Raises:
            TypeError: ``request`` is not a Request, or ``timeout`` is not a number.
            ValueError: The request is terminal, or one with its id is being processed, or
                ``timeout`` is negative or NaN.
            RuntimeError: The coordinator is closed.
        """
        self._check(request)
        timeout = self._config.default_timeout if timeout is ... else check_timeout(timeout)
        telemetry = hooks.current
        if telemetry is not None:  # the one branch telemetry costs a request while it is off
            return await self._traced(telemetry, request, timeout, on_chunk)
        return await self._process(request, timeout, on_chunk)

    async def _traced(
        self,
        telemetry: Instrumentation,
        request: Request,
        timeout: float | None,  # noqa: ASYNC109 - the request's budget
        on_chunk: ChunkSink | None,
    ) -> ProcessingResult:
        """Process a request in a ``trioflow.request`` span; record its end in the metrics."""
        attributes = {"trioflow.request.id": request.id}
        if telemetry.include_user:
            attributes["enduser.id"] = request.user_id
        with telemetry.span("trioflow.request", attributes) as span:
            result: ProcessingResult | None = None
            try:
                result = await self._process(request, timeout, on_chunk)
            finally:  # cancelled from outside too: the request ended CANCELLED all the same
                kind = request.kind or "default"  # known once the router classified it
                state = request.state.value
                span.set({"pipeline.name": kind, "trioflow.request.state": state})
                category = None
                if result is None:
                    duration = anyio.current_time() - request.created_at
                else:
                    duration = result.duration
                    if result.category is not None:
                        category = result.category.value
                        span.set({"trioflow.request.error_category": category})
                telemetry.request_ended(kind, state, category, duration)
            if result.status is ProcessingStatus.FAILED:
                span.fail(f"request failed ({category})")
            elif result.status is ProcessingStatus.CANCELLED:
                span.cancelled()
        return result

    async def _process(
        self,
        request: Request,
        timeout: float | None,  # noqa: ASYNC109 - the request's budget
        on_chunk: ChunkSink | None,
    ) -> ProcessingResult:
        entry = Ticket(request)
        self._active[request.id] = entry
        recorder = self._recorder
        if recorder is not None:
            recorder.arrived(request)
        admitted = False
        result: ProcessingResult | None = None
        admission = self._admission
        try:
            # The budget runs from arrival: waiting for admission counts.
            deadline = math.inf if timeout is None else request.created_at + timeout
            try:
                # A checkpoint (cancel and schedule point), as trio expects of every async call:
                # a loop of requests whose stages never block still lets other tasks run.
                await self._checkpoint()
                if not admission.try_now(entry):
                    await admission.wait(request, deadline, entry)
            except BaseException as exc:
                result = await self._refused(request, exc)
                if self._listeners and not isinstance(exc, CancelRequested):
                    self._listeners.emit(
                        AdmissionRefused(
                            request_id=request.id,
                            user_id=request.user_id,
                            category=result.category,
                            reason=str(exc),
                        )
                    )
                return result
            admitted = True
            self._running += 1
            try:
                pipeline = pick(self._router, request)
                if type(pipeline) is not Pipeline:
                    pipeline = await pipeline
            except BaseException as exc:  # outer cancellation of an async classifier included
                result = await self._refused(request, exc)  # UnknownKindError: VALIDATION
                return result
            if entry.cancel_requested:  # cancel() arrived while the request was being routed
                result = await self._refused(request, CancelRequested())
                return result
            entry.pipeline = pipeline
            remaining = None if deadline == _INF else deadline - self._now()
            if remaining is not None and remaining < 0.0:
                remaining = 0.0
            try:
                result = await pipeline.run(
                    request,
                    resources=self._resources,
                    retry=self._resolve_policy,
                    timeout=remaining,
                    optional=self._config.optional_stages,
                    on_transition=self._observer,
                    machine=self._machine,
                    on_chunk=on_chunk,
                )
            except Exception as exc:
                if not self._machine.is_terminal(request.state):
                    # The pipeline refused the run before starting it (e.g. an unknown pool).
                    result = await self._refused(request, exc)
                else:
                    # A hook failed while the pipeline ended the request (it is terminal now).
                    result = self._result_of(request, error=exc)
            return result
        finally:
            if admitted:
                self._running -= 1
                admission.release(entry)
            del self._active[request.id]
            self._record(request, result)
            if recorder is not None:
                recorder.ended(request, result)

    def _check(self, request: Request) -> None:
        if self._closed:
            raise RuntimeError("the coordinator is closed")
        if not isinstance(request, Request):
            raise TypeError(f"request must be a Request, got {request!r}")
        if request.id in self._active:
            raise ValueError(f"a request with id {request.id!r} is already being processed")
        if request.state in self._terminal:
            raise ValueError(f"request {request.id!r} is already in the terminal state")

    async def _refused(self, request: Request, exc: BaseException) -> ProcessingResult:
        """End a request that never reached a pipeline; re-raise outside cancellation."""
        requested = isinstance(exc, CancelRequested)
        cancelled = requested or not isinstance(exc, Exception)
        with anyio.CancelScope(shield=True):
            change = await self._machine.transition(
                request, RequestState.CANCELLED if cancelled else RequestState.FAILED
            )
        self._on_transition(request, change)
        if requested:
            return self._result_of(request)
        if cancelled:
            raise exc
        return self._result_of(request, error=exc)

    def _policy(self, name: str, request: Request) -> RetryPolicy:
        return self._retry.get(name, load=self._load, priority=request.priority)

    def _result_of(
        self, request: Request, *, error: BaseException | None = None
    ) -> ProcessingResult:
        status = _STATUS_OF_STATE.get(request.state, ProcessingStatus.FAILED)
        duration = anyio.current_time() - request.created_at
        return make_result(request, status, duration, error=error)

    def _on_transition(self, request: Request, change: StateChange[RequestState]) -> None:
        if self._debug:
            self._log.debug(
                "state transition",
                request_id=request.id,
                user_id=request.user_id,
                from_state=change.from_state.value,
                to_state=change.to_state.value,
                at=change.at,
            )

    def _on_transition_recorded(self, request: Request, change: StateChange[RequestState]) -> None:
        assert self._recorder is not None
        self._recorder.moved(request)
        self._on_transition(request, change)

    def _record(self, request: Request, result: ProcessingResult | None) -> None:
        history = request.history
        # The terminal transition is the last one: its time is the request's end.
        now = history[-1].at if history else anyio.current_time()
        state = request.state
        status = result.status if result is not None else _STATUS_OF_STATE.get(state)
        if status is None:  # cannot happen: every path ends the request
            return
        self._counts[status] += 1
        self._total_time += now - request.created_at
        if status is _FAILED and result is not None and result.category:
            self._failures[result.category] += 1
        previous = request.created_at
        times, visits = self._state_time, self._state_visits
        for change in history:
            left = change.from_state
            at = change.at
            times[left] += at - previous
            visits[left] += 1
            previous = at
        if self._debug:
            self._log.debug(
                "request finished",
                request_id=request.id,
                status=status.value,
                duration=now - request.created_at,
            )
        if status is not _CANCELLED and self._watches_failures:
            self._alerts.request_ended(now, status is _FAILED)
        if self._listeners:
            self._listeners.emit(
                RequestFinished(
                    request_id=request.id,
                    user_id=request.user_id,
                    request_kind=request.kind,
                    status=status,
                    state=state,
                    category=result.category if result is not None else None,
                    duration=now - request.created_at,
                )
            )

    # --- listeners --------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[CoordinatorEvent], object]) -> Callable[[], None]:
        """Call ``fn(event)`` as requests end, are refused, and alerts fire and clear.

        ``fn`` receives a :class:`~trioflow.lifecycle.RequestFinished` for every request that
        reaches its terminal state, an :class:`~trioflow.lifecycle.AdmissionRefused` (before
        that) for one refused at admission, and the :class:`~trioflow.lifecycle.Alert` and
        :class:`~trioflow.lifecycle.AlertCleared` events of ``config.alerts``. Listeners run
        synchronously in the task that caused the event; one that raises is logged (with the
        coordinator's logger) and changes nothing else.

        Example::

            def page(event: CoordinatorEvent) -> None:
                if event.kind == "alert":
                    pager.send(f"{event.name} at {event.value} (threshold {event.threshold})")

            remove = coordinator.add_listener(page)

        Args:
            fn: A synchronous callable taking one event.

        Returns:
            A function that removes the listener (idempotent).

        Raises:
            TypeError: ``fn`` is not callable.
        """
        return self._listeners.add(fn)

    def cancel(self, request_id: str) -> bool:
        """Cancel a request being processed; its ``process()`` returns a CANCELLED result.

        Works while the request waits for admission, is routed, or runs its pipeline.

        Args:
            request_id: The request's id.

        Returns:
            Whether a request with that id was being processed.
        """
        entry = self._active.get(request_id)
        if entry is None:
            return False
        entry.cancel_requested = True
        if entry.scope is not None:
            entry.scope.cancel()
        elif entry.pipeline is not None:
            entry.pipeline.cancel(entry.request)
        return True

    @contextlib.asynccontextmanager
    async def stream(
        self,
        request: Request,
        *,
        timeout: float | EllipsisType | None = ...,  # noqa: ASYNC109 - as in process()
        buffer: int = 0,
    ) -> AsyncIterator[RequestStream]:
        """Process a request while the caller reads the chunks of its streaming stages.

        Example::

            async with coordinator.stream(Request(prompt, kind="streaming")) as chunks:
                async for chunk in chunks:
                    print(chunk, end="")
            print(chunks.result.status)

        The request is processed as :meth:`process` does, in a task of this block. Its
        streaming stages' chunks flow through a memory channel of ``buffer`` places (a slow
        reader holds the stages back); iteration ends when the request reaches its terminal
        state, and :attr:`RequestStream.result <trioflow.lifecycle.RequestStream.result>` is
        then its result. Leaving the block before that (a ``break``, an exception, a
        cancellation) cancels the request: it ends CANCELLED, and nothing it started outlives
        the block.

        Args:
            request: A request in a state that is not terminal, with an id not being processed.
            timeout: As for :meth:`process`.
            buffer: Chunks the channel holds before a stage waits for the reader, an int >= 0.

        Yields:
            The :class:`~trioflow.lifecycle.RequestStream`.

        Raises:
            TypeError: ``request`` is not a Request, or an option has the wrong type.
            ValueError: As for :meth:`process`, or ``buffer`` < 0 (before anything runs).
            RuntimeError: The coordinator is closed.
        """
        self._check(request)
        if timeout is not ...:
            timeout = check_timeout(timeout)
        buffer = check_int(buffer, "buffer", minimum=0)
        send, receive = anyio.create_memory_object_stream[Any](buffer)
        chunks = RequestStream(request.id, receive)

        async def produce(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            with send:
                task_status.started()
                chunks.finish(await self.process(request, timeout=timeout, on_chunk=send.send))

        with receive:
            async with open_body_group() as tg:  # the block's own errors come out as themselves
                await tg.start(produce)
                try:
                    yield chunks
                finally:
                    # The reader left early (a break, an exception, a cancellation): the
                    # request is cancelled and ends CANCELLED before the block ends.
                    if not chunks.done and not self.cancel(request.id):
                        tg.cancel_scope.cancel()

    async def process_many(self, requests: Iterable[Request]) -> list[ProcessingResult]:
        """Process many requests concurrently (within the limits); results in input order.

        Logs ``operations started`` (count, concurrency) and ``operations completed``
        (succeeded, failed, cancelled, duration).

        Args:
            requests: The requests.

        Returns:
            One result per request, in input order.

        Raises:
            TypeError: An item is not a Request (checked before anything runs).
            ValueError: Two requests share an id, or one is terminal (checked first).
        """
        batch = list(requests)
        ids: set[str] = set()
        for request in batch:
            self._check(request)
            if request.id in ids:
                raise ValueError(f"two requests share the id {request.id!r}")
            ids.add(request.id)
        results: list[ProcessingResult | None] = [None] * len(batch)
        started = anyio.current_time()
        self._log.info(
            "operations started", count=len(batch), concurrency=self._config.max_concurrency
        )

        async def one(index: int, request: Request) -> None:
            results[index] = await self.process(request)

        # trio's own nursery on trio: anyio's task group wraps every task in a handle with a
        # cancel scope of its own, which a request (that catches its own failures) never needs.
        async with current_backend().open_group() as tg:
            for index, request in enumerate(batch):
                tg.start_soon(one, index, request)
        done = [r for r in results if r is not None]
        self._log.info(
            "operations completed",
            succeeded=sum(r.ok for r in done),
            failed=sum(r.status is ProcessingStatus.FAILED for r in done),
            cancelled=sum(r.status is ProcessingStatus.CANCELLED for r in done),
            duration=anyio.current_time() - started,
        )
        return done

    # --- request state ----------------------------------------------------------------------
    @property
    def requests(self) -> RequestStore | None:
        """The request store every request is recorded in (``requests=``), or None."""
        return None if self._recorder is None else self._recorder.store

    async def recover(self) -> tuple[RequestRecord, ...]:
        """Find the requests that were in flight in a coordinator that died, and end them.

        Every request of the store that is not finished and whose coordinator is gone (it
        closed without writing the request's end, its registration expired, or, on this
        host, its process died) is marked FAILED with category ``internal`` and reason
        ``"interrupted"``, once, even when several processes recover at once. Call it when
        the application starts, and retry what it returns (the records carry the id, user,
        kind, source and the stages completed; keep the payloads yourself, by request id).

        Returns:
            The :class:`~trioflow.lifecycle.RequestRecord` of each request marked, newest
            first.

        Raises:
            RuntimeError: The coordinator was opened without a request store.
            StoreError: The store cannot be read or written.
        """
        if self._recorder is None:
            raise RuntimeError("this coordinator was opened without a request store (requests=)")
        return await self._recorder.recover()

    # --- tools ------------------------------------------------------------------------------
    def _tools(self) -> ToolRegistry:
        if self._registry is None:
            raise RuntimeError("this coordinator was opened without a tool registry")
        return self._registry

    async def call_tool(
        self, name: str, arguments: Arguments = None, *, on_chunk: ChunkSink | None = None
    ) -> Any:
        """Call a tool of the registry, holding a token of the ``"tool"`` pool if there is one.

        Args:
            name: The tool's name.
            arguments: Its JSON-like arguments: a mapping, the JSON text of an object, or
                ``None``.
            on_chunk: For a streaming tool, awaited with each chunk as it is produced (see
                :meth:`ToolRegistry.call <trioflow.lifecycle.ToolRegistry.call>`).

        Returns:
            What the tool returned (a streaming tool: the list of its chunks).

        Raises:
            RuntimeError: The coordinator has no registry.
            UnknownToolError: No tool has that name.
            ToolArgumentError: The arguments do not fit.
        """
        registry = self._tools()
        if "tool" not in self._resources.pools:
            return await registry.call(name, arguments, on_chunk=on_chunk)
        async with self._resources.slot("tool"):
            return await registry.call(name, arguments, on_chunk=on_chunk)

    async def run_tools(
        self,
        calls: Iterable[tuple[str, Arguments]],
        *,
        limit: int | ResourceManager | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - per call, as in run_batch
        fail_fast: bool = False,
        retry: RetryPolicy | None = None,
    ) -> BatchResult[Any]:
        """Run tool calls concurrently, each holding a token of the ``"tool"`` pool.

        The options are those of :func:`~trioflow.lifecycle.run_tools`, within the
        coordinator's ``"tool"`` pool (when there is one): a call runs while it holds both its
        place under ``limit`` and a token of the pool.

        Args:
            calls: ``(tool name, arguments)`` pairs, the arguments a mapping, JSON text or
                ``None``; outcomes keep their order.
            limit: At most this many calls of this batch at once (an int, or a
                ResourceManager to share), or ``None`` for no limit but the pool's.
            timeout: Seconds allowed for each call (each attempt, with ``retry``; waiting
                for the pool counts), or ``None``.
            fail_fast: Cancel the remaining calls after the first failure.
            retry: A :class:`~trioflow.RetryPolicy` applied to each call, or ``None``. A
                call waiting to retry gives its pool token back.

        Returns:
            The :class:`~trioflow.BatchResult`, one outcome per call.

        Raises:
            RuntimeError: The coordinator has no registry.
            TypeError: A call is not a ``(name, arguments)`` pair, or an option has the wrong
                type (raised before anything runs).
            ValueError: ``limit`` < 1, or ``timeout`` negative or NaN (before anything runs).
        """
        self._tools()
        operations = [
            functools.partial(self.call_tool, name, arguments)
            for name, arguments in check_calls(calls)
        ]
        return await run_batch(
            operations, limit=limit, timeout=timeout, fail_fast=fail_fast, retry=retry
        )

    # --- statistics ---------------------------------------------------------------------------
    def statistics(self) -> CoordinatorStatistics:
        """Return a snapshot of throughput, outcomes, queueing and time per state.

        Returns:
            A frozen :class:`CoordinatorStatistics`.
        """
        counts = self._counts
        finished = sum(counts.values())
        uptime = anyio.current_time() - self._opened_at
        ok = counts[ProcessingStatus.SUCCEEDED] + counts[ProcessingStatus.DEGRADED]
        decided = ok + counts[ProcessingStatus.FAILED]
        return CoordinatorStatistics(
            uptime=uptime,
            finished=finished,
            completed=counts[ProcessingStatus.SUCCEEDED],
            degraded=counts[ProcessingStatus.DEGRADED],
            failed=counts[ProcessingStatus.FAILED],
            cancelled=counts[ProcessingStatus.CANCELLED],
            in_flight=self._running,
            queue_depth=self._admission.waiting,
            users=self._admission.users,
            throttled=self._admission.throttled,
            requests_per_second=finished / uptime if uptime > 0 else 0.0,
            mean_time=self._total_time / finished if finished else 0.0,
            success_ratio=ok / decided if decided else 1.0,
            failures=MappingProxyType(dict(self._failures)),
            state_times=MappingProxyType(
                {
                    state: self._state_time[state] / visits
                    for state, visits in self._state_visits.items()
                    if visits
                }
            ),
            pools=self._resources.statistics().pools,
            background_running=self._background["running"],
            background_waiting=self._background["waiting"],
            background_completed=self._background["completed"],
            background_failed=self._background["failed"],
        )

    def start_background(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None
    ) -> None:
        """Start ``fn(*args)`` as a background task of the coordinator; return at once.

        The task runs in the coordinator's task group, at most ``background_limit`` of them
        at once (the configuration's; more wait for a place, first come, first served). It
        is cancelled when the coordinator closes. A failure is logged (a ``background task
        failed`` error, with the exception) and counted in :meth:`statistics`, never lost and
        never raised into the coordinator; a cancellation is neither a failure nor a
        completion.

        Example::

            coordinator.start_background(refresh_cache, "users", name="refresh users")

        Args:
            fn: An async function.
            *args: Its positional arguments.
            name: What the log and the task are called; ``fn``'s name by default.

        Raises:
            TypeError: ``fn`` is not an async callable (refused before anything starts).
            RuntimeError: The coordinator is closed.
        """
        check_async_callable(fn, "fn")
        if self._closed or self._group is None:
            raise RuntimeError("the coordinator is closed: it starts no background task")
        label = name if name is not None else getattr(fn, "__qualname__", repr(fn))
        self._background["waiting"] += 1
        self._group.start_soon(self._run_background, fn, args, label, name=label)

    async def _run_background(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], label: str
    ) -> None:
        counts = self._background
        try:
            await self._background_places.acquire()
        finally:
            counts["waiting"] -= 1
        counts["running"] += 1
        try:
            await fn(*args)
        except Exception as exc:
            counts["failed"] += 1
            self._log.error(
                "background task failed",
                task=label,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )
        else:
            counts["completed"] += 1
        finally:
            counts["running"] -= 1
            self._background_places.release()

    async def _report_metrics(self) -> None:
        interval = self._config.metrics_interval
        while True:
            await anyio.sleep(interval)
            stats = self.statistics()
            self._log.info(
                "coordinator statistics",
                requests_per_second=stats.requests_per_second,
                mean_time=stats.mean_time,
                success_ratio=stats.success_ratio,
                queue_depth=stats.queue_depth,
                in_flight=stats.in_flight,
                throttled=stats.throttled,
            )


@contextlib.asynccontextmanager
async def open_coordinator(
    config: OrchestrationConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    router: Router,
    registry: ToolRegistry | None = None,
    health: HealthSource | None = None,
    logger: Any = None,
    machine: StateMachine[RequestState] | None = None,
    requests: RequestStore | None = None,
    shared: SharedLimits | None = None,
) -> AsyncIterator[Coordinator]:
    """Open a coordinator; its background tasks live exactly as long as the ``async with``.

    Example::

        async with open_coordinator(load_config("orchestration.toml"), router=router) as c:
            result = await c.process(Request("what is trio?", user_id="alice"))

    Args:
        config: An :class:`~trioflow.lifecycle.OrchestrationConfig`, or what
            :func:`~trioflow.lifecycle.load_config` takes (a mapping or a ``.toml``/``.json``
            path); defaults to ``OrchestrationConfig()``.
        router: Picks each request's pipeline.
        registry: The tools that :meth:`Coordinator.call_tool` and
            :meth:`Coordinator.run_tools` call.
        health: A health source for backpressure. A :class:`~trioflow.HealthMonitor` that is
            not running is run for the coordinator's lifetime. Without one, a monitor is made
            from ``config.health`` when it is enabled.
        logger: A structlog logger (``structlog.get_logger("trioflow")`` by default). The
            coordinator never configures structlog: configure it in your application, or pass
            a logger of your own. Transitions are logged at debug level, batches and periodic
            statistics at info.
        machine: The :class:`~trioflow.lifecycle.StateMachine` that moves every request
            (see :attr:`Coordinator.machine`); its table must allow every pipeline's path. By
            default the one machine the router's pipelines share, else a new one.
        requests: A :class:`~trioflow.lifecycle.RequestStore` that records every request
            as it moves (see :meth:`Coordinator.recover`), e.g. a
            :class:`~trioflow.lifecycle.SQLiteRequestStore`; written off the requests' path,
            in batches (arrivals and ends within 5 ms, progress at most once a second),
            and never closed by the coordinator. A
            failing store never fails a request: it is reported once (a ``request store
            failed`` warning) and written again when it works.
        shared: The :class:`~trioflow.SharedLimits` (e.g. a ``trioflow.redis.connect(url)``
            connection) to admit requests within, shared with every coordinator that uses
            them with the same ``config.shared.name``. Without one, ``config.shared.url``
            (when set) is connected to for the coordinator's lifetime.

    Yields:
        The :class:`Coordinator`.

    Raises:
        TypeError: ``router``, ``registry``, ``health``, ``machine``, ``requests`` or
            ``shared`` has the wrong type.
        ValueError: ``config.alerts.health`` is set, but there is no health source (neither
            ``health`` nor ``config.health.enabled``).
        ConfigError: ``config`` is a mapping or file that does not load, or names a Redis
            URL while the Redis client is not installed.
        trioflow.redis.RedisStateError: ``config.shared.url`` cannot be reached (nothing was
            admitted).
    """
    if not isinstance(config, OrchestrationConfig):
        config = OrchestrationConfig() if config is None else load_config(config)
    if not isinstance(router, Router):
        raise TypeError(f"router must be a Router, got {router!r}")
    if registry is not None and not isinstance(registry, ToolRegistry):
        raise TypeError(f"registry must be a ToolRegistry or None, got {registry!r}")
    if health is not None and not isinstance(health, HealthSource):
        raise TypeError(f"health must be a health source (e.g. a HealthMonitor), got {health!r}")
    if machine is not None and not isinstance(machine, StateMachine):
        raise TypeError(f"machine must be a StateMachine or None, got {machine!r}")
    if requests is not None and not isinstance(requests, RequestStore):
        raise TypeError(f"requests must be a RequestStore or None, got {requests!r}")
    if config.alerts.health is not None and health is None and not config.health.enabled:
        raise ValueError(
            "config.alerts.health needs a health source: pass health= or enable config.health"
        )
    if shared is not None and not isinstance(shared, SharedLimits):
        raise TypeError(f"shared must be SharedLimits (e.g. a Redis connection), got {shared!r}")
    if logger is None:
        import structlog  # here, not at module level: it imports rich, pygments, ... (slow)

        logger = structlog.get_logger("trioflow")
    log = logger
    async with contextlib.AsyncExitStack() as stack:
        if shared is None and config.shared.url is not None:
            shared = await stack.enter_async_context(connect_shared(config.shared))
        if health is None and config.health.enabled:
            health = HealthMonitor(
                max_cpu_percent=config.health.max_cpu_percent,
                max_memory_percent=config.health.max_memory_percent,
                interval=config.health.interval,
            )
        if isinstance(health, HealthMonitor) and not health.statistics().running:
            await stack.enter_async_context(health)
        recorder = None
        if requests is not None:  # left after the task group: the last writes follow the body
            recorder = await stack.enter_async_context(open_recorder(requests, log))
        # The body's own exception comes out as itself, not in a group of one.
        tg = await stack.enter_async_context(open_body_group())
        coordinator = Coordinator(config, router, registry, health, log, machine, recorder, shared)
        coordinator._group = tg
        if config.enable_metrics:
            tg.start_soon(coordinator._report_metrics, name="trioflow coordinator metrics")
        if health is not None and coordinator._alerts.watches_health:
            tg.start_soon(coordinator._alerts.watch_health, health, name="trioflow health alert")
        log.info(
            "coordinator opened",
            max_concurrency=config.max_concurrency,
            per_user_limit=config.per_user_limit,
            pools=dict(config.pools),
        )
        try:
            yield coordinator
        finally:
            coordinator._closed = True
            tg.cancel_scope.cancel()
            stats = coordinator.statistics()
            log.info(
                "coordinator closed",
                finished=stats.finished,
                success_ratio=stats.success_ratio,
                uptime=stats.uptime,
            )
