"""Retry policies per operation type, adapted to load and priority when asked for.

One :class:`~trioflow.RetryPolicy` per kind of operation (LLM
calls, tool runs, storage), and a ``get`` that derives the policy for one call from how
loaded the system is and how much the call matters. Retries multiply load exactly when the
system can least afford it, so under pressure a call gets fewer attempts and shorter waits
(it fails fast and frees its slot); a high-priority call gets more attempts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Literal, final

import attrs

from .._checks import check_fraction, validator
from .._limits import ResourceManager
from .._retry import RetryPolicy
from ._health import HealthMonitor

__all__ = ("Load", "Priority", "RetryPolicies", "load_of")

Priority = Literal["low", "normal", "high"] | int
Load = float | ResourceManager | HealthMonitor

_PRIORITIES: dict[str, int] = {"low": -1, "normal": 0, "high": 1}


def load_of(source: Load) -> float:
    """Return a load between 0 (idle) and 1 (saturated) from a number or a live source.

    * a number: itself, which must be in [0, 1];
    * a :class:`~trioflow.ResourceManager`: demand over capacity,
      ``(executing + waiting) / limit``, capped at 1 (1 as soon as work queues);
    * a :class:`~trioflow.HealthMonitor`: its :attr:`~trioflow.HealthMonitor.load`,
      ``max(cpu / max_cpu_percent, memory / max_memory_percent)`` capped at 1.

    Args:
        source: The number or source.

    Returns:
        The load, in [0, 1].

    Raises:
        ValueError: If a number is outside [0, 1] or NaN.
        TypeError: If ``source`` is none of the above.
    """
    if isinstance(source, ResourceManager):
        stats = source.statistics()
        return min(1.0, (stats.executing + stats.waiting) / stats.limit)
    if isinstance(source, HealthMonitor):
        return source.load
    if isinstance(source, bool) or not isinstance(source, int | float):
        raise TypeError(
            "load must be a number in [0, 1], a ResourceManager or a HealthMonitor, "
            f"got {source!r}"
        )
    return check_fraction(source, "load")


def _priority_boost(priority: Priority) -> int:
    if isinstance(priority, bool):
        raise TypeError(f"priority must be 'low', 'normal', 'high' or an int, got {priority!r}")
    if isinstance(priority, int):
        return priority
    try:
        return _PRIORITIES[priority]
    except (KeyError, TypeError):
        raise ValueError(
            f"priority must be 'low', 'normal', 'high' or an int, got {priority!r}"
        ) from None


def _check_policies(value: Mapping[str, RetryPolicy]) -> Mapping[str, RetryPolicy]:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"policies must be a mapping of operation type to RetryPolicy, got {value!r}"
        )
    for name, policy in value.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"operation types must be non-empty strings, got {name!r}")
        if not isinstance(policy, RetryPolicy):
            raise TypeError(f"policies[{name!r}] must be a RetryPolicy, got {policy!r}")
    return MappingProxyType(dict(value))


def _check_default(
    instance: object, attribute: attrs.Attribute[RetryPolicy | None], value: object
) -> None:
    if value is not None and not isinstance(value, RetryPolicy):
        raise TypeError(f"default must be a RetryPolicy or None, got {value!r}")


_check_fraction = validator(check_fraction)


@final
@attrs.frozen
class RetryPolicies:
    """A :class:`~trioflow.RetryPolicy` per operation type, adapted per call to load and priority.

    ::

        policies = RetryPolicies({
            "llm": RetryPolicy(attempts=3, initial_delay=1, max_delay=5),
            "tool": RetryPolicy(attempts=2, initial_delay=2, max_delay=2),
            "storage": RetryPolicy(attempts=5, initial_delay=0.5, max_delay=2),
        })
        policy = policies.get("llm", load=rm, priority="high")
        answer = await policy.call(ask_model, prompt)

    **The adaptation rule.** With ``load`` L in [0, 1] (see :func:`load_of`) and a priority
    boost B (``"low"`` -1, ``"normal"`` 0, ``"high"`` +1, or any int), the policy returned
    for a base policy P is P with::

        attempts      = max(1, A + B)   where A = max(1, ceil(P.attempts * (1 - L)))
        initial_delay = P.initial_delay * S
        max_delay     = P.max_delay * S     where S = 1 - L * (1 - min_wait_fraction)

    and everything else (multiplier, jitter, which exceptions) unchanged. So at L = 0 a
    normal call gets P itself; at L = 1 it gets a single attempt, and a high-priority call
    two, with waits cut to ``min_wait_fraction`` (10% by default) of P's.

    Args:
        policies: Operation type -> base policy.
        default: The policy for operation types not in ``policies``; without it an unknown
            type is an error.
        min_wait_fraction: The fraction of the base waits left at full load, in [0, 1].

    Raises:
        TypeError: If ``policies`` is not a mapping of non-empty strings to ``RetryPolicy``,
            or ``default`` is not a ``RetryPolicy``.
        ValueError: If ``min_wait_fraction`` is outside [0, 1].
    """

    _policies: Mapping[str, RetryPolicy] = attrs.field(alias="policies", converter=_check_policies)
    default: RetryPolicy | None = attrs.field(default=None, kw_only=True, validator=_check_default)
    min_wait_fraction: float = attrs.field(default=0.1, kw_only=True, validator=_check_fraction)

    @property
    def types(self) -> tuple[str, ...]:
        """The operation types with their own policy, in the order given."""
        return tuple(self._policies)

    def __contains__(self, op_type: object) -> bool:
        return op_type in self._policies

    def __iter__(self) -> Iterator[str]:
        return iter(self._policies)

    def __len__(self) -> int:
        return len(self._policies)

    def base(self, op_type: str) -> RetryPolicy:
        """Return the unadapted policy for an operation type.

        Args:
            op_type: The operation type, e.g. ``"llm"``.

        Returns:
            Its policy, or ``default`` for an unknown type when one was given.

        Raises:
            KeyError: If the type is unknown and there is no default; the message lists the
                known types.
        """
        policy = self._policies.get(op_type)
        if policy is not None:
            return policy
        if self.default is not None:
            return self.default
        known = ", ".join(repr(name) for name in self._policies) or "none"
        raise KeyError(f"unknown operation type {op_type!r}; known types: {known}")

    def get(self, op_type: str, *, load: Load = 0.0, priority: Priority = "normal") -> RetryPolicy:
        """Return the policy for one call of an operation type, adapted to load and priority.

        Args:
            op_type: The operation type, e.g. ``"llm"``.
            load: A number in [0, 1], a :class:`~trioflow.ResourceManager` or a
                :class:`~trioflow.HealthMonitor` (see :func:`load_of`).
            priority: ``"low"``, ``"normal"``, ``"high"`` or an int boost of attempts.

        Returns:
            The adapted policy (see the class docs for the exact rule).

        Raises:
            KeyError: If the type is unknown and there is no default.
            ValueError: If ``load`` or ``priority`` is out of range.
            TypeError: If ``load`` or ``priority`` has the wrong type.
        """
        policy = self.base(op_type)
        level = load_of(load)
        boost = _priority_boost(priority)
        if level == 0 and boost == 0:
            return policy
        # The small tolerance keeps float noise (3 * (1 - 1/3) = 2.0000000000000004) from
        # rounding up to an extra attempt.
        attempts = max(1, max(1, math.ceil(policy.attempts * (1 - level) - 1e-9)) + boost)
        scale = 1 - level * (1 - self.min_wait_fraction)
        return attrs.evolve(
            policy,
            attempts=attempts,
            initial_delay=policy.initial_delay * scale,
            max_delay=policy.max_delay * scale,
        )
