from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Optional

import anyio
import attrs
import pytest

from trioflow import (
    OutcomeStatus,
    ResourceManager,
    RetryPolicy,
    ToolArgumentError,
    UnknownToolError,
)
from trioflow.lifecycle import ToolRegistry, run_tools

pytestmark = pytest.mark.anyio


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@attrs.frozen
class Item:
    count: int
    label: str = "x"


class Opaque:
    pass


@dataclasses.dataclass
class Filter:
    field: str
    values: list[int]
    exact: bool = True


def make_registry() -> ToolRegistry:
    registry = ToolRegistry()

    @registry.tool
    async def search(
        query: str,
        limit: int = 10,
        mode: Mode = Mode.FAST,
        items: list[Item] = [],  # noqa: B006 - a default shown in the schema
        weights: Optional[dict[str, float]] = None,  # noqa: UP045 - typing.Optional on purpose
        kind: Literal["web", "docs"] = "docs",
        filters: Sequence[Filter] = (),
        tags: set[str] | None = None,
        ratio: float | None = None,
        strict: bool = False,
    ) -> dict[str, Any]:
        """Search the index.

        Longer text that is not part of the summary.

        Args:
            query: What to look
                for, in words.
            limit: The most results.

        Returns:
            The search.
        """
        return {
            "query": query,
            "limit": limit,
            "mode": mode,
            "items": items,
            "weights": weights,
            "kind": kind,
            "filters": filters,
            "tags": tags,
            "ratio": ratio,
            "strict": strict,
        }

    @registry.tool(name="echo", description="Echo the text back.")
    async def _echo(text: Annotated[str, "the text to echo"]) -> str:
        await anyio.sleep(1)
        return text

    return registry


async def test_call_structures_arguments_into_the_parameter_types() -> None:
    registry = make_registry()
    result = await registry.call(
        "search",
        {
            "query": "trio",
            "mode": "slow",
            "items": [{"count": 2}, {"count": 3, "label": "y"}],
            "weights": {"a": 1, "b": 0.5},
            "kind": "web",
            "filters": [{"field": "year", "values": [2020, 2021]}],
            "tags": ["a", "b", "a"],
            "ratio": 1,
            "strict": True,
        },
    )
    assert result == {
        "query": "trio",
        "limit": 10,
        "mode": Mode.SLOW,
        "items": [Item(2), Item(3, "y")],
        "weights": {"a": 1.0, "b": 0.5},
        "kind": "web",
        "filters": [Filter("year", [2020, 2021])],
        "tags": {"a", "b"},
        "ratio": 1.0,
        "strict": True,
    }
    assert await registry.call("echo", {"text": "hi"}) == "hi"
    assert anyio.current_time() == 1


async def test_every_bad_argument_is_listed_with_its_path() -> None:
    registry = make_registry()
    with pytest.raises(ToolArgumentError) as info:
        await registry.call(
            "search",
            {
                "limit": "5",
                "mode": "medium",
                "items": [
                    {"count": 1},
                    {"count": "x"},
                    {"label": "no count"},
                    {"count": 1, "z": 0},
                ],
                "weights": {"a": "heavy"},
                "kind": "books",
                "filters": [{"field": "f", "values": [1, "two"]}],
                "tags": "a,b",
                "strict": 1,
                "surprise": True,
            },
        )
    error = info.value
    assert error.tool == "search"
    assert dict(error.problems) == {
        "surprise": "unknown argument",
        "query": "required argument is missing",
        "limit": "expected int, got '5'",
        "mode": "expected one of 'fast', 'slow', got 'medium'",
        "items[1].count": "expected int, got 'x'",
        "items[2].count": "required field is missing",
        "items[3].z": "unknown key",
        "weights.a": "expected number, got 'heavy'",
        "kind": "expected one of 'web', 'docs', got 'books'",
        "filters[0].values[1]": "expected int, got 'two'",
        "tags": "expected array or null, got 'a,b'",
        "strict": "expected bool, got 1",
    }
    assert len(error.problems) == 12
    assert "items[1].count: expected int, got 'x'" in str(error)
    assert isinstance(error, ValueError)


async def test_arguments_must_be_an_object() -> None:
    registry = make_registry()
    with pytest.raises(ToolArgumentError, match=r"\$: expected an object of arguments, got \[1\]"):
        await registry.call("echo", [1])  # type: ignore[arg-type]
    with pytest.raises(ToolArgumentError, match="text: required argument is missing"):
        await registry.call("echo")


