"""OpenTelemetry traces and metrics for trioflow (``pip install 'trioflow[otel]'``).

Nothing is traced or measured until :func:`enable` is called: until then trioflow creates no
span and no metric object, and does not import OpenTelemetry. Once enabled, trioflow opens a
span per batch, workflow run and step, request and stage, and MCP tool call (a span per
operation of a batch only with ``trace_operations=True``), adds a span event per retry
attempt, and records counters and histograms on a meter named ``trioflow``. :func:`observe`
adds the statistics of limiters, rate limiters, breakers and coordinators as observable
instruments, read when the metrics are collected.

Example::

    from opentelemetry.sdk.trace import TracerProvider
    import trioflow.telemetry

    trioflow.telemetry.enable(TracerProvider())   # or enable() for the global providers
    trioflow.telemetry.observe(resources, name="db")
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib.metadata
import itertools
import os
import weakref
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Sequence,
    Sized,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO, final

import anyio

from . import (
    CircuitBreaker,
    CircuitState,
    KeyedRateLimiter,
    PoolStatistics,
    ResourceManager,
    ResourceManagerStatistics,
    TokenBucket,
    _telemetry,
)
from ._checks import check_bool, check_name, describe

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
    from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import Tracer, TracerProvider

__all__ = ("disable", "enable", "enabled", "observe", "tracing_from_environment")

_OUTCOME = "trioflow.outcome"
_MISSING = (
    "trioflow.telemetry needs the OpenTelemetry API: pip install 'trioflow[otel]' "
    "(opentelemetry-api)"
)


def _cancelled(exc: BaseException) -> bool:
    """Whether an exception is cancellation (trio's or asyncio's), alone or in a group."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(cancelled)[1] is None
    return isinstance(exc, cancelled)


