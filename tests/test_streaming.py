"""Streaming in the request layer: async-generator stages and tools, ``coordinator.stream()``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioflow.lifecycle import (
    OrchestrationConfig,
    Pipeline,
    ProcessingStatus,
    Request,
    RequestKind,
    RequestState,
    RequestStream,
    Router,
    Stage,
    ToolRegistry,
    open_coordinator,
)

pytestmark = pytest.mark.anyio

S = RequestState


def _seven(stage: Stage) -> Pipeline:
    """A pipeline of the whole lifecycle whose processing stage is ``stage``."""

    async def nothing(request: Request) -> None:
        return None

    states = [S.VALIDATED, S.PLANNED, S.CONTEXT_GATHERING]
    before = [Stage(f"s{i}", state, nothing) for i, state in enumerate(states)]
    after = [
        Stage("tools", S.TOOL_EXECUTION, nothing),
        Stage("format", S.RESPONSE_FORMATTING, nothing),
    ]
    return Pipeline([*before, stage, *after])


def _config(**changes: Any) -> OrchestrationConfig:
    return OrchestrationConfig(enable_metrics=False, **changes)


async def test_a_streaming_stage_hands_each_chunk_to_on_chunk_as_it_is_produced() -> None:
    seen: list[tuple[str, float]] = []

    async def words(request: Request) -> AsyncIterator[str]:
        for word in ("a", "b", "c"):
            await anyio.sleep(1)
            yield word

    async def on_chunk(chunk: Any) -> None:
        seen.append((chunk, anyio.current_time()))

    stage = Stage("answer", S.PROCESSING, words)
    assert stage.streaming
    started = anyio.current_time()
    result = await _seven(stage).run(Request("q"), on_chunk=on_chunk)
    assert result.status is ProcessingStatus.SUCCEEDED
    assert [(c, t - started) for c, t in seen] == [("a", 1), ("b", 2), ("c", 3)]
    assert result.value is None  # the last stage's value
    assert result.stage_timings["answer"] == 3


async def test_a_streaming_stage_without_a_sink_collects_its_chunks_as_its_value() -> None:
    async def numbers(request: Request) -> AsyncIterator[int]:
        for n in range(3):
            yield n

    request = Request("q")
    await _seven(Stage("answer", S.PROCESSING, numbers)).run(request)
    assert request.results["answer"] == [0, 1, 2]


@given(chunks=st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=20))
def test_every_chunk_reaches_the_reader_in_order_and_the_result_holds_them(
    chunks: list[Any],
) -> None:
    async def main() -> None:
        async def produce(request: Request) -> AsyncIterator[Any]:
            for chunk in chunks:
                yield chunk

        router = Router(lambda r: "s", {"s": _seven(Stage("s", S.PROCESSING, produce))})
        async with open_coordinator(_config(), router=router) as coordinator:
            async with coordinator.stream(Request("q")) as stream:
                got = [chunk async for chunk in stream]
            assert got == chunks
            assert stream.result.ok
            assert stream.done

    anyio.run(main)


async def test_a_slow_reader_holds_the_stage_back() -> None:
    produced: list[float] = []

    async def fast(request: Request) -> AsyncIterator[int]:
        for n in range(3):
            produced.append(anyio.current_time())
            yield n

    router = Router(lambda r: "s", {"s": _seven(Stage("answer", S.PROCESSING, fast))})
    async with (
        open_coordinator(_config(), router=router) as coordinator,
        coordinator.stream(Request("q")) as stream,
    ):
        async for _ in stream:
            await anyio.sleep(10)
    # No buffer: the stage hands each chunk over, makes the next, and waits for the reader
    # to come back for it (10 s per chunk): it is never more than one chunk ahead.
    assert produced == [0, 0, 10]
    assert anyio.current_time() == 30
    assert stream.result.status is ProcessingStatus.SUCCEEDED


async def test_the_stream_ends_when_the_request_fails_and_the_result_says_why() -> None:
    async def half(request: Request) -> AsyncIterator[int]:
        yield 1
        raise KeyError("lost")

    router = Router(lambda r: "s", {"s": _seven(Stage("answer", S.PROCESSING, half))})
    async with (
        open_coordinator(_config(), router=router) as coordinator,
        coordinator.stream(Request("q")) as stream,
    ):
        with pytest.raises(RuntimeError, match="still in flight"):
            stream.result  # noqa: B018
        got = [chunk async for chunk in stream]
    assert got == [1]
    assert stream.result.status is ProcessingStatus.FAILED
    assert isinstance(stream.result.error, KeyError)
    assert "finished" in repr(stream)


async def test_leaving_the_stream_early_cancels_the_request_and_its_stage() -> None:
    closed: list[bool] = []

    async def forever(request: Request) -> AsyncIterator[int]:
        try:
            n = 0
            while True:
                await anyio.sleep(1)
                yield n
                n += 1
        finally:
            closed.append(True)

    router = Router(lambda r: "s", {"s": _seven(Stage("answer", S.PROCESSING, forever))})
    async with open_coordinator(_config(), router=router) as coordinator:
        request = Request("q")
        async with coordinator.stream(request) as stream:
            async for chunk in stream:
                if chunk == 2:
                    break
        assert stream.result.status is ProcessingStatus.CANCELLED
        assert request.state is S.CANCELLED
        assert closed == [True]
        assert coordinator.statistics().cancelled == 1


async def test_cancelling_the_reader_cancels_the_request() -> None:
    async def forever(request: Request) -> AsyncIterator[int]:
        while True:
            await anyio.sleep(1)
            yield 0

    router = Router(lambda r: "s", {"s": _seven(Stage("answer", S.PROCESSING, forever))})
    request = Request("q")
    async with open_coordinator(_config(), router=router) as coordinator:
        with anyio.move_on_after(5):
            async with coordinator.stream(request) as stream:
                async for _ in stream:
                    pass
        assert request.state is S.CANCELLED
        assert coordinator.statistics().in_flight == 0


async def test_stream_checks_its_arguments_before_anything_runs() -> None:
    async def one(request: Request) -> int:
        return 1

    router = Router(lambda r: "s", {"s": _seven(Stage("answer", S.PROCESSING, one))})
    async with open_coordinator(_config(), router=router) as coordinator:
        with pytest.raises(ValueError, match="buffer must be an int >= 0"):
            async with coordinator.stream(Request("q"), buffer=-1):
                pass
        with pytest.raises(TypeError, match="request must be a Request"):
            async with coordinator.stream("q"):  # type: ignore[arg-type]
                pass
        with pytest.raises(ValueError, match="timeout"):
            async with coordinator.stream(Request("q"), timeout=-1):
                pass
        async with coordinator.stream(Request("q"), buffer=2) as stream:
            assert [c async for c in stream] == []  # a request that streams nothing
        assert isinstance(stream, RequestStream)
        assert stream.result.value is None


async def test_process_takes_a_timeout_of_its_own() -> None:
    async def slow(request: Request) -> int:
        await anyio.sleep(100)
        return 1

    router = Router(lambda r: "s", {"s": _seven(Stage("answer", S.PROCESSING, slow))})
    async with open_coordinator(_config(default_timeout=10), router=router) as coordinator:
        refused = await coordinator.process(Request("q"))
        assert refused.status is ProcessingStatus.FAILED
        assert anyio.current_time() == 10
        unbounded = await coordinator.process(Request("q"), timeout=None)
        assert unbounded.ok
        assert anyio.current_time() == 110
        bounded = await coordinator.process(Request("q"), timeout=50)
        assert not bounded.ok
        assert anyio.current_time() == 160


async def test_a_streaming_tool_is_registered_and_called_with_on_chunk() -> None:
    registry = ToolRegistry()

    @registry.tool
    async def count(n: int) -> AsyncIterator[int]:
        """Count up to n.

        Args:
            n: How far.
        """
        for i in range(n):
            yield i

    seen: list[int] = []

    async def on_chunk(chunk: Any) -> None:
        seen.append(chunk)

    assert registry.get("count").streaming
    assert registry.describe()[0]["inputSchema"]["properties"]["n"]["description"] == "How far."
    assert await registry.call("count", {"n": 3}, on_chunk=on_chunk) == [0, 1, 2]
    assert seen == [0, 1, 2]
    assert await registry.call("count", {"n": 2}) == [0, 1]
    router = Router(
        lambda r: RequestKind.STREAMING, {"streaming": _seven(Stage("a", S.PROCESSING, _one))}
    )
    async with open_coordinator(_config(), router=router, registry=registry) as coordinator:
        seen.clear()
        assert await coordinator.call_tool("count", {"n": 2}, on_chunk=on_chunk) == [0, 1]
        assert seen == [0, 1]


async def _one(request: Request) -> int:
    return 1


def test_a_plain_generator_is_still_no_tool() -> None:
    registry = ToolRegistry()

    def gen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="async generator function"):
        registry.tool(gen)


async def test_an_error_in_the_stream_block_comes_out_as_itself() -> None:
    async def words(request: Request) -> AsyncIterator[str]:
        yield "one"
        await anyio.sleep(10)
        yield "two"

    pipeline = _seven(Stage("answer", S.PROCESSING, words))
    router = Router(lambda r: RequestKind.STREAMING, {RequestKind.STREAMING: pipeline})
    request = Request("q", kind=RequestKind.STREAMING)

    async def read(coordinator: Any) -> None:
        async with coordinator.stream(request) as stream:
            async for _ in stream:
                raise KeyError("mine")

    async with open_coordinator(_config(), router=router) as coordinator:
        with pytest.raises(KeyError, match="mine"):
            await read(coordinator)
    assert request.state is RequestState.CANCELLED
