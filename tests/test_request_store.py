"""The request store contract: Memory, SQLite (a real file) and Redis (a real server) alike."""

from __future__ import annotations

import gc
import math
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import attrs
import coredis
import pytest

from _redis_server import start_redis
from trioflow import RunOwner, StoreError
from trioflow.lifecycle import (
    ErrorCategory,
    MemoryRequestStore,
    RequestRecord,
    RequestState,
    RequestStore,
    SQLiteRequestStore,
)
from trioflow.redis._requests import RedisRequestStore

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]

S = RequestState
TTL = 60.0


def now() -> datetime:
    return datetime.fromtimestamp(time.time(), UTC)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def ghost() -> RunOwner:
    """An owner on this host whose process has exited."""
    return attrs.evolve(RunOwner.current(), pid=dead_pid(), process_started=None)


def record(request_id: str, state: RequestState = S.PROCESSING, **fields: Any) -> RequestRecord:
    at = fields.pop("at", None) or now()
    values: dict[str, Any] = {
        "request_id": request_id,
        "state": state,
        "user_id": "alice",
        "source": "cli",
        "kind": "query",
        "stages": ("validate", "plan"),
        "created_at": at,
        "updated_at": at,
        "owner": RunOwner.current(),
    }
    values.update(fields)
    return RequestRecord(**values)


async def redis_client(url: str, *, decode: bool = True) -> coredis.Redis[Any]:
    if decode:
        return coredis.Redis.from_url(
            url, decode_responses=True, connect_timeout=2, stream_timeout=2
        )
    return coredis.Redis.from_url(url, connect_timeout=2, stream_timeout=2)


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-bytes"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RequestStore]:
    kind: str = request.param
    if kind == "memory":
        yield MemoryRequestStore(ttl=TTL)
    elif kind == "sqlite":
        async with SQLiteRequestStore(tmp_path / "requests.db", ttl=TTL) as sqlite_store:
            yield sqlite_store
    else:
        url: str = request.getfixturevalue("redis_url")
        async with await redis_client(url, decode=kind == "redis") as client:
            yield RedisRequestStore(client, ttl=TTL)


def ids(records: tuple[RequestRecord, ...]) -> list[str]:
    return [r.request_id for r in records]


async def test_a_record_comes_back_as_it_was_saved(store: RequestStore) -> None:
    full = record(
        "r1",
        S.FAILED,
        category=ErrorCategory.TIMEOUT,
        reason="TimeoutError: too slow",
        stages=("a", "b c", "ü"),
    )
    bare = record("r2", S.RECEIVED, kind=None, stages=(), owner=None)
    await store.save([full, bare])
    assert await store.load("r1") == full
    assert await store.load("r2") == bare
    assert await store.load("r3") is None
    assert not bare.finished
    assert full.finished
    assert not full.interrupted


async def test_a_save_replaces_the_record_and_moves_it_between_states(store: RequestStore) -> None:
    first = record("r1", S.RECEIVED)
    await store.save([first])
    later = attrs.evolve(
        first,
        state=S.COMPLETED,
        stages=("a", "b", "c"),
        updated_at=first.updated_at + timedelta(1),
    )
    await store.save([later])
    assert await store.load("r1") == later
    assert await store.list(state=S.RECEIVED) == ()
    assert await store.list(state=S.COMPLETED) == (later,)
    assert await store.list(user_id="alice") == (later,)
    await store.save([])  # nothing to write is fine


async def test_list_filters_by_state_and_user_newest_first(store: RequestStore) -> None:
    base = now()
    records = [
        record(f"r{i}", state, user_id=user, at=base + timedelta(seconds=i))
        for i, (state, user) in enumerate(
            [
                (S.COMPLETED, "alice"),
                (S.FAILED, "bob"),
                (S.PROCESSING, "alice"),
                (S.COMPLETED, "bob"),
                (S.CANCELLED, "alice"),
            ]
        )
    ]
    await store.save(records)
    assert ids(await store.list()) == ["r4", "r3", "r2", "r1", "r0"]
    assert ids(await store.list(state=S.COMPLETED)) == ["r3", "r0"]
    assert ids(await store.list(user_id="alice")) == ["r4", "r2", "r0"]
    assert ids(await store.list(state=S.COMPLETED, user_id="bob")) == ["r3"]
    assert await store.list(state=S.VALIDATED) == ()
    assert await store.list(user_id="carol") == ()


async def test_a_finished_request_expires_ttl_after_it_ended(store: RequestStore) -> None:
    old = now() - timedelta(seconds=TTL + 1)
    await store.save(
        [
            record("done", S.COMPLETED, at=old),
            record("failed", S.FAILED, at=old, category=ErrorCategory.INTERNAL),
            record("recent", S.COMPLETED, at=now() - timedelta(seconds=TTL - 30)),
            record("in-flight", S.PROCESSING, at=old),  # unfinished: kept until it finishes
        ]
    )
    assert await store.load("done") is None
    assert await store.load("failed") is None
    assert await store.load("recent") is not None
    assert await store.load("in-flight") is not None
    assert sorted(ids(await store.list())) == ["in-flight", "recent"]
    assert ids(await store.list(state=S.COMPLETED)) == ["recent"]
    assert ids(await store.list(user_id="alice", state=S.FAILED)) == []


