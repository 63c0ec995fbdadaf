"""Orchestration configuration: frozen values, loaded from TOML, JSON or a mapping.

:func:`load_config` reads the file (or takes the mapping), structures it with cattrs into an
:class:`OrchestrationConfig` and reports every problem at once, each with its path::

    trioflow.ConfigError: invalid configuration in orchestration.toml:
      retry.backoff_multiplier: must be a finite number >= 1, got 0.5 (float)
      pools.llm: must be an int >= 1, got 0 (int)
      rate_limits.per_usr: unknown key

Durations are seconds (a number) or ``"HH:MM:SS"`` strings (``"00:00:01.5"`` too); an
optional duration (``default_timeout``) may also be ``"none"`` (or JSON ``null``) for no limit.
How fields carry their checks, and how every problem is collected, is ``_checked``'s concern.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal

import attrs
import cattrs

from .._checked import (
    Check,
    Problems,
    boolean,
    checked_converter,
    field,
    instance_of,
    mapping,
    names,
    number_at_least,
    one_of,
    optional,
    percent,
    validate,
)
from .._checks import check_int, check_number, no_deadline, problem
from .._deprecate import warn_renamed
from .._errors import ConfigError
from .._retry import RetryPolicy
from .._structure import describe, join_path, problems_of

__all__ = (
    "AlertsConfig",
    "FailureRatioAlertConfig",
    "HealthAlertConfig",
    "HealthConfig",
    "QueueDepthAlertConfig",
    "OrchestrationConfig",
    "RateLimitConfig",
    "RateLimitsConfig",
    "RetryConfig",
    "SharedConfig",
    "load_config",
)


# --- checks of names, specific to this configuration ---------------------------------------
def _pool_name(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return f"pool names must be non-empty strings, got {describe(name)}"
    return None


def _policy_name(name: Any) -> str | None:
    if name == "default":
        return "the name 'default' is reserved for the retry block"
    return None


def _source_name(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return f"sources must be non-empty strings, got {describe(name)}"
    return None


def _read_only(value: Any) -> Any:
    return MappingProxyType(dict(value)) if isinstance(value, Mapping) else value


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


_UNSET: Any = object()

# The largest count a configuration may give (a size, a depth, attempts, a burst): what a
# Python container can hold, and well inside the float range, which limiters and retry
# policies compute their counts in (10**400 attempts would overflow there).
MAX_COUNT = sys.maxsize


def count_at_least(minimum: int) -> Check:
    def check(value: Any) -> str | None:
        found = problem(check_int, value, minimum=minimum)
        if found is None and value > MAX_COUNT:
            # Only a count too large names the upper bound: ">= 1" is the usual complaint.
            return problem(check_int, value, minimum=minimum, maximum=MAX_COUNT)
        return found

    return check


# Keys renamed since 0.1, by config class: old key -> (new key, how an old value converts).
_RETRY_RENAMES: Mapping[str, tuple[str, Callable[[Any], Any]]] = MappingProxyType(
    {
        "max_retries": ("attempts", lambda retries: retries + 1),
        "backoff_multiplier": ("multiplier", lambda multiplier: multiplier),
    }
)
_OLD_RETRY_CHECKS: Mapping[str, Check] = MappingProxyType(
    {"max_retries": count_at_least(0), "backoff_multiplier": number_at_least(1)}
)


def _renamed_retry_keys(
    given: Mapping[str, Any], where: str, stacklevel: int
) -> tuple[dict[str, Any], Problems]:
    """Accept the 0.1 keys of a retry block: warn, convert, and report an old key given twice.

    Returns the block with new keys only, and the problems of the old keys (a value out of
    range is reported under the key the file used). ``stacklevel`` counts the frames between
    the caller of this function and the code the warning should point at.
    """
    out = dict(given)
    problems: Problems = []
    for old, (new, convert) in _RETRY_RENAMES.items():
        if old not in out:
            continue
        value = out.pop(old)
        if new in out:
            problems.append((join_path(where, old), f"give {new} or {old} (deprecated), not both"))
            continue
        found = _OLD_RETRY_CHECKS[old](value)
        if found:
            problems.append((join_path(where, old), str(found)))
            continue
        hint = join_path(where, new) + (f" (= {old} + 1)" if old == "max_retries" else "")
        warn_renamed(join_path(where, old), hint, stacklevel=3 + stacklevel)
        out[new] = convert(value)
    return out, problems


@attrs.frozen(kw_only=True, init=False)
class RetryConfig:
    """A retry policy as a configuration file writes it; its fields are those of RetryPolicy.

    ``[retry]`` (the default policy) and each entry of ``[retry_policies]`` are one of these.
    The 0.1 names still load, with a :class:`DeprecationWarning` naming the new key:
    ``max_retries`` (retries after the first try) becomes ``attempts = max_retries + 1``, and
    ``backoff_multiplier`` becomes ``multiplier``; giving both an old key and its new one is a
    :class:`~trioflow.ConfigError`.

    Args:
        attempts: Total tries, an int >= 1 (1 means no retry).
        initial_delay: The wait before the first retry, a duration >= 0.
        multiplier: Growth factor of the wait between retries, >= 1.
        max_delay: Cap on any one wait, a duration >= ``initial_delay``.
        jitter: Random extra wait of up to this duration, >= 0.
        max_retries: Deprecated: ``attempts - 1``.
        backoff_multiplier: Deprecated: ``multiplier``.

    Raises:
        ConfigError: Listing every field out of range, or an old key given with its new one.
    """

    attempts: int = field(4, check=count_at_least(1))
    initial_delay: float = field(1.0, check=number_at_least(0), duration="required")
    multiplier: float = field(2.0, check=number_at_least(1))
    max_delay: float = field(30.0, check=number_at_least(0), duration="required")
    jitter: float = field(0.0, check=number_at_least(0), duration="required")

    def __init__(
        self,
        *,
        attempts: int = _UNSET,
        initial_delay: float = _UNSET,
        multiplier: float = _UNSET,
        max_delay: float = _UNSET,
        jitter: float = _UNSET,
        max_retries: int = _UNSET,
        backoff_multiplier: float = _UNSET,
    ) -> None:
        given = {
            name: value
            for name, value in (
                ("attempts", attempts),
                ("initial_delay", initial_delay),
                ("multiplier", multiplier),
                ("max_delay", max_delay),
                ("jitter", jitter),
                ("max_retries", max_retries),
                ("backoff_multiplier", backoff_multiplier),
            )
            if value is not _UNSET
        }
        checked, problems = _renamed_retry_keys(given, "", stacklevel=1)
        if problems:
            raise ConfigError(problems)
        self.__attrs_init__(**checked)

    def __attrs_post_init__(self) -> None:
        validate(self, self._cross_problems)

    def _cross_problems(self) -> Problems:
        low, high = self.initial_delay, self.max_delay
        if high < low:
            return [("max_delay", f"must be >= initial_delay ({low:g}), got {high:g}")]
        return []

    def policy(self) -> RetryPolicy:
        """Return the :class:`trioflow.RetryPolicy` this block describes.

        Returns:
            A policy with the same fields, retrying ``ConnectionError`` and ``TimeoutError``.
        """
        return RetryPolicy(
            attempts=self.attempts,
            initial_delay=self.initial_delay,
            multiplier=self.multiplier,
            max_delay=self.max_delay,
            jitter=self.jitter,
        )


def _default_retry_policies() -> Mapping[str, RetryConfig]:
    # The default policies by operation type: llm (3 tries, 1-5 s exponential), tool (2 tries,
    # 2 s fixed), storage (5 tries, 0.5-2 s exponential).
    return MappingProxyType(
        {
            "llm": RetryConfig(attempts=3, initial_delay=1.0, max_delay=5.0),
            "tool": RetryConfig(attempts=2, initial_delay=2.0, multiplier=1.0, max_delay=2.0),
            "storage": RetryConfig(attempts=5, initial_delay=0.5, max_delay=2.0),
        }
    )


@attrs.frozen(kw_only=True)
class RateLimitConfig:
    """A token bucket: ``rate`` requests per ``per`` seconds, with bursts up to ``burst``.

    Args:
        rate: Requests allowed per ``per``, a number > 0.
        per: The period ``rate`` is counted over, a duration > 0 (1 second by default).
            ``rate / per`` must be a finite number > 0 as well (``1e308 / 1e-308`` is not).
        burst: Requests allowed at once after a quiet period, an int from 1 to
            ``sys.maxsize`` (by default ``rate``, rounded up).

    Raises:
        ConfigError: Listing every field out of range, or ``rate / per`` out of range.
    """

    rate: float = field(check=number_at_least(0, strict=True))
    per: float = field(1.0, check=number_at_least(0, strict=True), duration="required")
    burst: int | None = field(None, check=optional(count_at_least(1)))

    def __attrs_post_init__(self) -> None:
        validate(self, self._cross_problems)

    def _cross_problems(self) -> Problems:
        # Each is in range alone, but the bucket refills at rate / per tokens a second, which
        # must be a finite number > 0 too: 1e308 / 1e-308 overflows to inf, 1e-308 / 1e308
        # underflows to 0.
        per_second = self.rate / self.per
        if not 0 < per_second < math.inf:
            return [
                (
                    "$",
                    "rate / per must be a finite number > 0 (requests per second), got "
                    f"{self.rate!r} / {self.per!r} = {per_second!r}",
                )
            ]
        return []

    @property
    def per_second(self) -> float:
        """Requests allowed per second."""
        return self.rate / self.per

    @property
    def capacity(self) -> int:
        """The bucket's capacity: ``burst``, or ``rate`` rounded up."""
        return self.burst if self.burst is not None else max(1, math.ceil(self.rate))


