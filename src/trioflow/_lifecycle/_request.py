"""The request lifecycle: its states, its transition table, the request, and its outcome.

The table is data (:data:`REQUEST_TRANSITIONS`): the happy path of a request through a
request-serving application (received, validated, planned, context gathering, processing,
optional tool execution, response formatting, completed) plus FAILED and CANCELLED from every
state that is not terminal.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, final

import attrs

from .._backend import current_time
from .._checks import check_int, check_name, validator
from .._errors import (
    CircuitOpenError,
    InvalidTransitionError,
    ResourceExhaustedError,
    TransitionInProgressError,
    UnknownKindError,
    UnknownToolError,
)
from .._status import Status, renamed_members
from .._values import builder
from ._machine import StateChange

__all__ = (
    "REQUEST_TRANSITIONS",
    "make_result",
    "ErrorCategory",
    "ProcessingResult",
    "ProcessingStatus",
    "Request",
    "RequestState",
)


class RequestState(enum.Enum):
    """The states of a request, from arrival to one of three terminal states.

    COMPLETED, FAILED and CANCELLED are terminal; every other state may move to FAILED or
    CANCELLED. The allowed moves are :data:`trioflow.lifecycle.REQUEST_TRANSITIONS`.
    """

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is slow

    RECEIVED = "received"
    VALIDATED = "validated"
    PLANNED = "planned"
    CONTEXT_GATHERING = "context_gathering"
    PROCESSING = "processing"
    TOOL_EXECUTION = "tool_execution"
    RESPONSE_FORMATTING = "response_formatting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@final
class _TransitionTable(Mapping[RequestState, frozenset[RequestState]]):
    """The request transition table: each RequestState and the states it may move to.

    Read-only data: a mapping of every :class:`RequestState` to a frozenset of the states it
    may move to. Build a :class:`trioflow.lifecycle.StateMachine` from it, or from a changed copy
    (``{**REQUEST_TRANSITIONS, ...}``) for a lifecycle of your own.
    """

    def __init__(self, table: Mapping[RequestState, frozenset[RequestState]]) -> None:
        self._table = MappingProxyType(dict(table))

    def __getitem__(self, state: RequestState) -> frozenset[RequestState]:
        return self._table[state]

    def __iter__(self) -> Iterator[RequestState]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        rows = ", ".join(
            f"{s.name}: {{{', '.join(t.name for t in targets)}}}" for s, targets in self.items()
        )
        return f"REQUEST_TRANSITIONS({rows})"


def _request_transitions() -> _TransitionTable:
    s = RequestState
    happy = {
        s.RECEIVED: {s.VALIDATED},
        s.VALIDATED: {s.PLANNED},
        s.PLANNED: {s.CONTEXT_GATHERING},
        s.CONTEXT_GATHERING: {s.PROCESSING},
        s.PROCESSING: {s.TOOL_EXECUTION, s.RESPONSE_FORMATTING},
        s.TOOL_EXECUTION: {s.RESPONSE_FORMATTING},
        s.RESPONSE_FORMATTING: {s.COMPLETED},
    }
    table = {
        state: frozenset(targets | {s.FAILED, s.CANCELLED}) for state, targets in happy.items()
    }
    for terminal in (s.COMPLETED, s.FAILED, s.CANCELLED):
        table[terminal] = frozenset()
    return _TransitionTable(table)


REQUEST_TRANSITIONS: Mapping[RequestState, frozenset[RequestState]] = _request_transitions()
"""The request transition table (read-only data): see ``_TransitionTable``."""


def _now() -> float:
    try:
        return current_time()
    except RuntimeError:  # no event loop is running
        raise RuntimeError(
            "Request() must be created inside a running event loop (created_at is read from "
            "anyio.current_time()); pass created_at explicitly otherwise"
        ) from None


# Request ids: 128 bits of os.urandom each, as 32 hex digits (like uuid4().hex). They are read
# 256 at a time, one system call instead of one per request (bench/lifecycle.py); a forked
# child drops what its parent had read, so no two processes ever hand out the same id.
_IDS: list[str] = []
_ID_BATCH = 256


def _new_id() -> str:
    try:
        return _IDS.pop()
    except IndexError:
        raw = os.urandom(16 * _ID_BATCH).hex()
        _IDS.extend([raw[i : i + 32] for i in range(32, 32 * _ID_BATCH, 32)])
        return raw[:32]


os.register_at_fork(after_in_child=_IDS.clear)


_check_text = validator(check_name)


def _check_kind(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(
            f"kind must be a non-empty str (e.g. a RequestKind) or None, got {value!r}"
        )


_check_priority = validator(check_int)


def _check_state(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, RequestState):
        raise TypeError(f"state must be a RequestState, got {value!r}")


# Fields are checked on construction only: state machines, pipelines and routers set them on
# the hot path (and check what they set), and attrs' setattr hooks would cost more than that.
@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class Request:
    """One request travelling through a pipeline: what was asked, by whom, and where it is.

    A request is created when it arrives (inside the event loop) and is moved by a
    :class:`trioflow.lifecycle.Pipeline` or a coordinator, which set its ``kind``, ``state``,
    ``history``, ``results`` and ``timings``.

    Args:
        payload: What was asked, in any form the stages understand.
        id: A unique id (a random hex string by default).
        user_id: Who asked; per-user limits and rate limits are keyed by it.
        source: Where the request came from: ``"cli"``, ``"mcp"`` or anything else; per-source
            rate limits are keyed by it.
        kind: The request kind (a :class:`trioflow.lifecycle.RequestKind` or any string), or
            ``None`` to let a router classify it.
        priority: Larger is more urgent; carried for classifiers, stages and hooks (admission
            is in arrival order).
        state: The current :class:`RequestState` (``RECEIVED`` on arrival).
        history: The :class:`trioflow.lifecycle.StateChange` records of every transition so far.
        created_at: Arrival time on the running backend's clock (``anyio.current_time()``).
        results: Each stage's return value by stage name, filled in as stages finish, so a
            stage can read what earlier stages produced.
        timings: Seconds spent in each stage that ran, by stage name.

    Raises:
        TypeError: A field has the wrong type (messages name the field).
        RuntimeError: No event loop is running and ``created_at`` was not given.
    """

    payload: Any = None
    id: str = attrs.field(factory=_new_id, kw_only=True)
    user_id: str = attrs.field(default="anonymous", kw_only=True)
    source: str = attrs.field(default="other", kw_only=True)
    kind: str | None = attrs.field(default=None, kw_only=True)
    priority: int = attrs.field(default=0, kw_only=True)
    state: RequestState = attrs.field(default=RequestState.RECEIVED, kw_only=True)
    history: list[StateChange[RequestState]] = attrs.field(factory=list, kw_only=True)
    created_at: float = attrs.field(factory=_now, kw_only=True)
    results: dict[str, Any] = attrs.field(factory=dict, kw_only=True)
    timings: dict[str, float] = attrs.field(factory=dict, kw_only=True)

    def __attrs_post_init__(self) -> None:
        # One cheap test of the usual case (a request is made per call a server answers);
        # the field checks run, in field order, only when it fails, to name what is wrong.
        if (
            type(self.id) is not str
            or type(self.user_id) is not str
            or type(self.source) is not str
            or not (self.id and self.user_id and self.source)
            or (self.kind is not None and not (isinstance(self.kind, str) and self.kind))
            or type(self.priority) is not int
            or type(self.state) is not RequestState
        ):
            self._check_fields()

    def _check_fields(self) -> None:
        fields = attrs.fields(Request)
        for attribute, check in (
            (fields.id, _check_text),
            (fields.user_id, _check_text),
            (fields.source, _check_text),
            (fields.kind, _check_kind),
            (fields.priority, _check_priority),
            (fields.state, _check_state),
        ):
            check(self, attribute, getattr(self, attribute.name))


class ProcessingStatus(Status):
    """How the processing of a request ended.

    SUCCEEDED: every stage succeeded (the request's state is COMPLETED). DEGRADED: the request
    completed, but optional stages failed and were skipped. FAILED: a stage (or admission, or
    routing) failed. CANCELLED: the request was cancelled before it finished. ``COMPLETED``,
    this status's name in trioflow 0.1, still works with a :class:`DeprecationWarning`.
    """

    SUCCEEDED = "succeeded"
    DEGRADED = "degraded"
    FAILED = "failed"
    CANCELLED = "cancelled"


renamed_members(ProcessingStatus, COMPLETED="SUCCEEDED")


class ErrorCategory(enum.Enum):
    """Why a request failed, for callers that answer differently per cause.

    Use :meth:`ErrorCategory.of` to categorize an exception the way pipelines do.
    """

    __hash__ = object.__hash__  # members are singletons; Enum's own hash is slow

    VALIDATION = "validation"
    RESOURCE_EXHAUSTION = "resource_exhaustion"
    TIMEOUT = "timeout"
    DEPENDENCY = "dependency"
    INTERNAL = "internal"

    @classmethod
    def of(cls, exc: BaseException) -> ErrorCategory:
        """Return the category of an exception.

        An exception with an ``error_category`` attribute holding an ``ErrorCategory`` gets
        that. Otherwise: ``TimeoutError`` is TIMEOUT; :class:`trioflow.ResourceExhaustedError` is
        RESOURCE_EXHAUSTION; ``ConnectionError``, other ``OSError`` and
        :class:`trioflow.CircuitOpenError` are DEPENDENCY; ``ValueError`` (a bad argument of a
        tool, an unknown kind or tool included) is VALIDATION, except trioflow's own state
        machine errors; anything else is INTERNAL. An exception group takes the category of
        its first leaf.

        Args:
            exc: The exception.

        Returns:
            Its category.
        """
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        declared = getattr(exc, "error_category", None)
        if isinstance(declared, ErrorCategory):
            return declared
        if isinstance(exc, TimeoutError):
            return cls.TIMEOUT
        if isinstance(exc, ResourceExhaustedError):
            return cls.RESOURCE_EXHAUSTION
        if isinstance(exc, OSError | CircuitOpenError):
            return cls.DEPENDENCY
        if isinstance(exc, InvalidTransitionError | TransitionInProgressError):
            return cls.INTERNAL
        if isinstance(exc, ValueError | UnknownKindError | UnknownToolError):
            return cls.VALIDATION
        return cls.INTERNAL


def _freeze_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class ProcessingResult:
    """The outcome of processing one request.

    Attributes:
        request_id: The request's id.
        status: How it ended (:class:`ProcessingStatus`).
        state: The terminal :class:`RequestState` the request ended in (DEGRADED requests
            end COMPLETED).
        value: What the last stage returned (``None`` unless COMPLETED or DEGRADED, and
            ``None`` if the last stage was an optional one that failed).
        error: The exception that failed the request, or ``None``.
        category: The :class:`ErrorCategory` of ``error``, or ``None``.
        history: Every state transition of the request.
        stage_timings: Seconds spent in each stage that ran, by stage name.
        degraded: Optional stages that failed and were skipped, with their exceptions.
        duration: Seconds from the start of processing to the terminal state.
    """

    request_id: str
    status: ProcessingStatus
    state: RequestState
    value: Any = None
    error: BaseException | None = None
    category: ErrorCategory | None = None
    history: tuple[StateChange[RequestState], ...] = ()
    stage_timings: Mapping[str, float] = attrs.field(factory=dict, converter=_freeze_mapping)
    degraded: Mapping[str, BaseException] = attrs.field(factory=dict, converter=_freeze_mapping)
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the request completed (fully or degraded)."""
        return (
            self.status is ProcessingStatus.SUCCEEDED or self.status is ProcessingStatus.DEGRADED
        )


# One is built per request, from fields the pipeline already checked: without the frozen class's
# guarded __init__ and converters (the same object, built faster: see trioflow._values).
_build_result = builder(ProcessingResult)
_NO_ERRORS: Mapping[str, BaseException] = MappingProxyType({})


def make_result(
    request: Request,
    status: ProcessingStatus,
    duration: float,
    *,
    value: Any = None,
    error: BaseException | None = None,
    degraded: Mapping[str, BaseException] | None = None,
) -> ProcessingResult:
    """Build the ProcessingResult of a request that reached its terminal state.

    One is built per request on the hot path, without the frozen class's guarded ``__init__``
    and converters (the same object, built faster; ``bench/lifecycle.py`` shows by how much).
    """
    return _build_result(
        request.id,
        status,
        request.state,
        value,
        error,
        None if error is None else ErrorCategory.of(error),
        tuple(request.history),
        MappingProxyType(dict(request.timings)),
        MappingProxyType(dict(degraded)) if degraded else _NO_ERRORS,
        duration,
    )
