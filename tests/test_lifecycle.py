from __future__ import annotations

import enum
from typing import Any

import anyio
import attrs
import pytest

import trioflow
from trioflow import InvalidTransitionError, TransitionInProgressError
from trioflow.lifecycle import (
    REQUEST_TRANSITIONS,
    Request,
    RequestState,
    StateChange,
    StateMachine,
)

pytestmark = pytest.mark.anyio


class Door(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    LOCKED = "locked"
    BROKEN = "broken"


DOOR_TABLE = {
    Door.CLOSED: {Door.OPEN, Door.LOCKED, Door.BROKEN},
    Door.OPEN: {Door.CLOSED, Door.BROKEN},
    Door.LOCKED: {Door.CLOSED, Door.BROKEN},
}


@attrs.define(eq=False)
class Thing:
    state: Door = Door.CLOSED
    history: list[StateChange[Door]] = attrs.field(factory=list)
    created_at: float = 0.0


def state_of(thing: Thing) -> Door:
    # A call, so that mypy does not narrow thing.state across awaits that change it.
    return thing.state


@attrs.define(eq=False)
class Bare:
    state: Door = Door.CLOSED


# --- the request table --------------------------------------------------------------------------
def test_request_transitions_is_read_only_data() -> None:
    assert isinstance(REQUEST_TRANSITIONS[RequestState.RECEIVED], frozenset)
    with pytest.raises(TypeError):
        REQUEST_TRANSITIONS[RequestState.RECEIVED] = frozenset()  # type: ignore[index]
    assert set(REQUEST_TRANSITIONS) == set(RequestState)


def test_request_transitions_follow_the_design() -> None:
    s = RequestState
    happy = {
        s.RECEIVED: {s.VALIDATED},
        s.VALIDATED: {s.PLANNED},
        s.PLANNED: {s.CONTEXT_GATHERING},
        s.CONTEXT_GATHERING: {s.PROCESSING},
        s.PROCESSING: {s.TOOL_EXECUTION, s.RESPONSE_FORMATTING},
        s.TOOL_EXECUTION: {s.RESPONSE_FORMATTING},
        s.RESPONSE_FORMATTING: {s.COMPLETED},
    }
    terminal = {s.COMPLETED, s.FAILED, s.CANCELLED}
    for state in RequestState:
        if state in terminal:
            assert REQUEST_TRANSITIONS[state] == frozenset()
        else:
            assert REQUEST_TRANSITIONS[state] == happy[state] | {s.FAILED, s.CANCELLED}
    machine = StateMachine(REQUEST_TRANSITIONS, RequestState.RECEIVED)
    assert machine.terminal == terminal


# --- construction -------------------------------------------------------------------------------
def test_default_terminal_states_are_those_without_a_way_out() -> None:
    machine = StateMachine(DOOR_TABLE, Door.CLOSED)
    assert machine.terminal == {Door.BROKEN}
    assert machine.is_terminal(Door.BROKEN)
    assert not machine.is_terminal(Door.OPEN)
    assert machine.allowed(Door.OPEN) == {Door.CLOSED, Door.BROKEN}
    assert machine.allowed(Door.BROKEN) == frozenset()
    assert machine.can_transition(Door.CLOSED, Door.LOCKED)
    assert not machine.can_transition(Door.OPEN, Door.LOCKED)
    assert machine.initial is Door.CLOSED


def test_construction_is_validated() -> None:
    class Other(enum.Enum):
        X = 1

    with pytest.raises(TypeError, match="initial must be a member of an Enum, got 'closed'"):
        StateMachine(DOOR_TABLE, "closed")  # type: ignore[misc]
    with pytest.raises(TypeError, match="keys must be members of Door"):
        StateMachine({Other.X: set()}, Door.CLOSED)  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"transitions\[<Door.OPEN: 'open'>\] must contain"):
        StateMachine({Door.OPEN: {Other.X}}, Door.CLOSED)  # type: ignore[misc]
    with pytest.raises(TypeError, match="must be a mapping"):
        StateMachine([(Door.OPEN, Door.CLOSED)], Door.CLOSED)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"terminal state <Door\.OPEN: 'open'> must have no"):
        StateMachine(DOOR_TABLE, Door.CLOSED, terminal={Door.OPEN})
    with pytest.raises(TypeError, match=r"must be a collection of Door members"):
        StateMachine({Door.OPEN: "closed"}, Door.CLOSED)  # type: ignore[misc]


async def test_foreign_states_are_type_errors() -> None:
    class Other(enum.Enum):
        X = 1

    machine = StateMachine(DOOR_TABLE, Door.CLOSED)
    with pytest.raises(TypeError, match=r"to_state must be a Door member, got <Other\.X: 1>"):
        await machine.transition(Thing(), Other.X)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="state must be a Door member"):
        machine.on_enter(Other.X, _noop)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="hook must be an async callable"):
        machine.before(42)  # type: ignore[type-var]


