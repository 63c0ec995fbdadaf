"""Durable runs: records, resume, shape checks, the JSON codec, MemoryStore and SQLiteStore."""

from __future__ import annotations

import dataclasses
import enum
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import attrs
import pytest

from _helpers import ForwardingStore
from _redis_server import STORE_KINDS, open_store
from trioflow import (
    Context,
    MemoryStore,
    RunRecord,
    RunStatus,
    SQLiteStore,
    StepRecord,
    StepStatus,
    StoredValue,
    StoreError,
    UnstorableValueError,
    Workflow,
    WorkflowShapeChangedError,
    WorkflowStore,
    run_workflow,
)
from trioflow._workflow._codec import decode_value, encode_value
from trioflow._workflow._context import RunShared, run_context
from trioflow._workflow._journal import Journal

pytestmark = pytest.mark.anyio


@attrs.frozen
class Artifact:
    name: str
    size: int


@dataclasses.dataclass(frozen=True)
class Report:
    passed: int
    failed: int
    tags: tuple[str, ...] = ()


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


@pytest.fixture(params=STORE_KINDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: object
) -> AsyncIterator[WorkflowStore]:
    async with open_store(request, tmp_path / "deep" / "dir" / "state.db") as opened:
        yield opened


class Counter:
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def hit(self, ctx: Context) -> None:
        assert ctx.step is not None
        self.calls[ctx.step] = self.calls.get(ctx.step, 0) + 1


def typed_workflow(counter: Counter, *, fail: bool) -> Workflow:
    wf = Workflow("typed")

    @wf.step("artifact")
    async def artifact(ctx: Context) -> Artifact:
        counter.hit(ctx)
        ctx.set("built_at", datetime(2024, 6, 1, 12, 0, tzinfo=UTC))
        ctx.set("color", Color.GREEN)
        return Artifact("app.whl", 1234)

    @wf.step("report")
    async def report(ctx: Context) -> Report:
        counter.hit(ctx)
        return Report(passed=10, failed=0, tags=("unit",))

    @wf.step("when")
    async def when(ctx: Context) -> datetime:
        counter.hit(ctx)
        return datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)

    @wf.step("color")
    async def color(ctx: Context) -> Color:
        counter.hit(ctx)
        return Color.RED

    @wf.step("path")
    async def path(ctx: Context) -> PurePosixPath:
        counter.hit(ctx)
        return PurePosixPath("/srv/app")

    @wf.step("many")
    async def many(ctx: Context) -> list[Artifact]:
        counter.hit(ctx)
        return [Artifact("a", 1), Artifact("b", 2)]

    @wf.step("untyped")
    async def untyped(ctx: Context):  # type: ignore[no-untyped-def]
        counter.hit(ctx)
        return {"k": [1, 2]}

    def never(ctx: Context) -> bool:
        counter.hit(ctx)
        return False

    @wf.step("skipped", when=never)
    async def skipped(ctx: Context) -> None:
        raise AssertionError("never runs")

    @wf.step("flaky", after=["artifact", "report", "when", "color", "path", "many", "untyped"])
    async def flaky(ctx: Context) -> str:
        counter.hit(ctx)
        if fail:
            raise ConnectionError("network down")
        return "ok"

    @wf.step("final", after=["flaky", "skipped"])
    async def final(ctx: Context) -> dict[str, Any]:
        counter.hit(ctx)
        return {
            "results": dict(ctx.results),
            "built_at": ctx.get("built_at"),
            "color": ctx.get("color"),
        }

    return wf


