"""Processing pipelines: stages that move a request through its lifecycle, one state at a time.

A :class:`Pipeline` is a sequence of :class:`Stage` values. Running it on a request enters each
stage's state through a :class:`~trioflow.lifecycle.StateMachine`, runs the stage's async
function (each attempt under its timeout and its resource pools, retried by its retry
policy), records how long it took, and ends the request in exactly one terminal state:
COMPLETED, FAILED at the first failure, or CANCELLED when the run is cancelled (that last
transition runs shielded, then the cancellation goes on).

A stage may be an async generator function: a streaming stage. Each chunk it yields is handed
to the run's ``on_chunk`` (awaited, so a slow consumer holds the stage back) as it is produced,
and the stage's value is the list of every chunk.
"""

from __future__ import annotations

import contextvars
import functools
import math
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from types import CoroutineType, MappingProxyType
from typing import Any, TypeVar, final

import anyio
import attrs

from .._backend import OwnScope, scope_and_clock
from .._backend import current_clock as clock
from .._checks import (
    NotAwaitableError,
    check_async_callable,
    check_name,
    check_timeout,
    is_awaitable,
    not_awaitable,
    validator,
)
from .._deprecate import warn_renamed
from .._errors import InvalidTransitionError
from .._limits import ResourceManager
from .._logs import EngineLog, check_logger, open_log
from .._options import WorkOptions
from .._resilience._policies import RetryPolicies
from .._retry import RetryPolicy
from .._telemetry import Instrumentation, hooks
from ._machine import Route, StateChange, StateMachine
from ._request import (
    REQUEST_TRANSITIONS,
    ProcessingResult,
    ProcessingStatus,
    Request,
    RequestState,
    make_result,
)
from ._stream import ChunkSink, drain, is_streaming

__all__ = ("Pipeline", "PipelineStatistics", "Stage", "StageStatistics")

T = TypeVar("T")
StageFn = Callable[[Request], Awaitable[Any]] | Callable[[Request], AsyncIterator[Any]]
TransitionObserver = Callable[[Request, StateChange[RequestState]], object]
RetrySource = Mapping[str, RetryPolicy] | RetryPolicies | Callable[[str, Request], RetryPolicy]

_COMPLETED = RequestState.COMPLETED
_FAILED = RequestState.FAILED
_CANCELLED = RequestState.CANCELLED
_SUCCEEDED = ProcessingStatus.SUCCEEDED  # an Enum member is looked up once, not per run
_DEGRADED = ProcessingStatus.DEGRADED


_stage_name = validator(check_name)


def _stage_state(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, RequestState):
        raise TypeError(f"state must be a RequestState, got {value!r}")


