"""open_coordinator(requests=store): every request recorded as it moves, off its path."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
import coredis
import hypothesis
import hypothesis.strategies as st
import pytest

from _lifecycle_stages import SEVEN_STAGES
from _redis_server import start_redis
from trioflow import RunOwner, StoreError
from trioflow.lifecycle import (
    ErrorCategory,
    MemoryRequestStore,
    Pipeline,
    ProcessingStatus,
    Request,
    RequestRecord,
    RequestState,
    Router,
    SQLiteRequestStore,
    Stage,
    open_coordinator,
)
from trioflow.redis._requests import RedisRequestStore

pytestmark = pytest.mark.anyio

S = RequestState


class Log:
    """A structlog-like logger that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, **fields: Any) -> None:
        self.events.append((level, event, fields))

    def debug(self, event: str, **fields: Any) -> None:
        self._add("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add("warning", event, **fields)

    def is_enabled_for(self, level: int) -> bool:
        return False

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for _, e, fields in self.events if e == event]


class FlakyStore:
    """A MemoryRequestStore whose writes fail while ``broken`` (or hang while ``stuck``)."""

    def __init__(self) -> None:
        self.inner = MemoryRequestStore()
        self.broken = False
        self.stuck = False
        self.attempts = 0

    async def _gate(self) -> None:
        self.attempts += 1
        if self.stuck:
            await anyio.sleep_forever()
        if self.broken:
            raise StoreError("the disk is full")

    async def save(self, records: Sequence[RequestRecord]) -> None:
        await self._gate()
        await self.inner.save(records)

    async def load(self, request_id: str) -> RequestRecord | None:
        return await self.inner.load(request_id)

    async def list(
        self, *, state: RequestState | None = None, user_id: str | None = None
    ) -> tuple[RequestRecord, ...]:
        return await self.inner.list(state=state, user_id=user_id)

    async def renew_owner(self, owner: RunOwner, ttl: float) -> None:
        await self._gate()
        await self.inner.renew_owner(owner, ttl)

    async def release_owner(self, owner: RunOwner) -> None:
        await self._gate()
        await self.inner.release_owner(owner)

    async def fail_interrupted(self) -> tuple[RequestRecord, ...]:
        await self._gate()
        return await self.inner.fail_interrupted()


def pipeline(fns: dict[str, Any] | None = None, *, optional: Sequence[str] = ()) -> Pipeline:
    async def done(request: Request) -> str:
        return "ok"

    fns = fns or {}
    return Pipeline(
        [
            Stage(name, state, fns.get(name, done), optional=name in optional)
            for name, state in SEVEN_STAGES
        ]
    )


NAMES = [name for name, _ in SEVEN_STAGES]


async def test_every_request_is_recorded_with_how_it_ended() -> None:
    async def bad(request: Request) -> None:
        raise TimeoutError("the model is slow")

    router = Router(lambda r: r.payload, {"ok": pipeline(), "bad": pipeline({"process": bad})})
    store = MemoryRequestStore()
    async with open_coordinator(router=router, requests=store, logger=Log()) as c:
        assert c.requests is store
        ok = await c.process(Request("ok", id="a", user_id="alice", source="mcp"))
        bad_result = await c.process(Request("bad", id="b", user_id="bob"))
        await c.process(Request("nope", id="c"))
    assert ok.status is ProcessingStatus.SUCCEEDED
    a, b, c_ = [await store.load(i) for i in "abc"]
    assert a is not None
    assert b is not None
    assert c_ is not None
    assert (a.state, a.user_id, a.source, a.kind, a.stages) == (
        S.COMPLETED, "alice", "mcp", "ok", tuple(NAMES)
    )  # fmt: skip
    assert (a.category, a.reason) == (None, None)
    assert a.owner is not None
    assert a.created_at <= a.updated_at
    assert bad_result.category is ErrorCategory.TIMEOUT
    assert (b.state, b.category, b.reason) == (
        S.FAILED, ErrorCategory.TIMEOUT, "TimeoutError: the model is slow"
    )  # fmt: skip
    assert b.stages == tuple(NAMES[:4])
    assert (c_.state, c_.category, c_.kind) == (S.FAILED, ErrorCategory.VALIDATION, "nope")
    assert c_.reason is not None
    assert c_.reason.startswith("UnknownKindError: ")
    assert [r.request_id for r in await store.list(user_id="bob")] == ["b"]
    # Released on close: what is left unfinished by this coordinator would be interrupted.
    assert await store.fail_interrupted() == ()


