"""The one-shot waiter of each backend (``current_backend().event``), on its own.

It is what ``as_completed``'s queue waits on: trio's parked task, or a bare asyncio future.
It must behave as ``anyio.Event`` does for its one waiting task: woken exactly when set, a
cancellation point, and a cancelled wait leaves nothing behind.
"""

from __future__ import annotations

import anyio
import pytest

from trioflow._backend import current_backend

pytestmark = pytest.mark.anyio


async def test_a_waiter_wakes_its_task_when_it_is_set() -> None:
    waiter = current_backend().event()
    woken: list[float] = []

    async def wait() -> None:
        await waiter.wait()
        woken.append(anyio.current_time())

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.sleep(3)
        assert woken == []
        waiter.set()
        waiter.set()  # a second set does nothing
    assert woken == [3]


async def test_a_waiter_set_before_the_wait_returns_at_once_as_a_checkpoint() -> None:
    waiter = current_backend().event()
    waiter.set()
    await waiter.wait()
    assert anyio.current_time() == 0
    with anyio.CancelScope() as scope:
        scope.cancel()
        await waiter.wait()  # set, but still a cancellation point
    assert scope.cancelled_caught


async def test_a_cancelled_wait_propagates_and_a_later_set_does_nothing() -> None:
    waiter = current_backend().event()
    with anyio.move_on_after(2) as scope:
        await waiter.wait()
    assert scope.cancelled_caught
    assert anyio.current_time() == 2
    waiter.set()  # nobody waits any more: no error, nobody woken
    await anyio.sleep(1)
    assert anyio.current_time() == 3


async def test_many_waiters_each_wake_only_their_own_task() -> None:
    backend = current_backend()
    waiters = [backend.event() for _ in range(5)]
    woken: list[tuple[int, float]] = []

    async def wait(i: int) -> None:
        await waiters[i].wait()
        woken.append((i, anyio.current_time()))

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(wait, i)
        for i in (3, 0, 4, 1, 2):
            await anyio.sleep(1)
            waiters[i].set()
    assert woken == [(3, 1), (0, 2), (4, 3), (1, 4), (2, 5)]