_RATE_LIMIT = instance_of(RateLimitConfig)
_RATE_LIMIT_OR_NONE = instance_of(RateLimitConfig, optional=True)


@attrs.frozen(kw_only=True)
class RateLimitsConfig:
    """Rate limits applied when requests arrive.

    Args:
        per_user: One bucket per user (``Request.user_id``), or ``None`` for no limit.
        per_source: One bucket per listed source (``"cli"``, ``"mcp"``, ...) shared by all
            its users; sources not listed are not limited.
        when_limited: ``"wait"`` queues a request until its bucket has a token; ``"fail"``
            refuses it at once (a RESOURCE_EXHAUSTION failure).

    Raises:
        ConfigError: Listing every field out of range.
    """

    per_user: RateLimitConfig | None = field(None, check=_RATE_LIMIT_OR_NONE)  # noqa: RUF009
    per_source: Mapping[str, RateLimitConfig] = field(
        check=mapping,
        items=_RATE_LIMIT,
        keys=_source_name,
        factory=dict,
        converter=_read_only,
    )
    when_limited: Literal["wait", "fail"] = field("wait", check=one_of("wait", "fail"))

    def __attrs_post_init__(self) -> None:
        validate(self)


@attrs.frozen(kw_only=True)
class HealthConfig:
    """Backpressure from system health: admit requests only while the system is healthy.

    Args:
        enabled: Whether to monitor health at all.
        when_unhealthy: ``"wait"`` holds new requests until healthy again; ``"fail"`` refuses
            them at once (a RESOURCE_EXHAUSTION failure).
        interval: How often to sample, a duration > 0.
        max_memory_percent: Unhealthy above this system memory use, in (0, 100].
        max_cpu_percent: Unhealthy above this CPU use, in (0, 100].

    Raises:
        ConfigError: Listing every field out of range.
    """

    enabled: bool = field(False, check=boolean)
    when_unhealthy: Literal["wait", "fail"] = field("wait", check=one_of("wait", "fail"))
    interval: float = field(1.0, check=number_at_least(0, strict=True), duration="required")
    max_memory_percent: float = field(90.0, check=percent)
    max_cpu_percent: float = field(80.0, check=percent)

    def __attrs_post_init__(self) -> None:
        validate(self)


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _redis_url(value: Any) -> str | None:
    if not isinstance(value, str) or not value.startswith(_REDIS_SCHEMES):
        return (
            "must be a redis://, rediss:// or unix:// URL, e.g. 'redis://127.0.0.1:6379/0', "
            f"got {describe(value)}"
        )
    return None