@final
class _Span:
    """A span that is current while its ``with`` block runs, and ends in the same task."""

    __slots__ = ("_api", "_failure", "_span", "_token", "_was_cancelled")

    def __init__(self, api: _Api, span: OtelSpan) -> None:
        self._api = api
        self._span = span
        self._token: object = None
        self._failure: str | None = None
        self._was_cancelled = False

    def __enter__(self) -> _Span:
        api = self._api
        self._token = api.attach(api.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        api = self._api
        try:
            if exc is None:
                if self._was_cancelled:
                    span.set_attribute(_OUTCOME, "cancelled")
                elif self._failure is None:
                    span.set_attribute(_OUTCOME, "succeeded")
                else:
                    span.set_attribute(_OUTCOME, "failed")
                    span.set_status(api.status(api.error, self._failure))
            elif _cancelled(exc):
                # Not a failure: OpenTelemetry would record nothing for a BaseException.
                span.set_attribute(_OUTCOME, "cancelled")
            else:
                span.set_attributes({_OUTCOME: "failed", "error.type": _type_name(exc)})
                span.record_exception(exc)
                span.set_status(api.status(api.error, f"{type(exc).__name__}: {exc}"))
        finally:
            api.detach(self._token)
            span.end()

    def set(self, attributes: _telemetry.Attributes) -> None:
        self._span.set_attributes(attributes)

    def fail(self, description: str) -> None:
        self._failure = description

    def cancelled(self) -> None:
        self._was_cancelled = True


@final
class _Api:
    """The few OpenTelemetry API functions a span needs, looked up once by :func:`enable`."""

    __slots__ = ("attach", "current_span", "detach", "error", "set_span_in_context", "status")

    def __init__(self) -> None:
        from opentelemetry import context, trace

        self.attach = context.attach
        self.detach: Callable[[Any], None] = context.detach
        self.set_span_in_context = trace.set_span_in_context
        self.current_span = trace.get_current_span
        self.status = trace.Status
        self.error = trace.StatusCode.ERROR


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


async def _traced_operation(
    instrumentation: _Instrumentation, index: int, op: Callable[[], Any]
) -> Any:
    with instrumentation.span("trioflow.operation", {"trioflow.operation.index": index}):
        return await op()


@final
class _TracedOperations:
    """A batch's input with each operation wrapped in a span; keeps the input's length."""

    __slots__ = ("_instrumentation", "_operations")

    def __init__(self, instrumentation: _Instrumentation, operations: Any) -> None:
        self._instrumentation = instrumentation
        self._operations = operations

    def __len__(self) -> int:
        return len(self._operations)

    def __iter__(self) -> Iterator[Any]:
        wrap = self._instrumentation.wrap
        for index, op in enumerate(self._operations):
            yield wrap(index, op)


@final
class _Instruments:
    """The instruments of one meter provider, made once: enabling again reuses them."""

    def __init__(self, meter: Meter) -> None:
        self.operations = meter.create_counter(
            "trioflow.batch.operations", unit="{operation}", description="Operations by outcome"
        )
        self.operation_duration = meter.create_histogram(
            "trioflow.batch.operation.duration", unit="s", description="Operation durations"
        )
        self.batch_duration = meter.create_histogram(
            "trioflow.batch.duration", unit="s", description="Batch durations"
        )
        self.retries = meter.create_counter(
            "trioflow.retry.attempts", unit="{attempt}", description="Retry attempts"
        )
        self.requests = meter.create_counter(
            "trioflow.requests", unit="{request}", description="Requests by terminal state"
        )
        self.request_duration = meter.create_histogram(
            "trioflow.request.duration", unit="s", description="Request durations"
        )
        self.steps = meter.create_counter(
            "trioflow.workflow.steps", unit="{step}", description="Workflow steps by status"
        )
        for name, unit, description, counter in _OBSERVED:
            create = meter.create_observable_counter if counter else meter.create_observable_gauge
            callback = functools.partial(_observe, name)
            create(name, callbacks=[callback], unit=unit, description=description)


# By meter provider (weakly: a provider a test drops takes its instruments with it).
_instruments: weakref.WeakKeyDictionary[object, _Instruments] = weakref.WeakKeyDictionary()


@final
class _Instrumentation:
    """The instrumentation :func:`enable` installs: a tracer, and a meter's instruments."""

    def __init__(
        self,
        tracer: Tracer,
        metrics: _Instruments,
        *,
        trace_operations: bool,
        include_user: bool,
        operation_durations: bool,
    ) -> None:
        self.trace_operations = trace_operations
        self._operation_durations = operation_durations
        self._include_user = include_user
        self._tracer = tracer
        self._api = _Api()
        self._metrics = metrics

    @property
    def include_user(self) -> bool:
        return self._include_user

    def span(self, name: str, attributes: _telemetry.Attributes) -> _Span:
        return _Span(self._api, self._tracer.start_span(name, attributes=attributes))

    def wrap(self, index: int, op: Any) -> Any:
        # Only what the engine accepts is wrapped: anything else reaches it as it is, to be
        # refused with the engine's own error.
        if not callable(op):
            return op
        return functools.partial(_traced_operation, self, index, op)

    def traced(self, operations: Any) -> Any:
        if isinstance(operations, AsyncIterable):
            return self._traced_async(operations)
        if isinstance(operations, Sized):  # the engine reads the total from len()
            return _TracedOperations(self, operations)
        return map(self.wrap, itertools.count(), operations)

    async def _traced_async(self, operations: AsyncIterable[Any]) -> AsyncIterator[Any]:
        index = 0
        async for op in operations:
            yield self.wrap(index, op)
            index += 1

    def batch_ended(
        self,
        span: _telemetry.Span,
        *,
        succeeded: int,
        failed: int,
        cancelled: int,
        duration: float,
        durations: Sequence[float],
    ) -> None:
        span.set(
            {
                "trioflow.batch.total": succeeded + failed + cancelled,
                "trioflow.batch.succeeded": succeeded,
                "trioflow.batch.failed": failed,
                "trioflow.batch.cancelled": cancelled,
            }
        )
        if failed:
            span.fail(f"{failed} operations failed")
        add = self._metrics.operations.add
        for outcome, count in (
            ("succeeded", succeeded),
            ("failed", failed),
            ("cancelled", cancelled),
        ):
            if count:
                add(count, {_OUTCOME: outcome})
        self._metrics.batch_duration.record(duration)
        if self._operation_durations:
            record = self._metrics.operation_duration.record
            for each in durations:
                record(each)

    def retried(self, attempt: int, error: BaseException | None) -> None:
        kind = "" if error is None else _type_name(error)
        self._api.current_span().add_event(
            "trioflow.retry", {"trioflow.retry.attempt": attempt, "exception.type": kind}
        )
        self._metrics.retries.add(
            1, {"event.name": "OnRetry", "strategy.name": "retry", "exception.type": kind}
        )

    def steps_ended(self, workflow: str, statuses: Iterable[str]) -> None:
        add = self._metrics.steps.add
        for status, count in collections.Counter(statuses).items():
            add(count, {"trioflow.workflow.name": workflow, "trioflow.step.status": status})

    def request_ended(
        self, pipeline: str, state: str, category: str | None, duration: float
    ) -> None:
        attributes = {"pipeline.name": pipeline, "trioflow.request.state": state}
        self._metrics.request_duration.record(duration, attributes)
        if category is not None:
            attributes["error.category"] = category
        self._metrics.requests.add(1, attributes)


# --- observed statistics ---------------------------------------------------------------------

# Observed objects by kind, each with its name (weakly held: observing keeps nothing alive).
_observed: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()

_BREAKER_STATE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}