async def test_unknown_tool() -> None:
    registry = make_registry()
    with pytest.raises(
        UnknownToolError, match="unknown tool 'serch'; known tools: 'search', 'echo'"
    ):
        await registry.call("serch", {})
    assert "search" in registry
    assert "serch" not in registry
    assert registry.names == ("search", "echo")
    assert len(registry) == 2


async def test_tool_errors_propagate_as_they_are() -> None:
    registry = ToolRegistry()

    @registry.tool
    async def fail(reason: str) -> None:
        raise ConnectionError(reason)

    with pytest.raises(ConnectionError, match="backend down"):
        await registry.call("fail", {"reason": "backend down"})


def test_describe_gives_a_json_schema_per_tool() -> None:
    described = make_registry().describe()
    assert [d["name"] for d in described] == ["search", "echo"]
    search, echo = described
    assert search["description"] == "Search the index."
    schema = search["inputSchema"]
    assert schema["type"] == "object"
    assert schema["required"] == ["query"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["query"] == {"type": "string", "description": "What to look for, in words."}
    assert props["limit"] == {"type": "integer", "description": "The most results.", "default": 10}
    assert props["mode"] == {
        "title": "Mode",
        "type": "string",
        "enum": ["fast", "slow"],
        "default": "fast",
    }
    assert props["items"] == {
        "type": "array",
        "items": {
            "title": "Item",
            "type": "object",
            "properties": {
                "count": {"type": "integer"},
                "label": {"type": "string", "default": "x"},
            },
            "required": ["count"],
            "additionalProperties": False,
        },
        "default": [],
    }
    assert props["weights"] == {
        "anyOf": [
            {"type": "object", "additionalProperties": {"type": "number"}},
            {"type": "null"},
        ],
        "default": None,
    }
    assert props["kind"] == {"type": "string", "enum": ["web", "docs"], "default": "docs"}
    assert props["filters"]["items"]["properties"]["exact"] == {"type": "boolean", "default": True}
    assert props["filters"]["items"]["required"] == ["field", "values"]
    assert props["filters"]["default"] == []
    assert props["tags"]["anyOf"][0] == {
        "type": "array",
        "items": {"type": "string"},
        "uniqueItems": True,
    }
    assert echo == {
        "name": "echo",
        "description": "Echo the text back.",
        "inputSchema": {
            "type": "object",
            "properties": {"text": {"type": "string", "description": "the text to echo"}},
            "required": ["text"],
            "additionalProperties": False,
        },
    }
    # describe() hands out copies.
    echo["inputSchema"]["properties"].clear()
    assert make_registry().describe()[1]["inputSchema"]["properties"]


def test_registration_is_checked() -> None:
    registry = ToolRegistry()

    def sync_tool(a: int) -> int:
        return a

    with pytest.raises(TypeError, match="must be an async function"):
        registry.tool(sync_tool)  # type: ignore[type-var]

    async def untyped(a) -> None:  # type: ignore[no-untyped-def]
        pass

    with pytest.raises(TypeError, match="parameter 'a' needs a type hint"):
        registry.tool(untyped)

    async def star(*args: int) -> None:
        pass

    with pytest.raises(TypeError, match="passable by keyword"):
        registry.tool(star)

    async def opaque(thing: Opaque) -> None:
        pass

    with pytest.raises(TypeError, match="parameter 'thing': unsupported parameter type"):
        registry.tool(opaque)

    async def int_keys(m: Mapping[int, str]) -> None:
        pass

    with pytest.raises(TypeError, match="mapping keys must be str"):
        registry.tool(int_keys)

    async def fine(a: int) -> int:
        return a

    registry.tool(fine)
    with pytest.raises(ValueError, match="'fine' is already registered"):
        registry.tool(fine)
    registry.tool(name="fine2")(fine)
    assert registry.names == ("fine", "fine2")


async def test_run_tools_runs_a_bounded_batch() -> None:
    registry = make_registry()
    calls: list[tuple[str, Mapping[str, Any] | None]] = [
        ("echo", {"text": "a"}),
        ("echo", {"text": "b"}),
        ("echo", {}),
        ("nope", None),
        ("echo", {"text": "c"}),
    ]
    result = await run_tools(registry, calls, limit=2)
    assert [o.status for o in result.outcomes] == [
        OutcomeStatus.SUCCEEDED,
        OutcomeStatus.SUCCEEDED,
        OutcomeStatus.FAILED,
        OutcomeStatus.FAILED,
        OutcomeStatus.SUCCEEDED,
    ]
    assert result.values == ("a", "b", "c")
    assert isinstance(result.outcomes[2].error, ToolArgumentError)
    assert isinstance(result.outcomes[3].error, UnknownToolError)
    # Three one-second calls, two at a time (the failures are instant).
    assert anyio.current_time() == 2


async def test_run_tools_shares_a_resource_manager_and_checks_its_input() -> None:
    registry = make_registry()
    resources = ResourceManager(limit=3)
    result = await run_tools(
        registry, [("echo", {"text": str(i)}) for i in range(6)], limit=resources
    )
    assert result.succeeded == 6
    assert anyio.current_time() == 2
    with pytest.raises(TypeError, match=r"calls\[1\] must be a \(tool name, arguments\) pair"):
        await run_tools(registry, [("echo", {}), "echo"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="registry must be a ToolRegistry"):
        await run_tools({}, [])  # type: ignore[arg-type]
    assert anyio.current_time() == 2


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Shade(str, enum.Enum):  # noqa: UP042 - the mixin form on purpose (str in its MRO)
    DARK = "dark"


async def test_enums_mixing_in_int_or_str_are_structured_as_enums() -> None:
    registry = ToolRegistry()

    @registry.tool
    async def paint(
        level: Level,
        shade: Shade = Shade.DARK,
        exact: Literal[Level.HIGH] = Level.HIGH,
        maybe: Level | None = None,
    ) -> tuple[object, ...]:
        return (level, shade, exact, maybe)

    got = await registry.call("paint", {"level": 2, "shade": "dark", "exact": 2, "maybe": 1})
    assert got == (Level.HIGH, Shade.DARK, Level.HIGH, Level.LOW)
    assert [type(v) for v in got] == [Level, Shade, Level, Level]
    with pytest.raises(ToolArgumentError) as info:
        await registry.call("paint", {"level": 3, "shade": 1, "exact": 1, "maybe": True})
    assert dict(info.value.problems) == {
        "level": "expected one of 1, 2, got 3",
        "shade": "expected one of 'dark', got 1",
        "exact": "expected one of 2, got 1",
        "maybe": "expected Level or null, got True",
    }
    props = registry.describe()[0]["inputSchema"]["properties"]
    assert props["level"] == {"title": "Level", "type": "integer", "enum": [1, 2]}
    assert props["exact"] == {"type": "integer", "enum": [2], "default": 2}
    assert props["shade"]["default"] == "dark"
    json.dumps(props)  # the schema is JSON: enum members are shown by value


async def test_bare_containers_accept_any_items() -> None:
    registry = ToolRegistry()

    @registry.tool
    async def keep(mapping: dict, items: list, numbers: tuple[int, ...] = ()) -> object:  # type: ignore[type-arg]
        return (mapping, items, numbers)

    props = registry.describe()[0]["inputSchema"]["properties"]
    assert props["mapping"] == {"type": "object", "additionalProperties": {}}
    assert props["items"] == {"type": "array", "items": {}}
    got = await registry.call("keep", {"mapping": {"a": [1]}, "items": [1, "x"], "numbers": [3]})
    assert got == ({"a": [1]}, [1, "x"], (3,))
    with pytest.raises(ToolArgumentError) as info:
        await registry.call("keep", {"mapping": 1, "items": "x", "numbers": ["a"]})
    assert dict(info.value.problems) == {
        "mapping": "expected object, got 1",
        "items": "expected array, got 'x'",
        "numbers[0]": "expected int, got 'a'",
    }


@attrs.define
class Secret:
    _token: str
    level: int = attrs.field(default=1, alias="depth")


async def test_attrs_fields_are_keyed_by_their_init_names_as_described() -> None:
    registry = ToolRegistry()

    @registry.tool
    async def unlock(secret: Secret) -> Secret:
        return secret

    schema = registry.describe()[0]["inputSchema"]["properties"]["secret"]
    assert list(schema["properties"]) == ["token", "depth"]
    assert await registry.call("unlock", {"secret": {"token": "t", "depth": 2}}) == Secret("t", 2)
    with pytest.raises(ToolArgumentError) as info:
        await registry.call("unlock", {"secret": {"token": 1, "depth": "x", "level": 3}})
    assert dict(info.value.problems) == {
        "secret.token": "expected string, got 1",
        "secret.depth": "expected int, got 'x'",
        "secret.level": "unknown key",
    }


# --- arguments as JSON text -------------------------------------------------------------------


def counting_registry() -> tuple[ToolRegistry, list[str]]:
    registry = ToolRegistry()
    ran: list[str] = []

    @registry.tool
    async def read(path: str, lines: int = 10) -> tuple[str, int]:
        ran.append(path)
        return (path, lines)

    return registry, ran


async def test_arguments_may_be_json_text() -> None:
    registry, ran = counting_registry()
    assert await registry.call("read", '{"path": "a.cs"}') == ("a.cs", 10)
    assert await registry.call("read", b' {"path": "b.cs", "lines": 2} ') == ("b.cs", 2)
    assert await registry.call("read", bytearray(b'{"path": "c.cs"}')) == ("c.cs", 10)
    assert ran == ["a.cs", "b.cs", "c.cs"]
    # Parsed JSON is structured as strictly as a mapping is.
    with pytest.raises(ToolArgumentError) as info:
        await registry.call("read", '{"path": 1, "lines": "2", "extra": null}')
    assert dict(info.value.problems) == {
        "path": "expected string, got 1",
        "lines": "expected int, got '2'",
        "extra": "unknown argument",
    }
    assert ran == ["a.cs", "b.cs", "c.cs"]


BAD_JSON: list[tuple[str | bytes, str]] = [
    ('{"path": ', r"^not valid JSON: Expecting value: line 1 column 10 \(char 9\)$"),
    ("{'path': 'a'}", r"^not valid JSON: Expecting property name enclosed in double quotes: "),
    ("", r"^not valid JSON: Expecting value: line 1 column 1 \(char 0\)$"),
    ('{"path": "a"} x', r"^not valid JSON: Extra data: line 1 column 15 \(char 14\)$"),
    ('{"path": NaN}', r"^not valid JSON: NaN is not a JSON value$"),
    ('{"path": "a", "lines": Infinity}', r"^not valid JSON: Infinity is not a JSON value$"),
    ('{"path": "a", "path": "b"}', r"^not valid JSON: the key 'path' is given twice$"),
    (b'{"path": "\xff"}', r"^not valid JSON: 'utf-8' codec can't decode byte 0xff"),
    ('{"lines": ' + "1" * 5000 + "}", r"^not valid JSON: .*integer string conversion"),
    ("[" * 100_000 + "]" * 100_000, r"^not valid JSON: nested too deeply$"),
    ('{"path": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001, r"^not valid JSON: nested too deeply$"),
    ("[1]", r"^expected a JSON object of arguments, got \[1\]$"),
    ('"a.cs"', r"^expected a JSON object of arguments, got 'a.cs'$"),
    ("null", r"^expected a JSON object of arguments, got None$"),
]


@pytest.mark.parametrize(("text", "message"), BAD_JSON, ids=range(len(BAD_JSON)))
async def test_bad_json_text_is_a_tool_argument_error_and_nothing_runs(
    text: str | bytes, message: str
) -> None:
    registry, ran = counting_registry()
    with pytest.raises(ToolArgumentError) as info:
        await registry.call("read", text)
    error = info.value
    assert error.tool == "read"
    ((path, problem),) = error.problems
    assert path == "$"
    assert re.search(message, problem), problem
    assert str(error).startswith("bad arguments for tool 'read': $: ")
    assert ran == []


async def test_run_tools_takes_json_text_and_fails_only_the_bad_call() -> None:
    registry, ran = counting_registry()
    result = await run_tools(
        registry, [("read", '{"path": "a"}'), ("read", "{"), ("read", {"path": "b"})]
    )
    assert [o.status for o in result.outcomes] == [
        OutcomeStatus.SUCCEEDED,
        OutcomeStatus.FAILED,
        OutcomeStatus.SUCCEEDED,
    ]
    assert result.values == (("a", 10), ("b", 10))
    error = result.outcomes[1].error
    assert isinstance(error, ToolArgumentError)
    assert error.tool == "read"
    assert error.problems[0][1].startswith("not valid JSON: Expecting")
    assert sorted(ran) == ["a", "b"]


async def test_run_tools_retries_each_call_as_run_batch_does() -> None:
    registry = ToolRegistry()
    tries: list[float] = []

    @registry.tool
    async def flaky(n: int) -> int:
        tries.append(anyio.current_time())
        if len(tries) == 1:
            raise ConnectionError("first try fails")
        return n

    policy = RetryPolicy(attempts=2, initial_delay=3)
    result = await run_tools(registry, [("flaky", {"n": 1})], retry=policy)
    assert result.values == (1,)
    assert tries == [0, 3]
    with pytest.raises(TypeError, match="retry must be a RetryPolicy"):
        await run_tools(registry, [("flaky", {"n": 1})], retry=3)  # type: ignore[arg-type]
    assert len(tries) == 2
