"""Workflows: a graph of named async steps, validated before anything runs.

A :class:`Workflow` holds :class:`Step` definitions: an async function of a :class:`Context`, the
steps it comes after, a condition, a compensation, exclusivity, and the options every unit of
work takes (:class:`~trioflow.WorkOptions`: timeout, retry, pools, optional).
:meth:`Workflow.validate` checks the graph as a whole (unknown dependencies, cycles) and
compiles it into the index arrays a run walks; options are checked at once by
:meth:`Workflow.step`. Running is ``trioflow.run_workflow`` (``_run``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from inspect import CO_COROUTINE
from types import FunctionType, MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, final, overload

import attrs

from .._checks import check_bool, check_name, describe
from .._deprecate import warn_renamed
from .._errors import WorkflowDefinitionError
from .._options import WorkOptions
from .._retry import RetryPolicy
from ._step_status import StepStatus

if TYPE_CHECKING:
    from ._context import Context

__all__ = ("Step", "StepFunction", "StepStatus", "Workflow")

StepFunction = Callable[["Context"], Awaitable[Any]]
"""The shape of a step: ``async def fn(ctx: Context) -> value``."""

Condition = Callable[["Context"], "bool | Awaitable[bool]"]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def is_async_callable(fn: object) -> bool:
    """Return whether calling ``fn`` returns a coroutine (functions, partials, ``__call__``)."""
    if type(fn) is FunctionType and fn.__code__.co_flags & CO_COROUTINE:
        return True  # the common case, without inspect's unwrapping
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the class's, not the instance's
    return not inspect.isfunction(fn) and call is not None and inspect.iscoroutinefunction(call)


def _describe(value: object) -> str:
    return describe(value)


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty string, got {_describe(value)}")
    return value


def _names(value: object, step: str) -> tuple[str, ...]:
    if type(value) is tuple or type(value) is list:
        names = tuple(value)
    elif isinstance(value, str):
        names = (value,)
    elif isinstance(value, Iterable):
        names = tuple(value)
    else:
        raise TypeError(
            f"after of step {step!r} must be a step name or a sequence of names, "
            f"got {_describe(value)}"
        )
    for item in names:
        if type(item) is not str or not item:
            _check_name(item, f"each name in after of step {step!r}")
    if len(set(names)) != len(names):
        # Repeated names add nothing: keep the first of each, in order.
        names = tuple(dict.fromkeys(names))
    return names


def _check_bool(value: object, what: str, step: str) -> bool:
    return check_bool(value, f"{what} of step {step!r}")


@final
@attrs.frozen(kw_only=True)
class Step:
    """One step of a :class:`Workflow`, as :meth:`Workflow.step` defined it.

    Attributes:
        name: The step's name, unique in its workflow.
        fn: ``async def fn(ctx) -> value``; the value goes to ``ctx.results[name]``.
        after: Names of the steps this one starts after.
        when: ``when(ctx) -> bool`` (sync or async), asked when the step could start; False
            skips the step (SKIPPED, which counts as done for the steps after it).
        compensate: ``async def compensate(ctx)``, run when the run fails after this step
            succeeded, to undo its effect.
        exclusive: Whether the step runs with no other step of its run in flight.
        options: Its timeout, retry, pools and optional flag, as one value; read them through
            the attributes below.
        fingerprint: A digest of the step's definition given by its author (e.g. of a
            command, its environment and working directory), or None; stored with the step's
            record, so that a resume reruns a done step whose definition changed.
    """

    name: str
    fn: StepFunction
    after: tuple[str, ...] = ()
    when: Condition | None = None
    compensate: StepFunction | None = None
    exclusive: bool = False
    options: WorkOptions = attrs.field(factory=WorkOptions)
    fingerprint: str | None = None

    @property
    def timeout(self) -> float | None:
        """Seconds each attempt may take (builtin ``TimeoutError`` past it), or None."""
        return self.options.timeout

    @property
    def retry(self) -> RetryPolicy | None:
        """How a failing attempt is retried, or None for one attempt."""
        return self.options.retry

    @property
    def pools(self) -> tuple[str, ...]:
        """Named pools of the run's :class:`ResourceManager` the step takes a token of each."""
        return self.options.pools

    @property
    def optional(self) -> bool:
        """Whether a failure of this step lets the run go on as if the step had succeeded."""
        return self.options.optional

    @property
    def continue_on_error(self) -> bool:
        """Deprecated name of :attr:`optional`."""
        warn_renamed("Step.continue_on_error", "Step.optional")
        return self.options.optional


