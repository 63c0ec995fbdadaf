"""trioflow.redis in one process: the shared bucket, keyed limiter and capacity, on a real Redis.

Every test talks to a real ``redis-server`` (the session's, emptied after each test, or one of
its own that it stops and starts); they run on trio and on asyncio, in real time.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trioflow
import trioflow.redis
from _lifecycle_stages import SEVEN_STAGES
from _redis_server import RedisServer
from trioflow.redis import RedisConnection

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]


async def server_time(redis: RedisConnection) -> float:
    reply: Any = await redis.client.eval("return redis.call('TIME')")
    return int(reply[0]) + int(reply[1]) / 1e6


# --- the import boundary -------------------------------------------------------------------


@pytest.mark.anyio(False)
def test_import_trioflow_loads_no_coredis() -> None:
    program = textwrap.dedent(
        """
        import sys
        import trioflow, trioflow.lifecycle, trioflow.cli
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("coredis", "trioflow.redis"))
        assert not loaded and "trioflow.redis" not in sys.modules, loaded
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(trioflow.__file__).parent.parent)}
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


# --- connect -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"url": "http://localhost"}, ValueError, "url must start with redis://"),
        ({"url": ""}, TypeError, "url must be a non-empty str"),
        ({"url": 6379}, TypeError, "url"),
        ({"url": "redis://x", "timeout": 0}, ValueError, "timeout must be"),
        ({"url": "redis://x", "timeout": "1"}, TypeError, "timeout must be"),
        ({"url": "redis://x", "prefix": 1}, TypeError, "prefix must be a str"),
    ],
)
async def test_connect_checks_its_arguments_before_connecting(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        async with trioflow.redis.connect(**kwargs):
            pytest.fail("connected")


def in_child(mode: str, backend: str) -> list[str]:
    """Run ``redis_child.py MODE`` (a Redis of its own that fails) and return its lines.

    In a process of its own: coredis 6.9 leaves the memory streams of a connection that failed
    to connect unclosed (a ResourceWarning whenever they are collected), which would otherwise
    be reported against whichever test runs then.
    """
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("redis_child.py")), mode, "-", backend],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.anyio(False)
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_connecting_to_nothing_is_a_clear_error_not_a_hang(backend: str) -> None:
    assert in_child("nothing", backend) == ["RedisStateError: redis PING: connection failed"]


async def test_the_blocks_own_exception_and_cancellation_come_out_as_themselves(
    redis_url: str,
) -> None:
    with pytest.raises(KeyError, match="mine"):
        async with trioflow.redis.connect(redis_url):
            raise KeyError("mine")
    with anyio.move_on_after(0.2) as scope:
        async with trioflow.redis.connect(redis_url) as redis:
            cap = redis.capacity("c", total=1, lease=0.5)
            async with cap:
                await anyio.sleep_forever()
    assert scope.cancelled_caught
    async with trioflow.redis.connect(redis_url) as redis:
        # Cancelled with the whole block, the connection could not give the slot back (it was
        # torn down too): the slot's lease frees it.
        cap = redis.capacity("c", total=1, lease=0.5)
        await anyio.sleep(0.5)
        assert (await cap.statistics()).borrowed == 0


async def test_keys_are_named_under_the_prefix(redis_url: str) -> None:
    async with trioflow.redis.connect(redis_url, prefix="app1:") as redis:
        assert redis.key("requests", "r-1") == "app1:requests:r-1"
        assert redis.prefix == "app1:"
        await redis.rate_limiter("llm", rate=1, burst=1).try_acquire()
        assert await redis.client.keys("*") == {"app1:bucket:llm"}


# --- the token bucket ------------------------------------------------------------------------


async def test_the_bucket_gives_its_burst_then_refuses(redis_url: str) -> None:
    async with trioflow.redis.connect(redis_url) as redis:
        bucket = redis.rate_limiter("b", rate=1, burst=3)
        other = redis.rate_limiter("b", rate=1, burst=3)  # the same bucket, by name
        assert [await bucket.try_acquire() for _ in range(2)] == [True, True]
        assert await other.try_acquire() is True
        assert await bucket.try_acquire() is False
        assert not await bucket.try_acquire(0.5)
        stats = bucket.statistics()
        assert (stats.rate, stats.burst, stats.acquired, stats.rejected, stats.waiting) == (
            1.0,
            3.0,
            2,
            2,
            0,
        )
        assert stats.tokens < 0.5
        assert -0.01 < await bucket.tokens() < 0.5