def _key_name(value: Any) -> str | None:
    if not isinstance(value, str) or not value or value != value.strip():
        return f"must be a non-empty string without surrounding spaces, got {describe(value)}"
    return None


@attrs.frozen(kw_only=True)
class SharedConfig:
    """One admission shared by several coordinator processes, through Redis.

    With ``url`` set, :func:`~trioflow.lifecycle.open_coordinator` connects to that Redis for
    the coordinator's lifetime (``pip install 'trioflow[redis]'``), and every coordinator with
    the same ``url`` and ``name`` shares ``max_concurrency``, ``per_user_limit`` and the rate
    limits: each is counted once over all of them, not once per process (see
    ``docs/instances.md``).

    Args:
        url: ``redis://[:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
            ``unix:///path?db=0``; ``None`` (the default) keeps every limit in the process.
        name: What the limits' keys in Redis are named after, so that two services sharing
            one Redis do not share limits: a non-empty string.
        lease: Seconds a held slot lives unless its process renews it (every third of that);
            the slots of a process that dies come back within one lease. A duration > 0.

    Raises:
        ConfigError: Listing every field out of range.
    """

    url: str | None = field(None, check=optional(_redis_url))
    name: str = field("coordinator", check=_key_name)
    lease: float = field(10.0, check=number_at_least(0, strict=True), duration="required")

    def __attrs_post_init__(self) -> None:
        validate(self)


