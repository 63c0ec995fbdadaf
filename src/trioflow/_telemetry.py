"""The engines' side of telemetry: the current instrumentation, or None when it is off.

The engines read ``hooks.current`` once per batch, workflow run, request or tool call, and do
nothing more while it is None: no span, no metric object, no OpenTelemetry import. The
instrumentation itself (spans and metrics through the OpenTelemetry API) lives in the public
face :mod:`trioflow.telemetry`, which sets it in ``enable()``; this module
imports nothing of it, so the engines (a floor below) never do either.

Two shapes, because the engines cannot import the face: :class:`Instrumentation`, what the
engines call, and :class:`Span`, the context manager its ``span()`` returns; the face has
their implementation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, final

__all__ = ("Attributes", "Instrumentation", "Span", "hooks", "set_current")

# An OpenTelemetry attribute value (what the engines pass: no sequences).
Attributes = Mapping[str, str | int | float | bool]


class Span(Protocol):
    """A span opened by ``with``: it is the current span inside the block, and ends with it.

    Ending by an exception records the outcome: ``"cancelled"`` for cancellation, else
    ``"failed"`` with the exception; ``"succeeded"`` otherwise, unless :meth:`fail` said it
    failed without raising (a batch or request whose failures are results).
    """

    def __enter__(self) -> Span: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def set(self, attributes: Attributes) -> None:
        """Set attributes on the span."""

    def fail(self, description: str) -> None:
        """Mark the span failed (status ERROR) although its block did not raise."""

    def cancelled(self) -> None:
        """Mark the span cancelled although its block did not raise (a request's cancel())."""


class Instrumentation(Protocol):
    """What the engines call when telemetry is on (implemented by ``trioflow.telemetry``)."""

    trace_operations: bool

    def span(self, name: str, attributes: Attributes) -> Span:
        """A span, a child of the current one, to open with ``with``."""

    def traced(self, operations: Any) -> Any:
        """The operations of a batch, each wrapped in a span of its own (trace_operations)."""

    def batch_ended(
        self,
        span: Span,
        *,
        succeeded: int,
        failed: int,
        cancelled: int,
        duration: float,
        durations: Sequence[float],
    ) -> None:
        """Record a batch's counts on its span and its metrics, once, as it ends."""

    def retried(self, attempt: int, error: BaseException | None) -> None:
        """Record a retry attempt (``attempt`` >= 2) on the current span and the metrics."""

    def steps_ended(self, workflow: str, statuses: Iterable[str]) -> None:
        """Record the outcome of each step a workflow run ran."""

    def request_ended(
        self, pipeline: str, state: str, category: str | None, duration: float
    ) -> None:
        """Record one request's end: its terminal state, error category and duration."""

    @property
    def include_user(self) -> bool:
        """Whether request spans carry the user id (personal data: off by default)."""


@final
class _Hooks:
    """Where the engines find the instrumentation: ``hooks.current``, None while it is off."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: Instrumentation | None = None


# The instrumentation in force; None until trioflow.telemetry.enable() (and after disable()).
# A holder rather than a module global: the engines import it by name and read its attribute.
hooks = _Hooks()


def set_current(instrumentation: Instrumentation | None) -> None:
    """Install (or, with None, remove) the instrumentation the engines call."""
    hooks.current = instrumentation
