from __future__ import annotations

import anyio
import pytest

from trioflow import UnknownKindError
from trioflow.lifecycle import Pipeline, Request, RequestKind, RequestState, Router, Stage

pytestmark = pytest.mark.anyio


async def noop(request: Request) -> str:
    return "ok"


def pipeline() -> Pipeline:
    return Pipeline(
        [
            Stage("validate", RequestState.VALIDATED, noop),
            Stage("plan", RequestState.PLANNED, noop),
            Stage("context", RequestState.CONTEXT_GATHERING, noop),
            Stage("process", RequestState.PROCESSING, noop),
            Stage("format", RequestState.RESPONSE_FORMATTING, noop),
        ]
    )


def test_default_kinds() -> None:
    assert [k.value for k in RequestKind] == [
        "simple_query",
        "context_query",
        "tool_execution",
        "complex_workflow",
        "streaming",
    ]
    assert RequestKind("streaming") is RequestKind.STREAMING
    assert isinstance(RequestKind.STREAMING, str)


async def test_sync_classifier_routes_and_sets_the_kind() -> None:
    simple, tools = pipeline(), pipeline()

    def classify(request: Request) -> str:
        if "tool" in request.payload:
            return RequestKind.TOOL_EXECUTION
        return RequestKind.SIMPLE_QUERY

    router = Router(classify, {RequestKind.SIMPLE_QUERY: simple, "tool_execution": tools})
    assert router.kinds == ("simple_query", "tool_execution")
    request = Request({"tool": "search"})
    assert await router.route(request) is tools
    assert request.kind == RequestKind.TOOL_EXECUTION
    assert await router.route(Request({})) is simple


async def test_async_classifier_is_awaited() -> None:
    calls: list[str] = []

    async def classify(request: Request) -> str:
        await anyio.sleep(1)
        calls.append(request.id)
        return "custom"

    custom = pipeline()
    router = Router(classify, {"custom": custom})
    assert await router.route(Request()) is custom
    assert anyio.current_time() == 1
    assert len(calls) == 1


async def test_a_preset_kind_skips_the_classifier() -> None:
    def classify(request: Request) -> str:
        raise AssertionError("not called")

    streaming = pipeline()
    router = Router(classify, {RequestKind.STREAMING: streaming})
    assert await router.route(Request(kind=RequestKind.STREAMING)) is streaming


async def test_unknown_kind_lists_the_known_kinds() -> None:
    router = Router(lambda r: "complex_workflow", {"simple_query": pipeline(), "x": pipeline()})
    with pytest.raises(UnknownKindError) as info:
        await router.route(Request())
    message = str(info.value)
    assert "'complex_workflow'" in message
    assert "known kinds: 'simple_query', 'x'" in message
    assert info.value.known == ("simple_query", "x")
    assert isinstance(info.value, LookupError)


async def test_bad_classifier_results_and_construction() -> None:
    router = Router(lambda r: 3, {"a": pipeline()})  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="classify must return a non-empty str kind, got 3"):
        await router.route(Request())
    with pytest.raises(TypeError, match="classify must be callable"):
        Router("simple", {"a": pipeline()})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one kind"):
        Router(lambda r: "a", {})
    with pytest.raises(TypeError, match=r"pipelines\['a'\] must be a Pipeline"):
        Router(lambda r: "a", {"a": noop})  # type: ignore[dict-item]