# (instrument, unit, description, is it a monotonic counter (else a gauge)).
_OBSERVED: tuple[tuple[str, str, str, bool], ...] = (
    ("trioflow.limiter.executing", "{operation}", "Operations holding a slot", False),
    ("trioflow.limiter.waiting", "{operation}", "Operations waiting for a slot", False),
    ("trioflow.limiter.executed", "{operation}", "Operations that held a slot", True),
    ("trioflow.limiter.failed", "{operation}", "Operations that failed holding a slot", True),
    ("trioflow.limiter.throttled", "{operation}", "Operations that had to wait", True),
    ("trioflow.rate_limiter.waiting", "{call}", "Calls waiting for a token", False),
    ("trioflow.rate_limiter.acquired", "{call}", "Tokens granted", True),
    ("trioflow.rate_limiter.rejected", "{call}", "Calls rejected", True),
    ("trioflow.breaker.state", "1", "Breaker state: 0 closed, 1 half-open, 2 open", False),
    ("trioflow.breaker.opened", "{event}", "Times the breaker opened", True),
    ("trioflow.breaker.rejected", "{call}", "Calls rejected while open", True),
    ("trioflow.coordinator.in_flight", "{request}", "Requests being processed", False),
    ("trioflow.coordinator.queue_depth", "{request}", "Requests waiting for admission", False),
)


def _readings(obj: object, name: str) -> Iterator[tuple[str, float, dict[str, str]]]:
    """The observed values of one object: (instrument, value, attributes)."""
    strategy = {"strategy.name": name}
    if isinstance(obj, ResourceManager):
        stats = obj.statistics()
        each: list[tuple[dict[str, str], ResourceManagerStatistics | PoolStatistics]] = [
            (strategy, stats),
            *(({**strategy, "trioflow.pool": pool}, of) for pool, of in stats.pools.items()),
        ]
        for tags, values in each:
            yield "trioflow.limiter.executing", values.executing, tags
            yield "trioflow.limiter.waiting", values.waiting, tags
            yield "trioflow.limiter.executed", values.executed, tags
            yield "trioflow.limiter.failed", values.failed, tags
            yield "trioflow.limiter.throttled", values.throttled, tags
    elif isinstance(obj, TokenBucket | KeyedRateLimiter):
        rates = obj.statistics()
        yield "trioflow.rate_limiter.waiting", rates.waiting, strategy
        yield "trioflow.rate_limiter.acquired", rates.acquired, strategy
        yield "trioflow.rate_limiter.rejected", rates.rejected, strategy
    elif isinstance(obj, CircuitBreaker):
        breaker = obj.statistics()
        yield "trioflow.breaker.state", _BREAKER_STATE[breaker.state], strategy
        opened = {**strategy, "event.name": "OnCircuitOpened"}
        yield "trioflow.breaker.opened", breaker.opened, opened
        yield "trioflow.breaker.rejected", breaker.rejected, strategy
    else:
        coordinator = obj.statistics()  # type: ignore[attr-defined]
        yield "trioflow.coordinator.in_flight", coordinator.in_flight, strategy
        yield "trioflow.coordinator.queue_depth", coordinator.queue_depth, strategy


def _observe(instrument: str, options: CallbackOptions) -> Iterator[Observation]:
    from opentelemetry.metrics import Observation

    if _telemetry.hooks.current is None:  # disabled: nothing new to report
        return
    for obj, name in list(_observed.items()):
        for metric, value, attributes in _readings(obj, name):
            if metric == instrument:
                yield Observation(value, attributes)


def observe(obj: object, *, name: str) -> None:
    """Export the statistics of a limiter, rate limiter, breaker or coordinator as metrics.

    The values are read from ``obj.statistics()`` when the metrics are collected (observable
    instruments), so observing costs the object nothing between collections. The object is
    held weakly: observing it does not keep it alive. Observing it again renames it.

    Args:
        obj: A :class:`~trioflow.ResourceManager` (``trioflow.limiter.*``, per pool too, tagged
            ``trioflow.pool``), a :class:`~trioflow.TokenBucket` or
            :class:`~trioflow.KeyedRateLimiter` (``trioflow.rate_limiter.*``), a
            :class:`~trioflow.CircuitBreaker` (``trioflow.breaker.*``) or a
            :class:`~trioflow.lifecycle.Coordinator` (``trioflow.coordinator.*``).
        name: The ``strategy.name`` tag of its metrics.

    Raises:
        TypeError: ``obj`` is none of those, or ``name`` is not a str.
        ValueError: ``name`` is empty.
    """
    from .lifecycle import Coordinator

    if not isinstance(
        obj, ResourceManager | TokenBucket | KeyedRateLimiter | CircuitBreaker | Coordinator
    ):
        raise TypeError(
            "obj must be a ResourceManager, TokenBucket, KeyedRateLimiter, CircuitBreaker or "
            f"Coordinator, got {describe(obj)}"
        )
    _observed[obj] = check_name(name, "name")


