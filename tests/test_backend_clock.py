"""``_backend.current_time()`` reads the running loop's own clock, as ``anyio.current_time()``.

It asks the loops directly (trio's run record, asyncio's running loop) instead of through
anyio's dispatch; these tests pin that it answers what anyio answers on every loop trioflow
runs on, virtual clocks included, from tasks, nested runs and threads.
"""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest
import trio
import trio.testing

from trioflow._backend import current_time
from trioflow.testing import VirtualTimeEventLoop


@pytest.mark.anyio
async def test_it_reads_what_anyio_reads_as_virtual_time_goes_on() -> None:
    seen: list[tuple[float, float]] = []
    for delay in (0, 1, 2.5, 0.25):
        await anyio.sleep(delay)
        seen.append((current_time(), anyio.current_time()))
    assert [mine for mine, _ in seen] == [anyio_s for _, anyio_s in seen]
    assert [mine for mine, _ in seen] == [0, 1, 3.5, 3.75]


@pytest.mark.anyio
async def test_child_tasks_read_the_same_clock() -> None:
    seen: list[tuple[float, float]] = []

    async def child(delay: float) -> None:
        await anyio.sleep(delay)
        seen.append((current_time(), anyio.current_time()))

    async with anyio.create_task_group() as group:
        for delay in (3, 1, 2):
            group.start_soon(child, delay)
    assert seen == [(1, 1), (2, 2), (3, 3)]


def test_on_trio_the_real_clock_is_the_runs_own() -> None:
    async def main() -> tuple[float, float, float]:
        before = trio.current_time()
        mine = current_time()
        return before, mine, trio.current_time()

    before, mine, after = trio.run(main)
    assert before <= mine <= after


def test_each_trio_run_reads_its_own_clock() -> None:
    # One run after another, each with a clock of its own (a new record each time): never the
    # clock of a run that ended.
    for start in (10.0, 5.0, 1000.0):
        clock = trio.testing.MockClock(autojump_threshold=0)
        clock.jump(start)

        async def main(expected: float = start) -> float:
            assert current_time() == expected
            await trio.sleep(1)
            return current_time()

        assert trio.run(main, clock=clock) == start + 1


def test_on_asyncio_it_reads_the_loops_time() -> None:
    async def main() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        before = loop.time()
        mine = current_time()
        return before, mine, loop.time()

    before, mine, after = asyncio.run(main())
    assert before <= mine <= after


def test_an_asyncio_loop_with_a_clock_of_its_own_is_asked() -> None:
    loop = VirtualTimeEventLoop()
    try:

        async def main() -> list[float]:
            seen = [current_time()]
            await asyncio.sleep(7)
            seen.append(current_time())
            assert seen[-1] == asyncio.get_running_loop().time()
            return seen

        seen = loop.run_until_complete(main())
    finally:
        loop.close()
    assert seen[1] - seen[0] == 7


def test_a_thread_outside_any_loop_gets_anyios_error() -> None:
    def outside() -> None:
        with pytest.raises(RuntimeError, match="event loop") as anyios:
            anyio.current_time()
        with pytest.raises(type(anyios.value)):
            current_time()

    async def main() -> None:
        # From a worker thread of a running trio loop: no loop runs in that thread.
        await trio.to_thread.run_sync(outside)

    trio.run(main)
    outside()  # and from a thread where no loop ever ran


def test_trio_as_a_guest_of_asyncio_reads_trios_clock_in_trio_tasks() -> None:
    # trio's guest mode runs trio's tasks inside asyncio's callbacks: both loops run in the
    # thread; a trio task reads trio's clock and an asyncio task asyncio's (what anyio would
    # say in each).
    results: list[tuple[float, float]] = []
    done = threading.Event()

    beside: list[tuple[float, float]] = []

    async def trio_main() -> None:
        await trio.sleep(0)
        results.append((current_time(), trio.current_time()))
        await trio.sleep(0)

    async def asyncio_main() -> None:
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def run_sync_soon_threadsafe(fn: object) -> None:
            loop.call_soon_threadsafe(fn)  # type: ignore[arg-type]

        def done_callback(outcome: object) -> None:
            finished.set_result(outcome)

        trio.lowlevel.start_guest_run(
            trio_main,
            run_sync_soon_threadsafe=run_sync_soon_threadsafe,
            done_callback=done_callback,
            clock=trio.testing.MockClock(),
        )
        await asyncio.sleep(0)  # an asyncio task, while the guest run is on: asyncio's clock
        beside.append((current_time(), loop.time()))
        outcome = await finished
        outcome.unwrap()
        done.set()

    asyncio.run(asyncio_main())
    assert done.is_set()
    assert results == [(0.0, 0.0)]
    assert len(beside) == 1
    mine, asyncios = beside[0]
    assert mine <= asyncios
    assert mine > 1.0  # the loop's monotonic clock, not trio's 0.0