async def test_acquire_sleeps_for_the_deficit_never_less(redis_url: str) -> None:
    async with trioflow.redis.connect(redis_url) as redis:
        bucket = redis.rate_limiter("b", rate=20, burst=2)
        start = await server_time(redis)
        for _ in range(6):
            await bucket.acquire()
        # 2 at once, then one every 0.05 s of the server's clock: the 6th is due at 0.2 s.
        assert await server_time(redis) - start >= 0.2 - 1e-3
        assert bucket.statistics().acquired == 6


async def test_a_cancelled_waiter_gives_its_reservation_back(redis_url: str) -> None:
    async with trioflow.redis.connect(redis_url) as redis:
        bucket = redis.rate_limiter("slow", rate=0.5, burst=1)
        await bucket.acquire()
        with anyio.move_on_after(0.2) as scope:
            await bucket.acquire()  # due in 2 s
        assert scope.cancelled_caught
        assert bucket.statistics().waiting == 0
        # Without the refund the bucket would owe one token more (about -1).
        assert -0.05 < await bucket.tokens() < 0.5
        assert not await bucket.try_acquire()


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda r: r.rate_limiter("b", rate=0, burst=1), ValueError, "rate must be"),
        (lambda r: r.rate_limiter("b", rate=1, burst=float("inf")), ValueError, "burst must be"),
        (lambda r: r.rate_limiter("b", rate="1", burst=1), TypeError, "rate must be"),
        (lambda r: r.rate_limiter("", rate=1, burst=1), TypeError, "name must be"),
        (lambda r: r.keyed_rate_limiter("k", rate=1, burst=1, limits={"x": 1}), TypeError, "pair"),
        (lambda r: r.capacity("c", total=0), ValueError, "total must be"),
        (lambda r: r.capacity("c", total=1, lease=0), ValueError, "lease must be"),
        (lambda r: r.capacity("c", total=True), TypeError, "total must be"),
    ],
)
async def test_factories_check_their_arguments(
    redis_url: str, make: Any, error: type[Exception], message: str
) -> None:
    async with trioflow.redis.connect(redis_url) as redis:
        with pytest.raises(error, match=message):
            make(redis)


async def test_requests_are_checked_before_redis_is_asked(redis_url: str) -> None:
    async with trioflow.redis.connect(redis_url) as redis:
        bucket = redis.rate_limiter("b", rate=1, burst=2)
        with pytest.raises(ValueError, match=r"n must be a number > 0 and <= burst \(2\), got 3"):
            await bucket.try_acquire(3)
        with pytest.raises(TypeError, match="got True"):
            await bucket.acquire(True)
        keyed = redis.keyed_rate_limiter("k", rate=1, burst=2)
        with pytest.raises(TypeError, match="key must be a str, an int or a tuple"):
            await keyed.try_acquire(1.5)
        with pytest.raises(ValueError, match="got 0"):
            await keyed.acquire("alice", 0)
        assert await redis.client.keys("*") == set()


@settings(max_examples=25, deadline=None)
@given(requests=st.lists(st.sampled_from([0.5, 1, 2, 3]), min_size=1, max_size=30))
def test_the_bucket_never_gives_more_than_it_holds(
    redis_server: RedisServer, requests: list[float]
) -> None:
    # Back to back (well within one refill), the tokens given never exceed the burst plus what
    # refilled meanwhile, and a refusal leaves the bucket as it was.
    async def main() -> None:
        prefix = f"p{os.urandom(4).hex()}:"  # a bucket of its own on the session's server
        async with trioflow.redis.connect(redis_server.url, prefix=prefix) as redis:
            bucket = redis.rate_limiter("h", rate=0.01, burst=4)
            start = await server_time(redis)
            taken = 0.0
            for n in requests:
                before = await bucket.tokens()
                if await bucket.try_acquire(n):
                    taken += n
                else:
                    assert before < n
            elapsed = await server_time(redis) - start
            assert taken <= 4 + 0.01 * elapsed + 1e-9

    anyio.run(main)


# --- the keyed limiter -----------------------------------------------------------------------


