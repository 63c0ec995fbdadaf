"""Processing pipelines: stages that move a request through its lifecycle, one state at a time.

A :class:`Pipeline` is a sequence of :class:`Stage` values. Running it on a request enters each
stage's state through a :class:`~trioflow.lifecycle.StateMachine`, runs the stage's async
function (under its timeout, its resource pools and its retry policy), records how long it
took, and ends the request in exactly one terminal state: COMPLETED, FAILED at the first
failure, or CANCELLED when the run is cancelled (that last transition runs shielded, then the
cancellation goes on).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar, final

import anyio
import attrs

from .._backend import current_clock as clock
from .._checks import check_bool, check_name, check_timeout, no_deadline, validator
from .._errors import InvalidTransitionError
from .._limits import ResourceManager
from .._resilience._policies import RetryPolicies
from .._retry import RetryPolicy
from ._machine import StateChange, StateMachine
from ._request import (
    REQUEST_TRANSITIONS,
    ProcessingResult,
    ProcessingStatus,
    Request,
    RequestState,
    make_result,
)

__all__ = ("Pipeline", "PipelineStatistics", "Stage", "StageStatistics")

T = TypeVar("T")
StageFn = Callable[[Request], Awaitable[Any]]
TransitionObserver = Callable[[Request, StateChange[RequestState]], object]
RetrySource = Mapping[str, RetryPolicy] | RetryPolicies | Callable[[str, Request], RetryPolicy]

_COMPLETED = RequestState.COMPLETED
_FAILED = RequestState.FAILED
_CANCELLED = RequestState.CANCELLED


_stage_name = validator(check_name)


def _stage_state(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, RequestState):
        raise TypeError(f"state must be a RequestState, got {value!r}")


def _stage_fn(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not callable(value):
        raise TypeError(f"fn must be an async callable taking the request, got {value!r}")


_stage_timeout = validator(check_timeout)


def _to_pools(value: object) -> object:
    if isinstance(value, str):
        raise TypeError(f"pools must be a sequence of pool names, got the string {value!r}")
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(value)
    return value


def _stage_pools(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(p, str) and p for p in value):
        raise TypeError(f"pools must be a sequence of pool names, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"pools must not name a pool twice, got {value!r}")


def _stage_retry(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None or isinstance(value, RetryPolicy) or (isinstance(value, str) and value):
        return
    raise TypeError(
        f"retry must be a RetryPolicy, the name of a policy (e.g. 'llm') or None, got {value!r}"
    )


_stage_optional = validator(check_bool)


@final
@attrs.frozen
class Stage:
    """One step of a pipeline: the state a request is in while it runs, and its work.

    Example::

        Stage("gather", RequestState.CONTEXT_GATHERING, gather_context,
              timeout=2, pools=["context"], optional=True)

    Args:
        name: Unique within its pipeline; names the stage in results, timings and logs.
        state: The :class:`~trioflow.lifecycle.RequestState` the request is in while the stage
            runs. The pipeline moves the request there first (unless it is already there, so
            several stages can share a state).
        fn: ``async fn(request) -> value``; the value is stored in ``request.results[name]``.
        timeout: Seconds the stage may take, retries and waits for pools included; past it
            the stage fails with the builtin ``TimeoutError``. ``None`` (or ``math.inf``): no
            limit.
        pools: Named pools of the run's :class:`~trioflow.ResourceManager` to hold one token
            of each during every attempt.
        retry: A :class:`~trioflow.RetryPolicy`, or the name of one the run is given (e.g.
            ``"llm"``), or ``None`` for a single try.
        optional: If true, a failure (or timeout) of this stage is recorded and skipped, and
            the request goes on; it then ends DEGRADED rather than COMPLETED.

    Raises:
        TypeError: A field has the wrong type.
        ValueError: ``timeout`` is negative or NaN, or a pool is named twice.
    """

    name: str = attrs.field(validator=_stage_name)
    state: RequestState = attrs.field(validator=_stage_state)
    fn: StageFn = attrs.field(validator=_stage_fn)
    timeout: float | None = attrs.field(
        default=None, kw_only=True, converter=no_deadline, validator=_stage_timeout
    )
    pools: tuple[str, ...] = attrs.field(
        default=(), kw_only=True, converter=_to_pools, validator=_stage_pools
    )
    retry: RetryPolicy | str | None = attrs.field(
        default=None, kw_only=True, validator=_stage_retry
    )
    optional: bool = attrs.field(default=False, kw_only=True, validator=_stage_optional)


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


async def _once(stage: Stage, request: Request, resources: ResourceManager | None) -> Any:
    if stage.pools:
        assert resources is not None
        async with resources.slot(*stage.pools):
            return await stage.fn(request)
    return await stage.fn(request)


async def _attempts(
    stage: Stage, request: Request, resources: ResourceManager | None, policy: RetryPolicy | None
) -> Any:
    if policy is None:
        return await _once(stage, request, resources)
    return await policy.call(_once, stage, request, resources)


async def _run_stage(
    stage: Stage,
    request: Request,
    resources: ResourceManager | None,
    policy: RetryPolicy | None,
    begun: float,
) -> Any:
    if stage.timeout is None:
        return await _attempts(stage, request, resources, policy)
    # A cancel scope rather than anyio.fail_after: the same, without a generator per stage.
    with anyio.CancelScope(deadline=begun + stage.timeout):
        return await _attempts(stage, request, resources, policy)
    # Only this scope's own deadline is caught here (outer cancellation propagates).
    raise TimeoutError(f"stage {stage.name!r} took longer than its timeout ({stage.timeout} s)")


@final
@attrs.define(eq=False, init=False, repr=False)
class Pipeline:
    """Moves a request through its stages and ends it in exactly one terminal state.

    Example::

        pipeline = Pipeline([
            Stage("validate", RequestState.VALIDATED, validate),
            Stage("plan", RequestState.PLANNED, plan),
            Stage("context", RequestState.CONTEXT_GATHERING, gather, optional=True),
            Stage("answer", RequestState.PROCESSING, answer, pools=["llm"], retry="llm"),
            Stage("format", RequestState.RESPONSE_FORMATTING, format_response),
        ])
        result = await pipeline.run(Request("what is trio?"))

    The stages' states must form a path the machine allows, from its initial state to
    COMPLETED, and FAILED and CANCELLED must be reachable from each of them (checked here).

    Args:
        stages: The stages, in order; names must be unique.
        machine: The :class:`~trioflow.lifecycle.StateMachine` over
            :class:`~trioflow.lifecycle.RequestState` that moves requests (register hooks on
            it); by default a new one over
            :data:`~trioflow.lifecycle.REQUEST_TRANSITIONS`.

    Raises:
        TypeError: ``stages`` holds something that is not a Stage, or ``machine`` is not a
            StateMachine.
        ValueError: No stages, a duplicate name, or a path the machine does not allow.
    """

    _stages: tuple[Stage, ...]
    _machine: StateMachine[RequestState]
    _counters: dict[str, _StageCounters]
    _runs: int
    _completed: int
    _degraded: int
    _failed: int
    _cancelled: int
    _checked: tuple[object, object, object] | None
    _scopes: dict[int, anyio.CancelScope]
    _cancel_requested: set[int]
    _retries: bool
    _simple: tuple[bool, ...]

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
        self._check_path()
        self._counters = {stage.name: _StageCounters() for stage in stages}
        self._runs = self._completed = self._degraded = self._failed = self._cancelled = 0
        self._checked = None
        self._scopes: dict[int, anyio.CancelScope] = {}
        self._cancel_requested: set[int] = set()
        self._retries = any(stage.retry is not None for stage in stages)
        self._simple = tuple(
            not (stage.pools or stage.retry is not None or stage.timeout is not None)
            for stage in stages
        )

    def _check_path(self) -> None:
        machine = self._machine
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

    def _check_run(
        self,
        resources: ResourceManager | None,
        retry: RetrySource | None,
        optional: Collection[str],
    ) -> None:
        if self._checked is not None:
            r, p, o = self._checked
            if r is resources and p is retry and o is optional:
                return
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
            if isinstance(stage.retry, str) and retry is None:
                raise ValueError(
                    f"stage {stage.name!r} names retry policy {stage.retry!r}, but the run was "
                    "given no retry policies"
                )
            if isinstance(stage.retry, str) and isinstance(retry, Mapping):
                if stage.retry not in retry:
                    raise ValueError(
                        f"stage {stage.name!r} names retry policy {stage.retry!r}, which the "
                        f"run was not given (known: {sorted(retry)})"
                    )
                if not isinstance(retry[stage.retry], RetryPolicy):
                    got = retry[stage.retry]
                    raise TypeError(f"retry[{stage.retry!r}] must be a RetryPolicy, got {got!r}")
        self._checked = (resources, retry, optional)

    def _policies(
        self, request: Request, retry: RetrySource | None
    ) -> tuple[RetryPolicy | None, ...] | None:
        """Resolve each stage's retry policy for this request (None: no stage retries)."""
        if not self._retries:
            return None
        policies: list[RetryPolicy | None] = []
        for stage in self._stages:
            name = stage.retry
            if not isinstance(name, str):
                policies.append(name)
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
    ) -> ProcessingResult:
        """Run the request through every stage and end it in one terminal state.

        A stage failure ends the request FAILED (unless the stage is optional); the failure is
        in the result, not raised. :meth:`cancel` ends it CANCELLED, also a result. Cancellation
        from outside (a cancel scope around the call) ends it CANCELLED, shielded, and then
        propagates.

        Args:
            request: A request in a state that is not terminal.
            resources: The pools that stages name.
            retry: The retry policies that stages name: a mapping of name to
                :class:`~trioflow.RetryPolicy`, a :class:`~trioflow.RetryPolicies` (adapted to
                the request's ``priority``), or a function ``(name, request) -> RetryPolicy``.
                Resolved for every stage before the first one runs.
            timeout: Seconds the whole run may take; past it the request fails with the
                builtin ``TimeoutError`` (category TIMEOUT). ``None``: no limit.
            optional: Names of stages to treat as optional in this run.
            on_transition: ``fn(request, change)``, called after every transition (the
                final one included), e.g. to log it.

        Returns:
            A :class:`~trioflow.lifecycle.ProcessingResult`: COMPLETED, DEGRADED, FAILED, or
            CANCELLED            after :meth:`cancel`.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: The request is already in a terminal state, or a stage names a pool or
                retry policy the run was not given (nothing ran).
            Exception: A hook of the machine failed during the final FAILED or CANCELLED
                transition: the request was put in that state without hooks, and the hook's
                exception is raised (never lost).
        """
        if not isinstance(request, Request):
            raise TypeError(f"request must be a Request, got {request!r}")
        machine = self._machine
        if machine.is_terminal(request.state):
            raise ValueError(
                f"request {request.id!r} is already in the terminal state {request.state!r}"
            )
        timeout = check_timeout(timeout)
        if id(request) in self._scopes:
            raise ValueError(f"request {request.id!r} is already being run by this pipeline")
        self._check_run(resources, retry, optional)
        policies = self._policies(request, retry)
        self._runs += 1
        now_fn = clock()
        started = now = now_fn()
        timings = request.timings
        results = request.results
        degraded: dict[str, BaseException] = {}
        value: Any = None
        counters = self._counters
        simple = self._simple
        # One cancel scope per run serves both the run's timeout and cancel(request).
        scope = anyio.CancelScope(deadline=math.inf if timeout is None else started + timeout)
        key = id(request)
        self._scopes[key] = scope
        try:
            with scope:
                for index, stage in enumerate(self._stages):
                    if request.state is not stage.state:
                        # Without hooks the transition needs no await: apply it at the time
                        # the previous stage ended.
                        change = machine._apply(request, stage.state, now)
                        if change is None:
                            change = await machine.transition(request, stage.state)
                            now = now_fn()
                        if on_transition is not None:
                            on_transition(request, change)
                    counter = counters[stage.name]
                    counter.runs += 1
                    begun = now
                    try:
                        if simple[index]:
                            value = await stage.fn(request)
                        else:
                            policy = None if policies is None else policies[index]
                            value = await _run_stage(stage, request, resources, policy, begun)
                    except Exception as exc:
                        counter.failed += 1
                        if not (stage.optional or stage.name in optional):
                            raise
                        degraded[stage.name] = exc
                        value = None
                    else:
                        results[stage.name] = value
                    finally:
                        now = now_fn()
                        elapsed = now - begun
                        counter.time += elapsed
                        timings[stage.name] = elapsed
            if key in self._cancel_requested:
                # cancel() was called: the run ends CANCELLED even if no checkpoint noticed.
                with anyio.CancelScope(shield=True):
                    self._cancelled += 1
                    await self._finish(request, _CANCELLED, on_transition)
                return make_result(request, ProcessingStatus.CANCELLED, now_fn() - started)
            if scope.cancelled_caught:
                raise TimeoutError(
                    f"request {request.id!r} took longer than its timeout ({timeout} s)"
                )
            change = machine._apply(request, _COMPLETED, now)
            if change is None:
                change = await machine.transition(request, _COMPLETED)
                now = now_fn()
            if on_transition is not None:
                on_transition(request, change)
        except BaseException as exc:
            if machine.is_terminal(request.state):
                # The request has ended; a hook or observer of that last transition failed.
                raise
            failed = isinstance(exc, Exception)
            with anyio.CancelScope(shield=True):
                if failed:
                    self._failed += 1
                    await self._finish(request, _FAILED, on_transition)
                else:  # cancelled from outside: end CANCELLED, then let it propagate
                    self._cancelled += 1
                    await self._finish(request, _CANCELLED, on_transition)
            if not failed:
                raise
            return make_result(
                request, ProcessingStatus.FAILED, now_fn() - started, error=exc, degraded=degraded
            )
        finally:
            del self._scopes[key]
            self._cancel_requested.discard(key)
        if degraded:
            self._degraded += 1
            return make_result(
                request, ProcessingStatus.DEGRADED, now - started, value=value, degraded=degraded
            )
        self._completed += 1
        return make_result(request, ProcessingStatus.SUCCEEDED, now - started, value=value)

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

    async def _finish(
        self, request: Request, state: RequestState, on_transition: TransitionObserver | None
    ) -> None:
        """Put the request in a terminal state, without hooks if a hook fails (then raise it)."""
        machine = self._machine
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