_DEFAULT_OPTIONS = WorkOptions()  # shared by the steps that set none (most of a big workflow)


@final
class Graph:
    """A validated workflow as index arrays: what a run walks (internal).

    Attributes:
        steps: The steps in definition order; a step's index is its position here.
        index: Step name -> index.
        preds: For each step, the indices of the steps it comes after.
        succs: For each step, the indices of the steps that come after it.
        order: Every step index in a topological order.
    """

    __slots__ = (
        "_fingerprint",
        "_shape",
        "index",
        "order",
        "preds",
        "steps",
        "succs",
    )

    def __init__(
        self,
        steps: tuple[Step, ...],
        index: Mapping[str, int],
        preds: tuple[tuple[int, ...], ...],
        succs: tuple[tuple[int, ...], ...],
        order: tuple[int, ...],
    ) -> None:
        self.steps = steps
        self.index = index
        self.preds = preds
        self.succs = succs
        self.order = order
        self._shape: dict[str, tuple[str, ...]] | None = None
        self._fingerprint: str | None = None

    def _shape_dict(self) -> dict[str, tuple[str, ...]]:
        if self._shape is None:
            # A step's ``after`` is a tuple (Step checks it): most have one name or none.
            self._shape = {
                s.name: s.after if len(s.after) < 2 else tuple(sorted(s.after)) for s in self.steps
            }
        return self._shape

    @property
    def shape(self) -> Mapping[str, tuple[str, ...]]:
        """Step name -> sorted names it comes after (what a stored run is checked against)."""
        return MappingProxyType(self._shape_dict())

    @property
    def fingerprint(self) -> str:
        """A digest of :attr:`shape` (what :func:`shape_fingerprint` gives for it)."""
        if self._fingerprint is None:
            # Each name's list is sorted already, and the encoder orders the names as
            # shape_fingerprint does: the same text, sorted by the encoder itself, from the
            # graph's own mapping (no copy).
            canonical = _CANONICAL.encode(self._shape_dict())
            self._fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
        return self._fingerprint


# json.dumps(shape, sort_keys=True)'s text: a shape's values are tuples of names, which hold
# nothing that could refer back to them, so the encoder need not look for cycles.
_CANONICAL = json.JSONEncoder(sort_keys=True, check_circular=False)


def shape_fingerprint(shape: Mapping[str, Iterable[str]]) -> str:
    """Return a stable digest of a workflow shape (step names and their dependencies).

    Args:
        shape: Step name -> the names it comes after.

    Returns:
        A hex SHA-256 digest that ignores step order and dependency order.
    """
    canonical = json.dumps({name: sorted(after) for name, after in sorted(shape.items())})
    return hashlib.sha256(canonical.encode()).hexdigest()


def describe_shape_change(
    old: Mapping[str, Iterable[str]], new: Mapping[str, Iterable[str]]
) -> str:
    """Say in words how a workflow shape changed (for ``WorkflowShapeChangedError``).

    Args:
        old: The stored shape.
        new: The shape of the workflow being run.

    Returns:
        E.g. ``"steps added: 'lint'; edges removed: 'build' -> 'test'"``, or ``""`` when equal.
    """
    old_edges = {(dep, name) for name, after in old.items() for dep in after}
    new_edges = {(dep, name) for name, after in new.items() for dep in after}
    parts = []
    for label, names in (
        ("steps added", [n for n in new if n not in old]),
        ("steps removed", [n for n in old if n not in new]),
    ):
        if names:
            parts.append(f"{label}: " + ", ".join(repr(n) for n in names))
    for label, edges in (
        ("edges added", sorted(new_edges - old_edges)),
        ("edges removed", sorted(old_edges - new_edges)),
    ):
        if edges:
            parts.append(f"{label}: " + ", ".join(f"{a!r} -> {b!r}" for a, b in edges))
    return "; ".join(parts)