async def test_keys_have_their_own_buckets_and_classes(redis_url: str) -> None:
    async with trioflow.redis.connect(redis_url) as redis:
        limiter = redis.keyed_rate_limiter("users", rate=1, burst=2, limits={"mcp": (10, 3)})
        assert limiter.limits_for(("alice", "mcp")) == (10.0, 3.0)
        assert limiter.limits_for("alice") == (1.0, 2.0)
        assert [await limiter.try_acquire(("alice", "mcp")) for _ in range(4)] == [
            True,
            True,
            True,
            False,
        ]
        assert [await limiter.try_acquire("alice") for _ in range(3)] == [True, True, False]
        assert await limiter.try_acquire("bob")
        assert await limiter.try_acquire(7)
        await limiter.acquire(("bob", "mcp"))
        stats = limiter.statistics()
        assert (stats.acquired, stats.rejected, stats.waiting) == (8, 2, 0)


async def test_idle_keys_expire_from_redis_once_refilled(redis_url: str) -> None:
    async with trioflow.redis.connect(redis_url) as redis:
        limiter = redis.keyed_rate_limiter("users", rate=4, burst=2)
        for user in range(50):
            assert await limiter.try_acquire(f"user-{user}")
        keys = await redis.client.keys("*")
        assert len(keys) == 50
        ttls = {await redis.client.pttl(key) for key in keys}
        assert 0 < max(ttls) <= 250  # one token refills in 1/4 s: then the key is gone
        await anyio.sleep(0.3)
        assert await redis.client.keys("*") == set()


# --- the capacity --------------------------------------------------------------------------