# --- alerts ---------------------------------------------------------------------------------
# An alert fires when its value reaches the threshold and clears when the value is back at or
# below clear_at; by default clear_at is this fraction of the threshold, so a value hovering at
# the threshold does not make the alert flap.
CLEAR_FRACTION = 0.8


def _ratio(value: Any) -> str | None:
    return problem(check_number, value, minimum=0, maximum=1, strict=True)


def _fraction(value: Any) -> str | None:
    return problem(check_number, value, minimum=0, maximum=1)


def _clear_below(threshold: float, clear_at: float | None) -> Problems:
    if clear_at is not None and clear_at >= threshold:
        return [("clear_at", f"must be < threshold ({threshold:g}), got {clear_at:g}")]
    return []


@attrs.frozen(kw_only=True)
class QueueDepthAlertConfig:
    """Alert when too many requests wait for admission.

    Fires (a ``"queue_depth"`` alert) when the requests waiting for admission reach
    ``threshold``; clears when they are back at or below ``clear_at``. Evaluated each time
    the queue depth changes.

    Args:
        threshold: Waiting requests that fire the alert, an int >= 1.
        clear_at: Waiting requests at or below which it clears, a number >= 0 below
            ``threshold``; by default ``0.8 * threshold``.

    Raises:
        ConfigError: Listing every field out of range, or ``clear_at >= threshold``.
    """

    threshold: int = field(check=count_at_least(1))
    clear_at: float | None = field(None, check=optional(number_at_least(0)))

    def __attrs_post_init__(self) -> None:
        validate(self, lambda: _clear_below(self.threshold, self.clear_at))

    @property
    def clear_level(self) -> float:
        """``clear_at``, or its default ``0.8 * threshold``."""
        return self.threshold * CLEAR_FRACTION if self.clear_at is None else self.clear_at