def _stage_fn(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if is_streaming(value):
        return
    check_async_callable(value, "fn", "an async callable taking the request")


# Where the chunks of the current run's streaming stages go: set by Pipeline.run for the
# duration of one run (the stages run in its task), so _call needs no extra argument.
_SINK: contextvars.ContextVar[ChunkSink | None] = contextvars.ContextVar(
    "trioflow_chunk_sink", default=None
)


def _call(stage: Stage, request: Request) -> Awaitable[Any]:
    if stage.streaming:
        return drain(stage.fn(request), _SINK.get())  # type: ignore[arg-type]
    return _awaitable(stage, stage.fn(request))


def _awaitable(stage: Stage, result: Any) -> Awaitable[Any]:
    if type(result) is not CoroutineType and not is_awaitable(result):
        # A lambda (judged only by calling it) that returned a value: a bug in the caller,
        # never retried, never an optional stage's excusable failure.
        raise not_awaitable(f"stage {stage.name!r}", result)
    awaitable: Awaitable[Any] = result
    return awaitable


def _stage_operation(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"operation must be a non-empty str (e.g. 'llm') or None, got {value!r}")


@final
@attrs.frozen(init=False)
class Stage:
    """One step of a pipeline: the state a request is in while it runs, and its work.

    Example::

        Stage("gather", RequestState.CONTEXT_GATHERING, gather_context,
              timeout=2, pools=["context"], optional=True)
        Stage("answer", RequestState.PROCESSING, answer, pools=["llm"], operation="llm")

    ``timeout``, ``retry``, ``pools`` and ``optional`` mean what they mean for a workflow
    :class:`~trioflow.Step`: they are one :class:`~trioflow.WorkOptions` value, :attr:`options`.

    Args:
        name: Unique within its pipeline; names the stage in results, timings and logs.
        state: The :class:`~trioflow.lifecycle.RequestState` the request is in while the stage
            runs. The pipeline moves the request there first (unless it is already there, so
            several stages can share a state).
        fn: ``async fn(request) -> value``; the value is stored in ``request.results[name]``.
            An async generator function makes a streaming stage: each chunk it yields goes to
            the run's ``on_chunk`` as it is produced (see :meth:`Pipeline.run`), and its value
            is the list of every chunk. A streaming stage that is retried streams again.
        timeout: Seconds one attempt may take; past it the attempt fails with the builtin
            ``TimeoutError`` (and may be retried). Each retry gets a fresh timeout; waiting for
            pools is not counted. ``None`` or ``math.inf``: no limit. (Until trioflow 0.2 it
            bounded every attempt and wait together; bound a whole request with the run's or
            the coordinator's timeout.)
        pools: Named pools of the run's :class:`~trioflow.ResourceManager` to hold one token
            of each during every attempt.
        retry: The stage's own :class:`~trioflow.RetryPolicy`, or ``None`` for the run's policy
            for ``operation`` (a single try when there is none). A string here is the 0.1
            spelling of ``operation`` (deprecated).
        optional: If true, a failure (or timeout) of this stage is recorded and skipped, and
            the request goes on; it then ends DEGRADED rather than COMPLETED.
        operation: The kind of operation the stage performs (``"llm"``, ``"tool"``, ...): the
            run retries the stage with its retry policy of that name, unless the stage has a
            ``retry`` of its own.
        options: All of ``timeout``, ``retry``, ``pools`` and ``optional`` as one
            :class:`~trioflow.WorkOptions` (then give none of them separately).

    Raises:
        TypeError: A field has the wrong type, or ``options`` is given with separate options.
        ValueError: ``timeout`` is negative or NaN, or a pool is named twice.
    """

    name: str = attrs.field(validator=_stage_name)
    state: RequestState = attrs.field(validator=_stage_state)
    fn: StageFn = attrs.field(validator=_stage_fn)
    options: WorkOptions = attrs.field(kw_only=True)
    operation: str | None = attrs.field(kw_only=True, validator=_stage_operation)
    streaming: bool = attrs.field(kw_only=True, eq=False, repr=False)
    """Whether :attr:`fn` is an async generator function (a streaming stage)."""

    def __init__(
        self,
        name: str,
        state: RequestState,
        fn: StageFn,
        *,
        timeout: float | None = None,
        pools: Iterable[str] = (),
        retry: RetryPolicy | None = None,
        optional: bool = False,
        operation: str | None = None,
        options: WorkOptions | None = None,
    ) -> None:
        given: object = retry
        if isinstance(given, str):
            if operation is not None:
                raise TypeError(
                    f"stage {name!r}: give operation={operation!r} or the deprecated "
                    f"retry={given!r}, not both"
                )
            warn_renamed(f"Stage(retry={given!r})", f"Stage(operation={given!r})")
            operation, retry = given, None
        if options is None:
            options = WorkOptions.check(
                f"stage {name!r}", timeout=timeout, retry=retry, pools=pools, optional=optional
            )
        elif not isinstance(options, WorkOptions):
            raise TypeError(f"options must be a WorkOptions or None, got {options!r}")
        elif (timeout, retry, tuple(pools), optional) != (None, None, (), False):
            raise TypeError(
                f"stage {name!r}: give options= or timeout/retry/pools/optional, not both"
            )
        self.__attrs_init__(
            name, state, fn, options=options, operation=operation, streaming=is_streaming(fn)
        )

    @property
    def timeout(self) -> float | None:
        """Seconds one attempt may take (``None``: no limit); see :class:`WorkOptions`."""
        return self.options.timeout

    @property
    def retry(self) -> RetryPolicy | None:
        """The stage's own retry policy, or ``None`` for the run's policy for its operation."""
        return self.options.retry

    @property
    def pools(self) -> tuple[str, ...]:
        """The pools the stage holds one token of each during every attempt."""
        return self.options.pools

    @property
    def optional(self) -> bool:
        """Whether a failure is recorded and skipped (the request then ends DEGRADED)."""
        return self.options.optional


@attrs.frozen(kw_only=True)
class StageStatistics:
    """What one stage of a pipeline has done.

    Attributes:
        runs: Times the stage started.
        failed: Times it raised (timeouts included; cancellations are not failures).
        time: Total seconds spent in it.
        mean_time: ``time / runs`` (0.0 when it never ran).
    """

    runs: int
    failed: int
    time: float
    mean_time: float


@attrs.frozen(kw_only=True)
class PipelineStatistics:
    """A snapshot of a :class:`Pipeline`, returned by its ``statistics()``.

    Attributes:
        runs: Runs started.
        completed: Runs that completed with every stage succeeding.
        degraded: Runs that completed with optional stages skipped.
        failed: Runs that ended FAILED.
        cancelled: Runs that ended CANCELLED.
        stages: Per-stage statistics by stage name, in pipeline order.
    """

    runs: int
    completed: int
    degraded: int
    failed: int
    cancelled: int
    stages: Mapping[str, StageStatistics]


@final
class _StageCounters:
    __slots__ = ("failed", "runs", "time")

    def __init__(self) -> None:
        self.runs = 0
        self.failed = 0
        self.time = 0.0


async def _attempt(stage: Stage, request: Request) -> Any:
    timeout = stage.timeout
    if timeout is None:
        return await _call(stage, request)
    # A cancel scope rather than anyio.fail_after: the same, without a generator per attempt.
    with anyio.CancelScope(deadline=clock()() + timeout):
        return await _call(stage, request)
    # Only this scope's own deadline is caught here (outer cancellation propagates).
    raise TimeoutError(f"stage {stage.name!r} took longer than its timeout ({timeout} s)")


async def _once(stage: Stage, request: Request, resources: ResourceManager | None) -> Any:
    if stage.pools:
        assert resources is not None
        async with resources.slot(*stage.pools, priority=request.priority):
            return await _attempt(stage, request)
    return await _attempt(stage, request)


async def _run_stage(
    stage: Stage, request: Request, resources: ResourceManager | None, policy: RetryPolicy | None
) -> Any:
    if policy is None:
        return await _once(stage, request, resources)
    return await policy.call(_once, stage, request, resources)


async def _traced_stage(
    telemetry: Instrumentation,
    stage: Stage,
    request: Request,
    resources: ResourceManager | None,
    policy: RetryPolicy | None,
) -> Any:
    # A stage in a span of its own (trioflow.telemetry.enable), retry events included.
    attributes = {"trioflow.stage.name": stage.name, "trioflow.stage.state": stage.state.value}
    with telemetry.span("trioflow.stage", attributes):
        return await _run_stage(stage, request, resources, policy)


@final
@attrs.define(eq=False, init=False, repr=False)
class Pipeline:
    """Moves a request through its stages and ends it in exactly one terminal state.

    Example::

        pipeline = Pipeline([
            Stage("validate", RequestState.VALIDATED, validate),
            Stage("plan", RequestState.PLANNED, plan),
            Stage("context", RequestState.CONTEXT_GATHERING, gather, optional=True),
            Stage("answer", RequestState.PROCESSING, answer, pools=["llm"], operation="llm"),
            Stage("format", RequestState.RESPONSE_FORMATTING, format_response),
        ])
        result = await pipeline.run(Request("what is trio?"))

    The stages' states must form a path the machine allows, from its initial state to
    COMPLETED, and FAILED and CANCELLED must be reachable from each of them (checked here, and
    for any other machine a run is given).

    Args:
        stages: The stages, in order; names must be unique.
        machine: The :class:`~trioflow.lifecycle.StateMachine` over
            :class:`~trioflow.lifecycle.RequestState` that moves requests (register hooks on
            it); by default a new one over
            :data:`~trioflow.lifecycle.REQUEST_TRANSITIONS`. A coordinator moves the requests
            it processes with its own machine (:attr:`Coordinator.machine
            <trioflow.lifecycle.Coordinator.machine>`), which is this one when every pipeline
            of its router shares it.

    Raises:
        TypeError: ``stages`` holds something that is not a Stage, or ``machine`` is not a
            StateMachine.
        ValueError: No stages, a duplicate name, or a path the machine does not allow.
    """

    _stages: tuple[Stage, ...]
    _machine: StateMachine[RequestState]
    _route: Route[RequestState]
    _other_route: Route[RequestState] | None
    _counters: dict[str, _StageCounters]
    _runs: int
    _completed: int
    _degraded: int
    _failed: int
    _cancelled: int
    _scopes: dict[int, OwnScope]
    _cancel_requested: set[int]
    _checked: tuple[object, object, object] | None
    _retries: bool
    _plan: tuple[tuple[int, Stage, _StageCounters, StageFn | None, str, RequestState], ...]

    def __init__(
        self, stages: Sequence[Stage], *, machine: StateMachine[RequestState] | None = None
    ) -> None:
        given: object = stages
        if isinstance(given, str) or not isinstance(given, Sequence | Collection):
            raise TypeError(f"stages must be a sequence of Stage, got {stages!r}")
        stages = tuple(given)
        if not stages:
            raise ValueError("stages must hold at least one Stage, got none")
        for stage in stages:
            if not isinstance(stage, Stage):
                raise TypeError(f"stages must hold only Stage values, got {stage!r}")
        names = [stage.name for stage in stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stage names must be unique, got duplicates {duplicates}")
        if machine is None:
            machine = StateMachine(REQUEST_TRANSITIONS, RequestState.RECEIVED)
        elif not isinstance(machine, StateMachine):
            raise TypeError(f"machine must be a StateMachine, got {machine!r}")
        self._stages = stages
        self._machine = machine
        self._route = self._route_of(machine)
        self._other_route = None
        self._counters = {stage.name: _StageCounters() for stage in stages}
        self._runs = self._completed = self._degraded = self._failed = self._cancelled = 0
        self._scopes: dict[int, OwnScope] = {}
        self._cancel_requested: set[int] = set()
        self._checked = None
        self._retries = any(s.retry is not None or s.operation is not None for s in stages)
        # Per stage, looked up once: its index, its counters, its function when a run only
        # calls it (no pools, retry, timeout or streaming), its name and its state.
        self._plan = tuple(
            (
                index,
                s,
                self._counters[s.name],
                None
                if s.pools
                or s.retry is not None
                or s.operation is not None
                or s.timeout is not None
                or s.streaming
                else s.fn,
                s.name,
                s.state,
            )
            for index, s in enumerate(stages)
        )

    def _route_of(self, machine: StateMachine[RequestState]) -> Route[RequestState]:
        """Check the stages' path on ``machine``; return it as a route (index: stage, then end)."""
        self._check_path(machine)
        steps: list[tuple[RequestState, RequestState] | None] = []
        previous = machine.initial
        for stage in self._stages:
            steps.append(None if stage.state is previous else (previous, stage.state))
            previous = stage.state
        steps.append((previous, _COMPLETED))
        return Route(machine, steps)

    def _check_path(self, machine: StateMachine[RequestState]) -> None:
        previous = machine.initial
        for state in (previous, *(stage.state for stage in self._stages)):
            for end in (_FAILED, _CANCELLED):
                if not machine.can_transition(state, end):
                    raise ValueError(f"the machine must allow {state!r} -> {end!r}")
        for stage in self._stages:
            if stage.state is not previous and not machine.can_transition(previous, stage.state):
                allowed = sorted(s.name for s in machine.allowed(previous))
                raise ValueError(
                    f"stage {stage.name!r} enters {stage.state!r}, but {previous!r} can only "
                    f"move to {allowed}"
                )
            previous = stage.state
        if not machine.can_transition(previous, _COMPLETED):
            raise ValueError(
                f"the last stage's state {previous!r} must be able to move to {_COMPLETED!r}"
            )

    def __repr__(self) -> str:
        return f"Pipeline([{', '.join(s.name for s in self._stages)}])"

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stages, in order."""
        return self._stages

    @property
    def machine(self) -> StateMachine[RequestState]:
        """The state machine that moves requests (register hooks on it)."""
        return self._machine

    def _route_of_run(self, machine: object) -> Route[RequestState]:
        if machine is None or machine is self._machine:
            return self._route
        other = self._other_route
        if other is not None and machine is other.machine:  # a coordinator's: the same one
            return other
        if not isinstance(machine, StateMachine):
            raise TypeError(f"machine must be a StateMachine or None, got {machine!r}")
        route = self._other_route = self._route_of(machine)
        return route

    def _check_run(
        self,
        resources: ResourceManager | None,
        retry: RetrySource | None,
        optional: Collection[str],
    ) -> None:
        """Check a run's options against the stages (``run`` skips objects checked last)."""
        if resources is not None and not isinstance(resources, ResourceManager):
            raise TypeError(f"resources must be a ResourceManager or None, got {resources!r}")
        if not (retry is None or isinstance(retry, Mapping | RetryPolicies) or callable(retry)):
            raise TypeError(
                "retry must be a mapping of name to RetryPolicy, a RetryPolicies or a "
                f"function (name, request) -> RetryPolicy, got {retry!r}"
            )
        if isinstance(optional, str) or not isinstance(optional, Collection):
            raise TypeError(f"optional must be a collection of stage names, got {optional!r}")
        for stage in self._stages:
            if stage.pools:
                if resources is None:
                    raise ValueError(
                        f"stage {stage.name!r} uses pools {list(stage.pools)} but no resources "
                        "were given"
                    )
                unknown = [p for p in stage.pools if p not in resources.pools]
                if unknown:
                    raise ValueError(
                        f"stage {stage.name!r} uses unknown pools {unknown}; the resources have "
                        f"{list(resources.pools)}"
                    )
            operation = stage.operation
            if operation is None or stage.retry is not None:
                continue
            if retry is None:
                raise ValueError(
                    f"stage {stage.name!r} names retry policy {operation!r} (its operation), "
                    "but the run was given no retry policies"
                )
            if isinstance(retry, Mapping):
                if operation not in retry:
                    raise ValueError(
                        f"stage {stage.name!r} names retry policy {operation!r} (its "
                        f"operation), which the run was not given (known: {sorted(retry)})"
                    )
                if not isinstance(retry[operation], RetryPolicy):
                    got = retry[operation]
                    raise TypeError(f"retry[{operation!r}] must be a RetryPolicy, got {got!r}")
        self._checked = (resources, retry, optional)

    def _policies(
        self, request: Request, retry: RetrySource | None
    ) -> tuple[RetryPolicy | None, ...]:
        """Resolve each stage's retry policy for this request (unless no stage retries)."""
        policies: list[RetryPolicy | None] = []
        for stage in self._stages:
            name = stage.operation
            if stage.retry is not None or name is None:
                policies.append(stage.retry)
                continue
            try:
                if isinstance(retry, Mapping):
                    policy = retry[name]
                elif isinstance(retry, RetryPolicies):
                    policy = retry.get(name, priority=request.priority)
                else:
                    assert retry is not None
                    policy = retry(name, request)
            except (KeyError, LookupError) as exc:
                raise ValueError(
                    f"stage {stage.name!r} names retry policy {name!r}, which the run cannot "
                    f"resolve: {exc}"
                ) from None
            if not isinstance(policy, RetryPolicy):
                raise TypeError(f"retry policy {name!r} must be a RetryPolicy, got {policy!r}")
            policies.append(policy)
        return tuple(policies)

    async def run(
        self,
        request: Request,
        *,
        resources: ResourceManager | None = None,
        retry: RetrySource | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - sugar for a cancel scope
        optional: Collection[str] = (),
        on_transition: TransitionObserver | None = None,
        machine: StateMachine[RequestState] | None = None,
        on_chunk: ChunkSink | None = None,
        logger: Any = None,
    ) -> ProcessingResult:
        """Run the request through every stage and end it in one terminal state.

        A stage failure ends the request FAILED (unless the stage is optional); the failure is
        in the result, not raised. :meth:`cancel` ends it CANCELLED, also a result. Cancellation
        from outside (a cancel scope around the call) ends it CANCELLED, shielded, and then
        propagates.

        Args:
            request: A request in a state that is not terminal.
            resources: The pools that stages name.
            retry: The retry policies of the stages' operations: a mapping of operation to
                :class:`~trioflow.RetryPolicy`, a :class:`~trioflow.RetryPolicies` (adapted to
                the request's ``priority``), or a function ``(operation, request) ->
                RetryPolicy``. Resolved for every stage before the first one runs.
                ``resources``, ``retry`` and ``optional`` are checked against the stages once
                per distinct objects: a server passing the same objects to every run pays for
                the check once.
            timeout: Seconds the whole run may take; past it the request fails with the
                builtin ``TimeoutError`` (category TIMEOUT). ``None``: no limit.
            optional: Names of stages to treat as optional in this run.
            on_transition: ``fn(request, change)``, called after every transition (the
                final one included), e.g. to log it.
            machine: The state machine that moves the request in this run, its every
                transition included (the final one too); :attr:`machine` by default. Its
                table must allow the stages' path.
            on_chunk: ``async on_chunk(chunk)``, awaited with each chunk of a streaming stage
                as it is produced (a slow one holds the stage back); ``None``: the chunks are
                only collected into the stage's value.
            logger: Where to write a ``request started`` event (``request_id``, ``stages``)
                and a ``request completed`` one (``request_id``, ``status``, ``state``,
                ``category``, the ``degraded`` stages, ``duration``); or ``request cancelled``
                / ``request aborted`` (``error_type``) when the call raises. A stdlib
                :class:`logging.Logger` or any structlog logger, at info level (asked once
                per run). None (the default) writes nothing.

        Returns:
            A :class:`~trioflow.lifecycle.ProcessingResult`: SUCCEEDED, DEGRADED, FAILED, or
            CANCELLED after :meth:`cancel`.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: The request is already in a terminal state, the machine does not allow
                the stages' path, or a stage names a pool or retry policy the run was not given
                (nothing ran).
            Exception: A hook of the machine failed during the final FAILED or CANCELLED
                transition: the request was put in that state without hooks, and the hook's
                exception is raised (never lost).
        """
        if not isinstance(request, Request):
            raise TypeError(f"request must be a Request, got {request!r}")
        # The pipeline's own machine, or a coordinator's that it shares: its route, at once.
        mine = machine is None or machine is self._machine
        route = self._route if mine else self._route_of_run(machine)
        moving = route.machine
        if request.state in route.terminal:
            raise ValueError(
                f"request {request.id!r} is already in the terminal state {request.state!r}"
            )
        if timeout is not None and not (type(timeout) is float and 0.0 <= timeout < math.inf):
            timeout = check_timeout(timeout)  # the usual float (a coordinator's) passes at once
        if on_chunk is not None and not callable(on_chunk):
            raise TypeError(f"on_chunk must be an async callable or None, got {on_chunk!r}")
        key = id(request)
        if key in self._scopes:
            raise ValueError(f"request {request.id!r} is already being run by this pipeline")
        checked = self._checked  # the run options as last checked (see _check_run)
        if (
            checked is None
            or checked[0] is not resources
            or checked[1] is not retry
            or checked[2] is not optional
        ):
            self._check_run(resources, retry, optional)
        log = None if logger is None else open_log(check_logger(logger))
        if log is not None:
            # The same run, without a logger, between its two events.
            run = functools.partial(
                self.run, request, resources=resources, retry=retry, timeout=timeout,
                optional=optional, on_transition=on_transition, machine=machine,
                on_chunk=on_chunk,
            )  # fmt: skip
            return await _run_logged(run, log, request.id, len(self._stages))
        policies = self._policies(request, retry) if self._retries else None
        self._runs += 1
        scope_of, now_fn = scope_and_clock()  # the running loop's, asked once
        started = now = now_fn()
        # One cancel scope per run serves both the run's timeout and cancel(request).
        scope = scope_of(deadline=math.inf if timeout is None else started + timeout)
        self._scopes[key] = scope
        degraded: dict[str, BaseException] = {}
        # The sink of the chunks, set only when it changes (a run with no on_chunk, the usual
        # case, outside any run with one).
        sink = None if on_chunk is None and _SINK.get() is None else _SINK.set(on_chunk)
        timings = request.timings
        results = request.results
        value: Any = None
        telemetry = hooks.current  # a span per stage while it is on
        try:
            try:
                with scope:
                    # Every stage in its state; a failure of a stage that is not optional
                    # propagates, optional ones go to ``degraded``.
                    for index, stage, counter, fn, name, state in self._plan:
                        if request.state is not state:
                            # Without hooks the transition needs no await, and happens at the
                            # time the previous stage ended (bench/lifecycle.py shows what it
                            # saves).
                            try:
                                change = route.move(request, index, state, now)
                            except anyio.WouldBlock:
                                change = await moving.transition(request, state)
                                now = now_fn()
                            if on_transition is not None:
                                on_transition(request, change)
                        counter.runs += 1
                        begun = now
                        try:
                            if fn is not None and telemetry is None:
                                result = fn(request)
                                value = await (
                                    result
                                    if type(result) is CoroutineType
                                    else _awaitable(stage, result)
                                )
                            else:
                                policy = None if policies is None else policies[index]
                                if telemetry is None:
                                    value = await _run_stage(stage, request, resources, policy)
                                else:
                                    value = await _traced_stage(
                                        telemetry, stage, request, resources, policy
                                    )
                        except Exception as exc:
                            counter.failed += 1
                            if not (stage.optional or name in optional) or isinstance(
                                exc, NotAwaitableError
                            ):
                                raise
                            degraded[name] = exc
                            value = None
                        else:
                            results[name] = value
                        finally:
                            now = now_fn()
                            elapsed = now - begun
                            counter.time += elapsed
                            timings[name] = elapsed
                if key in self._cancel_requested:
                    # cancel() was called: the run ends CANCELLED even if no checkpoint noticed.
                    return await self._end_cancelled(request, moving, on_transition, started)
                if scope.cancelled_caught:
                    raise TimeoutError(
                        f"request {request.id!r} took longer than its timeout ({timeout} s)"
                    )
                # As in the stage loop.
                try:
                    change = route.move(request, len(self._plan), _COMPLETED, now)
                except anyio.WouldBlock:
                    change = await moving.transition(request, _COMPLETED)
                    now = now_fn()
                if on_transition is not None:
                    on_transition(request, change)
            except BaseException as exc:
                return await self._end_failed(
                    request, moving, exc, on_transition, started, degraded
                )
        finally:
            if sink is not None:
                _SINK.reset(sink)
            del self._scopes[key]
            if self._cancel_requested:
                self._cancel_requested.discard(key)
        if degraded:
            self._degraded += 1
            status = _DEGRADED
        else:
            self._completed += 1
            status = _SUCCEEDED
        return make_result(request, status, now - started, value=value, degraded=degraded)

    async def _end_cancelled(
        self,
        request: Request,
        machine: StateMachine[RequestState],
        on_transition: TransitionObserver | None,
        started: float,
    ) -> ProcessingResult:
        with anyio.CancelScope(shield=True):
            self._cancelled += 1
            await self._finish(request, machine, _CANCELLED, on_transition)
        return make_result(request, ProcessingStatus.CANCELLED, clock()() - started)

    async def _end_failed(
        self,
        request: Request,
        machine: StateMachine[RequestState],
        exc: BaseException,
        on_transition: TransitionObserver | None,
        started: float,
        degraded: Mapping[str, BaseException],
    ) -> ProcessingResult:
        """End the request after ``exc``: FAILED for an exception, else CANCELLED and re-raise."""
        if machine.is_terminal(request.state):
            # The request has ended; a hook or observer of that last transition failed.
            raise exc
        failed = isinstance(exc, Exception)
        with anyio.CancelScope(shield=True):
            if failed:
                self._failed += 1
                await self._finish(request, machine, _FAILED, on_transition)
            else:  # cancelled from outside: end CANCELLED, then let it propagate
                self._cancelled += 1
                await self._finish(request, machine, _CANCELLED, on_transition)
        if not failed:
            raise exc
        return make_result(
            request, ProcessingStatus.FAILED, clock()() - started, error=exc, degraded=degraded
        )

    def cancel(self, request: Request) -> bool:
        """Cancel a run of this pipeline; that ``run()`` returns a CANCELLED result.

        The request ends CANCELLED (the transition runs shielded); unlike cancellation from
        outside, the cancellation does not propagate out of ``run()``, which returns.

        Args:
            request: The request being run.

        Returns:
            Whether the request was being run by this pipeline.
        """
        scope = self._scopes.get(id(request))
        if scope is None:
            return False
        self._cancel_requested.add(id(request))
        scope.cancel()
        return True

    @staticmethod
    async def _finish(
        request: Request,
        machine: StateMachine[RequestState],
        state: RequestState,
        on_transition: TransitionObserver | None,
    ) -> None:
        """Put the request in a terminal state, without hooks if a hook fails (then raise it)."""
        try:
            change = await machine.transition(request, state)
        except InvalidTransitionError:
            raise
        except BaseException:
            change = await machine.transition(request, state, hooks=False)
            if on_transition is not None:
                on_transition(request, change)
            raise
        if on_transition is not None:
            on_transition(request, change)

    def statistics(self) -> PipelineStatistics:
        """Return a snapshot of the runs and of each stage.

        Returns:
            A frozen :class:`PipelineStatistics`.
        """
        stages = {
            name: StageStatistics(
                runs=c.runs,
                failed=c.failed,
                time=c.time,
                mean_time=c.time / c.runs if c.runs else 0.0,
            )
            for name, c in self._counters.items()
        }
        return PipelineStatistics(
            runs=self._runs,
            completed=self._completed,
            degraded=self._degraded,
            failed=self._failed,
            cancelled=self._cancelled,
            stages=MappingProxyType(stages),
        )


async def _run_logged(
    run: Callable[[], Awaitable[ProcessingResult]], log: EngineLog, request_id: str, stages: int
) -> ProcessingResult:
    """Call ``run()`` between its ``request started`` and ``request completed`` events."""
    log.info("request started", request_id=request_id, stages=stages)
    started = anyio.current_time()
    try:
        result = await run()
    except BaseException as exc:
        cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
        log.info(
            "request cancelled" if cancelled else "request aborted",
            request_id=request_id,
            error_type=type(exc).__qualname__,
            duration=anyio.current_time() - started,
        )
        raise
    log.info(
        "request completed",
        request_id=request_id,
        status=result.status.value,
        state=result.state.value,
        category=None if result.category is None else result.category.value,
        degraded=list(result.degraded),
        duration=result.duration,
    )
    return result