async def test_a_request_in_flight_is_visible_with_its_progress() -> None:
    release = anyio.Event()

    async def slow(request: Request) -> str:
        await release.wait()
        return "done"

    store = MemoryRequestStore()
    async with (
        open_coordinator(
            router=Router(lambda r: "q", {"q": pipeline({"context": slow})}), requests=store
        ) as c,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(c.process, Request(id="r", user_id="alice"))
        await anyio.sleep(1)
        seen = await store.load("r")
        assert seen is not None
        assert (seen.state, seen.stages, seen.kind) == (
            S.CONTEXT_GATHERING, ("receive", "validate", "plan"), "q"
        )  # fmt: skip
        # Its own coordinator is alive: recover() leaves it alone.
        assert await c.recover() == ()
        release.set()
    done = await store.load("r")
    assert done is not None
    assert done.state is S.COMPLETED


async def test_cancelled_requests_are_recorded_cancelled() -> None:
    async def forever(request: Request) -> None:
        await anyio.sleep_forever()

    store = MemoryRequestStore()
    router = Router(lambda r: "q", {"q": pipeline({"plan": forever})})
    async with (
        open_coordinator(router=router, requests=store) as c,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(c.process, Request(id="asked"))
        tg.start_soon(c.process, Request(id="outside"))
        await anyio.sleep(1)
        assert c.cancel("asked")
        await anyio.sleep(1)
        tg.cancel_scope.cancel()
    for request_id in ("asked", "outside"):
        record = await store.load(request_id)
        assert record is not None
        assert (record.state, record.stages) == (S.CANCELLED, ("receive", "validate"))
        assert record.category is None


async def test_a_failing_store_never_fails_a_request_and_is_reported_once() -> None:
    store = FlakyStore()
    log = Log()
    router = Router(lambda r: "q", {"q": pipeline()})
    async with open_coordinator(router=router, requests=store, logger=log) as c:
        store.broken = True
        for i in range(20):
            result = await c.process(Request(id=f"r{i}"))
            assert result.status is ProcessingStatus.SUCCEEDED
            await anyio.sleep(0.5)  # the writer tries (and fails) again meanwhile
        assert store.attempts > 3
        (failed,) = log.named("request store failed")
        assert failed["error"] == "StoreError: the disk is full"
        assert await store.list() == ()
        store.broken = False
        await anyio.sleep(10)  # past the longest backoff
        (recovered,) = log.named("request store recovered")
        assert recovered["failed_writes"] >= 3
        assert recovered["dropped"] == 0
        records = await store.list(state=S.COMPLETED)
        assert sorted(r.request_id for r in records) == sorted(f"r{i}" for i in range(20))
        # A second incident is reported again, once.
        store.broken = True
        await c.process(Request(id="again"))
        await anyio.sleep(3)
        assert len(log.named("request store failed")) == 2
        store.broken = False
    again = await store.load("again")
    assert again is not None
    assert again.state is S.COMPLETED


async def test_a_store_that_fails_at_open_and_close_does_not_fail_the_coordinator() -> None:
    store = FlakyStore()
    store.broken = True
    log = Log()
    async with open_coordinator(
        router=Router(lambda r: "q", {"q": pipeline()}), requests=store, logger=log
    ) as c:
        result = await c.process(Request(id="r"))
        assert result.ok
        with pytest.raises(StoreError, match="the disk is full"):
            await c.recover()  # asked for explicitly: the error is the caller's
    assert len(log.named("request store failed")) == 1
    (left,) = log.named("request store: records not written at close")
    assert left["unwritten"] == 1


async def test_a_store_that_hangs_delays_closing_by_ten_seconds_at_most() -> None:
    store = FlakyStore()
    log = Log()
    router = Router(lambda r: "q", {"q": pipeline()})
    store.stuck = True
    started = anyio.current_time()
    async with open_coordinator(router=router, requests=store, logger=log) as c:
        assert (await c.process(Request(id="r"))).ok
        # Neither opening nor the request waited for the store.
        assert anyio.current_time() == started
    assert anyio.current_time() - started == pytest.approx(10, abs=0.1)
    assert log.named("request store: records not written at close")


async def test_recover_ends_the_requests_of_a_dead_process_and_returns_them() -> None:
    store = MemoryRequestStore()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = attrs.evolve(RunOwner.current(), pid=proc.pid, process_started=None)
    await store.renew_owner(dead, 60)
    earlier = await _seed(store, dead)
    async with open_coordinator(
        router=Router(lambda r: "q", {"q": pipeline()}), requests=store
    ) as c:
        (found,) = await c.recover()
        assert await c.recover() == ()
    assert found.request_id == earlier.request_id
    assert (found.state, found.category, found.reason) == (
        S.FAILED, ErrorCategory.INTERNAL, "interrupted"
    )  # fmt: skip
    assert found.stages == earlier.stages
    assert found.interrupted


async def _seed(store: MemoryRequestStore, owner: RunOwner) -> RequestRecord:
    async with open_coordinator(router=Router(lambda r: "q", {"q": pipeline()})) as c:
        request = Request(id="lost", user_id="carol")
        await c.process(request)
    record = RequestRecord(
        request_id="lost",
        state=S.PROCESSING,
        user_id="carol",
        kind="q",
        stages=("receive", "validate"),
        created_at=RunOwner.current().since,
        updated_at=RunOwner.current().since,
        owner=owner,
    )
    await store.save([record])
    return record


async def test_recover_needs_a_store_and_requests_must_be_a_store() -> None:
    router = Router(lambda r: "q", {"q": pipeline()})
    async with open_coordinator(router=router) as c:
        assert c.requests is None
        with pytest.raises(RuntimeError, match="opened without a request store"):
            await c.recover()
    with pytest.raises(TypeError, match="requests must be a RequestStore or None, got 'x'"):
        async with open_coordinator(router=router, requests="x"):  # type: ignore[arg-type]
            pass


@pytest.mark.real_time
async def test_an_sqlite_store_records_many_concurrent_requests(tmp_path: Path) -> None:
    async def maybe(request: Request) -> None:
        if request.payload % 3 == 0:
            raise ValueError("multiple of three")

    router = Router(lambda r: "q", {"q": pipeline({"format": maybe}, optional=["tools"])})
    async with SQLiteRequestStore(tmp_path / "requests.db") as store:
        async with open_coordinator(router=router, requests=store) as c:
            results = await c.process_many(
                Request(i, id=f"r{i}", user_id=f"user{i % 4}") for i in range(200)
            )
        assert sum(r.ok for r in results) == 133
        assert len(await store.list(state=S.COMPLETED)) == 133
        failed = await store.list(state=S.FAILED)
        assert len(failed) == 67
        assert all(r.reason == "ValueError: multiple of three" for r in failed)
        assert len(await store.list(user_id="user1")) == 50


# --- hypothesis: the record follows the state machine, whatever happens -------------------
OUTCOMES = st.sampled_from(["ok", "fail", "optional-fail", "cancel"])


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(plans=st.lists(st.lists(OUTCOMES, min_size=7, max_size=7), max_size=6))
def test_the_record_of_a_request_is_its_terminal_state_and_completed_stages(
    plans: list[list[str]],
) -> None:
    async def main() -> None:
        store = MemoryRequestStore()
        coordinator_box: list[Any] = []

        def stage(name: str, outcome: str) -> Any:
            async def run(request: Request) -> str:
                if outcome == "cancel":
                    coordinator_box[0].cancel(request.id)
                    await anyio.sleep(1)
                elif outcome in ("fail", "optional-fail"):
                    raise ValueError(name)
                return name

            return run

        pipelines = {
            f"p{i}": Pipeline(
                [
                    Stage(name, state, stage(name, plan[k]), optional=plan[k] == "optional-fail")
                    for k, (name, state) in enumerate(SEVEN_STAGES)
                ]
            )
            for i, plan in enumerate(plans)
        }
        if not pipelines:
            return
        router = Router(lambda r: r.payload, pipelines)
        async with open_coordinator(router=router, requests=store, logger=Log()) as c:
            coordinator_box.append(c)
            results = await c.process_many(
                Request(kind, id=f"r{i}") for i, kind in enumerate(pipelines)
            )
        for plan, result in zip(plans, results, strict=True):
            record = await store.load(result.request_id)
            assert record is not None
            state, stages = expected(plan)
            assert (record.state, record.stages) == (state, stages)
            assert record.state is result.state
            assert record.category is result.category
            assert record.category is (ErrorCategory.VALIDATION if state is S.FAILED else None)

    anyio.run(main, backend="trio")


def expected(plan: list[str]) -> tuple[RequestState, tuple[str, ...]]:
    """How a request whose stages do what ``plan`` says ends, and the stages it completed."""
    completed: list[str] = []
    for (name, _), outcome in zip(SEVEN_STAGES, plan, strict=True):
        if outcome == "fail":
            return S.FAILED, tuple(completed)
        if outcome == "cancel":
            return S.CANCELLED, tuple(completed)
        if outcome == "ok":
            completed.append(name)
    return S.COMPLETED, tuple(completed)


# --- a real Redis that goes away mid-run ---------------------------------------------------
# coredis leaves the streams of its failed reconnections to the garbage collector (see
# test_request_store.py); they are collected here, under this filter.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function MemoryObject:pytest.PytestUnraisableExceptionWarning"
)
@pytest.mark.real_time
async def test_requests_go_on_while_redis_is_down_and_are_written_when_it_is_back(
    tmp_path: Path,
) -> None:
    log = Log()
    router = Router(lambda r: "q", {"q": pipeline()})
    with start_redis(tmp_path) as server:
        client = coredis.Redis.from_url(
            server.url, decode_responses=True, connect_timeout=1, stream_timeout=1
        )
        async with client:
            store = RedisRequestStore(client)
            async with open_coordinator(router=router, requests=store, logger=log) as c:
                assert (await c.process(Request(id="before"))).ok
                await anyio.sleep(0.1)
                server.stop()
                with anyio.fail_after(20):
                    for i in range(5):
                        assert (await c.process(Request(id=f"down{i}"))).ok
                    while not log.named("request store failed"):
                        await anyio.sleep(0.05)
                server.start()  # empty: what was written before is gone with it
                with anyio.fail_after(30):
                    while not log.named("request store recovered"):
                        await anyio.sleep(0.05)
            assert len(log.named("request store failed")) == 1
            written = {r.request_id for r in await store.list(state=S.COMPLETED)}
            assert {f"down{i}" for i in range(5)} <= written
        del store, client
        gc.collect()
