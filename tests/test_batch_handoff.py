"""The queue between as_completed's workers and its consumer, on its own, against a model."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioflow._batch._handoff import Handoff
from trioflow.testing import virtual_time_backends

pytestmark = pytest.mark.anyio


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    producers = draw(st.integers(1, 5))
    return {
        "capacity": draw(st.integers(1, 4)),
        # Each producer sends its items with these pauses (in virtual seconds) before each.
        "pauses": [
            draw(st.lists(st.integers(0, 3), min_size=0, max_size=6)) for _ in range(producers)
        ],
        # The consumer pauses this long before each receive; it may leave after some items.
        "consumer": draw(st.lists(st.integers(0, 3), min_size=0, max_size=40)),
        "leaves_after": draw(st.one_of(st.none(), st.integers(0, 10))),
    }


@pytest.mark.parametrize("backend", range(2), ids=["trio", "asyncio"])
@settings(max_examples=60)
@given(case=schedules())
def test_every_item_is_delivered_once_in_order_and_the_bound_holds(
    backend: int, case: dict[str, Any]
) -> None:
    capacity: int = case["capacity"]
    handoff = Handoff[tuple[int, int]](capacity)
    received: list[tuple[int, int]] = []
    broken: list[int] = []
    sent: list[tuple[int, int]] = []
    peak = 0

    async def produce(who: int, pauses: list[int]) -> None:
        nonlocal peak
        try:
            for n, pause in enumerate(pauses):
                await anyio.sleep(pause)
                await handoff.send((who, n))
                sent.append((who, n))
                peak = max(peak, len(handoff._buffer))
        except anyio.BrokenResourceError:
            broken.append(who)

    async def main() -> None:
        pauses = iter(case["consumer"])
        async with anyio.create_task_group() as producers:
            for who, items in enumerate(case["pauses"]):
                producers.start_soon(produce, who, items)
            total = sum(len(p) for p in case["pauses"])
            while len(received) < total:
                if case["leaves_after"] is not None and len(received) >= case["leaves_after"]:
                    handoff.leave()
                    break
                await anyio.sleep(next(pauses, 0))
                received.append(await handoff.receive())
        if case["leaves_after"] is None or len(received) == sum(map(len, case["pauses"])):
            handoff.close()
            with pytest.raises(anyio.EndOfStream):
                handoff.receive_nowait()

    name, options = virtual_time_backends()[backend]
    anyio.run(main, backend=name, backend_options=options)
    assert peak <= capacity
    assert len(received) == len(set(received))  # nothing twice
    for who, items in enumerate(case["pauses"]):
        mine = [n for w, n in received if w == who]
        assert mine == list(range(len(mine)))  # each producer's items in order, none skipped
        if who not in broken:
            assert (who, len(items) - 1) in sent or not items
    if case["leaves_after"] is None:
        assert sorted(received) == sorted(sent)  # everything sent arrived
        assert broken == []


async def test_a_cancelled_waiting_producer_withdraws_its_item() -> None:
    handoff = Handoff[str](1)
    handoff.send_nowait("first")
    with anyio.move_on_after(1):
        await handoff.send("withdrawn")  # waits for room, then is cancelled
    assert handoff.receive_nowait() == "first"
    with pytest.raises(anyio.WouldBlock):
        handoff.receive_nowait()


async def test_a_waiting_producer_is_told_when_the_consumer_leaves() -> None:
    handoff = Handoff[str](1)
    handoff.send_nowait("first")
    told: list[str] = []

    async def waits() -> None:
        with pytest.raises(anyio.BrokenResourceError):
            await handoff.send("waits")
        told.append("broken")

    async with anyio.create_task_group() as group:
        group.start_soon(waits)
        await anyio.sleep(1)
        handoff.leave()
    assert told == ["broken"]
    with pytest.raises(anyio.BrokenResourceError):
        handoff.send_nowait("late")


async def test_offer_queues_while_there_is_room_and_says_so() -> None:
    handoff = Handoff[int](2)
    assert handoff.offer(1)
    assert handoff.offer(2)
    assert not handoff.offer(3)  # full: nothing queued, nothing raised
    assert [handoff.receive_nowait(), handoff.receive_nowait()] == [1, 2]
    handoff.leave()
    with pytest.raises(anyio.BrokenResourceError):
        handoff.offer(4)


async def test_a_producer_waiting_for_room_on_the_loops_own_event_gets_its_item_moved_in() -> None:
    from trioflow._backend import current_backend

    handoff = Handoff[int](1, current_backend().event)
    assert handoff.offer(1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(handoff.wait_for_room, 2)
        await anyio.sleep(1)
        assert handoff.receive_nowait() == 1  # and moves the waiting item in
        assert handoff.receive_nowait() == 2
    handoff.close()
    with pytest.raises(anyio.EndOfStream):
        await handoff.receive()