class Gauge:
    """Counts holders at once and the most ever."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    async def hold(self, seconds: float) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await anyio.sleep(seconds)
        finally:
            self.now -= 1


async def test_the_capacity_is_never_exceeded_and_everyone_gets_a_turn(redis_url: str) -> None:
    async with trioflow.redis.connect(redis_url) as redis:
        cap = redis.capacity("c", total=3, lease=5)
        assert redis.capacity("c", total=3, lease=5) is cap
        with pytest.raises(ValueError, match="exists with total=3"):
            redis.capacity("c", total=4, lease=5)
        gauge = Gauge()
        done: list[int] = []

        async def worker(i: int) -> None:
            async with cap:
                await gauge.hold(0.02)
            done.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(worker, i)
        assert gauge.most == 3
        assert sorted(done) == list(range(20))
        stats = await cap.statistics()
        assert (stats.total, stats.borrowed, stats.waiting, stats.held, stats.lost) == (
            3,
            0,
            0,
            0,
            0,
        )


async def test_a_cancelled_waiter_never_ends_up_holding_a_slot(redis_url: str) -> None:
    async with trioflow.redis.connect(redis_url) as redis:
        cap = redis.capacity("c", total=1, lease=5)
        async with cap:
            with anyio.move_on_after(0.1) as scope:
                await cap.acquire_on_behalf_of("waiter")
            assert scope.cancelled_caught
            stats = await cap.statistics()
            assert (stats.borrowed, stats.waiting, stats.waiting_here, stats.held) == (1, 0, 0, 1)
        # Cancelled at every moment of its round trips: nothing is ever left held or queued.
        for delay in (0, 0.0005, 0.001, 0.002, 0.005):
            with anyio.move_on_after(delay):
                await cap.acquire_on_behalf_of("hasty")
            if "hasty" in repr(cap._held):  # it got the slot before the cancellation
                cap.release_on_behalf_of("hasty")
            await anyio.sleep(0.02)  # the background give-back
            stats = await cap.statistics()
            assert (stats.borrowed, stats.waiting) == (0, 0)


async def test_a_waiter_is_woken_by_a_release_in_another_connection(redis_url: str) -> None:
    async with (
        trioflow.redis.connect(redis_url) as one,
        trioflow.redis.connect(redis_url) as two,
    ):
        held = one.capacity("c", total=1, lease=30)
        wanted = two.capacity("c", total=1, lease=30)
        await held.acquire_on_behalf_of("a")
        got = anyio.Event()

        async def wait() -> None:
            async with wanted:
                got.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(0.1)
            assert not got.is_set()
            assert (await wanted.statistics()).waiting == 1
            held.release_on_behalf_of("a")
            # Woken by the release (Pub/Sub), not by its fallback timer (10 s: a third of 30).
            with anyio.fail_after(2):
                await got.wait()


async def test_the_capacity_is_a_limit_for_batches_workflows_and_managers(redis_url: str) -> None:
    async with trioflow.redis.connect(redis_url) as redis:
        cap = redis.capacity("llm", total=2, lease=5)
        assert isinstance(cap, trioflow.Capacity)
        gauge = Gauge()
        result = await trioflow.run_batch([lambda: gauge.hold(0.02)] * 7, limit=cap)
        assert result.ok
        assert gauge.most == 2

        rm = trioflow.ResourceManager(limit=10, pools={"llm": cap, "tool": 5})
        assert rm.pool_size("llm") == 2
        with pytest.raises(ValueError, match="pool 'llm' is a Capacity made elsewhere"):
            rm.set_pool_size("llm", 3)
        rm.set_pool_size("tool", 6)

        async def call() -> None:
            async with rm.slot("llm", "tool"):
                await gauge.hold(0.02)

        gauge.most = 0
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(call)
        assert gauge.most == 2
        stats = rm.statistics()
        assert (stats.executed, stats.pools["llm"].executed, stats.executing) == (6, 6, 0)

        async def step(ctx: trioflow.Context) -> None:
            await gauge.hold(0.02)

        wf = trioflow.Workflow("w")
        for name in "abcde":
            wf.step(name, step)
        gauge.most = 0
        assert (await trioflow.run_workflow(wf, limit=cap)).ok
        assert gauge.most == 2
        await anyio.sleep(0.02)  # the background give-backs
        assert (await cap.statistics()).borrowed == 0


# --- Redis going away ----------------------------------------------------------------------


@pytest.mark.anyio(False)
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_restarted_server_gives_clear_errors_then_works_again(backend: str) -> None:
    assert in_child("restart", backend) == [
        "RedisStateError: redis token bucket script: connection failed",
        "RedisStateError: redis capacity 'c' acquire: connection failed",
        "StoreError: workflow store in redis: redis list runs: connection failed",
        "restarted: acquired True, slot held 1, runs ()",
    ]


@settings(max_examples=15, deadline=None)
@given(
    total=st.integers(1, 3),
    tasks=st.lists(
        st.tuples(st.sampled_from([0.0, 0.002, 0.01]), st.sampled_from([None, 0.0, 0.003])),
        min_size=1,
        max_size=8,
    ),
)
def test_holders_never_exceed_the_total_and_cancelled_ones_leave_nothing(
    redis_server: RedisServer, total: int, tasks: list[tuple[float, float | None]]
) -> None:
    # Each task holds a slot for a while, or is cancelled (while waiting, or while holding)
    # after a while: never more than the total hold at once, and at the end nothing is held
    # or queued in Redis.
    async def main() -> None:
        prefix = f"p{os.urandom(4).hex()}:"
        async with trioflow.redis.connect(redis_server.url, prefix=prefix) as redis:
            cap = redis.capacity("c", total=total, lease=5)
            gauge = Gauge()

            async def task(hold: float, cancel_after: float | None) -> None:
                with anyio.move_on_after(math.inf if cancel_after is None else cancel_after):
                    async with cap:
                        await gauge.hold(hold)

            async with anyio.create_task_group() as tg:
                for hold, cancel_after in tasks:
                    tg.start_soon(task, hold, cancel_after)
            assert gauge.most <= total
            stats = await cap.statistics()
            assert (stats.borrowed, stats.waiting, stats.held, stats.waiting_here) == (0, 0, 0, 0)

    anyio.run(main)


# --- request state through the connection --------------------------------------------------


async def test_the_connections_request_store_records_requests_under_its_prefix(
    redis_url: str,
) -> None:
    from trioflow.lifecycle import (
        Pipeline,
        ProcessingStatus,
        Request,
        RequestKind,
        RequestState,
        Router,
        Stage,
        open_coordinator,
    )

    async def answer(request: Request) -> str:
        return "done"

    pipeline = Pipeline(
        [Stage(name, state, answer) for name, state in SEVEN_STAGES]  # the whole lifecycle
    )
    router = Router(lambda r: RequestKind.SIMPLE_QUERY, {RequestKind.SIMPLE_QUERY: pipeline})
    async with trioflow.redis.connect(redis_url, prefix="app9:") as redis:
        store = redis.request_store(ttl=60)
        assert isinstance(store, trioflow.redis.RedisRequestStore)
        async with open_coordinator(
            {"enable_metrics": False}, router=router, requests=store
        ) as coordinator:
            request = Request("q", user_id="alice")
            result = await coordinator.process(request)
            assert result.status is ProcessingStatus.SUCCEEDED
        record = await store.load(request.id)
        assert record is not None
        assert (record.state, record.user_id) == (RequestState.COMPLETED, "alice")
        keys = await redis.client.keys("app9:*")  # everything under the connection's prefix
        assert f"app9:requests:id:{request.id}" in keys
        assert all(key.startswith("app9:requests:") for key in keys), keys
        with pytest.raises(ValueError, match="ttl"):
            redis.request_store(ttl=0)
