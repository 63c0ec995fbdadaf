"""Orchestration configuration: frozen values, loaded from TOML, JSON or a mapping.

:func:`load_config` reads the file (or takes the mapping), structures it with cattrs into an
:class:`OrchestrationConfig` and reports every problem at once, each with its path::

    trioflow.ConfigError: invalid configuration in orchestration.toml:
      retry.backoff_multiplier: must be >= 1, got 0.5
      pools.llm: must be an int >= 1, got 0
      rate_limits.per_usr: unknown key

Durations are seconds (a number) or ``"HH:MM:SS"`` strings (``"00:00:01.5"`` too); an
optional duration (``default_timeout``) may also be ``"none"`` (or JSON ``null``) for no limit.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal, TypeVar, get_args

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from ._errors import ConfigError
from ._retry import RetryPolicy
from ._structure import Invalid, describe, join_path, problems_of, strict_converter

__all__ = (
    "HealthConfig",
    "OrchestrationConfig",
    "RateLimitConfig",
    "RateLimitsConfig",
    "RetryConfig",
    "load_config",
)

T = TypeVar("T")
Problems = list[tuple[str, str]]
Check = Callable[[Any], "str | Problems | None"]

_CHECK = "trioflow.check"
_DURATION = "trioflow.duration"
_ITEMS = "trioflow.items"
_KEYS = "trioflow.keys"


# --- checks: return a problem message, or None ---------------------------------------------
def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _int_at_least(minimum: int) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            return f"must be an int >= {minimum}, got {describe(value)}"
        return None

    return check


def _number_at_least(minimum: float, *, strict: bool = False) -> Check:
    op = ">" if strict else ">="

    def check(value: Any) -> str | None:
        if not _is_number(value):
            return f"must be a number {op} {minimum:g}, got {describe(value)}"
        if math.isnan(value) or value < minimum or (strict and value == minimum):
            return f"must be {op} {minimum:g}, got {describe(value)}"
        return None

    return check


def _optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {describe(value)}"


def _one_of(*choices: str) -> Check:
    listed = ", ".join(repr(c) for c in choices)

    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {listed}, got {describe(value)}"

    return check


def _names(value: Any) -> str | None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        return f"must be a list of non-empty strings, got {describe(value)}"
    return None


def _pool_name(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return f"pool names must be non-empty strings, got {describe(name)}"
    return None


def _policy_name(name: Any) -> str | None:
    if name == "default":
        return "the name 'default' is reserved for the retry block"
    return None


def _mapping(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return f"must be a mapping, got {describe(value)}"
    return None


def _key(name: str) -> str:
    return name if name.isidentifier() else f"[{name!r}]"


def _as_problems(result: str | Problems | None) -> Problems:
    if result is None:
        return []
    if isinstance(result, str):
        return [("", result)]
    return result


def _source_name(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return f"sources must be non-empty strings, got {describe(name)}"
    return None


def _instance_of(cls: type, *, optional: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if (optional and value is None) or isinstance(value, cls):
            return None
        return f"must be a {cls.__name__}, got {describe(value)}"

    return check


_HMS = re.compile(r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$")


def parse_duration(value: Any, *, optional: bool = False) -> float | None:
    """Parse a duration: seconds as a number, or an ``"HH:MM:SS[.fff]"`` string.

    Args:
        value: The value read from the configuration.
        optional: Whether ``None`` (or the string ``"none"``) is allowed, meaning no limit.

    Returns:
        The duration in seconds, or ``None``.

    Raises:
        Invalid: The value is not a duration.
    """
    if optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
        return None
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        match = _HMS.match(value.strip())
        if match:
            hours, minutes, seconds = match.groups()
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    expected = 'seconds or an "HH:MM:SS" string' + (' or "none"' if optional else "")
    raise Invalid(f"must be a duration ({expected}), got {describe(value)}")


def _field(
    default: Any = attrs.NOTHING,
    *,
    check: Check,
    duration: Literal["required", "optional"] | None = None,
    items: Check | None = None,
    keys: Check | None = None,
    factory: Callable[[], Any] | None = None,
    converter: Callable[[Any], Any] | None = None,
) -> Any:
    # check: the whole value; items/keys: each value/key of a mapping, so that every bad
    # entry is reported (with its key in the path), not only the first.
    metadata = {_CHECK: check, _DURATION: duration, _ITEMS: items, _KEYS: keys}
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata, converter=converter)
    return attrs.field(default=default, metadata=metadata, converter=converter)


def _entry_problems(value: Mapping[Any, Any], items: Check | None, keys: Check | None) -> Problems:
    problems: Problems = []
    for key, item in value.items():
        where = _key(key) if isinstance(key, str) else f"[{key!r}]"
        for check, checked in ((keys, key), (items, item)):
            if check is not None:
                problems.extend(
                    (join_path(where, sub), p) for sub, p in _as_problems(check(checked))
                )
    return problems


def _validate(instance: Any) -> None:
    """Check every field of a config value; raise one ConfigError listing every problem."""
    problems: list[tuple[str, str]] = []
    for field in attrs.fields(type(instance)):
        check = field.metadata.get(_CHECK)
        if check is None:
            continue
        value = getattr(instance, field.name)
        found = _as_problems(check(value))
        if not found and isinstance(value, Mapping):
            found = _entry_problems(value, field.metadata[_ITEMS], field.metadata[_KEYS])
        problems.extend((join_path(field.name, sub), problem) for sub, problem in found)
    problems.extend(instance._cross_problems())
    if problems:
        raise ConfigError(problems)


def _read_only(value: Any) -> Any:
    return MappingProxyType(dict(value)) if isinstance(value, Mapping) else value


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen(kw_only=True)
class RetryConfig:
    """A retry policy in configuration terms (the design's ``retry`` block).

    Args:
        max_retries: Retries after the first try, an int >= 0 (so ``max_retries + 1`` tries).
        initial_delay: The wait before the first retry, a duration >= 0.
        backoff_multiplier: Growth factor of the wait between retries, >= 1.
        max_delay: Cap on any one wait, a duration >= ``initial_delay``.
        jitter: Random extra wait of up to this duration, >= 0.

    Raises:
        ConfigError: Listing every field out of range.
    """

    max_retries: int = _field(3, check=_int_at_least(0))
    initial_delay: float = _field(1.0, check=_number_at_least(0), duration="required")
    backoff_multiplier: float = _field(2.0, check=_number_at_least(1))
    max_delay: float = _field(30.0, check=_number_at_least(0), duration="required")
    jitter: float = _field(0.0, check=_number_at_least(0), duration="required")

    def __attrs_post_init__(self) -> None:
        _validate(self)

    def _cross_problems(self) -> list[tuple[str, str]]:
        low, high = self.initial_delay, self.max_delay
        if _is_number(low) and _is_number(high) and high < low:
            return [("max_delay", f"must be >= initial_delay ({low:g}), got {high:g}")]
        return []

    def policy(self) -> RetryPolicy:
        """Return the :class:`trioflow.RetryPolicy` this block describes.

        Returns:
            A policy with ``attempts = max_retries + 1`` retrying ``ConnectionError`` and
            ``TimeoutError``.
        """
        return RetryPolicy(
            attempts=self.max_retries + 1,
            initial_delay=self.initial_delay,
            multiplier=self.backoff_multiplier,
            max_delay=self.max_delay,
            jitter=self.jitter,
        )


def _default_retry_policies() -> Mapping[str, RetryConfig]:
    # The design's policies by operation type: llm (3 tries, 1-5 s exponential), tool (2 tries,
    # 2 s fixed), storage (5 tries, 0.5-2 s exponential).
    return MappingProxyType(
        {
            "llm": RetryConfig(max_retries=2, initial_delay=1.0, max_delay=5.0),
            "tool": RetryConfig(
                max_retries=1, initial_delay=2.0, backoff_multiplier=1.0, max_delay=2.0
            ),
            "storage": RetryConfig(max_retries=4, initial_delay=0.5, max_delay=2.0),
        }
    )


@attrs.frozen(kw_only=True)
class RateLimitConfig:
    """A token bucket: ``rate`` requests per ``per`` seconds, with bursts up to ``burst``.

    Args:
        rate: Requests allowed per ``per``, a number > 0.
        per: The period ``rate`` is counted over, a duration > 0 (1 second by default).
        burst: Requests allowed at once after a quiet period, an int >= 1 (by default
            ``rate``, rounded up).

    Raises:
        ConfigError: Listing every field out of range.
    """

    rate: float = _field(check=_number_at_least(0, strict=True))
    per: float = _field(1.0, check=_number_at_least(0, strict=True), duration="required")
    burst: int | None = _field(None, check=_optional(_int_at_least(1)))

    def __attrs_post_init__(self) -> None:
        _validate(self)

    def _cross_problems(self) -> list[tuple[str, str]]:
        return []

    @property
    def per_second(self) -> float:
        """Requests allowed per second."""
        return self.rate / self.per

    @property
    def capacity(self) -> int:
        """The bucket's capacity: ``burst``, or ``rate`` rounded up."""
        return self.burst if self.burst is not None else max(1, math.ceil(self.rate))


_RATE_LIMIT = _instance_of(RateLimitConfig)
_RATE_LIMIT_OR_NONE = _instance_of(RateLimitConfig, optional=True)


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

    per_user: RateLimitConfig | None = _field(None, check=_RATE_LIMIT_OR_NONE)  # noqa: RUF009
    per_source: Mapping[str, RateLimitConfig] = _field(
        check=_mapping,
        items=_RATE_LIMIT,
        keys=_source_name,
        factory=dict,
        converter=_read_only,
    )
    when_limited: Literal["wait", "fail"] = _field("wait", check=_one_of("wait", "fail"))

    def __attrs_post_init__(self) -> None:
        _validate(self)

    def _cross_problems(self) -> list[tuple[str, str]]:
        return []


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

    enabled: bool = _field(False, check=_bool)
    when_unhealthy: Literal["wait", "fail"] = _field("wait", check=_one_of("wait", "fail"))
    interval: float = _field(1.0, check=_number_at_least(0, strict=True), duration="required")
    max_memory_percent: float = _field(90.0, check=_number_at_least(0, strict=True))
    max_cpu_percent: float = _field(80.0, check=_number_at_least(0, strict=True))

    def __attrs_post_init__(self) -> None:
        _validate(self)

    def _cross_problems(self) -> list[tuple[str, str]]:
        problems = []
        for name in ("max_memory_percent", "max_cpu_percent"):
            value = getattr(self, name)
            if _is_number(value) and value > 100:
                problems.append((name, f"must be <= 100, got {describe(value)}"))
        return problems


_RETRY = _instance_of(RetryConfig)
_RATE_LIMITS = _instance_of(RateLimitsConfig)
_HEALTH = _instance_of(HealthConfig)


def _default_pools() -> Mapping[str, int]:
    return MappingProxyType({"llm": 5, "tool": 10, "context": 20})


@attrs.frozen(kw_only=True)
class OrchestrationConfig:
    """Everything a coordinator needs to know: limits, pools, timeouts, retries, rate limits.

    The defaults are the orchestration design's: 50 requests at once, 10 per user, pools of 5
    LLM calls, 10 tool calls and 20 context assemblies, a 30-second request timeout, and retry
    policies for llm, tool and storage operations. Build one in code or with
    :func:`trioflow.load_config`.

    Args:
        max_concurrency: The most requests processed at once, an int >= 1.
        per_user_limit: The most requests of one user processed at once, an int >= 1.
        max_queue_depth: The most requests waiting for admission; more are refused at once
            (a RESOURCE_EXHAUSTION failure, shedding load). An int >= 1, or ``None`` for no
            limit.
        default_timeout: The time a request may take from admission to its terminal state, a
            duration > 0, or ``None`` for no limit.
        enable_metrics: Whether the coordinator logs its statistics periodically.
        metrics_interval: How often to log them, a duration > 0.
        pools: Named pools and their sizes, for stages that name them.
        retry: The default retry policy, named ``"default"`` for stages (the design's block:
            ``max_retries``, ``initial_delay``, ``backoff_multiplier``).
        retry_policies: More retry policies by operation type, for stages that name them.
        rate_limits: Per-user and per-source rate limits.
        health: Backpressure from system health.
        optional_stages: Names of stages whose failure is recorded and skipped (the request
            ends DEGRADED) instead of failing the request.

    Raises:
        ConfigError: Listing every field out of range.
    """

    max_concurrency: int = _field(50, check=_int_at_least(1))
    per_user_limit: int = _field(10, check=_int_at_least(1))
    max_queue_depth: int | None = _field(None, check=_optional(_int_at_least(1)))
    default_timeout: float | None = _field(
        30.0, check=_optional(_number_at_least(0, strict=True)), duration="optional"
    )
    enable_metrics: bool = _field(True, check=_bool)
    metrics_interval: float = _field(
        60.0, check=_number_at_least(0, strict=True), duration="required"
    )
    pools: Mapping[str, int] = _field(
        check=_mapping,
        items=_int_at_least(1),
        keys=_pool_name,
        factory=_default_pools,
        converter=_read_only,
    )
    retry: RetryConfig = _field(check=_RETRY, factory=RetryConfig)  # noqa: RUF009
    retry_policies: Mapping[str, RetryConfig] = _field(
        check=_mapping,
        items=_RETRY,
        keys=_policy_name,
        factory=_default_retry_policies,
        converter=_read_only,
    )
    rate_limits: RateLimitsConfig = _field(check=_RATE_LIMITS, factory=RateLimitsConfig)  # noqa: RUF009
    health: HealthConfig = _field(check=_HEALTH, factory=HealthConfig)  # noqa: RUF009
    optional_stages: tuple[str, ...] = _field((), check=_names, converter=_tuple)

    def __attrs_post_init__(self) -> None:
        _validate(self)

    def _cross_problems(self) -> list[tuple[str, str]]:
        return []

    def retry_policy_map(self) -> Mapping[str, RetryPolicy]:
        """Return every retry policy by name: ``"default"`` and those of ``retry_policies``.

        Returns:
            A read-only mapping of :class:`trioflow.RetryPolicy` by operation type.
        """
        policies = {"default": self.retry.policy()}
        policies.update((name, cfg.policy()) for name, cfg in self.retry_policies.items())
        return MappingProxyType(policies)


_CONFIG_CLASSES = (
    RetryConfig,
    RateLimitConfig,
    RateLimitsConfig,
    HealthConfig,
    OrchestrationConfig,
)


def _field_hook(converter: cattrs.Converter, field: attrs.Attribute[Any]) -> Any:
    check: Check = field.metadata[_CHECK]
    items: Check | None = field.metadata[_ITEMS]
    keys: Check | None = field.metadata[_KEYS]
    duration = field.metadata.get(_DURATION)
    tp: Any = field.type

    def structure(value: Any, _: Any) -> Any:
        if duration is not None:
            value = parse_duration(value, optional=duration == "optional")
        elif items is not None or keys is not None:
            value = _structure_entries(converter, value, tp, items, keys)
        else:
            value = converter.structure(value, tp)
            if isinstance(value, list):
                value = tuple(value)
        problems = _as_problems(check(value))
        if problems:
            raise ConfigError(problems)
        return value

    return structure


def _structure_entries(
    converter: cattrs.Converter, value: Any, tp: Any, items: Check | None, keys: Check | None
) -> dict[str, Any]:
    """Structure a mapping entry by entry, collecting every bad key and value."""
    if not isinstance(value, Mapping):
        raise Invalid(f"expected a table, got {describe(value)}")
    _, item_type = get_args(tp)
    out: dict[str, Any] = {}
    problems: Problems = []
    for key, raw in value.items():
        where = _key(key) if isinstance(key, str) else f"[{key!r}]"
        if keys is not None:
            problems.extend((where, p) for _, p in _as_problems(keys(key)))
        try:
            item = converter.structure(raw, item_type)
        except Exception as exc:
            problems.extend(problems_of(exc, where))
            continue
        if items is not None:
            found = _as_problems(items(item))
            problems.extend((join_path(where, sub), p) for sub, p in found)
        out[key] = item
    if problems:
        raise ConfigError(problems)
    return out


def _converter() -> cattrs.Converter:
    converter = strict_converter()
    for cls in _CONFIG_CLASSES:
        attrs.resolve_types(cls)
        overrides = {
            field.name: override(struct_hook=_field_hook(converter, field))
            for field in attrs.fields(cls)
            if _CHECK in field.metadata
        }
        hook = make_dict_structure_fn(cls, converter, **overrides)  # type: ignore[arg-type]
        converter.register_structure_hook(cls, hook)
    return converter


_CONVERTER = _converter()


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
    try:
        return _CONVERTER.structure(data, OrchestrationConfig)
    except Exception as exc:
        raise ConfigError(list(problems_of(exc)), source=where) from None