# --- turning it on and off -------------------------------------------------------------------


def enable(
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    *,
    trace_operations: bool = False,
    include_user: bool = False,
    operation_durations: bool = True,
) -> None:
    """Turn trioflow's traces and metrics on (again, with new options, if they are on).

    Args:
        tracer_provider: Where the spans go; None for OpenTelemetry's global provider (a
            no-op one unless the application set one).
        meter_provider: Where the metrics go; None for the global provider.
        trace_operations: Also open a span per operation of a batch (a span costs tens of
            microseconds: off by default, so that a batch costs one span, not one per item).
        include_user: Tag request spans with the request's user id (``enduser.id``). Off by
            default: a user id may be personal data.
        operation_durations: Record each operation's duration in the
            ``trioflow.batch.operation.duration`` histogram, from the durations the batch
            keeps, when it ends. The one metric cost that grows with the operations: nothing
            with the no-op API, a few microseconds per operation with the SDK. False leaves
            the histogram empty (batch durations and counts are still recorded).

    Raises:
        ModuleNotFoundError: The OpenTelemetry API is not installed.
        TypeError: A provider is not an OpenTelemetry provider, or a flag is not a bool.
    """
    check_bool(trace_operations, "trace_operations")
    check_bool(include_user, "include_user")
    check_bool(operation_durations, "operation_durations")
    try:
        from opentelemetry import metrics, trace
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(_MISSING) from exc
    if tracer_provider is not None and not isinstance(tracer_provider, trace.TracerProvider):
        raise TypeError(
            f"tracer_provider must be an OpenTelemetry TracerProvider or None, got "
            f"{describe(tracer_provider)}"
        )
    if meter_provider is not None and not isinstance(meter_provider, metrics.MeterProvider):
        raise TypeError(
            f"meter_provider must be an OpenTelemetry MeterProvider or None, got "
            f"{describe(meter_provider)}"
        )
    from . import __version__

    tracer = trace.get_tracer("trioflow", __version__, tracer_provider=tracer_provider)
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    made = _instruments.get(provider)
    if made is None:
        made = _instruments[provider] = _Instruments(provider.get_meter("trioflow", __version__))
    _telemetry.set_current(
        _Instrumentation(
            tracer,
            made,
            trace_operations=trace_operations,
            include_user=include_user,
            operation_durations=operation_durations,
        )
    )


def disable() -> None:
    """Turn trioflow's traces and metrics off: the engines go back to doing nothing.

    Spans already open end as usual. Meant for tests and for turning telemetry off at run
    time; the instruments already made stay with their meter provider (OpenTelemetry has no
    way to remove them) and report nothing new, observed statistics included. Enabling again
    with the same meter provider reuses them.
    """
    _telemetry.set_current(None)


def enabled() -> bool:
    """Return whether :func:`enable` is in force."""
    return _telemetry.hooks.current is not None


@contextlib.contextmanager
def tracing_from_environment(*, console: TextIO | None = None) -> Iterator[SDKTracerProvider]:
    """Export trioflow's spans as the standard ``OTEL_*`` environment variables say.

    Makes an SDK ``TracerProvider`` (its resource from ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES``) with a batch span processor per exporter named in
    ``OTEL_TRACES_EXPORTER`` (``otlp`` by default, ``console``, ``none``, or any installed
    exporter), enables trioflow's telemetry with it, and on exit disables it and shuts the
    provider down, which flushes the spans. ``trioflow run --trace`` runs in this.

    Args:
        console: Where the ``console`` exporter writes (None: its default, standard output;
            ``trioflow run --trace`` gives it standard error, beside its progress lines).

    Yields:
        The tracer provider.

    Raises:
        ModuleNotFoundError: The OpenTelemetry SDK, or a named exporter, is not installed.
    """
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "tracing needs the OpenTelemetry SDK: pip install opentelemetry-sdk "
            "(and opentelemetry-exporter-otlp to export with OTLP)"
        ) from exc
    provider = TracerProvider()
    for name in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        name = name.strip()
        if name in ("", "none"):
            continue
        found = importlib.metadata.entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            hint = " (pip install opentelemetry-exporter-otlp)" if name == "otlp" else ""
            raise ModuleNotFoundError(
                f"OTEL_TRACES_EXPORTER names the span exporter {name!r}, which is not "
                f"installed{hint}; OTEL_TRACES_EXPORTER=console prints the spans instead"
            )
        exporter: Any = next(iter(found)).load()
        made = exporter() if name != "console" or console is None else exporter(out=console)
        provider.add_span_processor(BatchSpanProcessor(made))
    enable(provider)
    try:
        yield provider
    finally:
        disable()
        provider.shutdown()
