"""One admission shared by several coordinators through a real Redis (``config.shared``)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import trioflow
import trioflow.redis
from _lifecycle_stages import SEVEN_STAGES
from trioflow.lifecycle import (
    ErrorCategory,
    OrchestrationConfig,
    Pipeline,
    ProcessingResult,
    ProcessingStatus,
    Request,
    Router,
    Stage,
    load_config,
    open_coordinator,
)

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]

CHILD = Path(__file__).with_name("shared_admission_child.py")

_names = itertools.count()


def config(url: str, **settings: Any) -> OrchestrationConfig:
    """A configuration sharing its admission through ``url``, under a name of its own."""
    shared = {"url": url, "name": f"test{next(_names)}", "lease": 1.0}
    shared.update(settings.pop("shared", {}))
    return load_config({"enable_metrics": False, "shared": shared, **settings})


async def _done(request: Request) -> str:
    return "ok"


def router(stage: Callable[[Request], Awaitable[Any]]) -> Router:
    """A router to the seven-stage pipeline whose ``process`` stage is ``stage``."""
    stages = [
        Stage(name, state, stage if name == "process" else _done) for name, state in SEVEN_STAGES
    ]
    return Router(lambda r: "q", {"q": Pipeline(stages)})


class Inside:
    """Counts the requests inside the stage, overall and per user, and the most seen."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()

    async def stage(self, request: Request) -> str:
        for key in ("*", request.user_id):
            self.now[key] += 1
            self.most[key] = max(self.most[key], self.now[key])
        try:
            await anyio.sleep(0.01)
        finally:
            for key in ("*", request.user_id):
                self.now[key] -= 1
        return "ok"


async def test_two_coordinators_with_one_config_share_both_limits(redis_url: str) -> None:
    cfg = config(redis_url, max_concurrency=3, per_user_limit=2)
    inside = Inside()
    results: list[ProcessingResult] = []
    async with (
        open_coordinator(cfg, router=router(inside.stage)) as one,
        open_coordinator(cfg, router=router(inside.stage)) as two,
    ):
        batches = [
            [Request(i, user_id=f"u{i % 2}") for i in range(start, start + 12)]
            for start in (0, 100)
        ]
        async with anyio.create_task_group() as tg:
            for coordinator, batch in zip((one, two), batches, strict=True):

                async def run(c: Any = coordinator, b: list[Request] = batch) -> None:
                    results.extend(await c.process_many(b))

                tg.start_soon(run)
        assert one.statistics().users == two.statistics().users == 0
    assert [r.status for r in results] == [ProcessingStatus.SUCCEEDED] * 24
    # Each coordinator alone would have let 3 in at once, 2 per user: together, no more.
    assert inside.most["*"] <= 3
    assert inside.most["u0"] <= 2
    assert inside.most["u1"] <= 2
    assert inside.most["*"] >= 2  # and the limits were used


async def test_shared_rate_limits_bound_the_requests_of_every_coordinator(redis_url: str) -> None:
    cfg = config(
        redis_url,
        rate_limits={
            "per_user": {"rate": 5, "burst": 2},
            "per_source": {"cli": {"rate": 5, "burst": 3}},
            "when_limited": "fail",
        },
    )
    inside = Inside()
    async with (
        open_coordinator(cfg, router=router(inside.stage)) as one,
        open_coordinator(cfg, router=router(inside.stage)) as two,
    ):
        start = anyio.current_time()
        alice = [
            await c.process(Request(i, user_id="alice")) for i in range(6) for c in (one, two)
        ]
        cli = [
            await c.process(Request(i, user_id=f"user{i}", source="cli"))
            for i in range(6)
            for c in (one, two)
        ]
        elapsed = anyio.current_time() - start
    for results, burst in ((alice, 2), (cli, 3)):
        passed = [r for r in results if r.status is ProcessingStatus.SUCCEEDED]
        refused = [r for r in results if r.status is ProcessingStatus.FAILED]
        assert burst <= len(passed) <= burst + 5 * elapsed
        assert {r.category for r in refused} == {ErrorCategory.RESOURCE_EXHAUSTION}
        assert len(passed) + len(refused) == 12


async def holding(
    coordinator: Any, request: Request, tg: anyio.abc.TaskGroup, results: list[ProcessingResult]
) -> None:
    async def run() -> None:
        results.append(await coordinator.process(request))

    tg.start_soon(run)


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.005)


