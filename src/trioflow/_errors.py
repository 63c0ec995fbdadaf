"""The one exception hierarchy of trioflow.

Every error that trioflow raises on purpose derives from :class:`TrioflowError`, split by cause.
Errors about bad input also derive from the builtin a caller would expect (``ValueError``,
``TypeError`` or ``LookupError``), so ``except ValueError`` keeps working. Bad arguments to a
function or constructor are rejected with plain ``TypeError``/``ValueError`` whose messages name
the argument, what was expected and what was given.

Cancellation is never wrapped or translated: the backend's cancellation exception always
propagates as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import anyio


class TrioflowError(Exception):
    """Base class of every error trioflow raises on purpose."""


class ResourceExhaustedError(TrioflowError):
    """Work was refused because capacity or system health would not admit it.

    Raised by a resource manager configured to fail fast when its health source reports
    unhealthy, and by limiters that refuse rather than wait.
    """


class PoolClosedError(TrioflowError, anyio.ClosedResourceError):
    """A :class:`~trioflow.Pool` was closed: it hands out no more objects.

    Raised by ``pool.acquire()`` once the pool is closed, and to every task that was waiting
    for an object when it closed. It is also an ``anyio.ClosedResourceError``.
    """


class CircuitOpenError(TrioflowError):
    """A circuit breaker is open and refused the call without running it.

    Attributes:
        retry_at: The time (on the running backend's clock, ``anyio.current_time()``) at which
            the breaker will let a trial call through (half-open).
    """

    def __init__(self, message: str, *, retry_at: float) -> None:
        super().__init__(message)
        self.retry_at = retry_at

    @property
    def retry_after(self) -> float:
        """Seconds from now until the breaker half-opens (0 once that time has passed).

        A :class:`~trioflow.RetryPolicy` that retries ``CircuitOpenError`` honours this as its
        minimum wait, so the retry lands when a trial call is let through. Outside a running
        event loop it is 0.
        """
        try:
            now = anyio.current_time()
        except RuntimeError:  # no event loop running: nothing to wait for
            return 0.0
        return max(0.0, self.retry_at - now)


class InvalidTransitionError(TrioflowError, ValueError):
    """A state machine was asked for a transition its table does not allow.

    Attributes:
        from_state: The state the object is in.
        to_state: The state that was asked for.
    """

    def __init__(self, from_state: object, to_state: object) -> None:
        super().__init__(f"invalid transition from {from_state!r} to {to_state!r}")
        self.from_state = from_state
        self.to_state = to_state


class UnknownToolError(TrioflowError, LookupError):
    """A tool registry was asked for a tool it does not have."""


class ToolArgumentError(TrioflowError, ValueError):
    """The arguments given to a tool do not fit its parameters.

    Attributes:
        tool: The tool's name.
        problems: Every bad field as ``(path, message)``, e.g. ``("items[2].count", "expected
            int, got 'x'")``.
    """

    def __init__(self, tool: str, problems: Sequence[tuple[str, str]]) -> None:
        self.tool = tool
        self.problems = tuple(problems)
        listed = "; ".join(f"{path}: {message}" for path, message in self.problems)
        super().__init__(f"bad arguments for tool {tool!r}: {listed}")


class ConfigError(TrioflowError, ValueError):
    """A configuration could not be loaded; lists every problem with its path.

    Attributes:
        problems: Every problem as ``(path, message)``, e.g.
            ``("retry.multiplier", "must be a finite number >= 1, got 0.5 (float)")``.
    """

    def __init__(self, problems: Sequence[tuple[str, str]], *, source: str | None = None) -> None:
        self.problems = tuple(problems)
        self.source = source
        where = f" in {source}" if source else ""
        listed = "\n".join(f"  {path}: {message}" for path, message in self.problems)
        super().__init__(f"invalid configuration{where}:\n{listed}")


class WorkflowDefinitionError(TrioflowError, ValueError):
    """A workflow is malformed: duplicate or unknown step names, a cycle, a bad step option."""


class WorkflowShapeChangedError(TrioflowError):
    """A stored run cannot be resumed because its workflow's steps or edges changed."""


class StoreError(TrioflowError):
    """A workflow store or a request store could not be read or written."""


class _Owner(Protocol):
    # What RunLeasedError needs of a trioflow.RunOwner (defined with the stores, a floor up).
    @property
    def host(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def since(self) -> datetime: ...
    def describe(self) -> str: ...


class RunLeasedError(TrioflowError):
    """A stored run is being executed by another process (or another call), which holds its lease.

    ``run_workflow`` raises it before any step starts when it is asked to run or resume a run
    whose lease a live owner holds; and, should a run's own lease have expired and been taken
    by another owner meanwhile, it stops the run with it.

    Attributes:
        run_id: The run's id.
        owner: The :class:`~trioflow.RunOwner` holding the lease (``host``, ``pid``,
            ``since``).
    """

    def __init__(self, run_id: str, owner: _Owner, *, lost: bool = False) -> None:
        message = f"run {run_id!r} is being run by {owner.describe()}"
        if lost:
            message += " (this run's lease expired before it could renew it, and was taken)"
        super().__init__(message)
        self.run_id = run_id
        self.owner = owner


class UnstorableValueError(TrioflowError, TypeError):
    """A step returned a value that the store cannot serialize.

    Attributes:
        step: The step's name.
        value_type: The type of the value.
    """

    def __init__(self, step: str, value_type: type) -> None:
        super().__init__(
            f"step {step!r} returned a value of type {value_type.__qualname__!r} "
            "that cannot be stored as JSON"
        )
        self.step = step
        self.value_type = value_type


class ValueTooLargeError(UnstorableValueError):
    """A step returned a value whose stored form is larger than its store can hold.

    (SQLite holds at most ``SQLITE_LIMIT_LENGTH`` bytes in one value, 1 GB by default.) The
    step FAILED with it, and the run went on by its fail-fast rules.

    Attributes:
        step: The step's name.
        value_type: The type of the value.
        size: Bytes of the value's stored (JSON) form.
        limit: The most bytes the store holds in one value.
    """

    def __init__(self, step: str, value_type: type, *, size: int, limit: int) -> None:
        super().__init__(step, value_type)
        self.args = (
            f"step {step!r} returned a value of type {value_type.__qualname__!r} whose JSON "
            f"form ({size} bytes) is larger than the store can hold ({limit} bytes)",
        )
        self.size = size
        self.limit = limit


class TransitionInProgressError(TrioflowError, RuntimeError):
    """A state machine refused a transition because another one of the same object is running.

    Transitions of one object never overlap: while one awaits its hooks, another is refused
    without running anything (like trio's ``BusyResourceError``).
    """


class UnknownKindError(TrioflowError, LookupError):
    """A router was asked to route a request whose kind has no pipeline.

    Attributes:
        kind: The kind asked for.
        known: The kinds the router has pipelines for.
    """

    def __init__(self, kind: object, known: Sequence[str]) -> None:
        self.kind = kind
        self.known = tuple(known)
        listed = ", ".join(repr(k) for k in self.known) or "none"
        super().__init__(f"no pipeline for request kind {kind!r}; known kinds: {listed}")
