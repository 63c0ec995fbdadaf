"""describe() output is valid JSON Schema and agrees with what call() accepts."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Literal

import attrs
import jsonschema
import pytest

import trioflow


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen
class Point:
    x: int
    y: int = 0


@dataclasses.dataclass
class Shape:
    name: str
    points: list[Point]
    color: Color = Color.RED


def _registry() -> trioflow.lifecycle.ToolRegistry:
    registry = trioflow.lifecycle.ToolRegistry()

    @registry.tool
    async def draw(
        shape: Shape,
        level: Level,
        mode: Literal["fast", "exact"] = "fast",
        tags: dict[str, int] | None = None,
        scale: float = 1.0,
        pair: tuple[int, str] = (1, "a"),
        labels: set[str] | None = None,
    ) -> str:
        """Draw a shape."""
        return f"{shape.name}:{len(shape.points)}:{level.name}:{mode}"

    return registry


GOOD: dict[str, Any] = {
    "shape": {"name": "tri", "points": [{"x": 1}, {"x": 2, "y": 3}], "color": "blue"},
    "level": 2,
    "mode": "exact",
    "tags": {"a": 1},
    "pair": [2, "b"],
    "labels": ["x"],
}


def test_every_schema_is_valid_json_schema() -> None:
    for tool in _registry().describe():
        jsonschema.Draft202012Validator.check_schema(tool["inputSchema"])


@pytest.mark.anyio
async def test_good_arguments_satisfy_the_schema_and_the_call() -> None:
    registry = _registry()
    (tool,) = registry.describe()
    jsonschema.validate(GOOD, tool["inputSchema"])
    assert await registry.call("draw", GOOD) == "tri:2:HIGH:exact"


@pytest.mark.parametrize(
    ("change", "bad_path"),
    [
        ({"level": 3}, "level"),
        ({"mode": "slow"}, "mode"),
        ({"shape": {"name": "t", "points": [{"y": 1}]}}, "shape.points[0].x"),
        ({"tags": {"a": "one"}}, "tags.a"),
        ({"shape": {"name": "t", "points": [], "color": "green"}}, "shape.color"),
    ],
)
@pytest.mark.anyio
async def test_bad_arguments_fail_both_the_schema_and_the_call(
    change: dict[str, Any], bad_path: str
) -> None:
    registry = _registry()
    (tool,) = registry.describe()
    arguments = {**GOOD, **change}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(arguments, tool["inputSchema"])

    with pytest.raises(trioflow.ToolArgumentError) as info:
        await registry.call("draw", arguments)
    paths = [path for path, _ in info.value.problems]
    assert any(bad_path in path for path in paths), paths
