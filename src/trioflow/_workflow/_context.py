"""The context a workflow step receives: results of finished steps and state shared by steps."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    from ._step_status import StepStatus

__all__ = ("Context", "RunShared", "run_context")


@final
class RunShared:
    """What every :class:`Context` of one run shares (internal).

    Attributes:
        run_id: The run's id.
        results: Step name -> value of each SUCCEEDED step.
        state: Values set with :meth:`Context.set`.
        encode: With a store, ``encode(step, value)`` turns a state value into its stored
            form (raising ``UnstorableValueError`` when it cannot); None without a store.
        dirty: Encoded state values set since the store last saved them.
        statuses: Step name -> status of each step that ended (or was restored).
        errors: Step name -> the exception of each step that FAILED in this run.
    """

    __slots__ = (
        "dirty",
        "encode",
        "errors",
        "results",
        "results_view",
        "run_id",
        "state",
        "state_view",
        "statuses",
    )

    def __init__(
        self,
        run_id: str,
        state: Mapping[str, Any] | None = None,
        results: Mapping[str, Any] | None = None,
        encode: Callable[[str, Any], Any] | None = None,
    ) -> None:
        self.run_id = run_id
        self.results: dict[str, Any] = dict(results or {})
        self.results_view = MappingProxyType(self.results)
        self.state: dict[str, Any] = dict(state or {})
        self.state_view = MappingProxyType(self.state)
        self.encode = encode
        self.dirty: dict[str, Any] = {}
        self.statuses: dict[str, StepStatus] = {}
        self.errors: dict[str, Exception] = {}

    def take_dirty(self) -> dict[str, Any]:
        """Return the encoded state values not saved yet, and forget them."""
        dirty, self.dirty = self.dirty, {}
        return dirty

    def put_back(self, dirty: Mapping[str, Any]) -> None:
        """Mark values taken by :meth:`take_dirty` unsaved again (a write that did not end).

        Values set since they were taken win over them.

        Args:
            dirty: What :meth:`take_dirty` returned.
        """
        self.dirty = {**dirty, **self.dirty}


_MISSING: Any = object()


@final
class Context:
    """What a step function receives: earlier results, shared state, and who is running.

    One context is made per step (``ctx.step`` differs); all contexts of a run share its
    results and state. Use ``f"{ctx.run_id}:{ctx.step}"`` as an idempotency key for side
    effects: a resumed run keeps its run id.

    A context can be built directly to unit-test a step function::

        ctx = Context(step="build", state={"target": "release"}, results={"restore": 42})
        value = await build(ctx)

    Args:
        run_id: The run id (a fresh uuid4 hex when None).
        step: The name of the step this context is for (None outside a step).
        state: Initial shared state.
        results: Values of finished steps, by step name.
    """

    __slots__ = ("_shared", "_step")

    def __init__(
        self,
        *,
        run_id: str | None = None,
        step: str | None = None,
        state: Mapping[str, Any] | None = None,
        results: Mapping[str, Any] | None = None,
    ) -> None:
        self._shared = RunShared(run_id or uuid.uuid4().hex, state, results)
        self._step = step

    def __repr__(self) -> str:
        return f"<Context run_id={self._shared.run_id!r} step={self._step!r}>"

    @property
    def run_id(self) -> str:
        """The run's id: the same when a stored run is resumed."""
        return self._shared.run_id

    @property
    def step(self) -> str | None:
        """The name of the step this context was made for (None for the run's final context)."""
        return self._step

    @property
    def results(self) -> Mapping[str, Any]:
        """Read-only mapping of step name -> value, for every step that SUCCEEDED so far.

        A step sees the values of every step it comes after (and of any other step that
        already finished). Skipped and failed steps have no entry.
        """
        return self._shared.results_view

    @property
    def state(self) -> Mapping[str, Any]:
        """Read-only view of the shared state (change it with :meth:`set`)."""
        return self._shared.state_view

    def status(self, step: str) -> StepStatus | None:
        """Return how an earlier step of the run ended, e.g. to tell a failure from a skip.

        A step that FAILED being ``optional`` lets the steps after it run: a ``when`` condition
        can ask ``ctx.status("lint") is StepStatus.FAILED``. A resumed run knows the steps it
        restored from the store (SUCCEEDED or SKIPPED).

        Args:
            step: A step's name.

        Returns:
            Its :class:`~trioflow.StepStatus` once it ended (and, with a store, was recorded);
            None while it has not ended, or when the run has no such step.
        """
        return self._shared.statuses.get(step)

    def error(self, step: str) -> Exception | None:
        """Return the exception that failed an earlier step of the run.

        Args:
            step: A step's name.

        Returns:
            The exception (the last attempt's) of a step that FAILED in this run; None for a
            step that did not fail (or has not ended). Restored steps of a resumed run
            SUCCEEDED or were SKIPPED, so they have none.
        """
        return self._shared.errors.get(step)

    def get(self, key: str, default: Any = None) -> Any:
        """Return a value of the shared state.

        Args:
            key: The name it was set under.
            default: What to return when nothing was set under ``key``.

        Returns:
            The value, or ``default``.
        """
        return self._shared.state.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Set a value of the shared state, visible to every step of the run.

        With a store, the value is encoded at once and saved with the next step record written
        (at the latest with the end of the step that set it), and a resumed run gets it back.

        Args:
            key: A name.
            value: Any value; with a store it must be storable (JSON through the store's
                cattrs converter: attrs classes, dataclasses, datetimes, enums, paths...).

        Raises:
            TypeError: ``key`` is not a string.
            UnstorableValueError: A store is in use and cannot store ``value``.
        """
        if not isinstance(key, str):
            raise TypeError(f"state key must be a string, got {key!r}")
        shared = self._shared
        if shared.encode is not None:
            try:
                shared.dirty[key] = shared.encode(self._step or "", value)
            except Exception as exc:
                exc.add_note(f"trioflow: raised by ctx.set({key!r}, ...)")
                raise
        shared.state[key] = value


_new_context = object.__new__


def run_context(shared: RunShared, step: str | None) -> Context:
    """Return a context of a run: what a running step (or the run's result) is given.

    A run makes one context per step; this skips the copies :class:`Context` makes of the
    mappings it is given, so every context of the run shares its results and state.

    Args:
        shared: The run's results and state.
        step: The step the context is for, or None for the run's final context.

    Returns:
        The context.
    """
    ctx: Context = _new_context(Context)
    ctx._shared = shared
    ctx._step = step
    return ctx
