"""The SQLite request store's batched writes: any number of records, duplicates included."""

from __future__ import annotations

from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import pytest

from _lifecycle_stages import SEVEN_STAGES
from test_request_store import record
from trioflow.lifecycle import (
    MemoryRequestStore,
    Pipeline,
    RequestKind,
    RequestState,
    Router,
    SQLiteRequestStore,
    Stage,
    open_coordinator,
)
from trioflow.lifecycle import Request as LifecycleRequest

pytestmark = pytest.mark.anyio

S = RequestState


@pytest.mark.real_time
@hypothesis.settings(max_examples=15, suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(ids=st.lists(st.integers(0, 700), max_size=700))
async def test_a_batch_of_any_size_is_written_whole_and_the_last_of_an_id_wins(
    tmp_path_factory: pytest.TempPathFactory, ids: list[int]
) -> None:
    # Batches are cut into multi-row INSERTs of 256, 128, ... 1 rows: every size lands whole.
    path = tmp_path_factory.mktemp("batch") / "requests.db"
    records = [
        record(f"r{n}", S.PROCESSING if i % 2 else S.VALIDATED, user_id=f"u{i}")
        for i, n in enumerate(ids)
    ]
    async with SQLiteRequestStore(path) as store:
        await store.save(records)
        stored = {r.request_id: r for r in await store.list()}
    last = {r.request_id: r for r in records}
    assert stored == last


@pytest.mark.parametrize("kind", ["memory", pytest.param("sqlite", marks=pytest.mark.real_time)])
async def test_a_request_kind_member_is_recorded_as_its_plain_value(
    kind: str, tmp_path: Path
) -> None:
    async def done(request: LifecycleRequest) -> str:
        return "ok"

    pipeline = Pipeline([Stage(name, state, done) for name, state in SEVEN_STAGES])
    router = Router(lambda r: RequestKind.SIMPLE_QUERY, {RequestKind.SIMPLE_QUERY: pipeline})
    store = MemoryRequestStore() if kind == "memory" else SQLiteRequestStore(tmp_path / "r.db")
    async with open_coordinator(router=router, requests=store) as coordinator:
        await coordinator.process(LifecycleRequest("hi", id="one", user_id="alice"))
    found = await store.load("one")
    assert found is not None
    assert found.state is S.COMPLETED
    assert (type(found.kind), found.kind) == (str, "simple_query")
    if isinstance(store, SQLiteRequestStore):
        await store.aclose()