async def _noop(obj: Any, from_state: Any, to_state: Any) -> None:
    pass


# --- transitions --------------------------------------------------------------------------------
async def test_transition_moves_records_history_and_returns_the_change() -> None:
    machine = StateMachine(DOOR_TABLE, Door.CLOSED)
    thing = Thing()
    await anyio.sleep(5)
    change = await machine.transition(thing, Door.OPEN)
    assert change == StateChange(from_state=Door.CLOSED, to_state=Door.OPEN, at=5)
    assert thing.state is Door.OPEN
    assert thing.history == [change]
    await anyio.sleep(2)
    await machine.transition(thing, Door.CLOSED)
    assert [c.to_state for c in thing.history] == [Door.OPEN, Door.CLOSED]
    assert thing.history[-1].at == 7
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        change.at = 1  # type: ignore[misc]


async def test_invalid_transition_names_both_states_and_changes_nothing() -> None:
    machine = StateMachine(DOOR_TABLE, Door.CLOSED)
    calls: list[str] = []

    @machine.before
    async def before(obj: Any, f: Door, t: Door) -> None:
        calls.append("before")

    thing = Thing(state=Door.OPEN)
    with pytest.raises(InvalidTransitionError) as info:
        await machine.transition(thing, Door.LOCKED)
    assert info.value.from_state is Door.OPEN
    assert info.value.to_state is Door.LOCKED
    assert "Door.OPEN" in str(info.value)
    assert "Door.LOCKED" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert thing.state is Door.OPEN
    assert thing.history == []
    assert calls == []
    # Nothing leaves a terminal state.
    broken = Thing(state=Door.BROKEN)
    with pytest.raises(InvalidTransitionError):
        await machine.transition(broken, Door.CLOSED)
    stats = machine.statistics()
    assert (stats.transitions, stats.rejected, stats.failed) == (0, 2, 0)


async def test_works_on_objects_without_history() -> None:
    machine = StateMachine(DOOR_TABLE, Door.CLOSED)
    bare = Bare()
    change = await machine.transition(bare, Door.LOCKED)
    assert bare.state is Door.LOCKED
    assert change.to_state is Door.LOCKED
    assert machine.statistics().states[Door.LOCKED].entered == 1


async def test_hooks_run_in_order_with_the_state_they_expect() -> None:
    machine = StateMachine(DOOR_TABLE, Door.CLOSED)
    seen: list[tuple[str, Door, Door, Door]] = []

    def recorder(label: str) -> Any:
        async def hook(obj: Thing, from_state: Door, to_state: Door) -> None:
            await anyio.sleep(0)
            seen.append((label, obj.state, from_state, to_state))

        return hook

    machine.after(recorder("after"))
    machine.before(recorder("before-1"))
    machine.before(recorder("before-2"))
    machine.on_enter(Door.OPEN, recorder("enter-open"))
    machine.on_exit(Door.CLOSED)(recorder("exit-closed"))
    machine.on_enter(Door.LOCKED, recorder("enter-locked"))  # not this transition
    thing = Thing()
    await machine.transition(thing, Door.OPEN)
    c, o = Door.CLOSED, Door.OPEN
    assert seen == [
        ("before-1", c, c, o),
        ("before-2", c, c, o),
        ("exit-closed", c, c, o),
        ("enter-open", o, c, o),
        ("after", o, c, o),
    ]


@pytest.mark.parametrize("failing", ["before", "on_exit", "on_enter", "after"])
async def test_a_failing_hook_leaves_the_previous_state_and_is_raised(failing: str) -> None:
    machine = StateMachine(DOOR_TABLE, Door.CLOSED)

    async def boom(obj: Any, f: Door, t: Door) -> None:
        raise RuntimeError(f"{failing} failed")

    if failing == "before":
        machine.before(boom)
    elif failing == "after":
        machine.after(boom)
    elif failing == "on_exit":
        machine.on_exit(Door.CLOSED, boom)
    else:
        machine.on_enter(Door.OPEN, boom)
    thing = Thing()
    with pytest.raises(RuntimeError, match=f"{failing} failed") as info:
        await machine.transition(thing, Door.OPEN)
    notes = getattr(info.value, "__notes__", [])
    assert any("boom" in n and "Door.CLOSED" in n and "stays in" in n for n in notes)
    assert thing.state is Door.CLOSED
    assert thing.history == []
    stats = machine.statistics()
    assert (stats.transitions, stats.failed) == (0, 1)
    assert stats.states[Door.OPEN].entered == 0
    # hooks=False is the recovery path: validated and recorded, no hook runs.
    change = await machine.transition(thing, Door.OPEN, hooks=False)
    assert state_of(thing) is Door.OPEN
    assert thing.history == [change]


