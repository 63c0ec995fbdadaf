from __future__ import annotations

import anyio
import pytest

from trioflow.testing import virtual_time_backends

pytestmark = pytest.mark.anyio


async def test_sleep_is_exact_and_instant() -> None:
    start = anyio.current_time()
    assert start == 0
    await anyio.sleep(10)
    assert anyio.current_time() == 10
    await anyio.sleep(0.25)
    assert anyio.current_time() == 10.25


async def test_parallel_sleeps_overlap() -> None:
    async with anyio.create_task_group() as tg:
        for delay in (3, 1, 2):
            tg.start_soon(anyio.sleep, delay)
    assert anyio.current_time() == 3


async def test_timeouts_fire_at_their_deadline() -> None:
    with anyio.move_on_after(5) as scope:
        await anyio.sleep(100)
    assert scope.cancelled_caught
    assert anyio.current_time() == 5


@pytest.mark.real_time
async def test_real_time_marker_uses_the_real_clock() -> None:
    await anyio.to_thread.run_sync(lambda: None)
    with anyio.fail_after(5):
        await anyio.to_thread.run_sync(lambda: None)


def test_virtual_time_backends_run_anyio_code() -> None:
    seen: list[float] = []

    async def main() -> None:
        await anyio.sleep(3600)
        seen.append(anyio.current_time())

    for backend, options in virtual_time_backends():
        anyio.run(main, backend=backend, backend_options=options)
    assert seen == [3600, 3600]