async def test_resume_skips_finished_steps_and_restores_values_and_state(
    store: WorkflowStore,
) -> None:
    counter = Counter()
    first = await run_workflow(typed_workflow(counter, fail=True), store=store, run_id="r1")
    assert not first.ok
    assert first.steps["flaky"].status is StepStatus.FAILED
    assert first.steps["final"].status is StepStatus.NOT_RUN
    record = await store.load_run("r1")
    assert record is not None
    assert record.status is RunStatus.FAILED
    assert record.steps["flaky"].error == "ConnectionError: network down"
    assert record.steps["final"].status is StepStatus.NOT_RUN

    counter.calls.clear()
    second = await run_workflow(typed_workflow(counter, fail=False), store=store, run_id="r1")
    assert second.ok
    assert second.run_id == "r1"
    assert counter.calls == {"flaky": 1, "final": 1}  # nothing that finished ran again
    restored = {name for name, r in second.steps.items() if r.restored}
    assert restored == {
        "artifact",
        "report",
        "when",
        "color",
        "path",
        "many",
        "untyped",
        "skipped",
    }
    assert second.steps["skipped"].status is StepStatus.SKIPPED
    final = second.steps["final"].value
    assert final["results"] == {
        "artifact": Artifact("app.whl", 1234),
        "report": Report(passed=10, failed=0, tags=("unit",)),
        "when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "color": Color.RED,
        "path": PurePosixPath("/srv/app"),
        "many": [Artifact("a", 1), Artifact("b", 2)],
        "untyped": {"k": [1, 2]},
        "flaky": "ok",
    }
    assert final["built_at"] == datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    assert final["color"] is Color.GREEN
    record = await store.load_run("r1")
    assert record is not None
    assert record.status is RunStatus.SUCCEEDED
    assert record.step_counts == {StepStatus.SUCCEEDED: 9, StepStatus.SKIPPED: 1}


async def test_resuming_a_finished_run_runs_nothing(store: WorkflowStore) -> None:
    counter = Counter()
    wf = typed_workflow(counter, fail=False)
    await run_workflow(wf, store=store, run_id="done")
    counter.calls.clear()
    again = await run_workflow(wf, store=store, run_id="done")
    assert again.ok
    assert counter.calls == {}
    assert all(r.restored for r in again.steps.values())
    assert again.steps["artifact"].value == Artifact("app.whl", 1234)
    assert again.steps["artifact"].attempts == 1


async def test_steps_after_one_that_runs_again_are_not_rerun(store: WorkflowStore) -> None:
    # lint FAILED being optional, and undo COMPENSATED: both run again on resume, and
    # the restored steps after them must not run again when they end.
    counter = Counter()

    async def lint(ctx: Context) -> None:
        counter.hit(ctx)
        raise RuntimeError("style warnings")

    async def work(ctx: Context) -> str:
        counter.hit(ctx)
        return str(ctx.step)

    async def undo(ctx: Context) -> None:
        pass

    async def fails_once(ctx: Context) -> None:
        counter.hit(ctx)
        if counter.calls["flaky"] == 1:
            raise ConnectionError("down")

    wf = Workflow("again").step("lint", lint, optional=True)
    wf.step("build", work, after="lint")
    wf.step("reserve", work, compensate=undo).step("ship", work, after="reserve")
    wf.step("flaky", fails_once, after=["build", "ship"])
    first = await run_workflow(wf, store=store, run_id="a")
    assert not first.ok
    assert first.steps["reserve"].status is StepStatus.COMPENSATED
    assert first.steps["ship"].status is StepStatus.SUCCEEDED  # no compensation
    counter.calls.clear()
    counter.calls["flaky"] = 1  # the next call succeeds
    second = await run_workflow(wf, store=store, run_id="a")
    assert second.ok
    assert counter.calls == {"lint": 1, "reserve": 1, "flaky": 2}
    assert {name for name, r in second.steps.items() if r.restored} == {"build", "ship"}


async def test_a_run_id_is_generated_with_a_store(store: WorkflowStore) -> None:
    result = await run_workflow(Workflow("w").step("a", noop), store=store)
    assert len(result.run_id) == 32
    runs = await store.list_runs()
    assert [r.run_id for r in runs] == [result.run_id]


