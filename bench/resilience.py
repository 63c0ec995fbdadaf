"""Resilience layers: the cost per call of each one, against a bare call, on trio and asyncio.

Every row awaits the same no-op async function N times, wrapped in one layer (or a
composition); the floor row awaits it bare. "layer us" in the target check is row minus floor:
what the layer adds to each call. None of the rows waits (the rate limits are far above the
call rate and the breaker stays closed), which is the fast path the target is about: at most
2 us per layer on trio for the rate limiter and the breaker.

Peers, on asyncio only (they do not run on trio): aiolimiter's ``AsyncLimiter`` (a leaky
bucket) and purgatory's async circuit breaker, when installed.

Usage: ``python bench/resilience.py`` (or ``nox -s bench``); ``BENCH_REPEATS`` sets the
repetitions per case (default 5), each in a fresh process.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

import anyio

import trioflow
from _harness import Bench, Row

bench = Bench(__file__)

N = 200_000
N_SLOW = 20_000  # rows whose layer costs tens of microseconds (task groups, tenacity)
TARGET_US = 2.0
BIG = 1e12  # a rate/burst no benchmark loop can exhaust


async def noop() -> None:
    return None


def _run(backend: str, body: Callable[[], Awaitable[None]]) -> None:
    anyio.run(body, backend=backend)


@bench.case
def bare(n: int, backend: str) -> int:
    async def main() -> None:
        fn = noop
        for _ in range(n):
            await fn()

    _run(backend, main)
    return n


@bench.case
def bucket_try_acquire(n: int, backend: str) -> int:
    async def main() -> None:
        fn, bucket = noop, trioflow.TokenBucket(BIG, BIG)
        for _ in range(n):
            if bucket.try_acquire():
                await fn()

    _run(backend, main)
    return n


@bench.case
def bucket_acquire(n: int, backend: str) -> int:
    async def main() -> None:
        fn, bucket = noop, trioflow.TokenBucket(BIG, BIG)
        for _ in range(n):
            await bucket.acquire()
            await fn()

    _run(backend, main)
    return n


@bench.case
def keyed_acquire(n: int, backend: str) -> int:
    async def main() -> None:
        fn = noop
        # 1000 tokens/s: a key's bucket never refills to full between its uses (so it stays
        # in memory), and a burst of 1e12 never runs dry.
        limiter: trioflow.KeyedRateLimiter[tuple[str, str]] = trioflow.KeyedRateLimiter(
            1000, BIG, limits={"mcp": (2000, BIG)}
        )
        keys = [(f"user{i}", "mcp" if i % 2 else "cli") for i in range(64)]
        for i in range(n):
            await limiter.acquire(keys[i & 63])
            await fn()

    _run(backend, main)
    return n


@bench.case
def keyed_new_key(n: int, backend: str) -> int:
    async def main() -> None:
        fn = noop
        limiter: trioflow.KeyedRateLimiter[int] = trioflow.KeyedRateLimiter(BIG, BIG)
        for i in range(n):
            await limiter.acquire(i)  # a new bucket each call; the idle ones are forgotten
            await fn()

    _run(backend, main)
    return n


@bench.case
def breaker_async_with(n: int, backend: str) -> int:
    async def main() -> None:
        fn, breaker = noop, trioflow.CircuitBreaker(5, 30)
        for _ in range(n):
            async with breaker:
                await fn()

    _run(backend, main)
    return n


@bench.case
def breaker_call(n: int, backend: str) -> int:
    async def main() -> None:
        fn, breaker = noop, trioflow.CircuitBreaker(5, 30)
        for _ in range(n):
            await breaker.call(fn)

    _run(backend, main)
    return n


@bench.case
def reference_fail_after(n: int, backend: str) -> int:
    async def main() -> None:
        fn = noop
        for _ in range(n):
            with anyio.fail_after(60):
                await fn()

    _run(backend, main)
    return n


@bench.case
def resilient_rate_breaker(n: int, backend: str) -> int:
    async def main() -> None:
        fn = trioflow.resilient(
            noop, rate=trioflow.TokenBucket(BIG, BIG), breaker=trioflow.CircuitBreaker(5, 30)
        )
        for _ in range(n):
            await fn()

    _run(backend, main)
    return n


@bench.case
def resilient_with_timeout(n: int, backend: str) -> int:
    async def main() -> None:
        fn = trioflow.resilient(
            noop,
            rate=trioflow.TokenBucket(BIG, BIG),
            breaker=trioflow.CircuitBreaker(5, 30),
            timeout=60,
        )
        for _ in range(n):
            await fn()

    _run(backend, main)
    return n


@bench.case
def resilient_all_but_hedge(n: int, backend: str) -> int:
    async def fallback(exc: Exception) -> None:
        return None

    async def main() -> None:
        fn = trioflow.resilient(
            noop,
            rate=trioflow.TokenBucket(BIG, BIG),
            breaker=trioflow.CircuitBreaker(5, 30),
            retry=trioflow.RetryPolicy(attempts=3, initial_delay=0.1),
            timeout=60,
            fallback=fallback,
        )
        for _ in range(n):
            await fn()

    _run(backend, main)
    return n


@bench.case
def hedge_one_attempt_done(n: int, backend: str) -> int:
    async def main() -> None:
        for _ in range(n):
            await trioflow.hedge(noop, delay=1.0)

    _run(backend, main)
    return n


@bench.case
def peer_aiolimiter(n: int, backend: str) -> int:
    from aiolimiter import AsyncLimiter

    async def main() -> None:
        fn, limiter = noop, AsyncLimiter(BIG, 1)
        for _ in range(n):
            async with limiter:
                await fn()

    _run(backend, main)
    return n


@bench.case
def peer_purgatory(n: int, backend: str) -> int:
    from purgatory import AsyncCircuitBreakerFactory

    async def main() -> None:
        factory = AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)
        breaker = await factory.get_breaker("bench")
        fn = noop
        for _ in range(n):
            async with breaker:
                await fn()

    _run(backend, main)
    return n


def _have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


LAYERS = [
    ("bucket_try_acquire", "TokenBucket.try_acquire()", N, True),
    ("bucket_acquire", "await TokenBucket.acquire()", N, True),
    ("keyed_acquire", "await KeyedRateLimiter.acquire(key), 64 keys", N, True),
    ("keyed_new_key", "KeyedRateLimiter.acquire(new key) (bucket made+forgotten)", N, False),
    ("breaker_async_with", "async with CircuitBreaker (closed)", N, True),
    ("breaker_call", "await CircuitBreaker.call(fn) (closed)", N, True),
    ("resilient_rate_breaker", "resilient(rate, breaker)", N, False),
    ("reference_fail_after", "reference: with anyio.fail_after(60)", N, False),
    ("resilient_with_timeout", "resilient(rate, breaker, timeout)", N, False),
    (
        "resilient_all_but_hedge",
        "resilient(rate, breaker, retry, timeout, fallback)",
        N_SLOW,
        False,
    ),
    ("hedge_one_attempt_done", "hedge(fn, delay=1) (task group per call)", N_SLOW, False),
]


CHECKS: list[str] = []


def plan(run: Callable[..., Row]) -> None:
    checks = CHECKS
    for backend in ("trio", "asyncio"):
        group = f"{backend}: per call, no waiting"
        floor = run(
            "bare",
            label=f"bare await fn() ({backend})",
            floor=True,
            group=group,
            n=N,
            backend=backend,
        )
        for case, label, n, targeted in LAYERS:
            row = run(case, label=label, group=group, n=n, backend=backend)
            extra = row.per_op_us - floor.per_op_us
            if backend == "trio" and targeted:
                verdict = "PASS" if extra <= TARGET_US else "MISS"
                checks.append(
                    f"- {verdict}: {label} adds {extra:.2f} us per call on trio "
                    f"(target <= {TARGET_US:g} us)"
                )
            elif backend == "trio":
                checks.append(f"- info: {label} adds {extra:.2f} us per call on trio")
        if backend == "asyncio":
            peers: list[tuple[str, str, str]] = [
                ("aiolimiter", "peer_aiolimiter", "peer: async with aiolimiter.AsyncLimiter"),
                ("purgatory", "peer_purgatory", "peer: async with purgatory breaker (closed)"),
            ]
            for module, case, label in peers:
                if _have(module):
                    run(case, label=label, group=group, n=N, backend=backend)
                else:
                    print(f"  skipping {label}: {module} is not installed", file=sys.stderr)


if __name__ == "__main__":
    bench.main(plan, title="Resilience: cost per call of each layer")
    if CHECKS:
        print("### Targets\n")
        print("\n".join(CHECKS))
        print()