async def test_cancelled_hook_undoes_the_transition() -> None:
    machine = StateMachine(DOOR_TABLE, Door.CLOSED)

    @machine.after
    async def slow(obj: Any, f: Door, t: Door) -> None:
        await anyio.sleep(10)

    thing = Thing()
    with anyio.move_on_after(1) as scope:
        await machine.transition(thing, Door.OPEN)
    assert scope.cancelled_caught
    assert thing.state is Door.CLOSED
    assert thing.history == []
    stats = machine.statistics()
    assert (stats.failed, stats.cancelled) == (0, 1)  # cancellation is not a failure
    assert anyio.current_time() == 1


async def test_overlapping_transitions_of_one_object_are_refused() -> None:
    machine = StateMachine(DOOR_TABLE, Door.CLOSED)
    gate = anyio.Event()

    @machine.before
    async def wait(obj: Any, f: Door, t: Door) -> None:
        await gate.wait()

    thing, other = Thing(), Thing()
    refused: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(machine.transition, thing, Door.OPEN)
        await anyio.sleep(1)
        try:
            await machine.transition(thing, Door.LOCKED)
        except TransitionInProgressError as exc:
            refused.append(exc)
        # Another object is not affected.
        tg.start_soon(machine.transition, other, Door.LOCKED)
        await anyio.sleep(1)
        gate.set()
    assert len(refused) == 1
    assert thing.state is Door.OPEN
    assert other.state is Door.LOCKED
    assert [c.to_state for c in thing.history] == [Door.OPEN]
    assert machine.statistics().rejected == 1
    # Once the first transition is done, the object moves again.
    await machine.transition(thing, Door.CLOSED)
    assert state_of(thing) is Door.CLOSED


async def test_statistics_count_and_time_states() -> None:
    machine = StateMachine(DOOR_TABLE, Door.CLOSED)
    a = Thing(created_at=0.0)
    b = Thing(created_at=0.0)
    await anyio.sleep(3)
    await machine.transition(a, Door.OPEN)  # a: 3 s in CLOSED
    await anyio.sleep(2)
    await machine.transition(a, Door.CLOSED)  # a: 2 s in OPEN
    await machine.transition(b, Door.LOCKED)  # b: 5 s in CLOSED
    await anyio.sleep(1)
    await machine.transition(b, Door.CLOSED)  # b: 1 s in LOCKED
    stats = machine.statistics()
    assert stats.transitions == 4
    closed = stats.states[Door.CLOSED]
    assert (closed.entered, closed.exited, closed.time, closed.mean_time) == (2, 2, 8, 4)
    assert stats.states[Door.OPEN].time == 2
    assert stats.states[Door.LOCKED].time == 1
    assert stats.states[Door.BROKEN] == trioflow.lifecycle.StateStatistics(
        entered=0, exited=0, time=0.0, mean_time=0.0
    )


async def test_request_defaults_and_validation() -> None:
    await anyio.sleep(4)
    request = Request({"q": 1}, user_id="alice", source="mcp")
    assert request.state is RequestState.RECEIVED
    assert request.created_at == 4
    assert request.history == []
    assert request.results == {}
    assert request.timings == {}
    assert request.kind is None
    assert request.priority == 0
    assert len(request.id) == 32
    assert Request().id != Request().id
    with pytest.raises(TypeError, match="user_id must be a non-empty str, got 3"):
        Request(user_id=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="priority must be an int, got 'high'"):
        Request(priority="high")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="state must be a RequestState"):
        Request(state="received")  # type: ignore[arg-type]


def test_request_outside_an_event_loop_needs_created_at() -> None:
    with pytest.raises(RuntimeError, match="inside a running event loop"):
        Request()
    assert Request(created_at=1.5).created_at == 1.5


async def test_transition_nowait_is_the_hook_free_path() -> None:
    machine = StateMachine(DOOR_TABLE, Door.CLOSED)
    thing = Thing()
    await anyio.sleep(3)
    change = machine.transition_nowait(thing, Door.OPEN)
    assert (change.from_state, change.to_state, change.at) == (Door.CLOSED, Door.OPEN, 3)
    # A caller that has just read the clock may give the time.
    assert machine.transition_nowait(thing, Door.CLOSED, at=2.5).at == 2.5
    back = StateChange(from_state=Door.OPEN, to_state=Door.CLOSED, at=2.5)
    assert thing.history == [change, back]
    with pytest.raises(InvalidTransitionError):
        machine.transition_nowait(Thing(state=Door.OPEN), Door.LOCKED)
    with pytest.raises(TypeError, match="to_state must be a Door member"):
        machine.transition_nowait(thing, RequestState.FAILED)  # type: ignore[arg-type]
    assert machine.statistics().rejected == 2
    assert machine.statistics().transitions == 2

    @machine.after
    async def hook(obj: Any, f: Door, t: Door) -> None:
        pass

    with pytest.raises(anyio.WouldBlock):  # hooks must be awaited: use transition()
        machine.transition_nowait(thing, Door.OPEN)
    assert state_of(thing) is Door.CLOSED
    assert machine.statistics().transitions == 2
