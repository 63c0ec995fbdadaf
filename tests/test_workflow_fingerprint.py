"""A workflow's compiled shape and fingerprint are what a stored run is checked against.

The compiled graph builds both once per run in a way of its own (names with fewer than two
dependencies are not sorted, the JSON encoder sorts the names); these tests pin that it gives
exactly what ``shape_fingerprint`` gives for the same steps in any order, so that a run stored
by any trioflow resumes.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from trioflow import Workflow
from trioflow._workflow._graph import shape_fingerprint

names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=6)


@st.composite
def workflows(draw: st.DrawFn) -> tuple[Workflow, dict[str, list[str]]]:
    """A DAG of steps defined in a random order, each after any earlier ones, in any order."""
    order = draw(st.lists(names, min_size=0, max_size=12, unique=True))
    shape: dict[str, list[str]] = {}
    for k, name in enumerate(order):
        earlier = order[:k]
        after = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
        shape[name] = after
    wf = Workflow("w")

    async def step(ctx: Any) -> None:
        return None

    for name in draw(st.permutations(order)):
        wf.step(name, step, after=shape[name])
    return wf, shape


@given(workflows())
def test_the_compiled_fingerprint_is_the_digest_of_the_shape(
    case: tuple[Workflow, dict[str, list[str]]],
) -> None:
    wf, shape = case
    graph = wf.graph()
    assert dict(graph.shape) == {name: tuple(sorted(after)) for name, after in shape.items()}
    assert graph.fingerprint == shape_fingerprint(shape)
    reversed_lists = {name: list(reversed(after)) for name, after in reversed(shape.items())}
    assert graph.fingerprint == shape_fingerprint(reversed_lists)


def test_a_known_shape_keeps_its_digest() -> None:
    # The digest trioflow 0.1 and 0.2 stored for this shape: a stored run must still match.
    wf = Workflow("w")

    async def step(ctx: Any) -> None:
        return None

    wf.step("b", step)
    wf.step("a", step)
    wf.step("c", step, after=["b", "a"])
    expected = shape_fingerprint({"a": [], "b": [], "c": ["a", "b"]})
    assert wf.graph().fingerprint == expected
    assert expected == "b220eaa953083201823a2f29dea93621fd92666e331f70d4822b546b40a159b6"