async def test_fail_interrupted_marks_the_requests_of_owners_that_are_gone(
    store: RequestStore,
) -> None:
    me = RunOwner.current()
    released = RunOwner.current()
    dead = ghost()
    never = (
        RunOwner.current()
    )  # a coordinator that never registered (or whose registration expired)
    for owner in (me, released, dead):
        await store.renew_owner(owner, 60)
    await store.release_owner(released)
    base = now()
    await store.save(
        [
            record("mine", S.PROCESSING, owner=me, at=base),
            record("released", S.PLANNED, owner=released, at=base + timedelta(seconds=1)),
            record("dead", S.RECEIVED, owner=dead, at=base + timedelta(seconds=2)),
            record("never", S.TOOL_EXECUTION, owner=never, at=base + timedelta(seconds=3)),
            record("nobody", S.VALIDATED, owner=None, at=base + timedelta(seconds=4)),
            record("finished", S.COMPLETED, owner=dead, at=base),
        ]
    )
    marked = await store.fail_interrupted()
    assert ids(marked) == ["nobody", "never", "dead", "released"]
    for r in marked:
        assert r.state is S.FAILED
        assert r.category is ErrorCategory.INTERNAL
        assert r.reason == "interrupted"
        assert r.interrupted
        assert r.finished
        assert r.updated_at >= base
        assert await store.load(r.request_id) == r
    dead_record = await store.load("dead")
    assert dead_record is not None
    assert dead_record.owner == dead
    assert dead_record.stages == ("validate", "plan")
    loaded_mine = await store.load("mine")
    assert loaded_mine is not None
    assert loaded_mine.state is S.PROCESSING
    assert ids(await store.list(state=S.FAILED)) == ["nobody", "never", "dead", "released"]
    assert await store.fail_interrupted() == ()


async def test_a_registration_that_is_not_renewed_expires(store: RequestStore) -> None:
    owner = RunOwner.current()
    await store.renew_owner(owner, 0.05)
    await store.save([record("r", S.PROCESSING, owner=owner)])
    await anyio.sleep(0.2)
    assert ids(await store.fail_interrupted()) == ["r"]


async def test_wrong_arguments_are_refused(store: RequestStore) -> None:
    with pytest.raises(TypeError, match="records must be RequestRecords"):
        await store.save(["r1"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="state must be a RequestState or None"):
        await store.list(state="completed")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="user_id must be a str or None"):
        await store.list(user_id=1)  # type: ignore[arg-type]


# --- two stores on one file or one server: one marks each interrupted request ---------------
@pytest.fixture(params=["sqlite", "redis"])
async def twin_stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[RequestStore, RequestStore]]:
    if request.param == "sqlite":
        path = tmp_path / "requests.db"
        async with SQLiteRequestStore(path) as one, SQLiteRequestStore(path) as two:
            yield one, two
    else:
        url: str = request.getfixturevalue("redis_url")
        async with await redis_client(url) as c1, await redis_client(url) as c2:
            yield RedisRequestStore(c1), RedisRequestStore(c2)


async def test_two_processes_recovering_at_once_mark_each_request_once(
    twin_stores: tuple[RequestStore, RequestStore],
) -> None:
    one, two = twin_stores
    dead = ghost()
    await one.save([record(f"r{i}", S.PROCESSING, owner=dead) for i in range(40)])
    found: list[tuple[RequestRecord, ...]] = []

    async def recover(store: RequestStore) -> None:
        found.append(await store.fail_interrupted())

    async with anyio.create_task_group() as tg:
        for store in (one, two, one, two):
            tg.start_soon(recover, store)
    marked = [r.request_id for batch in found for r in batch]
    assert sorted(marked) == sorted(f"r{i}" for i in range(40))
    assert len(await two.list(state=S.FAILED)) == 40


