"""Each outcome ``as_completed`` hands out is a cancellation point, on both backends.

The iterator tests the scopes itself (``_backend.cancel_probe``) and awaits the loop's own
check only when they are cancelled; these tests pin that the test answers as that check does,
for any nesting of scopes, from any task, on trio and on asyncio.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _helpers import Tracker
from trioflow import as_completed
from trioflow._backend import cancel_probe


@pytest.mark.anyio
async def test_a_ready_outcome_in_a_scope_cancelled_by_the_consumer_raises() -> None:
    tracker = Tracker()
    taken: list[int] = []
    reached = False
    with anyio.CancelScope() as scope:
        async with as_completed(tracker.ops([1, 1, 1]), limit=3) as outcomes:
            await anyio.sleep(5)  # every outcome is waiting in the channel
            taken.append((await outcomes.__anext__()).index)
            scope.cancel()  # no await since: only the next step can notice
            await outcomes.__anext__()
            reached = True
    assert scope.cancelled_caught
    assert not reached
    assert len(taken) == 1


@pytest.mark.anyio
async def test_a_shielded_consumer_takes_ready_outcomes_inside_a_cancelled_scope() -> None:
    tracker = Tracker()
    with anyio.CancelScope() as outer:
        async with as_completed(tracker.ops([1, 1, 1]), limit=3) as outcomes:
            await anyio.sleep(5)
            outer.cancel()
            with anyio.CancelScope(shield=True):
                indexes = sorted([(await outcomes.__anext__()).index for _ in range(3)])
            await outcomes.__anext__()  # unshielded again: cancelled before the end shows
    assert indexes == [0, 1, 2]
    assert outer.cancelled_caught


@pytest.mark.anyio
async def test_the_iterator_checks_the_task_that_steps_it() -> None:
    # The first steps come from the task that opened the block; the next from another task,
    # cancelled on its own: that task's scopes decide, not the first task's.
    tracker = Tracker()
    raised: list[bool] = []
    with anyio.CancelScope():  # the first task has scopes of its own
        async with as_completed(tracker.ops([1, 1, 1, 1]), limit=4) as outcomes:
            await anyio.sleep(5)
            await outcomes.__anext__()

            async def step_cancelled() -> None:
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    await outcomes.__anext__()
                raised.append(scope.cancelled_caught)

            async with anyio.create_task_group() as group:
                group.start_soon(step_cancelled)
            got = [o.index async for o in outcomes]  # the first task again: not cancelled
    assert raised == [True]
    assert len(got) == 3  # the cancelled step took none


# (shield, cancelled) for each scope, outermost first.
scope_stacks = st.lists(st.tuples(st.booleans(), st.booleans()), max_size=5)


async def _probe_against_anyio(stack: list[tuple[bool, bool]]) -> tuple[bool, bool]:
    """Enter the scopes, then return (the probe's answer, whether anyio's check raised)."""
    probe = cancel_probe()
    assert probe is not None
    reached = False
    with contextlib.ExitStack() as scopes:
        entered = [scopes.enter_context(anyio.CancelScope(shield=shield)) for shield, _ in stack]
        for scope, (_, cancelled) in zip(entered, stack, strict=True):
            if cancelled:
                scope.cancel()
        said = probe()
        await anyio.lowlevel.checkpoint_if_cancelled()
        reached = True
    return said, not reached


@settings(max_examples=80, deadline=None)
@given(stack=scope_stacks, in_child=st.booleans(), backend=st.sampled_from(["trio", "asyncio"]))
def test_the_probe_answers_as_the_loops_check(
    stack: list[tuple[bool, bool]], in_child: bool, backend: str
) -> None:
    async def main() -> tuple[bool, bool]:
        if not in_child:
            return await _probe_against_anyio(stack)
        answers: list[tuple[bool, bool]] = []

        async def child() -> None:
            answers.append(await _probe_against_anyio(stack))

        async with anyio.create_task_group() as group:
            group.start_soon(child)
        return answers[0]

    said, raised = anyio.run(main, backend=backend)
    assert said == raised


def test_on_trio_the_probe_counts_the_cancellation_point_as_trios_check_does() -> None:
    import trio
    import trio.lowlevel

    async def main() -> tuple[int, int]:
        probe = cancel_probe()
        assert probe is not None
        task = trio.lowlevel.current_task()
        before = task._cancel_points
        await trio.lowlevel.checkpoint_if_cancelled()
        by_trio = task._cancel_points - before
        assert probe() is False
        return by_trio, task._cancel_points - before - by_trio

    assert trio.run(main) == (1, 1)


def test_on_trio_a_keyboard_interrupt_pending_for_the_main_task_makes_the_probe_say_so() -> None:
    import trio
    import trio.lowlevel

    def pending(probe: Callable[[], bool]) -> bool:
        # What trio's own check reads; set and cleared with no checkpoint in between.
        runner = trio.lowlevel.current_task()._runner
        runner.ki_pending = True
        try:
            return probe()
        finally:
            runner.ki_pending = False

    async def main() -> tuple[bool, bool]:
        probe = cancel_probe()
        assert probe is not None
        in_main = pending(probe)
        in_child: list[bool] = []

        async def child() -> None:
            in_child.append(pending(probe))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
        return in_main, in_child[0]

    assert trio.run(main) == (True, False)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_the_probes_current_task_is_asyncios_in_every_task() -> None:
    import asyncio

    from trioflow._backend import _current_task_of_this_loop

    lookup = _current_task_of_this_loop(asyncio.current_task)
    seen: list[tuple[object, object]] = []

    async def child() -> None:
        seen.append((lookup(), asyncio.current_task()))
        await anyio.lowlevel.checkpoint()  # the others run meanwhile
        seen.append((lookup(), asyncio.current_task()))

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(child)
        seen.append((lookup(), asyncio.current_task()))
    assert len(seen) == 7
    assert all(found is task and task is not None for found, task in seen)
    assert len({id(task) for _, task in seen}) == 4
