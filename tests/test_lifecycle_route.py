"""The request lifecycle's fast paths keep the slow paths' semantics.

A pipeline moves requests along a :class:`Route` (its stages' path, compiled once per machine):
every move must be exactly the machine's ``transition_nowait`` (same checks, errors, history and
statistics), including for objects that are not where the route expects. Request ids are read
from ``os.urandom`` in batches: a forked child must never hand out its parent's ids.
"""

from __future__ import annotations

import enum
import os
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioflow import InvalidTransitionError, TransitionInProgressError
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


class Light(enum.Enum):
    OFF = "off"
    DIM = "dim"
    ON = "on"
    BROKEN = "broken"


TABLE = {
    Light.OFF: {Light.DIM, Light.ON, Light.BROKEN},
    Light.DIM: {Light.ON, Light.OFF, Light.BROKEN},
    Light.ON: {Light.OFF, Light.BROKEN},
}


@attrs.define(eq=False)
class Lamp:
    state: Light = Light.OFF
    history: list[StateChange[Light]] = attrs.field(factory=list)
    created_at: float = 0.0


def _outcome(lamp: Lamp, move: Any, *args: Any, **kwargs: Any) -> object:
    """The state ``lamp`` is in after the move, or the type of the error it raised."""
    try:
        move(*args, **kwargs)
    except (InvalidTransitionError, TransitionInProgressError, TypeError) as exc:
        return type(exc)
    return lamp.state


_STEPS = st.lists(
    st.one_of(st.none(), st.tuples(st.sampled_from(Light), st.sampled_from(Light))),
    min_size=1,
    max_size=6,
)


@given(steps=_STEPS, moves=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(Light))))
def test_route_moves_exactly_as_transition_nowait(
    steps: list[tuple[Light, Light] | None], moves: list[tuple[int, Light]]
) -> None:
    # Only the steps the table allows make a route; the others must be refused at once.
    allowed = [s if s is None or s[1] in TABLE.get(s[0], ()) else None for s in steps]
    fast, slow = StateMachine(TABLE, Light.OFF), StateMachine(TABLE, Light.OFF)
    route = Route(fast, allowed)
    a, b = Lamp(), Lamp()
    for at, (index, to_state) in enumerate(moves):
        index %= len(allowed)
        step = allowed[index]
        if step is not None:
            to_state = step[1]  # a route's step always names the state it enters
        got = _outcome(a, route.move, a, index, to_state, float(at))
        want = _outcome(b, slow.transition_nowait, b, to_state, at=float(at))
        assert got == want
        assert a.history == b.history
    assert fast.statistics() == slow.statistics()


def test_a_route_refuses_a_step_the_table_does_not_allow() -> None:
    machine = StateMachine(TABLE, Light.OFF)
    with pytest.raises(InvalidTransitionError):
        Route(machine, [(Light.ON, Light.DIM)])
    assert machine.statistics().rejected == 0  # refused when made, not counted as a move


@pytest.mark.anyio
async def test_a_route_defers_to_hooks() -> None:
    machine = StateMachine(TABLE, Light.OFF)
    seen: list[Light] = []

    @machine.after
    async def record(obj: Lamp, from_state: Light, to_state: Light) -> None:
        seen.append(to_state)

    lamp = Lamp()
    with pytest.raises(anyio.WouldBlock):
        Route(machine, [(Light.OFF, Light.ON)]).move(lamp, 0, Light.ON, 1.0)
    assert lamp.state is Light.OFF
    assert not lamp.history
    assert not seen


@pytest.mark.anyio
async def test_a_request_that_starts_off_the_path_takes_the_general_path() -> None:
    async def noop(request: Request) -> None:
        return None

    states = [
        RequestState.VALIDATED,
        RequestState.PLANNED,
        RequestState.CONTEXT_GATHERING,
        RequestState.PROCESSING,
        RequestState.RESPONSE_FORMATTING,
    ]
    pipeline = Pipeline([Stage(s.value, s, noop) for s in states])
    request = Request("q", state=RequestState.PLANNED)  # not where the first step starts
    result = await pipeline.run(request)
    assert result.status is ProcessingStatus.FAILED  # PLANNED -> VALIDATED is not allowed
    assert isinstance(result.error, InvalidTransitionError)
    assert request.state is RequestState.FAILED
    ok = await pipeline.run(Request("q", state=RequestState.VALIDATED))  # skips the first
    assert ok.status is ProcessingStatus.SUCCEEDED
    assert [c.to_state for c in ok.history] == [*states[1:], RequestState.COMPLETED]


@pytest.mark.real_time
def test_a_forked_child_never_reuses_its_parents_request_ids() -> None:
    Request(created_at=0.0)  # the parent has read a batch of ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            ids = " ".join(Request(created_at=0.0).id for _ in range(300))
            os.write(write, ids.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {Request(created_at=0.0).id for _ in range(300)}
    assert len(child) == 300
    assert len(parent) == 300
    assert not child & parent
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in child | parent)
