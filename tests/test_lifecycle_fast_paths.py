"""The request lifecycle's shortcuts behave as the general code they stand for.

A route records a transition itself for an object that already has a history, and hands every
other object to the machine: both must leave the same history and statistics as
``transition_nowait``, for objects with a history, without one, and with a ``created_at`` that
is not a number. ``_backend.scope_and_clock`` must give what ``cancel_scope`` and
``current_clock`` give; a run's timeout skips its check only when it is already a valid float.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _lifecycle_stages import SEVEN_STAGES
from trioflow._backend import cancel_scope, current_clock, scope_and_clock
from trioflow._lifecycle._machine import Route
from trioflow.lifecycle import (
    Pipeline,
    ProcessingStatus,
    Request,
    RequestState,
    Stage,
    StateChange,
    StateMachine,
)


class Valve(enum.Enum):
    SHUT = "shut"
    AJAR = "ajar"
    OPEN = "open"


TABLE = {Valve.SHUT: {Valve.AJAR, Valve.OPEN}, Valve.AJAR: {Valve.OPEN, Valve.SHUT}}
PATH = [(Valve.SHUT, Valve.AJAR), (Valve.AJAR, Valve.OPEN)]


@attrs.define(eq=False)
class Bare:
    """No history: counted, never timed."""

    state: Valve = Valve.SHUT


@attrs.define(eq=False)
class Odd:
    """A history, and a ``created_at`` that is no number: its first stay is not timed."""

    state: Valve = Valve.SHUT
    history: list[StateChange[Valve]] = attrs.field(factory=list)
    created_at: object = "yesterday"


@attrs.define(eq=False)
class Timed:
    state: Valve = Valve.SHUT
    history: list[StateChange[Valve]] = attrs.field(factory=list)
    created_at: float = 0.5


@given(kind=st.sampled_from([Bare, Odd, Timed]), at=st.lists(st.floats(0, 100), max_size=2))
def test_a_route_records_as_the_machine_does(kind: type[Any], at: list[float]) -> None:
    fast, slow = StateMachine(TABLE, Valve.SHUT), StateMachine(TABLE, Valve.SHUT)
    route = Route(fast, PATH)
    a, b = kind(), kind()
    for index, moment in enumerate(at):
        got = route.move(a, index, PATH[index][1], moment)
        want = slow.transition_nowait(b, PATH[index][1], at=moment)
        assert got == want
        assert a.state is b.state
    assert getattr(a, "history", None) == getattr(b, "history", None)
    assert fast.statistics() == slow.statistics()


def test_a_route_knows_its_machines_terminal_states() -> None:
    machine = StateMachine(TABLE, Valve.SHUT)
    assert Route(machine, PATH).terminal == machine.terminal == {Valve.OPEN}


@pytest.mark.anyio
async def test_scope_and_clock_are_the_loops_own() -> None:
    scope_of, now = scope_and_clock()
    assert type(scope_of(deadline=math.inf)) is type(cancel_scope())
    start = now()
    assert start == current_clock()() == anyio.current_time()  # virtual time stands still
    scope = scope_of(deadline=start - 1)  # a deadline passed: cancelled at once
    with scope:
        await anyio.sleep(5)
    assert scope.cancelled_caught
    assert now() == start
    scope = scope_of(deadline=start + 1)
    with scope:
        await anyio.sleep(5)
    assert scope.cancelled_caught
    assert now() == pytest.approx(start + 1)


async def _noop(request: Request) -> None:
    return None


def _pipeline(fn: Any) -> Pipeline:
    """Seven stages, the fifth one ``fn``, the others no-ops."""
    return Pipeline([Stage(n, s, fn if n == "process" else _noop) for n, s in SEVEN_STAGES])


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", [-1.0, math.nan, -1, "1", True])
async def test_a_runs_timeout_is_still_checked(timeout: Any) -> None:
    pipeline = _pipeline(_noop)
    request = Request("q")
    with pytest.raises(TypeError if isinstance(timeout, str | bool) else ValueError):
        await pipeline.run(request, timeout=timeout)
    assert request.state is RequestState.RECEIVED  # refused before anything ran


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", [0.5, 2, math.inf, 1e300])
async def test_a_valid_timeout_bounds_the_run(timeout: Any) -> None:
    async def slow(request: Request) -> None:
        await anyio.sleep(1)

    pipeline = _pipeline(slow)
    result = await pipeline.run(Request("q"), timeout=timeout)
    expected = ProcessingStatus.FAILED if timeout < 1 else ProcessingStatus.SUCCEEDED
    assert result.status is expected
