"""What every unit of work may set, with one meaning per word: a workflow step and a stage alike.

A :class:`~trioflow.Step` (of a workflow) and a :class:`~trioflow.lifecycle.Stage` (of a request
pipeline) both run one async function under the same four options. They are one value,
:class:`WorkOptions`, checked in one place, so ``timeout`` or ``optional`` mean the same thing
wherever they are written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import final

import attrs

from ._checks import check_bool, check_timeout, describe, no_deadline
from ._retry import RetryPolicy

__all__ = ("WorkOptions", "check_pools")


def _describe(value: object) -> str:
    return describe(value)


def check_pools(value: object, name: str = "pools") -> tuple[str, ...]:
    """Check a collection of pool names: non-empty strings, none named twice.

    Args:
        value: What the caller passed (any iterable of str, but not one str).
        name: How the message names the argument, e.g. ``"pools of step 'build'"``.

    Returns:
        The names as a tuple, in the order given.

    Raises:
        TypeError: Not an iterable of non-empty str (a single str included).
        ValueError: A pool is named twice.
    """
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a sequence of pool names, got {_describe(value)}")
    pools = tuple(value)
    for pool in pools:
        if not isinstance(pool, str) or not pool:
            raise TypeError(f"{name} must hold non-empty pool names (str), got {pool!r}")
    if len(set(pools)) != len(pools):
        raise ValueError(f"{name} must not name a pool twice, got {list(pools)!r}")
    return pools


def _timeout(
    instance: WorkOptions, attribute: attrs.Attribute[float | None], value: object
) -> None:
    check_timeout(value, f"{instance.where}timeout")


def _retry(
    instance: WorkOptions, attribute: attrs.Attribute[RetryPolicy | None], value: object
) -> None:
    if value is not None and not isinstance(value, RetryPolicy):
        raise TypeError(
            f"{instance.where}retry must be a RetryPolicy or None, got {_describe(value)}"
        )


def _optional(instance: WorkOptions, attribute: attrs.Attribute[bool], value: object) -> None:
    check_bool(value, f"{instance.where}optional")


def _no_deadline(value: object) -> object:
    return no_deadline(value)


@final
@attrs.frozen(kw_only=True)
class WorkOptions:
    """The options of one unit of work (a workflow step or a pipeline stage).

    Attributes:
        timeout: Seconds one attempt may take; past it the attempt fails with the builtin
            ``TimeoutError`` (and may be retried). Each retry gets a fresh timeout; waiting for
            pools is not counted. ``None`` (or ``math.inf``) means no deadline.
        retry: How a failed attempt is retried, or ``None`` for one attempt. Cancellation is
            never retried.
        pools: Named pools of the run's :class:`~trioflow.ResourceManager`; the unit holds one
            token of each during each attempt (not while waiting to retry).
        optional: Whether a failure is recorded and the run goes on as if the unit had
            succeeded: the steps after a workflow step still run (and ``WorkflowResult.ok``
            ignores it); a request whose optional stage failed ends DEGRADED, not FAILED.
        where: How messages name the unit, e.g. ``"step 'build'"``; not an option itself.
    """

    timeout: float | None = attrs.field(default=None, converter=_no_deadline, validator=_timeout)
    retry: RetryPolicy | None = attrs.field(default=None, validator=_retry)
    pools: tuple[str, ...] = attrs.field(default=())
    optional: bool = attrs.field(default=False, validator=_optional)
    where: str = attrs.field(default="", eq=False, repr=False)

    @classmethod
    def check(
        cls,
        where: str,
        *,
        timeout: object = None,
        retry: object = None,
        pools: object = (),
        optional: object = False,
    ) -> WorkOptions:
        """Check the options of the unit named ``where`` and return them as one value.

        Args:
            where: How messages name the unit, e.g. ``"step 'build'"``.
            timeout: See :attr:`timeout`.
            retry: See :attr:`retry`.
            pools: See :attr:`pools`; any iterable of names.
            optional: See :attr:`optional`.

        Returns:
            The checked options.

        Raises:
            TypeError: An option has the wrong type; the message names the unit and option.
            ValueError: ``timeout`` is negative or NaN, or a pool is named twice.
        """
        prefix = f"{where}: " if where else ""
        checked_pools = check_pools(pools, f"{prefix}pools") if pools != () else ()
        return cls(
            timeout=timeout,
            retry=retry,  # type: ignore[arg-type]
            pools=checked_pools,
            optional=optional,  # type: ignore[arg-type]
            where=prefix,
        )
