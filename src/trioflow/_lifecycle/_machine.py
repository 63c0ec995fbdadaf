"""A generic, explicit state machine with async hooks, history and statistics.

A :class:`StateMachine` is a transition table over one :class:`enum.Enum` (kept as data) plus
hooks. It does not own the objects it moves: anything with a ``state`` attribute can be moved,
and an object that also has a ``history`` list gets one :class:`StateChange` appended per
transition. One machine serves any number of objects, so its :meth:`StateMachine.statistics`
describe all of them together (how often each state was entered, how long objects stayed).

A transition is all or nothing: it is validated against the table before anything runs, and if
a hook or handler fails (or the transition is cancelled while one awaits) the object is put back
in the state it was in, nothing is recorded, and the exception propagates to the caller as it
is, with a note naming the transition (:pep:`678`), so it is never lost.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Generic, NoReturn, Protocol, TypeVar, final, overload

import anyio
import attrs

from .._backend import current_clock as clock
from .._errors import InvalidTransitionError, TransitionInProgressError
from .._values import builder

__all__ = (
    "Route",
    "StateChange",
    "StateMachine",
    "StateMachineStatistics",
    "StateStatistics",
    "Stateful",
)

E = TypeVar("E", bound=enum.Enum)

Hook = Callable[[Any, E, E], Awaitable[object]]
"""An async hook: ``await hook(obj, from_state, to_state)``."""

_HookT = TypeVar("_HookT", bound=Callable[..., Awaitable[object]])


class Stateful(Protocol[E]):
    """What a :class:`StateMachine` can move: any object with a settable ``state``.

    An object that also has a ``history`` list gets a :class:`StateChange` appended for every
    transition; with a ``created_at`` float (on anyio's clock) as well, the time spent in its
    first state counts in the machine's statistics.
    """

    state: E


@attrs.frozen(kw_only=True)
class StateChange(Generic[E]):
    """One applied transition, as recorded in an object's ``history``.

    Attributes:
        from_state: The state the object left.
        to_state: The state the object entered.
        at: When the state changed, in seconds on the running backend's clock
            (``anyio.current_time()``).
    """

    from_state: E
    to_state: E
    at: float


# A transition records one StateChange, built without the frozen class's guarded __init__:
# the same object, built faster (bench/lifecycle.py).
_change: Callable[[Any, Any, float], StateChange[Any]] = builder(StateChange)
_NUMBER = (float, int)  # built once: ``float | int`` makes a new union at every call


@attrs.frozen(kw_only=True)
class StateStatistics:
    """What one state of a :class:`StateMachine` has seen.

    Attributes:
        entered: Transitions into this state.
        exited: Transitions out of this state.
        time: Total seconds objects spent in this state before leaving it. Only stays that
            can be timed count: the object keeps a ``history`` (or, for its first state, has a
            ``created_at``).
        mean_time: ``time`` divided by the timed stays (0.0 when none).
    """

    entered: int
    exited: int
    time: float
    mean_time: float


@attrs.frozen(kw_only=True)
class StateMachineStatistics(Generic[E]):
    """A snapshot of a :class:`StateMachine`, returned by its ``statistics()``.

    Attributes:
        transitions: Transitions applied.
        rejected: Transitions refused because the table does not allow them (or another
            transition of the same object was in progress).
        failed: Transitions undone because a hook or handler raised.
        cancelled: Transitions undone because they were cancelled while a hook awaited (not
            failures: cancellation is the caller's decision).
        states: Per-state statistics, for every state of the enum.
    """

    transitions: int
    rejected: int
    failed: int
    cancelled: int
    states: Mapping[E, StateStatistics]


@final
class _State(Generic[E]):
    """One state's outgoing transitions (by ``id`` of the target) and counters.

    Transitions look states up by ``id()``: Enum members are singletons, and ``Enum.__hash__``
    is a Python-level function, several times slower than hashing an int.
    """

    __slots__ = ("entered", "exited", "state", "targets", "time", "timed")

    def __init__(self, state: E) -> None:
        self.state = state
        self.targets: dict[int, _State[E]] = {}
        self.entered = 0
        self.exited = 0
        self.time = 0.0
        self.timed = 0


def _enum_of(transitions: Mapping[Any, Any], initial: object) -> type[enum.Enum]:
    if not isinstance(initial, enum.Enum):
        raise TypeError(f"initial must be a member of an Enum, got {initial!r}")
    cls = type(initial)
    for state, targets in transitions.items():
        if not isinstance(state, cls):
            raise TypeError(
                f"transitions keys must be members of {cls.__name__} (the type of initial), "
                f"got {state!r}"
            )
        if isinstance(targets, str | bytes) or not isinstance(targets, Iterable):
            raise TypeError(
                f"transitions[{state!r}] must be a collection of {cls.__name__} members, "
                f"got {targets!r}"
            )
        for target in targets:
            if not isinstance(target, cls):
                raise TypeError(
                    f"transitions[{state!r}] must contain only {cls.__name__} members, "
                    f"got {target!r}"
                )
    return cls


@final
@attrs.define(eq=False, init=False, repr=False)
class StateMachine(Generic[E]):
    """Moves objects between the states of an Enum, as a transition table allows.

    Example::

        machine = StateMachine({Door.CLOSED: {Door.OPEN}, Door.OPEN: {Door.CLOSED}},
                               Door.CLOSED, terminal=())

        @machine.on_enter(Door.OPEN)
        async def log_open(door, from_state, to_state):
            print("opened")

        await machine.transition(door, Door.OPEN)

    A transition runs, in order: every ``before`` hook, the ``on_exit`` handlers of the state
    left, the change itself (the object's ``state`` is set), the ``on_enter`` handlers of the
    state entered, then every ``after`` hook; then the :class:`StateChange` is appended to the
    object's ``history`` and counted. Hooks run in registration order, one at a time. If any of
    them raises (or the transition is cancelled while one awaits), the object is set back to
    the state it was in and nothing is recorded; the exception propagates as it is, with a
    note naming the hook and the transition.

    Two transitions of the same object may not overlap: while one awaits its hooks, another
    raises :class:`~trioflow.TransitionInProgressError` without running anything (trio's
    ``BusyResourceError`` rule). Without hooks a transition never yields to the event loop.

    Args:
        transitions: For each state, the states it may move to. States missing from the
            table have no way out.
        initial: The state new objects start in (e.g. a request is ``RECEIVED``).
        terminal: The states nothing leaves; by default those with no way out. Naming a
            state that has a way out is an error.

    Raises:
        TypeError: ``initial`` is not an Enum member, or the table holds something that is
            not a member of that Enum.
        ValueError: A state named terminal has transitions out of it.
    """

    _transitions: Mapping[E, frozenset[E]]
    _initial: E
    _terminal: frozenset[E]
    _before: list[Hook[E]]
    _after: list[Hook[E]]
    _on_enter: dict[E, list[Hook[E]]]
    _on_exit: dict[E, list[Hook[E]]]
    _has_hooks: bool
    _busy: set[int]
    _states: dict[int, _State[E]]
    _rejected: int
    _failed: int
    _cancelled: int

    def __init__(
        self,
        transitions: Mapping[E, Collection[E]],
        initial: E,
        *,
        terminal: Collection[E] | None = None,
    ) -> None:
        if not isinstance(transitions, Mapping):
            raise TypeError(
                f"transitions must be a mapping of state to allowed next states, "
                f"got {type(transitions).__name__}"
            )
        cls = _enum_of(transitions, initial)
        members: list[E] = list(cls)
        table = {state: frozenset(transitions.get(state, ())) for state in members}
        if terminal is None:
            terminal_set = frozenset(s for s, targets in table.items() if not targets)
        else:
            given: object = terminal
            if isinstance(given, str | bytes) or not isinstance(given, Iterable):
                raise TypeError(f"terminal must be a collection of states, got {terminal!r}")
            terminal_set = frozenset(terminal)
            for state in terminal_set:
                if not isinstance(state, cls):
                    raise TypeError(
                        f"terminal must contain only {cls.__name__} members, got {state!r}"
                    )
                if table[state]:
                    raise ValueError(
                        f"terminal state {state!r} must have no transitions out of it, "
                        f"got {sorted(t.name for t in table[state])}"
                    )
        self._transitions = MappingProxyType(table)
        self._initial = initial
        self._terminal = terminal_set
        self._before = []
        self._after = []
        self._on_enter = {}
        self._on_exit = {}
        self._has_hooks = False
        self._busy = set()
        self._states = {id(state): _State(state) for state in members}
        for state, targets in table.items():
            info = self._states[id(state)]
            info.targets = {id(t): self._states[id(t)] for t in targets}
        self._rejected = 0
        self._failed = 0
        self._cancelled = 0

    def __repr__(self) -> str:
        cls = type(self._initial).__name__
        return f"StateMachine({cls}, initial={self._initial!r}, states={len(self._states)})"

    # --- the table ---------------------------------------------------------------------------
    @property
    def transitions(self) -> Mapping[E, frozenset[E]]:
        """The transition table (read-only), with an entry for every state."""
        return self._transitions

    @property
    def initial(self) -> E:
        """The state new objects start in."""
        return self._initial

    @property
    def terminal(self) -> frozenset[E]:
        """The states nothing leaves."""
        return self._terminal

    def allowed(self, state: E) -> frozenset[E]:
        """Return the states that ``state`` may move to.

        Args:
            state: A state of this machine.

        Returns:
            The allowed next states (empty for a terminal state).

        Raises:
            TypeError: ``state`` is not a state of this machine.
        """
        try:
            return self._transitions[state]
        except KeyError:
            raise self._foreign("state", state) from None

    def can_transition(self, from_state: E, to_state: E) -> bool:
        """Return whether the table allows moving from ``from_state`` to ``to_state``.

        Args:
            from_state: The state moved from.
            to_state: The state moved to.

        Returns:
            ``True`` when the transition is in the table.
        """
        targets = self._transitions.get(from_state)
        return targets is not None and to_state in targets

    def is_terminal(self, state: E) -> bool:
        """Return whether nothing leaves ``state``.

        Args:
            state: A state of this machine.

        Returns:
            ``True`` for a terminal state.
        """
        return state in self._terminal

    def _foreign(self, what: str, state: object) -> TypeError:
        cls = type(self._initial).__name__
        return TypeError(f"{what} must be a {cls} member, got {state!r}")

    # --- hooks -------------------------------------------------------------------------------
    def before(self, fn: _HookT) -> _HookT:
        """Register an async hook run before every transition (usable as a decorator).

        Called as ``await fn(obj, from_state, to_state)`` while ``obj`` is still in
        ``from_state``. Raising stops the transition (a guard).

        Args:
            fn: The async hook.

        Returns:
            ``fn`` itself.

        Raises:
            TypeError: ``fn`` is not callable.
        """
        self._before.append(self._check_hook(fn))
        self._has_hooks = True
        return fn

    def after(self, fn: _HookT) -> _HookT:
        """Register an async hook run after every transition (usable as a decorator).

        Called as ``await fn(obj, from_state, to_state)`` once ``obj`` is in ``to_state`` and
        its ``on_enter`` handlers ran. Raising undoes the transition.

        Args:
            fn: The async hook.

        Returns:
            ``fn`` itself.

        Raises:
            TypeError: ``fn`` is not callable.
        """
        self._after.append(self._check_hook(fn))
        self._has_hooks = True
        return fn

    @overload
    def on_enter(self, state: E) -> Callable[[_HookT], _HookT]: ...
    @overload
    def on_enter(self, state: E, fn: _HookT) -> _HookT: ...
    def on_enter(self, state: E, fn: _HookT | None = None) -> Any:
        """Register an async handler run when an object enters ``state``.

        ``machine.on_enter(State.X, fn)`` or ``@machine.on_enter(State.X)``. Called as
        ``await fn(obj, from_state, to_state)`` with ``obj.state`` already ``state``; raising
        undoes the transition.

        Args:
            state: The state entered.
            fn: The async handler; omit it to use this method as a decorator.

        Returns:
            ``fn``, or a decorator registering its argument when ``fn`` is omitted.

        Raises:
            TypeError: ``state`` is not a state of this machine or ``fn`` is not callable.
        """
        return self._register(self._on_enter, state, fn)

    @overload
    def on_exit(self, state: E) -> Callable[[_HookT], _HookT]: ...
    @overload
    def on_exit(self, state: E, fn: _HookT) -> _HookT: ...
    def on_exit(self, state: E, fn: _HookT | None = None) -> Any:
        """Register an async handler run when an object leaves ``state``.

        ``machine.on_exit(State.X, fn)`` or ``@machine.on_exit(State.X)``. Called as
        ``await fn(obj, from_state, to_state)`` while ``obj`` is still in ``state``; raising
        stops the transition.

        Args:
            state: The state left.
            fn: The async handler; omit it to use this method as a decorator.

        Returns:
            ``fn``, or a decorator registering its argument when ``fn`` is omitted.

        Raises:
            TypeError: ``state`` is not a state of this machine or ``fn`` is not callable.
        """
        return self._register(self._on_exit, state, fn)

    def _register(self, table: dict[E, list[Hook[E]]], state: E, fn: _HookT | None) -> Any:
        if state not in self._transitions:
            raise self._foreign("state", state)

        def register(hook: _HookT) -> _HookT:
            table.setdefault(state, []).append(self._check_hook(hook))
            self._has_hooks = True
            return hook

        return register if fn is None else register(fn)

    @staticmethod
    def _check_hook(fn: Callable[..., Awaitable[object]]) -> Hook[E]:
        if not callable(fn):
            raise TypeError(f"hook must be an async callable, got {fn!r}")
        return fn

    # --- transitions -------------------------------------------------------------------------
    async def transition(
        self, obj: Stateful[E], to_state: E, *, hooks: bool = True
    ) -> StateChange[E]:
        """Move ``obj`` to ``to_state``, running the hooks, or leave it where it is.

        Args:
            obj: Any object with a ``state`` attribute holding a state of this machine
                (and optionally a ``history`` list).
            to_state: The state to move to.
            hooks: ``False`` skips every hook and handler: for recovery code that must put an
                object in a state (say, a terminal one) after a hook failed. The transition is
                still validated, recorded and counted.

        Returns:
            The :class:`StateChange` applied (also appended to ``obj.history``, if any).

        Raises:
            InvalidTransitionError: The table does not allow moving from ``obj.state`` to
                ``to_state`` (nothing ran, nothing changed).
            TransitionInProgressError: Another transition of ``obj`` is awaiting its hooks.
            TypeError: ``to_state`` is not a state of this machine.
            Exception: Whatever a hook or handler raised, with a note naming it; ``obj`` is
                back in its previous state.
        """
        from_state = obj.state
        left = self._states.get(id(from_state))
        entered = None if left is None else left.targets.get(id(to_state))
        key = id(obj)
        if left is None or entered is None or key in self._busy:
            self._refuse(obj, from_state, to_state, allowed=entered is not None)
        if not (hooks and self._has_hooks):
            obj.state = to_state
            return self._record(obj, left, entered, clock()())
        self._busy.add(key)
        try:
            applied = False
            hook: Hook[E] | None = None
            try:
                for hook in self._before:
                    await hook(obj, from_state, to_state)
                for hook in self._on_exit.get(from_state, ()):
                    await hook(obj, from_state, to_state)
                at = anyio.current_time()
                obj.state = to_state
                applied = True
                for hook in self._on_enter.get(to_state, ()):
                    await hook(obj, from_state, to_state)
                for hook in self._after:
                    await hook(obj, from_state, to_state)
            except BaseException as exc:
                if applied:
                    obj.state = from_state
                if not isinstance(exc, Exception):
                    self._cancelled += 1
                else:
                    self._failed += 1
                    name = getattr(hook, "__qualname__", repr(hook))
                    exc.add_note(
                        f"raised by hook {name} during the transition "
                        f"{from_state!r} -> {to_state!r}; the object stays in {from_state!r}"
                    )
                raise
            return self._record(obj, left, entered, at)
        finally:
            self._busy.discard(key)

    def transition_nowait(
        self, obj: Stateful[E], to_state: E, *, at: float | None = None
    ) -> StateChange[E]:
        """Move ``obj`` to ``to_state`` at once, when no hook has to run (trio's ``_nowait``).

        The fast path of code that moves many objects (a pipeline moves a request once per
        stage): without hooks a transition never awaits, so it needs no coroutine, and a caller
        that has just read the clock may pass that time instead of reading it again.

        Args:
            obj: As for :meth:`transition`.
            to_state: The state to move to.
            at: When the change happened, on the running backend's clock; now by default.

        Returns:
            The :class:`StateChange` applied (also appended to ``obj.history``, if any).

        Raises:
            anyio.WouldBlock: The machine has hooks, which must be awaited: nothing changed;
                use :meth:`transition`.
            InvalidTransitionError: The table does not allow the move (nothing changed).
            TransitionInProgressError: Another transition of ``obj`` is awaiting its hooks.
            TypeError: ``to_state`` is not a state of this machine.
        """
        if self._has_hooks:
            raise anyio.WouldBlock
        from_state = obj.state
        left = self._states.get(id(from_state))
        entered = None if left is None else left.targets.get(id(to_state))
        if left is None or entered is None or (self._busy and id(obj) in self._busy):
            self._refuse(obj, from_state, to_state, allowed=entered is not None)
        obj.state = to_state
        return self._record(obj, left, entered, clock()() if at is None else at)

    def _refuse(self, obj: object, from_state: E, to_state: E, *, allowed: bool) -> NoReturn:
        """Count and raise a refused transition: not in the table, or the object is busy."""
        self._rejected += 1
        if allowed:
            raise TransitionInProgressError(
                f"another transition of {obj!r} is in progress; "
                f"refused {from_state!r} -> {to_state!r}"
            )
        if to_state not in self._transitions:
            raise self._foreign("to_state", to_state)
        raise InvalidTransitionError(from_state, to_state)

    def _record(
        self,
        obj: object,
        left: _State[E],
        entered: _State[E],
        at: float,
        change: StateChange[E] | None = None,
    ) -> StateChange[E]:
        if change is None:  # built here, unless Route.move has built it already
            change = _change(left.state, entered.state, at)
        try:
            history = obj.history  # type: ignore[attr-defined]
        except AttributeError:
            history = None
        if history is not None:
            if history:
                left.time += at - history[-1].at
                left.timed += 1
            else:
                created = getattr(obj, "created_at", None)
                if isinstance(created, _NUMBER):
                    left.time += at - created
                    left.timed += 1
            history.append(change)
        left.exited += 1
        entered.entered += 1  # their sum is the transitions applied (see statistics)
        return change

    def statistics(self) -> StateMachineStatistics[E]:
        """Return a snapshot of the transitions applied, refused and undone, per state.

        Returns:
            A frozen :class:`StateMachineStatistics`.
        """
        states = {
            c.state: StateStatistics(
                entered=c.entered,
                exited=c.exited,
                time=c.time,
                mean_time=c.time / c.timed if c.timed else 0.0,
            )
            for c in self._states.values()
        }
        return StateMachineStatistics(
            transitions=sum(c.entered for c in self._states.values()),
            rejected=self._rejected,
            failed=self._failed,
            cancelled=self._cancelled,
            states=MappingProxyType(states),
        )


@final
class Route(Generic[E]):
    """A path of transitions through one machine's table, looked up once.

    What code that moves many objects along the same states (a pipeline, once per stage)
    uses instead of :meth:`StateMachine.transition_nowait`: ``route.move(obj, index, at)`` is
    that call for the ``index``-th transition of the path, with the table lookups done when the
    route was made. The transition is the same (validated, recorded, counted); an object that
    is not in the step's expected state, or is busy, takes the general path and its checks.
    The table of a machine never changes, so a route stays valid as long as its machine.

    Args:
        machine: The machine whose table the path follows.
        steps: ``(from_state, to_state)`` for each index, or ``None`` for an index with no
            precomputed transition (``move`` then needs ``to_state``).

    Attributes:
        machine: The machine whose table the path follows.
        terminal: Its terminal states (a machine's table never changes): what a caller that
            moves an object along the route tests before it starts, without a call.

    Raises:
        InvalidTransitionError: A step is not in the machine's table.
    """

    __slots__ = ("_steps", "machine", "terminal")

    def __init__(self, machine: StateMachine[E], steps: Iterable[tuple[E, E] | None]) -> None:
        self.machine = machine
        self.terminal: frozenset[E] = machine.terminal
        compiled: list[tuple[E, _State[E], _State[E]] | None] = []
        for step in steps:
            if step is None:
                compiled.append(None)
                continue
            from_state, to_state = step
            if not machine.can_transition(from_state, to_state):
                raise InvalidTransitionError(from_state, to_state)
            states = machine._states
            compiled.append((from_state, states[id(from_state)], states[id(to_state)]))
        self._steps = tuple(compiled)

    def move(self, obj: Stateful[E], index: int, to_state: E, at: float) -> StateChange[E]:
        """Move ``obj`` along step ``index`` (to ``to_state``) at ``at``, as ``transition_nowait``.

        Args:
            obj: As for :meth:`StateMachine.transition`.
            index: The step of the route.
            to_state: The state step ``index`` enters (used when ``obj`` is elsewhere).
            at: When the change happened, on the running backend's clock.

        Returns:
            The :class:`StateChange` applied.

        Raises:
            anyio.WouldBlock: The machine has hooks (nothing changed; await
                :meth:`StateMachine.transition`).
            InvalidTransitionError: The table does not allow the move (nothing changed).
            TransitionInProgressError: Another transition of ``obj`` is awaiting its hooks.
        """
        machine = self.machine
        step = self._steps[index]
        if (
            step is None
            or machine._has_hooks
            or obj.state is not step[0]
            or (machine._busy and id(obj) in machine._busy)
        ):
            return machine.transition_nowait(obj, to_state, at=at)
        _, left, entered = step
        obj.state = entered.state
        # _record inlined for an object with a history already (every transition of a
        # pipeline run but its first): one call fewer, the same change, entry and counts.
        change: StateChange[E] = _change(left.state, entered.state, at)
        history = getattr(obj, "history", None)
        if not history:
            return machine._record(obj, left, entered, at, change)
        left.time += at - history[-1].at
        left.timed += 1
        history.append(change)
        left.exited += 1
        entered.entered += 1
        return change