def _find_cycle(names: tuple[str, ...], succs: list[list[int]]) -> list[str] | None:
    """Return the steps of one cycle in execution order (first == last), or None."""
    white, grey, black = 0, 1, 2
    color = [white] * len(names)
    for root in range(len(names)):
        if color[root] != white:
            continue
        color[root] = grey
        path = [root]
        stack = [iter(succs[root])]
        while stack:
            node = next(stack[-1], None)
            if node is None:
                stack.pop()
                color[path.pop()] = black
                continue
            if color[node] == grey:
                cycle = path[path.index(node) :]
                # Start at the earliest-defined step so the message does not depend on the walk.
                first = cycle.index(min(cycle))
                cycle = cycle[first:] + cycle[:first]
                return [names[i] for i in (*cycle, cycle[0])]
            if color[node] == white:
                color[node] = grey
                path.append(node)
                stack.append(iter(succs[node]))
    return None


@final
class Workflow:
    """A named graph of async steps, each starting once the steps it comes after are done.

    Build it with :meth:`step`, chained or as a decorator, then run it with
    ``trioflow.run_workflow``::

        wf = Workflow("build-and-test")
        wf.step("restore", restore).step("build", build, after="restore")

        @wf.step("test", after=["build"], timeout=600)
        async def test(ctx: Context) -> int:
            return ctx.results["build"].count

    Steps may name steps defined later in ``after``; the graph as a whole (unknown
    dependencies, cycles) is checked by :meth:`validate`, which ``run_workflow`` calls before
    anything runs.

    Args:
        name: The workflow's name (stored with durable runs).

    Raises:
        TypeError: ``name`` is not a non-empty string.
    """

    __slots__ = ("_graph", "_name", "_steps")

    def __init__(self, name: str) -> None:
        self._name = _check_name(name, "workflow name")
        self._steps: dict[str, Step] = {}
        self._graph: Graph | None = None

    def __repr__(self) -> str:
        return f"<Workflow {self._name!r} with {len(self._steps)} steps>"

    @property
    def name(self) -> str:
        """The workflow's name."""
        return self._name

    @property
    def steps(self) -> Mapping[str, Step]:
        """The steps by name, in definition order (read-only)."""
        return MappingProxyType(self._steps)

    @overload
    def step(
        self,
        name: str,
        fn: StepFunction,
        *,
        after: str | Iterable[str] = (),
        when: Condition | None = None,
        compensate: StepFunction | None = None,
        exclusive: bool = False,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        pools: Iterable[str] = (),
        optional: bool = False,
        continue_on_error: bool | None = None,
        fingerprint: str | None = None,
    ) -> Workflow: ...

    @overload
    def step(
        self,
        name: str,
        fn: None = None,
        *,
        after: str | Iterable[str] = (),
        when: Condition | None = None,
        compensate: StepFunction | None = None,
        exclusive: bool = False,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        pools: Iterable[str] = (),
        optional: bool = False,
        continue_on_error: bool | None = None,
        fingerprint: str | None = None,
    ) -> Callable[[F], F]: ...

    def step(
        self,
        name: str,
        fn: StepFunction | None = None,
        *,
        after: str | Iterable[str] = (),
        when: Condition | None = None,
        compensate: StepFunction | None = None,
        exclusive: bool = False,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        pools: Iterable[str] = (),
        optional: bool = False,
        continue_on_error: bool | None = None,
        fingerprint: str | None = None,
    ) -> Workflow | Callable[[F], F]:
        """Add a step; chainable, or a decorator when ``fn`` is left out.

        Args:
            name: The step's name, unique in this workflow.
            fn: ``async def fn(ctx: Context) -> value``. Leave it out to use ``step`` as a
                decorator (``@wf.step("build", after="restore")``), which returns the function
                unchanged.
            after: The name, or names, of the steps this one starts after.
            when: ``when(ctx) -> bool``, sync or async, asked when the step could start; False
                records the step SKIPPED (a skipped step counts as done for the steps after it).
            compensate: ``async def compensate(ctx)``, run (shielded, at most once) when the
                run fails or is cancelled after this step succeeded.
            exclusive: Run with no other step of the run in flight (see ``run_workflow``).
            retry: A :class:`RetryPolicy` for failing attempts; None for one attempt.
            timeout: Seconds each attempt may take; None or ``math.inf`` for no deadline. An
                attempt over it fails with the builtin ``TimeoutError``.
            pools: Names of pools of the :class:`ResourceManager` passed as ``run_workflow``'s
                ``limit``; the step takes one token of each during each attempt (not while
                waiting to retry).
            optional: Record a failure of this step FAILED but go on as if it had succeeded:
                the steps after it run and ``WorkflowResult.ok`` ignores it.
            continue_on_error: Deprecated name of ``optional`` (a ``DeprecationWarning``).
            fingerprint: A digest of what the step does (a command, its environment...), or
                None. Stored with the step's record: resuming a stored run reruns a SUCCEEDED
                or SKIPPED step whose stored fingerprint differs from this one (when both are
                set), and ``WorkflowResult.changed`` names it.

        Returns:
            This workflow (chainable), or a decorator when ``fn`` is None.

        Raises:
            TypeError: ``fn``/``compensate`` is not an async callable, ``when`` is not callable,
                an option has the wrong type, or both ``optional`` and ``continue_on_error``
                are given.
            ValueError: ``timeout`` is negative or NaN, or a pool is named twice.
            WorkflowDefinitionError: A step with this name already exists.
        """
        if continue_on_error is not None:
            warn_renamed("Workflow.step(continue_on_error=...)", "Workflow.step(optional=...)")
            if optional is not False:
                raise TypeError(
                    f"step {name!r}: give optional or its deprecated name continue_on_error, "
                    "not both"
                )
            optional = continue_on_error
        if fn is None:

            def decorator(function: F) -> F:
                self.step(
                    name,
                    function,
                    after=after,
                    when=when,
                    compensate=compensate,
                    exclusive=exclusive,
                    retry=retry,
                    timeout=timeout,
                    pools=pools,
                    optional=optional,
                    fingerprint=fingerprint,
                )
                return function

            _check_name(name, "step name")
            return decorator

        if type(name) is not str or not name:
            _check_name(name, "step name")
        if name in self._steps:
            raise WorkflowDefinitionError(
                f"duplicate step name {name!r} in workflow {self._name!r}"
            )
        if not is_async_callable(fn):
            raise TypeError(
                f"step {name!r} must be an async function (async def fn(ctx)), got {fn!r}"
            )
        if when is not None and not callable(when):
            raise TypeError(f"when of step {name!r} must be callable or None, got {when!r}")
        if compensate is not None and not is_async_callable(compensate):
            raise TypeError(
                f"compensate of step {name!r} must be an async function or None, "
                f"got {compensate!r}"
            )
        if fingerprint is not None and (type(fingerprint) is not str or not fingerprint):
            check_name(fingerprint, f"fingerprint of step {name!r}")
        if timeout is None and retry is None and pools == () and optional is False:
            options = _DEFAULT_OPTIONS
        else:
            options = WorkOptions.check(
                f"step {name!r}", timeout=timeout, retry=retry, pools=pools, optional=optional
            )
        self._steps[name] = Step(
            name=name,
            fn=fn,
            after=_names(after, name),
            when=when,
            compensate=compensate,
            exclusive=exclusive
            if exclusive is False
            else _check_bool(exclusive, "exclusive", name),
            options=options,
            fingerprint=fingerprint,
        )
        self._graph = None
        return self

    def validate(self) -> None:
        """Check the graph as a whole: every dependency exists and there is no cycle.

        Raises:
            WorkflowDefinitionError: A step comes after an unknown step, or steps form a cycle
                (the message names the steps of the cycle in order, e.g. ``cycle: 'a' -> 'b' ->
                'a'``).
        """
        self.graph()

    def graph(self) -> Graph:
        """Validate and return the compiled graph (cached until a step is added).

        Returns:
            The workflow as index arrays.

        Raises:
            WorkflowDefinitionError: As :meth:`validate`.
        """
        if self._graph is not None:
            return self._graph
        steps = tuple(self._steps.values())
        names = tuple(self._steps)
        index = {name: i for i, name in enumerate(names)}
        preds: list[tuple[int, ...]] = []
        succs: list[list[int]] = [[] for _ in steps]
        for i, step in enumerate(steps):
            try:
                before = tuple([index[dep] for dep in step.after])
            except KeyError:
                unknown = [dep for dep in step.after if dep not in index]
                known = ", ".join(repr(n) for n in names)
                raise WorkflowDefinitionError(
                    f"step {step.name!r} comes after unknown step"
                    f"{'s' if len(unknown) > 1 else ''} "
                    f"{', '.join(repr(u) for u in unknown)} in workflow {self._name!r}; "
                    f"known steps: {known}"
                ) from None
            preds.append(before)
            for d in before:
                succs[d].append(i)
        order = _topological_order(preds, succs)
        if len(order) < len(steps):
            cycle = _find_cycle(names, succs)
            assert cycle is not None
            raise WorkflowDefinitionError(
                f"workflow {self._name!r} has a cycle: " + " -> ".join(repr(n) for n in cycle)
            )
        self._graph = Graph(
            steps=steps,
            index=MappingProxyType(index),
            preds=tuple(preds),
            succs=tuple([tuple(s) for s in succs]),
            order=tuple(order),
        )
        return self._graph

    def edges(self) -> tuple[tuple[str, str], ...]:
        """Return every dependency as ``(earlier, later)``, in definition order.

        Returns:
            One pair per ``after`` entry: ``("build", "test")`` when test comes after build.
        """
        return tuple((dep, step.name) for step in self._steps.values() for dep in step.after)

    def waves(self) -> tuple[tuple[str, ...], ...]:
        """Return the steps grouped in waves: each wave can start once the waves before it end.

        A step's depth is one more than the deepest of the steps it comes after. The steps of
        one depth form one wave, except that an ``exclusive`` step runs alone: each gets a wave
        of its own, after the other steps of its depth. Without a limit, the steps of one wave
        may run together (the plan a dry run shows); the real schedule starts each step as soon
        as its own dependencies are done.

        Returns:
            Tuples of step names, in definition order within each wave.

        Raises:
            WorkflowDefinitionError: As :meth:`validate`.
        """
        graph = self.graph()
        depth = [0] * len(graph.steps)
        for i in graph.order:
            for s in graph.succs[i]:
                depth[s] = max(depth[s], depth[i] + 1)
        levels: list[list[Step]] = [[] for _ in range(max(depth, default=-1) + 1)]
        for i, step in enumerate(graph.steps):
            levels[depth[i]].append(step)
        waves: list[tuple[str, ...]] = []
        for level in levels:
            shared = tuple(step.name for step in level if not step.exclusive)
            if shared:
                waves.append(shared)
            waves.extend((step.name,) for step in level if step.exclusive)
        return tuple(waves)


def _topological_order(preds: list[tuple[int, ...]], succs: list[list[int]]) -> list[int]:
    """Kahn's algorithm: the steps in an order where each comes after its dependencies.

    Shorter than the number of steps when there is a cycle.
    """
    remaining = [len(p) for p in preds]
    order = [i for i, n in enumerate(remaining) if not n]
    for i in order:  # the list grows while it is walked
        for s in succs[i]:
            remaining[s] -= 1
            if not remaining[s]:
                order.append(s)
    return order