@attrs.frozen(kw_only=True)
class FailureRatioAlertConfig:
    """Alert when too many requests fail over a sliding window of time.

    The ratio is ``failed / (succeeded + degraded + failed)`` over the requests that ended in
    the last ``window`` seconds (those refused at admission count as failed, cancelled ones are
    left out); it counts only once the window
    holds at least ``min_requests`` of them. Fires (a ``"failure_ratio"`` alert) when the
    ratio reaches ``threshold``; clears when it is back at or below ``clear_at``. Evaluated
    each time a request ends.

    Args:
        threshold: The ratio that fires the alert, in (0, 1].
        clear_at: The ratio at or below which it clears, in [0, 1] and below ``threshold``;
            by default ``0.8 * threshold``.
        window: Seconds of requests the ratio is taken over, a duration > 0.
        min_requests: Requests the window must hold before the ratio counts, an int >= 1.

    Raises:
        ConfigError: Listing every field out of range, or ``clear_at >= threshold``.
    """

    threshold: float = field(check=_ratio)
    clear_at: float | None = field(None, check=optional(_fraction))
    window: float = field(60.0, check=number_at_least(0, strict=True), duration="required")
    min_requests: int = field(10, check=count_at_least(1))

    def __attrs_post_init__(self) -> None:
        validate(self, lambda: _clear_below(self.threshold, self.clear_at))

    @property
    def clear_level(self) -> float:
        """``clear_at``, or its default ``0.8 * threshold``."""
        return self.threshold * CLEAR_FRACTION if self.clear_at is None else self.clear_at


@attrs.frozen(kw_only=True)
class HealthAlertConfig:
    """Alert when the health source reports unhealthy (for long enough).

    Fires (a ``"health"`` alert) once the health source has been unhealthy for
    ``unhealthy_for`` seconds without a break, and clears when it is healthy again. A
    :class:`~trioflow.HealthMonitor` tells the coordinator when it flips; another health
    source is looked at every ``interval`` seconds.

    Args:
        unhealthy_for: Seconds of being unhealthy before the alert fires, a duration >= 0
            (0: at once).
        interval: How often a health source that is not a ``HealthMonitor`` is looked at, a
            duration > 0.

    Raises:
        ConfigError: Listing every field out of range.
    """

    unhealthy_for: float = field(0.0, check=number_at_least(0), duration="required")
    interval: float = field(1.0, check=number_at_least(0, strict=True), duration="required")

    def __attrs_post_init__(self) -> None:
        validate(self)


@attrs.frozen(kw_only=True)
class AlertsConfig:
    """The coordinator's alerts; each is off unless given.

    Each alert fires one ``alert`` event (a :class:`~trioflow.lifecycle.Alert`) when crossed
    and one ``cleared`` event (:class:`~trioflow.lifecycle.AlertCleared`) when back below,
    delivered to :meth:`Coordinator.add_listener
    <trioflow.lifecycle.Coordinator.add_listener>` and logged (a structlog ``alert`` warning,
    an ``alert cleared`` info).

    Args:
        queue_depth: Requests waiting for admission, or None.
        failure_ratio: Failed requests over a sliding window, or None.
        health: The health source unhealthy, or None.

    Raises:
        ConfigError: Listing every field out of range.
    """

    queue_depth: QueueDepthAlertConfig | None = field(  # noqa: RUF009
        None, check=instance_of(QueueDepthAlertConfig, optional=True)
    )
    failure_ratio: FailureRatioAlertConfig | None = field(  # noqa: RUF009
        None, check=instance_of(FailureRatioAlertConfig, optional=True)
    )
    health: HealthAlertConfig | None = field(  # noqa: RUF009
        None, check=instance_of(HealthAlertConfig, optional=True)
    )

    def __attrs_post_init__(self) -> None:
        validate(self)


_RETRY = instance_of(RetryConfig)
_RATE_LIMITS = instance_of(RateLimitsConfig)
_HEALTH = instance_of(HealthConfig)
_SHARED = instance_of(SharedConfig)


def _default_pools() -> Mapping[str, int]:
    return MappingProxyType({"llm": 5, "tool": 10, "context": 20})


