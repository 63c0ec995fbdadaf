"""Fan-out with a time budget: ask several sources at once, go on with what arrived.

How a context-gathering stage asks its sources: every source runs at once in a task group; at
the deadline the ones still running are cancelled and the stage continues with the values that
arrived (say, whatever the search index and the history store answered within 500 ms).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import anyio
import attrs

from .._checks import check_timeout

__all__ = ("PartialResults", "gather_partial")

T = TypeVar("T")


def _freeze(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class PartialResults(Generic[T]):
    """What :func:`gather_partial` gathered before its budget ran out.

    Attributes:
        values: The values that arrived, by source name (in the sources' order).
        errors: The sources that raised, with their exceptions.
        missing: The sources still running at the deadline (they were cancelled).
    """

    values: Mapping[str, T] = attrs.field(converter=_freeze)
    errors: Mapping[str, Exception] = attrs.field(converter=_freeze)
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """Whether every source returned a value in time."""
        return not self.errors and not self.missing


async def gather_partial(
    sources: Mapping[str, Callable[[], Awaitable[T]]], budget: float | None
) -> PartialResults[T]:
    """Run sources concurrently and return what arrived within the budget.

    Ask every source at once, wait at most ``budget`` seconds, cancel the ones still running
    and go on with what arrived. A source that raises does not disturb the others; its
    exception is in ``errors``. Cancellation from outside is not a deadline: it propagates.

    Example::

        gathered = await gather_partial(
            {"docs": search_docs, "history": load_history}, budget=0.5
        )
        context = gathered.values      # whatever arrived within 500 ms

    Args:
        sources: Zero-argument async callables by name.
        budget: Seconds to wait, >= 0, or ``None`` to wait for every source.

    Returns:
        The :class:`PartialResults`.

    Raises:
        TypeError: ``sources`` is not a mapping of callables, or ``budget`` is not a number.
        ValueError: ``budget`` is negative or NaN.
    """
    if not isinstance(sources, Mapping):
        raise TypeError(f"sources must be a mapping of name to async callable, got {sources!r}")
    for name, fn in sources.items():
        if not callable(fn):
            raise TypeError(f"sources[{name!r}] must be an async callable, got {fn!r}")
    budget = check_timeout(budget, "budget")
    values: dict[str, T] = {}
    errors: dict[str, Exception] = {}

    async def run_one(name: str, fn: Callable[[], Awaitable[T]]) -> None:
        try:
            values[name] = await fn()
        except Exception as exc:
            errors[name] = exc

    with anyio.move_on_after(math.inf if budget is None else budget):
        async with anyio.create_task_group() as tg:
            for name, fn in sources.items():
                tg.start_soon(run_one, name, fn, name=f"gather_partial:{name}")
    return PartialResults(
        values={name: values[name] for name in sources if name in values},
        errors={name: errors[name] for name in sources if name in errors},
        missing=tuple(name for name in sources if name not in values and name not in errors),
    )
