"""trioflow.mcp with the SDK's in-process client, on trio and asyncio, in virtual time.

Each test connects the real ``mcp.Client`` to the server :func:`trioflow.mcp.create_server`
built, both ways the SDK pairs them in process: the modern per-request path ("auto") and the
JSON-RPC stream of the handshake era ("legacy"), where a cancelled call sends
``notifications/cancelled``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp_types as types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow.mcp
from mcp import Client
from trioflow.lifecycle import ToolRegistry

pytestmark = pytest.mark.anyio

MODES = pytest.mark.parametrize("mode", ["auto", "legacy"])


def make_registry(events: list[str] | None = None) -> ToolRegistry:
    registry = ToolRegistry()
    log = events if events is not None else []

    @registry.tool
    async def add(a: int, b: int = 1) -> int:
        """Add two numbers.

        Args:
            a: The first.
            b: The second.
        """
        return a + b

    @registry.tool
    async def boom(message: str = "no") -> int:
        """Fail."""
        raise KeyError(message)

    @registry.tool
    async def nap(seconds: float) -> float:
        """Sleep, then say when it woke."""
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            log.append(f"nap cancelled at {anyio.current_time():g}")
            raise
        return anyio.current_time()

    @registry.tool
    async def count(n: int, every: float = 10) -> AsyncIterator[dict[str, int]]:
        """Count up to n, a chunk at a time."""
        for i in range(n):
            yield {"i": i}
            await anyio.sleep(every)

    return registry


def structured(result: types.CallToolResult) -> Any:
    assert result.structured_content is not None
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    assert json.loads(text.text) == result.structured_content  # the text says the same
    return result.structured_content


@MODES
async def test_the_tools_are_listed_with_their_own_schemas(mode: str) -> None:
    registry = make_registry()
    server = trioflow.mcp.create_server(registry)
    async with Client(server, mode=mode) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert list(listed) == ["add", "boom", "nap", "count", "run_tools"]
    described = {tool["name"]: tool for tool in registry.describe()}
    assert listed["add"].input_schema == described["add"]["inputSchema"]
    assert listed["add"].description == "Add two numbers."
    batch = listed["run_tools"].input_schema
    assert batch["required"] == ["calls"]
    assert batch["properties"]["calls"]["items"]["required"] == ["tool"]


@MODES
async def test_a_call_answers_structured_content_and_text(mode: str) -> None:
    async with Client(trioflow.mcp.create_server(make_registry()), mode=mode) as client:
        result = await client.call_tool("add", {"a": 2, "b": 3})
    assert not result.is_error
    assert structured(result) == {"result": 5}


@MODES
async def test_bad_arguments_are_a_tool_error_listing_every_field(mode: str) -> None:
    async with Client(trioflow.mcp.create_server(make_registry()), mode=mode) as client:
        result = await client.call_tool("add", {"a": "two", "c": 1})
        unknown = await client.call_tool("nope", {})
    assert result.is_error
    data = structured(result)
    assert data["category"] == "validation"
    assert data["problems"] == [
        {"path": "c", "message": "unknown argument"},
        {"path": "a", "message": "expected int, got 'two'"},
    ]
    assert data["error"].startswith("ToolArgumentError: bad arguments for tool 'add'")
    assert unknown.is_error
    assert structured(unknown)["error"].startswith("UnknownToolError: unknown tool 'nope'")


@MODES
async def test_a_failing_tool_is_a_tool_error_and_the_server_goes_on(mode: str) -> None:
    async with Client(trioflow.mcp.create_server(make_registry()), mode=mode) as client:
        failed = await client.call_tool("boom", {"message": "broken"})
        after = await client.call_tool("add", {"a": 1})
    assert failed.is_error
    assert structured(failed) == {
        "status": "failed",
        "error": "KeyError: 'broken'",
        "category": "internal",
    }
    assert structured(after) == {"result": 2}


@MODES
async def test_a_refused_call_is_a_tool_error_with_its_category(mode: str) -> None:
    config = {
        "rate_limits": {"per_user": {"rate": 1, "burst": 1}, "when_limited": "fail"},
        "enable_metrics": False,
    }
    server = trioflow.mcp.create_server(make_registry(), config=config)
    async with Client(server, mode=mode) as client:
        first = await client.call_tool("add", {"a": 1})
        refused = await client.call_tool("add", {"a": 1})
        await anyio.sleep(1)
        later = await client.call_tool("add", {"a": 1})
    assert not first.is_error
    assert refused.is_error
    assert structured(refused)["category"] == "resource_exhaustion"
    assert not later.is_error


@MODES
async def test_a_batch_reports_every_call_in_order_and_progress_per_call(mode: str) -> None:
    reports: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total, message))

    calls = [
        {"tool": "nap", "arguments": {"seconds": 3}},
        {"tool": "boom"},
        {"tool": "add", "arguments": {"a": "x"}},
        {"tool": "add", "arguments": {"a": 4}},
    ]
    async with Client(trioflow.mcp.create_server(make_registry()), mode=mode) as client:
        result = await client.call_tool(
            "run_tools", {"calls": calls, "limit": 2}, progress_callback=on_progress
        )
    assert not result.is_error
    data = structured(result)
    assert data["succeeded"] == 2
    assert data["failed"] == 2
    entries = data["results"]
    assert [e["index"] for e in entries] == [0, 1, 2, 3]
    assert entries[0] == {"index": 0, "ok": True, "value": 3.0}
    assert entries[1]["error"] == "KeyError: 'no'"
    assert entries[1]["category"] == "internal"
    assert entries[2]["category"] == "validation"
    assert entries[2]["problems"] == [{"path": "a", "message": "expected int, got 'x'"}]
    assert entries[3] == {"index": 3, "ok": True, "value": 5}
    assert [(done, total) for done, total, _ in reports] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert reports[-1][2] == "4 of 4 calls done, 2 failed"


@MODES
async def test_bad_batch_arguments_list_the_paths(mode: str) -> None:
    async with Client(trioflow.mcp.create_server(make_registry()), mode=mode) as client:
        result = await client.call_tool("run_tools", {"calls": [{"tool": 1}], "limit": 0})
        zero = await client.call_tool("run_tools", {"calls": [], "limit": 0})
    assert result.is_error
    assert structured(result)["problems"] == [
        {"path": "calls[0].tool", "message": "expected string, got 1"}
    ]
    assert zero.is_error
    assert "limit must be an int >= 1" in structured(zero)["error"]


@MODES
async def test_a_streaming_tool_sends_each_chunk_before_the_result(mode: str) -> None:
    seen: list[tuple[str, float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(("chunk", anyio.current_time(), message))

    async with Client(trioflow.mcp.create_server(make_registry()), mode=mode) as client:
        result = await client.call_tool(
            "count", {"n": 3, "every": 5}, progress_callback=on_progress
        )
        seen.append(("result", anyio.current_time(), None))
        quiet = await client.call_tool("count", {"n": 2, "every": 0})
    assert seen == [
        ("chunk", 0, '{"i": 0}'),
        ("chunk", 5, '{"i": 1}'),
        ("chunk", 10, '{"i": 2}'),
        ("result", 15, None),
    ]
    assert structured(result) == {"result": [{"i": 0}, {"i": 1}, {"i": 2}]}
    assert structured(quiet) == {"result": [{"i": 0}, {"i": 1}]}  # no token: the result only


@MODES
async def test_cancelling_a_call_cancels_the_tool_and_the_server_goes_on(mode: str) -> None:
    events: list[str] = []
    async with Client(trioflow.mcp.create_server(make_registry(events)), mode=mode) as client:
        with anyio.move_on_after(5):
            await client.call_tool("nap", {"seconds": 100})
        with anyio.fail_after(1):
            while not events:
                await anyio.sleep(0.01)
        after = await client.call_tool("add", {"a": 1})
    assert events == ["nap cancelled at 5"]
    assert structured(after) == {"result": 2}


@MODES
async def test_each_client_has_a_per_user_limit_of_its_own(mode: str) -> None:
    config = {"per_user_limit": 1, "enable_metrics": False}
    server = trioflow.mcp.create_server(make_registry(), config=config)
    woke: dict[str, list[float]] = {"a": [], "b": []}

    async def nap(client: Client, who: str) -> None:
        result = await client.call_tool("nap", {"seconds": 10})
        woke[who].append(structured(result)["result"])

    async with (
        Client(server, mode=mode) as a,
        Client(server, mode=mode) as b,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(nap, a, "a")
        tg.start_soon(nap, a, "a")
        tg.start_soon(nap, b, "b")
    # a's two calls run one after the other; b's runs beside a's first.
    assert sorted(woke["a"]) == [10, 20]
    assert woke["b"] == [10]


async def test_a_user_the_client_declares_is_trusted_only_when_configured() -> None:
    config = {"per_user_limit": 1, "enable_metrics": False}
    server = trioflow.mcp.create_server(make_registry(), config=config, user_meta_key="user")
    woke: list[float] = []

    async def nap(client: Client) -> None:
        meta: Any = {"user": "alice"}
        result = await client.call_tool("nap", {"seconds": 10}, meta=meta)
        woke.append(structured(result)["result"])

    async with Client(server) as a, Client(server) as b, anyio.create_task_group() as tg:
        tg.start_soon(nap, a)
        tg.start_soon(nap, b)
    assert sorted(woke) == [10, 20]  # two connections, one user: one at a time


def test_create_server_checks_its_arguments() -> None:
    registry = ToolRegistry()

    @registry.tool
    async def run_tools() -> None:
        """A name the server keeps for itself."""

    with pytest.raises(ValueError, match="the registry has a tool named 'run_tools'"):
        trioflow.mcp.create_server(registry)
    with pytest.raises(TypeError, match="registry must be a ToolRegistry or None, got 5"):
        trioflow.mcp.create_server(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="workflows must be a list of file paths"):
        trioflow.mcp.create_server(workflows="build.toml")
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        trioflow.mcp.create_server(name="")
    with pytest.raises(trioflow.ConfigError, match="per_user_limit"):
        trioflow.mcp.create_server(config={"per_user_limit": 0})


_CALL = st.one_of(
    st.builds(lambda a: ("ok", {"tool": "add", "arguments": {"a": a}}), st.integers(-9, 9)),
    st.builds(lambda m: ("fails", {"tool": "boom", "arguments": {"message": m}}), st.text()),
    st.just(("bad", {"tool": "add", "arguments": {"a": "x"}})),
    st.just(("unknown", {"tool": "nope"})),
)


@settings(max_examples=25)
@given(calls=st.lists(_CALL, max_size=8), limit=st.integers(1, 3))
def test_a_batch_answers_each_call_in_its_place_whatever_the_mix(
    calls: list[tuple[str, dict[str, Any]]], limit: int
) -> None:
    server = trioflow.mcp.create_server(make_registry())

    async def main() -> Any:
        async with Client(server) as client:
            batch = [call for _, call in calls]
            return await client.call_tool("run_tools", {"calls": batch, "limit": limit})

    data = structured(anyio.run(main))
    entries = data["results"]
    assert [e["index"] for e in entries] == list(range(len(calls)))
    for (kind, call), entry in zip(calls, entries, strict=True):
        assert entry["ok"] is (kind == "ok")
        if kind == "ok":
            assert entry["value"] == call["arguments"]["a"] + 1
        elif kind == "fails":
            assert entry["category"] == "internal"
            assert entry["error"].startswith("KeyError: ")
        else:
            assert entry["category"] == "validation"
    assert data["succeeded"] == sum(kind == "ok" for kind, _ in calls)
    assert data["failed"] == len(calls) - data["succeeded"]
