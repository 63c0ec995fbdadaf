"""The values a batch produces: outcomes, errors, progress and the batch result.

They are frozen ``attrs`` classes. A batch of 100,000 operations records one outcome per
operation, so the engine's hot path stores only each value and duration in two flat lists (no
per-operation object the garbage collector would have to track), plus an entry for each
operation that did not simply succeed at its first attempt; :class:`BatchResult` builds the
:class:`Outcome` objects the first time someone asks for them. Building 100,000 frozen objects
costs about a third of running 100,000 no-op operations.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, final
from weakref import getweakrefcount

import attrs

from .._status import Status
from .._values import builder

__all__ = ("BatchResult", "OperationFailure", "Outcome", "OutcomeStatus", "Progress")

T = TypeVar("T")


class OutcomeStatus(Status):
    """How an operation of a batch ended.

    Attributes:
        SUCCEEDED: It returned a value.
        FAILED: It raised an exception (a timeout is a failure with the builtin
            ``TimeoutError``).
        CANCELLED: The batch cancelled it after another operation failed (``fail_fast=True``).
            Cancellation is never a failure.
    """

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


SUCCEEDED = OutcomeStatus.SUCCEEDED
FAILED = OutcomeStatus.FAILED
CANCELLED = OutcomeStatus.CANCELLED

# How the engine records an operation that did not succeed at its first attempt:
# index -> (status, error, attempts).
Extra = dict[int, tuple[OutcomeStatus, "Exception | None", int]]


@final
@attrs.frozen(kw_only=True)
class Outcome(Generic[T]):
    """How one operation of a batch ended.

    Attributes:
        index: The operation's position in the input, from 0.
        status: Succeeded, failed or cancelled.
        value: What the operation returned when it succeeded, else None.
        error: The exception it raised when it failed, else None.
        duration: Seconds on the running backend's clock from its start to its end, retries and
            the waits between them included.
        attempts: How many times it was called: more than 1 only with a retry policy; 0 if it
            never started (cancelled while waiting for a resource manager's slot, or refused by
            an unhealthy one).
    """

    index: int
    status: OutcomeStatus
    value: T | None = None
    error: Exception | None = None
    duration: float
    attempts: int


# The engine's constructor: equal to ``Outcome(...)``, without the frozen class's guarded
# ``__init__`` (bench/executor.py).
make_outcome: Callable[[int, OutcomeStatus, Any, Exception | None, float, int], Outcome[Any]] = (
    builder(Outcome)
)


def describe(index: int, exc: BaseException) -> str:
    """Return the one-line description of a failed operation used in messages."""
    text = str(exc)
    kind = type(exc).__qualname__
    return (
        f"operation {index} failed: {kind}: {text}"
        if text
        else f"operation {index} failed: {kind}"
    )


@final
@attrs.frozen(kw_only=True)
class OperationFailure:
    """A failed operation of a batch.

    Attributes:
        index: The operation's position in the input, from 0.
        exception: The exception it raised.
        message: A one-line description, e.g. ``"operation 3 failed: ValueError: bad row"``.
    """

    index: int
    exception: Exception
    message: str


@final
@attrs.frozen(kw_only=True)
class Progress:
    """A snapshot of a running batch, passed to ``on_progress`` after each operation ends.

    After a ``fail_fast`` stop, one last report follows once every task has ended: it counts
    the operations as :class:`BatchResult` does (``total`` is the operations taken from the
    input, ``cancelled`` those the stop cancelled, ``running`` is 0), so its :attr:`percent` is
    100.

    Attributes:
        total: How many operations the batch has: the input's ``len()`` when it has one, else
            None until the input is exhausted; in the last report after a ``fail_fast`` stop,
            the operations taken.
        completed: Operations that have ended by succeeding or failing.
        failed: Operations that have failed.
        running: Operations in flight.
        cancelled: Operations cancelled by a ``fail_fast`` stop (or never started because of
            it); 0 in every report but the last one after such a stop.
    """

    total: int | None
    completed: int
    failed: int
    running: int
    cancelled: int = 0

    @property
    def percent(self) -> float | None:
        """The share of operations ended (completed or cancelled), 0 to 100; None if unknown."""
        if self.total is None:
            return None
        if self.total == 0:
            return 100.0
        return 100.0 * (self.completed + self.cancelled) / self.total


# A batch with ``on_progress`` makes a report per operation kept by its callback: built
# without the frozen class's guarded ``__init__``, and its fields set again by next_progress.
_build_progress = builder(Progress)
_set_total = Progress.__dict__["total"].__set__
_set_completed = Progress.__dict__["completed"].__set__
_set_failed = Progress.__dict__["failed"].__set__
_set_running = Progress.__dict__["running"].__set__


def make_progress(total: int | None, completed: int, failed: int, running: int) -> Progress:
    """Build a progress report quickly (the engine's constructor; equal to ``Progress(...)``)."""
    return _build_progress(total, completed, failed, running, 0)


if hasattr(sys, "getrefcount"):
    _getrefcount = sys.getrefcount
else:  # pragma: no cover - an interpreter without reference counts

    def _getrefcount(obj: object) -> int:
        return -2  # never _ALONE: every report counts as kept


def _counted_as_next_progress_counts(report: object) -> int:
    # The count next_progress takes of its parameter, inline (a helper's call per count
    # costs more than the count): the same expression, on a parameter.
    return _getrefcount(report)


def _held_alone() -> int:
    # What the count says of a report held only by the engine's local variable, measured
    # through calls of the same shape: interpreters differ in the temporary references they
    # take (3.14 borrows some).
    report = object()
    return _counted_as_next_progress_counts(report)


# A report's reference count when only the engine's variable holds it; -1 (never) on an
# interpreter without reference counts, where every report counts as kept.
_ALONE = _held_alone() if hasattr(sys, "getrefcount") else -1


def next_progress(
    last: Progress | None, total: int | None, completed: int, failed: int, running: int
) -> Progress:
    """Return the next report of a batch: ``last`` filled in again if nobody kept it, else new.

    A batch with ``on_progress`` reports after every operation, and most callbacks read the
    report and let it go. Setting a field of a frozen value costs about as much as a no-op
    operation's whole share of the scheduler, and a new report sets five. A report nobody
    kept (the engine's variable holds its only reference, and no weak reference points to it)
    cannot be told from a new one, so only its fields that changed are set again: ``completed``,
    and now and then ``running``, ``failed`` or ``total``. A report the callback kept, in a
    list, another thread's queue or a weak reference, is never touched again.
    """
    if last is not None and _getrefcount(last) == _ALONE and not getweakrefcount(last):
        _set_completed(last, completed)
        if last.running != running:
            _set_running(last, running)
        if last.failed != failed:
            _set_failed(last, failed)
        if last.total != total:
            _set_total(last, total)
        return last
    return make_progress(total, completed, failed, running)


@final
@attrs.frozen(kw_only=True)
class BatchResult(Generic[T]):
    """What :func:`trioflow.run_batch` returns: every outcome, in input order.

    Build one only through ``run_batch``. Failures are data here: call :meth:`raise_for_errors`
    to turn them into an exception. Two results are equal when their durations and outcomes
    are.

    Attributes:
        duration: Seconds the batch took on the running backend's clock.
        total: Operations taken from the input (after a ``fail_fast`` stop, those never taken
            are not counted).
        succeeded: Operations that returned a value.
        failed: Operations that raised (timeouts included).
        cancelled: Operations cancelled by a ``fail_fast`` stop.
    """

    duration: float
    total: int
    succeeded: int
    failed: int
    cancelled: int
    # The engine's compact records, handed over rather than copied (a batch of a million
    # operations keeps one list of values and one array of doubles): each operation's value
    # (None unless it succeeded) and duration, and (index, status, error, attempts) for every
    # operation that did not simply succeed at its first attempt, sorted by index. Never
    # changed after the result is made; left out of the hash (a list has none).
    _values: Sequence[Any] = attrs.field(alias="values", repr=False, hash=False)
    _durations: Sequence[float] = attrs.field(alias="durations", repr=False, hash=False)
    _extra: tuple[tuple[int, OutcomeStatus, Exception | None, int], ...] = attrs.field(
        alias="extra", repr=False
    )

    @functools.cached_property
    def outcomes(self) -> tuple[Outcome[T], ...]:
        """Every operation's outcome, in input order (``outcomes[i].index == i``)."""
        extra = {
            index: (status, error, attempts) for index, status, error, attempts in self._extra
        }
        outcomes: list[Outcome[T]] = []
        append = outcomes.append
        for index, (value, duration) in enumerate(zip(self._values, self._durations, strict=True)):
            other = extra.get(index)
            if other is None:
                append(make_outcome(index, SUCCEEDED, value, None, duration, 1))
            else:
                append(make_outcome(index, other[0], value, other[1], duration, other[2]))
        return tuple(outcomes)

    @functools.cached_property
    def values(self) -> tuple[T, ...]:
        """The values of the operations that succeeded, in input order."""
        if self.succeeded == self.total:
            return tuple(self._values)
        skip = {index for index, status, _, _ in self._extra if status is not SUCCEEDED}
        return tuple(value for index, value in enumerate(self._values) if index not in skip)

    @functools.cached_property
    def errors(self) -> tuple[OperationFailure, ...]:
        """The operations that failed, in input order."""
        return tuple(
            OperationFailure(index=index, exception=error, message=describe(index, error))
            for index, _, error, _ in self._extra
            if error is not None
        )

    @property
    def ok(self) -> bool:
        """True when every operation taken succeeded (none failed or was cancelled)."""
        return self.succeeded == self.total

    def raise_for_errors(self) -> None:
        """Raise the failures, if there are any.

        Each exception gets a note naming its operation (``"operation 3"``), once.

        Raises:
            ExceptionGroup: The exceptions of the failed operations, in input order.
        """
        errors = self.errors
        if not errors:
            return
        exceptions: list[Exception] = []
        for error in errors:
            note = f"operation {error.index}"
            if note not in getattr(error.exception, "__notes__", ()):
                error.exception.add_note(note)
            exceptions.append(error.exception)
        raise ExceptionGroup(f"{len(exceptions)} of {self.total} operations failed", exceptions)


def make_result(
    values: list[Any], durations: Sequence[float], extra: Extra, *, duration: float
) -> BatchResult[Any]:
    """Wrap the engine's records in a :class:`BatchResult`; it takes them over, uncopied."""
    failed = cancelled = 0
    for status, _, _ in extra.values():
        if status is FAILED:
            failed += 1
        elif status is CANCELLED:
            cancelled += 1
    total = len(values)
    return BatchResult(
        duration=duration,
        total=total,
        succeeded=total - failed - cancelled,
        failed=failed,
        cancelled=cancelled,
        values=values,
        durations=durations,
        extra=tuple((index, *extra[index]) for index in sorted(extra)),
    )