async def noop(ctx: Context) -> None:
    pass


async def test_a_changed_shape_is_refused(store: WorkflowStore) -> None:
    wf = Workflow("shape").step("a", noop).step("b", noop, after="a").step("c", noop)
    await run_workflow(wf, store=store, run_id="s")
    before = await store.load_run("s")

    grown = Workflow("shape").step("a", noop).step("b", noop, after="a").step("c", noop)
    grown.step("d", noop)
    with pytest.raises(
        WorkflowShapeChangedError,
        match=r"cannot resume run 's': workflow 'shape' changed since the run was stored "
        r"\(steps added: 'd'\)",
    ):
        await run_workflow(grown, store=store, run_id="s")

    rewired = Workflow("shape").step("a", noop).step("b", noop, after="c").step("c", noop)
    with pytest.raises(
        WorkflowShapeChangedError, match="edges added: 'c' -> 'b'; edges removed: 'a' -> 'b'"
    ):
        await run_workflow(rewired, store=store, run_id="s")

    shrunk = Workflow("shape").step("a", noop).step("b", noop, after="a")
    with pytest.raises(WorkflowShapeChangedError, match="steps removed: 'c'"):
        await run_workflow(shrunk, store=store, run_id="s")

    other = Workflow("other").step("a", noop).step("b", noop, after="a").step("c", noop)
    with pytest.raises(
        WorkflowShapeChangedError, match="it is a run of workflow 'shape', not 'other'"
    ):
        await run_workflow(other, store=store, run_id="s")

    assert await store.load_run("s") == before  # a refused resume writes nothing


async def test_step_order_and_options_are_not_part_of_the_shape(store: WorkflowStore) -> None:
    wf = Workflow("shape").step("a", noop).step("b", noop, after="a")
    await run_workflow(wf, store=store, run_id="s")
    reordered = Workflow("shape").step("b", noop, after="a", timeout=5).step("a", noop)
    result = await run_workflow(reordered, store=store, run_id="s")
    assert result.ok
    assert all(r.restored for r in result.steps.values())


async def test_an_unstorable_value_fails_its_step(store: WorkflowStore) -> None:
    class Opaque:
        pass

    async def opaque(ctx: Context) -> object:
        return {"nested": [Opaque()]}

    ran_after = []

    async def later(ctx: Context) -> None:
        ran_after.append(1)

    wf = Workflow("unstorable").step("a", opaque).step("b", later, after="a")
    result = await run_workflow(wf, store=store, run_id="u")
    a = result.steps["a"]
    assert a.status is StepStatus.FAILED
    assert isinstance(a.error, UnstorableValueError)
    assert (a.error.step, a.error.value_type) == ("a", Opaque)
    assert "step 'a' returned a value of type" in str(a.error)
    assert "Opaque" in str(a.error)
    assert a.value is None
    assert "a" not in result.context.results
    assert result.steps["b"].status is StepStatus.NOT_RUN
    assert ran_after == []
    record = await store.load_run("u")
    assert record is not None
    assert record.steps["a"].status is StepStatus.FAILED
    assert record.steps["a"].error is not None
    assert "UnstorableValueError" in record.steps["a"].error


async def test_unstorable_state_fails_the_step_that_sets_it(store: WorkflowStore) -> None:
    class Handle:
        pass

    async def sets(ctx: Context) -> None:
        ctx.set("lock", Handle())

    result = await run_workflow(Workflow("w").step("a", sets), store=store)
    error = result.steps["a"].error
    assert isinstance(error, UnstorableValueError)
    assert error.value_type is Handle
    assert error.__notes__ == ["trioflow: raised by ctx.set('lock', ...)"]
    assert "lock" not in result.context.state


async def test_unstorable_values_are_fine_without_a_store() -> None:
    lock = anyio.Lock()

    async def sets(ctx: Context) -> anyio.Lock:
        ctx.set("lock", lock)
        return lock

    result = await run_workflow(Workflow("w").step("a", sets))
    assert result.ok
    assert result.values["a"] is lock