async def borrowed(redis: trioflow.redis.RedisConnection, cfg: OrchestrationConfig) -> int:
    """Slots held in Redis now, of the shared global limit (expired leases left out)."""
    key = redis.key("cap", f"{cfg.shared.name}:admission:all", "h")
    live = (
        "local t = redis.call('TIME') "
        "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
        "return redis.call('ZCOUNT', KEYS[1], now + 1, '+inf')"
    )
    reply: Any = await redis.client.eval(live, keys=[key])
    return int(reply)


async def test_queue_depth_timeout_and_cancel_while_waiting_for_a_shared_slot(
    redis_url: str,
) -> None:
    cfg = config(redis_url, max_concurrency=1, max_queue_depth=1, default_timeout=None)
    release = anyio.Event()

    async def stage(request: Request) -> str:
        if request.payload == "hold":
            await release.wait()
        return "ok"

    results: list[ProcessingResult] = []
    async with (
        trioflow.redis.connect(redis_url) as redis,
        open_coordinator(cfg, router=router(stage), shared=redis) as one,
        open_coordinator(cfg, router=router(stage), shared=redis) as two,
        anyio.create_task_group() as tg,
    ):
        await holding(one, Request("hold", id="holder"), tg, results)
        await until(lambda: one.statistics().in_flight == 1)
        await holding(two, Request("wait", id="waiter"), tg, results)
        await until(lambda: two.statistics().queue_depth == 1)
        assert await borrowed(redis, cfg) == 1
        # The queue of the second coordinator is full: refused at once.
        refused = await two.process(Request("more", id="refused"))
        assert refused.category is ErrorCategory.RESOURCE_EXHAUSTION
        assert "max_queue_depth=1" in str(refused.error)
        # A request past its timeout while waiting for the shared slot fails TIMEOUT.
        late = await one.process(Request("late", id="late"), timeout=0.2)
        assert late.category is ErrorCategory.TIMEOUT
        # Cancelled while waiting: nothing held, nothing left in line.
        assert two.cancel("waiter")
        await until(lambda: len(results) == 1)
        assert results[0].status is ProcessingStatus.CANCELLED
        assert two.statistics().queue_depth == 0
        release.set()
        await until(lambda: len(results) == 2)
        after = await two.process(Request("after", id="after"))
        assert after.status is ProcessingStatus.SUCCEEDED
        await until(lambda: one.statistics().in_flight == two.statistics().in_flight == 0)
        with anyio.fail_after(10):
            while await borrowed(redis, cfg):
                await anyio.sleep(0.01)
    assert results[1].status is ProcessingStatus.SUCCEEDED


async def test_a_busy_user_waits_for_their_own_slot_holding_no_global_one(redis_url: str) -> None:
    cfg = config(redis_url, max_concurrency=2, per_user_limit=1)
    release = anyio.Event()

    async def stage(request: Request) -> str:
        if request.payload == "hold":
            await release.wait()
        return "ok"

    results: list[ProcessingResult] = []
    async with (
        open_coordinator(cfg, router=router(stage)) as one,
        open_coordinator(cfg, router=router(stage)) as two,
        anyio.create_task_group() as tg,
    ):
        await holding(one, Request("hold", user_id="busy"), tg, results)
        await until(lambda: one.statistics().in_flight == 1)
        await holding(two, Request("wait", user_id="busy"), tg, results)
        await until(lambda: two.statistics().queue_depth == 1)
        assert two.statistics().users == 1
        # The busy user's second request waits for its own slot, so another user gets in.
        other = await two.process(Request("go", user_id="other"))
        assert other.status is ProcessingStatus.SUCCEEDED
        release.set()
    assert [r.status for r in results] == [ProcessingStatus.SUCCEEDED] * 2