@attrs.frozen(kw_only=True)
class OrchestrationConfig:
    """Everything a coordinator needs to know: limits, pools, timeouts, retries, rate limits.

    The defaults suit a small request-serving application: 50 requests at once, 10 per user,
    pools of 5 LLM calls, 10 tool calls and 20 context assemblies, a 30-second request timeout,
    and retry policies for llm, tool and storage operations. Build one in code or with
    :func:`trioflow.lifecycle.load_config`.

    Args:
        max_concurrency: The most requests processed at once, an int >= 1.
        per_user_limit: The most requests of one user processed at once, an int >= 1.
        max_queue_depth: The most requests waiting for admission; more are refused at once
            (a RESOURCE_EXHAUSTION failure, shedding load). An int >= 1, or ``None`` for no
            limit.
        priority_aging: Requests waiting for admission are served by ``Request.priority``
            (larger first, equal ones first come, first served); with this set, a waiting
            request rises one priority step per ``priority_aging`` seconds, so low-priority
            requests are never starved. A duration > 0, or ``None`` (the default) for none.
        default_timeout: The time a request may take from admission to its terminal state, a
            duration > 0, or ``None`` (or infinity) for no limit.
        enable_metrics: Whether the coordinator logs its statistics periodically.
        background_limit: The most background tasks
            (:meth:`~trioflow.lifecycle.Coordinator.start_background`) running at once, an int
            >= 1; more wait for a place.
        metrics_interval: How often to log them, a duration > 0.
        pools: Named pools and their sizes, for stages that name them.
        retry: The default retry policy, used by stages of operation ``"default"``.
        retry_policies: More retry policies by operation type (``"llm"``, ``"tool"``, ...),
            for stages of that operation (``Stage(..., operation="llm")``).
        rate_limits: Per-user and per-source rate limits.
        shared: Redis to keep the global and per-user limits and the rate limits in, so that
            several coordinator processes share them (:class:`SharedConfig`).
        health: Backpressure from system health.
        optional_stages: Names of stages whose failure is recorded and skipped (the request
            ends DEGRADED) instead of failing the request.
        alerts: Thresholds on queue depth, failure ratio and health that fire alerts.

    Every count (``max_concurrency``, ``per_user_limit``, ``max_queue_depth``, pool sizes,
    ``attempts``, ``burst``) is at most ``sys.maxsize``: limiters and retry policies compute
    with them as floats.

    Raises:
        ConfigError: Listing every field out of range.
    """

    max_concurrency: int = field(50, check=count_at_least(1))
    per_user_limit: int = field(10, check=count_at_least(1))
    max_queue_depth: int | None = field(None, check=optional(count_at_least(1)))
    priority_aging: float | None = field(
        None, check=optional(number_at_least(0, strict=True)), duration="optional"
    )
    default_timeout: float | None = field(
        30.0,
        check=optional(number_at_least(0, strict=True, finite=False)),
        duration="optional",
        converter=no_deadline,
    )
    enable_metrics: bool = field(True, check=boolean)
    background_limit: int = field(20, check=count_at_least(1))
    metrics_interval: float = field(
        60.0, check=number_at_least(0, strict=True), duration="required"
    )
    pools: Mapping[str, int] = field(
        check=mapping,
        items=count_at_least(1),
        keys=_pool_name,
        factory=_default_pools,
        converter=_read_only,
    )
    retry: RetryConfig = field(check=_RETRY, factory=RetryConfig)  # noqa: RUF009
    retry_policies: Mapping[str, RetryConfig] = field(
        check=mapping,
        items=_RETRY,
        keys=_policy_name,
        factory=_default_retry_policies,
        converter=_read_only,
    )
    rate_limits: RateLimitsConfig = field(check=_RATE_LIMITS, factory=RateLimitsConfig)  # noqa: RUF009
    shared: SharedConfig = field(check=_SHARED, factory=SharedConfig)  # noqa: RUF009
    health: HealthConfig = field(check=_HEALTH, factory=HealthConfig)  # noqa: RUF009
    optional_stages: tuple[str, ...] = field((), check=names, converter=_tuple)
    alerts: AlertsConfig = field(check=instance_of(AlertsConfig), factory=AlertsConfig)  # noqa: RUF009

    def __attrs_post_init__(self) -> None:
        validate(self)

    def retry_policy_map(self) -> Mapping[str, RetryPolicy]:
        """Return every retry policy by name: ``"default"`` and those of ``retry_policies``.

        Returns:
            A read-only mapping of :class:`trioflow.RetryPolicy` by operation type.
        """
        policies = {"default": self.retry.policy()}
        policies.update((name, cfg.policy()) for name, cfg in self.retry_policies.items())
        return MappingProxyType(policies)