async def test_list_runs_and_load_run(store: WorkflowStore) -> None:
    async def boom(ctx: Context) -> None:
        raise ValueError("bad input")

    await run_workflow(Workflow("one").step("a", noop), store=store, run_id="first")
    wf = Workflow("two").step("a", noop).step("b", boom, after="a").step("c", noop, after="b")
    await run_workflow(wf, store=store, run_id="second")
    runs = await store.list_runs()
    assert [(r.run_id, r.workflow, r.status) for r in runs] == [
        ("second", "two", RunStatus.FAILED),
        ("first", "one", RunStatus.SUCCEEDED),
    ]
    assert runs[0].step_counts == {
        StepStatus.SUCCEEDED: 1,
        StepStatus.FAILED: 1,
        StepStatus.NOT_RUN: 1,
    }
    assert runs[0].total == 3
    assert runs[0].steps == {}
    assert await store.load_run("missing") is None

    record = await store.load_run("second")
    assert isinstance(record, RunRecord)
    assert record.shape == {"a": (), "b": ("a",), "c": ("b",)}
    a, b, c = record.steps["a"], record.steps["b"], record.steps["c"]
    assert isinstance(a, StepRecord)
    assert (a.status, a.attempts, a.seq, a.error) == (StepStatus.SUCCEEDED, 1, 0, None)
    assert a.value == StoredValue(json="null")
    assert (b.status, b.attempts, b.error) == (StepStatus.FAILED, 1, "ValueError: bad input")
    assert (c.status, c.attempts, c.started_at, c.value) == (StepStatus.NOT_RUN, 0, None, None)
    assert a.started_at is not None
    assert a.finished_at is not None
    assert a.started_at.tzinfo is not None
    assert abs(a.started_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert record.created_at <= record.updated_at


async def test_runs_begun_in_the_same_instant_are_listed_newest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    monkeypatch.setattr("trioflow._workflow._store._now", lambda: moment)
    store = MemoryStore()
    for run_id in ("first", "second", "third"):
        await store.begin_run(run_id, workflow="w", fingerprint="f", shape={})
    assert [r.run_id for r in await store.list_runs()] == ["third", "second", "first"]


def refuse_nothing(i: int, error: UnstorableValueError) -> StepRecord:
    raise AssertionError(f"step {i} refused: {error}")


async def test_records_are_written_before_later_steps_start(store: WorkflowStore) -> None:
    events: list[str] = []

    class SlowWrites(ForwardingStore):
        async def save_steps(
            self, run_id: str, steps: Sequence[StepRecord], state: Mapping[str, StoredValue]
        ) -> None:
            await anyio.sleep(0.01)  # a write that takes a while: nothing may start meanwhile
            await self.inner.save_steps(run_id, steps, state)
            events.extend(f"saved {s.name}" for s in steps)

    seen: list[Mapping[str, StepStatus]] = []

    async def check(ctx: Context) -> int:
        events.append(f"started {ctx.step}")
        record = await store.load_run(ctx.run_id)
        assert record is not None
        seen.append({name: r.status for name, r in record.steps.items()})
        return 1

    async def between(ctx: Context) -> None:
        await anyio.sleep(0.015)  # ends while b is written (0.01-0.02): its task is free then

    wf = Workflow("order").step("a", check).step("b", check).step("c", check, after=["a", "b"])
    wf.step("between", between)
    await run_workflow(wf, store=SlowWrites(store), run_id="o")
    assert events.index("started c") > max(events.index("saved a"), events.index("saved b"))
    assert seen[2]["a"] is seen[2]["b"] is StepStatus.SUCCEEDED  # c read them from the store


async def test_steps_ending_together_share_a_transaction() -> None:
    class SlowStore(ForwardingStore):
        def __init__(self) -> None:
            super().__init__()
            self.batches: list[list[str]] = []

        async def save_steps(
            self, run_id: str, steps: Sequence[StepRecord], state: Mapping[str, StoredValue]
        ) -> None:
            self.batches.append([s.name for s in steps])
            await anyio.sleep(1)
            await self.inner.save_steps(run_id, steps, state)

    async def one_second(ctx: Context) -> None:
        await anyio.sleep(1)

    store = SlowStore()
    wf = Workflow("fan")
    for i in range(10):
        wf.step(f"s{i}", one_second)
    wf.step("end", noop, after=[f"s{i}" for i in range(10)])
    result = await run_workflow(wf, store=store, run_id="f")
    assert result.ok
    # The first step to end is written alone; the nine that end while it is written share
    # the next transaction.
    assert [len(batch) for batch in store.batches] == [1, 9, 1]
    assert sorted(store.batches[0] + store.batches[1]) == sorted(f"s{i}" for i in range(10))
    assert store.batches[2] == ["end"]
    # s0-s9 end at 1: the first is written 1-2, the nine others 2-3; end runs and is written 3-4.
    assert anyio.current_time() == 4
    record = await store.load_run("f")
    assert record is not None
    assert record.step_counts == {StepStatus.SUCCEEDED: 11}


async def test_the_journal_is_a_sink_that_says_what_it_saved() -> None:
    class SlowStore(ForwardingStore):
        def __init__(self) -> None:
            super().__init__()
            self.written: list[tuple[list[str], dict[str, str]]] = []

        async def save_steps(
            self, run_id: str, steps: Sequence[StepRecord], state: Mapping[str, StoredValue]
        ) -> None:
            await anyio.sleep(1)
            self.written.append(([s.name for s in steps], {k: v.json for k, v in state.items()}))
            await self.inner.save_steps(run_id, steps, state)

    def ended(name: str) -> StepRecord:
        return StepRecord(name=name, status=StepStatus.SUCCEEDED, attempts=1)

    store = SlowStore()
    shared = RunShared("j")
    shared.encode = encode_value
    wf = Workflow("sink").step("a", noop).step("b", noop).step("c", noop)
    journal = Journal(store, "j", shared, 3, refuse_nothing, wf.graph().index)
    assert await journal.open("sink", wf.graph()) is None
    run_context(shared, "a").set("k", 1)
    saved: list[tuple[int, ...]] = []

    async def writer() -> None:
        assert journal.add(0, ended("a"))  # no write in progress: this caller writes
        while batch := await journal.write():
            saved.append(batch)

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await anyio.sleep(0.5)  # "a" is being written: b and c wait for the next write
        assert not journal.add(1, ended("b"))
        assert not journal.add(2, ended("c"))
    assert saved == [(0,), (1, 2)]
    assert store.written == [(["a"], {"k": "1"}), (["b", "c"], {})]
    assert journal.saved == [StepStatus.SUCCEEDED] * 3
    assert journal.add(0, ended("a"))  # the writer was released
    await journal.close([], RunStatus.SUCCEEDED, 0.0)
    record = await store.load_run("j")
    assert record is not None
    assert record.status is RunStatus.SUCCEEDED


async def test_state_of_an_interrupted_write_is_written_at_the_close() -> None:
    store = MemoryStore()
    shared = RunShared("i")
    shared.encode = encode_value
    graph = Workflow("w").step("a", noop).graph()
    journal = Journal(store, "i", shared, 1, refuse_nothing, graph.index)
    assert await journal.open("w", graph) is None
    ctx = run_context(shared, "a")
    ctx.set("k", 1)
    ctx.set("m", 1)
    assert journal.add(0, StepRecord(name="a", status=StepStatus.SUCCEEDED))
    with anyio.CancelScope() as scope:
        scope.cancel()
        await journal.write()  # cancelled at the store's first checkpoint
    assert journal.saved == [None]  # not known to be written
    ctx.set("m", 2)  # set since the write began: it wins over what the write took
    await journal.close([StepRecord(name="a", status=StepStatus.SUCCEEDED)], RunStatus.FAILED, 0.0)
    record = await store.load_run("i")
    assert record is not None
    assert {key: value.data() for key, value in record.state.items()} == {"k": 1, "m": 2}
    assert list(record.steps) == ["a"]
    assert record.status is RunStatus.FAILED


async def test_nothing_starts_while_a_fail_fast_failure_is_written() -> None:
    class SlowStore(ForwardingStore):
        async def save_steps(
            self, run_id: str, steps: Sequence[StepRecord], state: Mapping[str, StoredValue]
        ) -> None:
            await anyio.sleep(1)
            await self.inner.save_steps(run_id, steps, state)

    started: list[str] = []

    def sleeper(seconds: float, *, fail: bool = False) -> Any:
        async def fn(ctx: Context) -> None:
            started.append(str(ctx.step))
            await anyio.sleep(seconds)
            if fail:
                raise ValueError("broken")

        return fn

    store = SlowStore()
    wf = Workflow("stop").step("fails", sleeper(1, fail=True)).step("other", sleeper(1.5))
    wf.step("long", sleeper(10), after="other")
    wf.step("queued", sleeper(1))  # waits for the limit: "other" frees a slot at 1.5
    result = await run_workflow(wf, store=store, run_id="s", limit=2)
    # The failure at 1 is written 1-2: "other", ending meanwhile, starts nothing.
    assert started == ["fails", "other"]
    assert result.steps["other"].status is StepStatus.SUCCEEDED
    assert result.steps["queued"].status is StepStatus.NOT_RUN
    assert result.steps["long"].status is StepStatus.NOT_RUN
    record = await store.load_run("s")
    assert record is not None
    assert {name: step.status for name, step in record.steps.items()} == {
        "fails": StepStatus.FAILED,
        "other": StepStatus.SUCCEEDED,
        "long": StepStatus.NOT_RUN,
        "queued": StepStatus.NOT_RUN,
    }


async def test_a_failing_store_ends_the_run_without_compensation() -> None:
    class BrokenStore(ForwardingStore):
        saves = 0

        async def save_steps(
            self, run_id: str, steps: Sequence[StepRecord], state: Mapping[str, StoredValue]
        ) -> None:
            self.saves += 1
            if self.saves == 2:
                raise StoreError("disk full")
            await self.inner.save_steps(run_id, steps, state)

    undone: list[str] = []
    cancelled: list[str] = []

    async def undo(ctx: Context) -> None:
        undone.append(str(ctx.step))

    async def long(ctx: Context) -> None:
        try:
            await anyio.sleep(100)
        except anyio.get_cancelled_exc_class():
            cancelled.append("long")
            raise

    async def one(ctx: Context) -> None:
        await anyio.sleep(1)

    wf = Workflow("broken").step("a", noop, compensate=undo).step("b", one, after="a")
    wf.step("long", long)
    with pytest.raises(StoreError, match="disk full"):
        await run_workflow(wf, store=BrokenStore(), run_id="x")
    assert undone == []
    assert cancelled == ["long"]
    assert anyio.current_time() == 1


# --- the codec ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        None,
        3,
        2.5,
        "text",
        True,
        [1, "a", None],
        {"a": {"b": [1]}},
        Artifact("x", 1),
        Report(1, 2, ("t",)),
        datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        Color.GREEN,
        Path("/tmp/x"),
        (1, 2),
        frozenset({3}),
    ],
)
def test_values_round_trip_with_their_type(value: Any) -> None:
    stored = encode_value("s", value)
    assert decode_value(stored) == value
    assert type(decode_value(stored)) is type(value)