def in_child(mode: str, backend: str) -> list[str]:
    """Run ``shared_admission_child.py MODE`` (a Redis that fails) and return its lines."""
    done = subprocess.run(
        [sys.executable, str(CHILD), mode, "-", backend],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_an_unreachable_redis_fails_the_opening_before_anything_runs(backend: str) -> None:
    assert in_child("unreachable", backend) == ["RedisStateError: redis PING: connection failed"]


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_lost_connection_fails_the_waiting_request_and_holds_nothing(backend: str) -> None:
    assert in_child("lost", backend) == [
        "waiter failed dependency RedisStateError",  # the next round trip of its wait failed
        "new failed dependency RedisStateError",
        "holder succeeded None",  # its stage needs no Redis; its slot's release is logged
        "in_flight 0 queue_depth 0 users 0",
        "back",  # once Redis is back, requests are admitted again
    ]


async def test_shared_must_be_shared_limits() -> None:
    with pytest.raises(TypeError, match="shared must be SharedLimits"):
        async with open_coordinator(router=router(Inside().stage), shared=object()):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_a_redis_connection_is_shared_limits(redis_url: str) -> None:
    async with trioflow.redis.connect(redis_url) as redis:
        assert isinstance(redis, trioflow.SharedLimits)
        users = redis.keyed_capacity("k", total=1, lease=1)
        assert isinstance(users, trioflow.SharedCapacity)
        assert redis.keyed_capacity("k", total=1, lease=1) is users
        with pytest.raises(ValueError, match="exists with total=1"):
            redis.keyed_capacity("k", total=2, lease=1)
        rate = redis.keyed_rate_limiter("r", rate=1, burst=1)
        assert isinstance(rate, trioflow.SharedRateLimiter)
        assert await users.try_acquire("alice", "a")
        assert users.keys == 1
        assert not await users.try_acquire("alice", "b")
        assert users.keys == 1  # "b" took nothing and left
        with pytest.raises(RuntimeError, match="already holds"):
            await users.try_acquire("alice", "a")
        with pytest.raises(TypeError, match="key must be a str"):
            await users.acquire(1, "c")  # type: ignore[arg-type]
        users.release("alice", "a")
        assert users.keys == 0  # an idle key is dropped
        with pytest.raises(RuntimeError, match="holds no slot"):
            users.release("alice", "a")
        async with anyio.create_task_group() as tg:
            await users.acquire("bob", "x")
            tg.start_soon(users.acquire, "bob", "y")
            await until(lambda: users.keys == 1)
            users.release("bob", "x")  # "y" is woken and takes it
        users.release("bob", "y")
        assert users.keys == 0


def test_a_redis_url_without_the_redis_client_names_the_extra(redis_url: str) -> None:
    program = textwrap.dedent(
        f"""
        import sys
        sys.modules["coredis"] = None  # as if trioflow[redis] were not installed
        import anyio
        from trioflow import ConfigError
        from trioflow.lifecycle import Pipeline, Router, Stage, open_coordinator
        from _lifecycle_stages import SEVEN_STAGES

        async def done(request):
            return "ok"

        async def main():
            config = {{"shared": {{"url": {redis_url!r}}}}}
            pipeline = Pipeline([Stage(n, s, done) for n, s in SEVEN_STAGES])
            router = Router(lambda r: "q", {{"q": pipeline}})
            try:
                async with open_coordinator(config, router=router):
                    print("opened")
            except ConfigError as exc:
                print(exc.problems)

        anyio.run(main)
        """
    )
    path = os.pathsep.join((str(Path(trioflow.__file__).parent.parent), str(CHILD.parent)))
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "shared.url" in done.stdout
    assert "pip install 'trioflow[redis]'" in done.stdout


def test_import_trioflow_loads_no_redis_client() -> None:
    program = (
        "import sys, trioflow, trioflow.lifecycle\n"
        "from trioflow.lifecycle import load_config\n"
        "load_config({'shared': {'url': 'redis://127.0.0.1:1/0'}})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'coredis'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(trioflow.__file__).parent.parent)}
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


async def test_slots_given_back_faster_than_a_round_trip_never_pile_up(redis_url: str) -> None:
    # One request after the other: each gives its two slots back (in the background) as the
    # next one asks for its own. The give-backs must keep up, or the global slots run out.
    async with trioflow.redis.connect(redis_url) as redis:
        users = redis.keyed_capacity("users", total=2, lease=10)
        everyone = redis.keyed_capacity("all", total=10, lease=10)
        for i in range(300):
            borrower = object()
            assert await users.try_acquire(f"user{i % 7}", borrower)
            assert await everyone.try_acquire("all", borrower), f"full at request {i}"
            everyone.release("all", borrower)
            users.release(f"user{i % 7}", borrower)


async def test_an_idle_users_keys_expire_in_redis(redis_url: str) -> None:
    async with trioflow.redis.connect(redis_url) as redis:
        users = redis.keyed_capacity("idle", total=1, lease=1)
        async with anyio.create_task_group() as tg:
            await users.acquire("alice", "a")
            tg.start_soon(users.acquire, "alice", "b")  # queued: waiter keys are written
            await until(lambda: users.keys == 1)
            await anyio.sleep(0.05)
            users.release("alice", "a")
        users.release("alice", "b")
        assert users.keys == 0
        with anyio.fail_after(10):  # the give-back is sent in the background
            while await redis.client.exists([redis.key("cap", "idle:alice", "h")]):
                await anyio.sleep(0.01)
        found = [k async for k in redis.client.scan_iter(match=redis.key("cap", "idle:alice*"))]
        assert found  # the queue's keys...
        for key in found:  # ...expire within two leases: nothing idle stays in Redis
            assert 0 < await redis.client.pttl(key) <= 2000