# --- construction ---------------------------------------------------------------------------
@pytest.mark.parametrize("ttl", [0, -1.0, math.nan, math.inf])
def test_ttl_out_of_range_is_a_value_error(ttl: float, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ttl must be a finite number > 0"):
        MemoryRequestStore(ttl=ttl)
    with pytest.raises(ValueError, match="ttl must be"):
        SQLiteRequestStore(tmp_path / "r.db", ttl=ttl)


def test_wrong_types_are_type_errors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="ttl must be"):
        MemoryRequestStore(ttl="60")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="path must be a str or a path"):
        SQLiteRequestStore(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="busy_timeout must be"):
        SQLiteRequestStore(tmp_path / "r.db", busy_timeout=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"client must be a coredis\.Redis"):
        RedisRequestStore("redis://localhost")  # type: ignore[arg-type]
    client: coredis.Redis[str] = coredis.Redis(decode_responses=True)
    with pytest.raises(TypeError, match="prefix must be a non-empty str"):
        RedisRequestStore(client, prefix="")
    with pytest.raises(ValueError, match="ttl must be"):
        RedisRequestStore(client, ttl=0)
    assert isinstance(RedisRequestStore(client), RequestStore)
    assert isinstance(MemoryRequestStore(), RequestStore)
    assert isinstance(SQLiteRequestStore(tmp_path / "r.db"), RequestStore)
    assert not isinstance(object(), RequestStore)


def test_import_trioflow_loads_no_redis_client() -> None:
    code = (
        "import sys, trioflow, trioflow.lifecycle; "
        "print(sorted(m for m in sys.modules if m.startswith(('coredis', 'trioflow.redis'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- SQLite ---------------------------------------------------------------------------------
async def test_sqlite_records_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "requests.db"
    saved = record("r1", S.CONTEXT_GATHERING)
    async with SQLiteRequestStore(path) as store:
        await store.save([saved])
    async with SQLiteRequestStore(str(path)) as again:
        assert await again.load("r1") == saved
        assert again.path == path
        assert again.ttl == 3600.0
        assert repr(again) == f"<SQLiteRequestStore {str(path)!r}>"


async def test_sqlite_refuses_another_database_and_a_closed_store(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER)")
    conn.close()
    async with SQLiteRequestStore(path) as store:
        with pytest.raises(StoreError, match="other tables, not a trioflow request store"):
            await store.load("r1")
    with pytest.raises(StoreError, match="is closed"):
        await store.load("r1")


async def test_sqlite_a_malformed_row_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    async with SQLiteRequestStore(path) as store:
        await store.save([record("r1")])
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE requests SET stages = '{\"a\": 1}', created_at = 'x'")
        conn.close()
        with pytest.raises(StoreError, match="cannot read request 'r1'"):
            await store.load("r1")
        with pytest.raises(StoreError, match="cannot read"):
            await store.list()


# --- Redis ----------------------------------------------------------------------------------
async def test_redis_keeps_memory_bounded(redis_url: str) -> None:
    async with await redis_client(redis_url) as client:
        store = RedisRequestStore(client, ttl=TTL, prefix="app:")
        assert store.prefix == "app:"
        assert store.ttl == TTL
        await store.save([record("r1", S.PROCESSING)])
        assert await client.ttl("app:id:r1") == -1  # in flight: no expiry
        assert await client.ttl("app:user:alice") == -1
        await store.save([record("r1", S.COMPLETED)])
        keys = sorted(await client.keys("*"))
        assert keys == ["app:id:r1", "app:state:completed", "app:user:alice"]
        for key in keys:  # every key expires, the sets with their last member
            assert 0 < await client.ttl(key) <= TTL
        # A finished request written long after it ended expires at once, and the sets with it.
        await store.save([record("r1", S.COMPLETED, at=now() - timedelta(seconds=TTL + 1))])
        assert not await client.keys("*")
        await store.renew_owner(RunOwner.current(), 5)
        (owner_key,) = await client.keys("app:owner:*")
        assert 0 < await client.ttl(owner_key) <= 5


async def test_redis_a_malformed_hash_is_a_store_error(redis_url: str) -> None:
    async with await redis_client(redis_url) as client:
        store = RedisRequestStore(client)
        await store.save([record("r1")])
        await client.hset("trioflow:request:id:r1", {"state": "sleeping"})
        with pytest.raises(StoreError, match="malformed"):
            await store.load("r1")
        with pytest.raises(StoreError, match="malformed"):
            await store.list(user_id="alice")


# coredis makes a connection's anyio memory streams before it connects and closes them only
# once it ran: each failed reconnection leaves two for the garbage collector, which warns.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function MemoryObject:pytest.PytestUnraisableExceptionWarning"
)
async def test_redis_a_server_that_is_gone_gives_a_store_error_not_a_hang(
    tmp_path: Path,
) -> None:
    with start_redis(tmp_path) as server:
        async with await redis_client(server.url) as client:
            store = RedisRequestStore(client)
            await store.save([record("r1")])
            server.stop()
            with anyio.fail_after(30):
                with pytest.raises(StoreError, match="on Redis: cannot write"):
                    await store.save([record("r2")])
                with pytest.raises(StoreError, match="on Redis: cannot read"):
                    await store.list()
            server.start()  # restarted empty (no persistence): the store works again
            with anyio.fail_after(30):
                await store.save([record("r3")])
                assert ids(await store.list()) == ["r3"]
    # The connections it left behind are collected here, under this test's warning filter.
    del store, client
    gc.collect()