def test_the_type_hint_wins_and_unknown_types_come_back_as_data() -> None:
    stored = encode_value("s", [Artifact("a", 1)])
    assert stored.data() == [{"name": "a", "size": 1}]
    assert decode_value(stored) == [{"name": "a", "size": 1}]
    assert decode_value(stored, list[Artifact]) == [Artifact("a", 1)]

    @attrs.frozen
    class Local:
        x: int

    local = encode_value("s", Local(1))
    assert local.type is not None
    assert local.type.endswith("Local")
    assert decode_value(local) == {"x": 1}  # a local class cannot be imported again
    gone = StoredValue(json='{"x": 1}', type="no_such_module:Thing")
    assert decode_value(gone) == {"x": 1}
    assert decode_value(encode_value("s", "text"), int) == "text"  # a bad hint is ignored


def test_unstorable_values() -> None:
    with pytest.raises(UnstorableValueError) as info:
        encode_value("build", {"x": object()})
    assert (info.value.step, info.value.value_type) == ("build", object)
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(UnstorableValueError, match="step 'build' returned a value of type 'list'"):
        encode_value("build", looped)


# --- SQLiteStore ---------------------------------------------------------------------------------
@pytest.mark.real_time
async def test_sqlite_store_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state.db"
    async with SQLiteStore(path) as first:
        assert first.path == path
        await run_workflow(Workflow("w").step("a", noop), store=first, run_id="r")
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()
    second = SQLiteStore(str(path))
    try:
        record = await second.load_run("r")
        assert record is not None
        assert record.status is RunStatus.SUCCEEDED
    finally:
        await second.aclose()
    with pytest.raises(StoreError, match="is closed"):
        await second.list_runs()
    assert "state.db" in repr(second)