_CONFIG_CLASSES = (
    SharedConfig,
    RetryConfig,
    RateLimitConfig,
    RateLimitsConfig,
    HealthConfig,
    QueueDepthAlertConfig,
    FailureRatioAlertConfig,
    HealthAlertConfig,
    AlertsConfig,
    OrchestrationConfig,
)
# Resolved now: trioflow sets the classes' __module__ to "trioflow" once imported, and the string
# annotations must be evaluated in this module's namespace.
for _cls in _CONFIG_CLASSES:
    attrs.resolve_types(_cls)


@functools.cache
def _converter() -> cattrs.Converter:
    # Built on first use, not at import: generating the structuring code takes milliseconds.
    return checked_converter(_CONFIG_CLASSES)


def _read(path: str) -> Any:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".toml", ".json"):
        raise ValueError(f"source must be a .toml or .json file, got {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        if suffix == ".toml":
            return tomllib.loads(data.decode("utf-8"))
        return json.loads(data)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        kind = "TOML" if suffix == ".toml" else "JSON"
        raise ConfigError([("$", f"not valid {kind}: {exc}")], source=path) from None


def load_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> OrchestrationConfig:
    """Load an :class:`OrchestrationConfig` from a TOML or JSON file, or from a mapping.

    Every problem is collected, not just the first: wrong types, values out of range, unknown
    keys (rejected, never ignored) and bad durations, each with its path.

    Args:
        source: A path to a ``.toml`` or ``.json`` file, or a mapping of the same shape (as
            parsed from either).

    Returns:
        The configuration, with defaults for everything not given.

    Raises:
        ConfigError: The configuration is invalid; ``problems`` lists every problem as
            ``(path, message)``.
        TypeError: ``source`` is neither a path nor a mapping.
        ValueError: The file's name does not end in ``.toml`` or ``.json``.
        OSError: The file cannot be read.
    """
    where: str | None = None
    if isinstance(source, Mapping):
        data: Any = source
    elif isinstance(source, str | os.PathLike):
        where = os.fspath(source)
        data = _read(where)
    else:
        raise TypeError(
            f"source must be a path to a .toml/.json file or a mapping, got {describe(source)}"
        )
    if not isinstance(data, Mapping):
        raise ConfigError(
            [("$", f"expected a table of settings, got {describe(data)}")], source=where
        )
    data, renamed = _renamed_keys(data)
    try:
        config = _converter().structure(data, OrchestrationConfig)
    except Exception as exc:
        raise ConfigError([*renamed, *problems_of(exc)], source=where) from None
    if renamed:
        raise ConfigError(renamed, source=where)
    return config


def _renamed_keys(data: Mapping[str, Any]) -> tuple[Mapping[str, Any], Problems]:
    """Rename the 0.1 keys of the retry blocks (``retry`` and each of ``retry_policies``)."""
    problems: Problems = []
    out = dict(data)
    retry = out.get("retry")
    if isinstance(retry, Mapping):
        out["retry"], found = _renamed_retry_keys(retry, "retry", stacklevel=2)
        problems.extend(found)
    policies = out.get("retry_policies")
    if isinstance(policies, Mapping):
        renamed: dict[Any, Any] = {}
        for name, block in policies.items():
            if isinstance(block, Mapping) and isinstance(name, str):
                where = join_path("retry_policies", name if name.isidentifier() else f"[{name!r}]")
                block, found = _renamed_retry_keys(block, where, stacklevel=2)
                problems.extend(found)
            renamed[name] = block
        out["retry_policies"] = renamed
    return out, problems
