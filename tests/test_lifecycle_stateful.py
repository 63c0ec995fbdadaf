"""Hypothesis drives a state machine with random transitions and checks it against the table."""

from __future__ import annotations

from typing import Any

import anyio
import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from trioflow import InvalidTransitionError
from trioflow.lifecycle import REQUEST_TRANSITIONS, RequestState, StateChange, StateMachine
from trioflow.testing import virtual_time_backends

FAILURES = [None, "before", "on_exit", "on_enter", "after", "cancel"]


@attrs.define(eq=False)
class Subject:
    state: RequestState = RequestState.RECEIVED
    history: list[StateChange[RequestState]] = attrs.field(factory=list)
    created_at: float = 0.0


class HookFailure(Exception):
    pass


class TransitionsMatchTheTable(RuleBasedStateMachine):
    backend = "trio"

    def __init__(self) -> None:
        super().__init__()
        self.machine = StateMachine(REQUEST_TRANSITIONS, RequestState.RECEIVED)
        self.subject = Subject()
        self.expected_state = RequestState.RECEIVED
        self.applied = 0
        self.rejected = 0
        self.failed = 0
        self.cancelled = 0
        self.armed: str | None = None
        self.hook_log: list[str] = []
        self.machine.before(self._hook("before"))
        self.machine.after(self._hook("after"))
        for state in RequestState:
            self.machine.on_enter(state, self._hook("on_enter"))
            self.machine.on_exit(state, self._hook("on_exit"))

    def _hook(self, kind: str) -> Any:
        async def hook(obj: Subject, from_state: RequestState, to_state: RequestState) -> None:
            self.hook_log.append(kind)
            if self.armed == kind:
                raise HookFailure(kind)
            if self.armed == "cancel" and kind == "on_enter":
                await anyio.sleep(10)  # cancelled by the caller's scope

        return hook

    def _run(self, to_state: RequestState) -> BaseException | None:
        outcome: list[BaseException | None] = [None]

        async def main() -> None:
            try:
                with anyio.move_on_after(1):
                    await self.machine.transition(self.subject, to_state)
            except Exception as exc:
                outcome[0] = exc

        options = dict(virtual_time_backends())[self.backend]
        anyio.run(main, backend=self.backend, backend_options=options)
        return outcome[0]

    @rule(to_state=st.sampled_from(list(RequestState)), failure=st.sampled_from(FAILURES))
    def transition(self, to_state: RequestState, failure: str | None) -> None:
        before = self.subject.state
        history = list(self.subject.history)
        self.armed = failure
        self.hook_log.clear()
        error = self._run(to_state)
        valid = to_state in REQUEST_TRANSITIONS[before]
        if not valid:
            assert isinstance(error, InvalidTransitionError)
            assert (error.from_state, error.to_state) == (before, to_state)
            assert self.hook_log == []  # nothing ran
            self.rejected += 1
        elif failure is not None:
            if failure == "cancel":
                assert error is None  # the scope swallowed its own cancellation
                self.cancelled += 1
            else:
                assert isinstance(error, HookFailure)
                self.failed += 1
        else:
            assert error is None
            assert self.hook_log == ["before", "on_exit", "on_enter", "after"]
            self.expected_state = to_state
            self.applied += 1
        if self.expected_state is before:
            # An invalid or failed transition is never applied, not even partly.
            assert self.subject.history == history
        assert self.subject.state is self.expected_state

    @invariant()
    def history_is_a_valid_chain(self) -> None:
        state = RequestState.RECEIVED
        for change in self.subject.history:
            assert change.from_state is state
            assert change.to_state in REQUEST_TRANSITIONS[state]
            state = change.to_state
        assert state is self.subject.state

    @invariant()
    def statistics_match(self) -> None:
        stats = self.machine.statistics()
        assert stats.transitions == self.applied == len(self.subject.history)
        assert stats.rejected == self.rejected
        assert stats.failed == self.failed
        assert stats.cancelled == self.cancelled
        assert sum(s.entered for s in stats.states.values()) == self.applied
        assert sum(s.exited for s in stats.states.values()) == self.applied

    @invariant()
    def terminal_states_are_final(self) -> None:
        if self.machine.is_terminal(self.subject.state):
            assert REQUEST_TRANSITIONS[self.subject.state] == frozenset()


class TransitionsMatchTheTableOnAsyncio(TransitionsMatchTheTable):
    backend = "asyncio"


@pytest.mark.parametrize(
    "case", [TransitionsMatchTheTable, TransitionsMatchTheTableOnAsyncio], ids=["trio", "asyncio"]
)
def test_random_transitions_follow_the_table(case: type[RuleBasedStateMachine]) -> None:
    case.TestCase.settings = settings(max_examples=50, stateful_step_count=20, deadline=None)
    case.TestCase().runTest()