@pytest.mark.real_time
async def test_sqlite_store_refuses_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database at all" * 100)
    store = SQLiteStore(path)
    with pytest.raises(StoreError, match=f"workflow store '{path}'.*not a database"):
        await store.list_runs()
    with pytest.raises(StoreError, match=r"state\.db"):
        await run_workflow(Workflow("w").step("a", noop), store=store)
    store.close()


@pytest.mark.real_time
async def test_sqlite_store_reports_a_malformed_record(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLiteStore(path) as store:
        await run_workflow(Workflow("w").step("a", noop), store=store, run_id="r")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE steps SET status = 'exploded'")
    conn.close()
    async with SQLiteStore(path) as store:
        with pytest.raises(StoreError, match=r"cannot read \(a malformed record\).*'exploded'"):
            await store.load_run("r")
        with pytest.raises(StoreError, match="malformed"):
            await run_workflow(Workflow("w").step("a", noop), store=store, run_id="r")


@pytest.mark.real_time
async def test_sqlite_store_refuses_a_directory_and_foreign_databases(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    with pytest.raises(StoreError, match="cannot open"):
        await store.load_run("x")
    store.close()

    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.close()
    store = SQLiteStore(foreign)
    with pytest.raises(StoreError, match="other tables, not a trioflow store"):
        await store.list_runs()
    store.close()

    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    store = SQLiteStore(newer)
    with pytest.raises(StoreError, match="schema version 99"):
        await store.list_runs()
    store.close()


def test_sqlite_store_arguments() -> None:
    with pytest.raises(TypeError, match="path must be a str or a path"):
        SQLiteStore(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"busy_timeout must be a number in \[0, 2000000\]"):
        SQLiteStore("x.db", busy_timeout=-1)
    with pytest.raises(TypeError, match=r"busy_timeout must be a number in \[0, 2000000\]"):
        SQLiteStore("x.db", busy_timeout="1")  # type: ignore[arg-type]


def test_stores_implement_the_protocol(tmp_path: Path) -> None:
    sqlite = SQLiteStore(tmp_path / "s.db")
    assert isinstance(sqlite, WorkflowStore)
    assert isinstance(MemoryStore(), WorkflowStore)
    assert "0 runs" in repr(MemoryStore())
    sqlite.close()
