"""Watching costs: engine logs, retry hooks and the breaker's ratio mode, on trio.

* Breaker: ``await breaker.call(fn)`` on a closed breaker, counting consecutive failures only
  and with the ratio mode (each call also lands in the sliding window's bucket); the floor is
  a bare ``await fn()``.
* Batch logs: many small batches (10 no-op operations, limit 4; and empty ones, where the
  per-batch cost shows most) with ``logger=None`` (the floor), a structlog filtering logger
  at WARNING and a stdlib logger at WARNING (both disabled: the level is asked once per batch
  and nothing is built), and a structlog logger at INFO writing to ``/dev/null`` (two events
  per batch). Figures are per batch.
* Retry hooks: a call that fails once and succeeds at its second try (``initial_delay=0``),
  with no watcher (``log_retries=False``, the floor), with an ``on_retry`` hook that counts,
  with the ``retry scheduled`` event filtered out by structlog's level (WARNING), and with it
  written (INFO, to ``/dev/null``). Figures are per call.

Peers: the floors are the bare forms in the same run; tenacity's own ``before_sleep`` hook is
the peer of ``on_retry`` (a plain ``AsyncRetrying`` with and without it).

Usage: ``python bench/logs.py`` (or ``nox -s bench``); ``BENCH_REPEATS`` sets the repetitions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog

import trioflow
from _harness import Bench, Row

bench = Bench(__file__)

N_CALLS = 200_000
N_BATCHES = 5_000
N_EMPTY = 20_000  # empty batches: the engine's fixed cost, where a per-batch check shows most
N_RETRIES = 5_000


async def noop() -> None:
    return None


def _run(body: Callable[[], Awaitable[None]]) -> None:
    anyio.run(body, backend="trio")


def _configure_structlog(level: int) -> Any:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(open(os.devnull, "w")),  # noqa: SIM115
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger("bench")


# --- breaker ------------------------------------------------------------------------------


@bench.case
def bare(n: int) -> int:
    async def main() -> None:
        fn = noop
        for _ in range(n):
            await fn()

    _run(main)
    return n


def _breaker_loop(n: int, breaker: trioflow.CircuitBreaker) -> int:
    async def main() -> None:
        fn = noop
        for _ in range(n):
            await breaker.call(fn)

    _run(main)
    return n


@bench.case
def breaker_count(n: int) -> int:
    return _breaker_loop(n, trioflow.CircuitBreaker(5, 30))


@bench.case
def breaker_ratio(n: int) -> int:
    return _breaker_loop(
        n,
        trioflow.CircuitBreaker(
            5, 30, failure_ratio=0.5, sampling_duration=30, minimum_throughput=10
        ),
    )


# --- run_batch logs -----------------------------------------------------------------------


def _batches(n: int, logger: Any, size: int) -> int:
    async def main() -> None:
        ops = [noop] * size
        for _ in range(n):
            await trioflow.run_batch(ops, limit=4, logger=logger)

    _run(main)
    return n


def _stdlib_off() -> logging.Logger:
    logger = logging.getLogger("bench")
    logger.setLevel(logging.WARNING)
    return logger


@bench.case
def batch_no_logger(n: int, size: int) -> int:
    return _batches(n, None, size)


@bench.case
def batch_structlog_off(n: int, size: int) -> int:
    return _batches(n, _configure_structlog(logging.WARNING), size)


@bench.case
def batch_stdlib_off(n: int, size: int) -> int:
    return _batches(n, _stdlib_off(), size)


@bench.case
def batch_structlog_on(n: int, size: int) -> int:
    return _batches(n, _configure_structlog(logging.INFO), size)


# --- retry hooks --------------------------------------------------------------------------


def _retried(n: int, policy: trioflow.RetryPolicy) -> int:
    async def main() -> None:
        failed = [False]

        async def once() -> None:
            if not failed[0]:
                failed[0] = True
                raise ConnectionError("down")

        for _ in range(n):
            failed[0] = False
            await policy.call(once)

    _run(main)
    return n


def _policy(**options: Any) -> trioflow.RetryPolicy:
    return trioflow.RetryPolicy(attempts=3, initial_delay=0, max_delay=0, **options)


@bench.case
def retry_unwatched(n: int) -> int:
    return _retried(n, _policy(log_retries=False))


@bench.case
def retry_hook(n: int) -> int:
    seen: list[int] = [0]

    def hook(event: trioflow.RetryEvent) -> None:
        seen[0] += 1

    return _retried(n, _policy(log_retries=False, on_retry=hook))


@bench.case
def retry_logged_off(n: int) -> int:
    _configure_structlog(logging.WARNING)
    return _retried(n, _policy())


@bench.case
def retry_logged_on(n: int) -> int:
    _configure_structlog(logging.INFO)
    return _retried(n, _policy())


def _tenacity(n: int, before_sleep: Any) -> int:
    import tenacity
    from tenacity.asyncio import AsyncRetrying

    async def main() -> None:
        failed = [False]

        async def once() -> None:
            if not failed[0]:
                failed[0] = True
                raise ConnectionError("down")

        for _ in range(n):
            failed[0] = False
            retrying = AsyncRetrying(
                sleep=anyio.sleep,
                stop=tenacity.stop_after_attempt(3),
                retry=tenacity.retry_if_exception_type(ConnectionError),
                before_sleep=before_sleep,
                reraise=True,
            )
            await retrying(once)

    _run(main)
    return n


@bench.case
def peer_tenacity(n: int) -> int:
    return _tenacity(n, None)


@bench.case
def peer_tenacity_before_sleep(n: int) -> int:
    seen = [0]

    def hook(state: Any) -> None:
        seen[0] += 1

    return _tenacity(n, hook)


def plan(run: Callable[..., Row]) -> None:
    group = "breaker: per call, closed (trio)"
    run("bare", label="bare await fn()", floor=True, group=group, n=N_CALLS)
    run("breaker_count", label="CircuitBreaker.call, consecutive count", group=group, n=N_CALLS)
    run("breaker_ratio", label="CircuitBreaker.call, ratio mode too", group=group, n=N_CALLS)

    for size, n in ((10, N_BATCHES), (0, N_EMPTY)):
        group = f"run_batch logs: per batch of {size} (trio)"
        run("batch_no_logger", label="logger=None", floor=True, group=group, n=n, size=size)
        for case, label in (
            ("batch_structlog_off", "structlog filtering, WARNING"),
            ("batch_stdlib_off", "logging.Logger, WARNING"),
            ("batch_structlog_on", "structlog, INFO (2 events)"),
        ):
            run(case, label=label, group=group, n=n, size=size)

    group = "retry: per call failing once (trio)"
    run("retry_unwatched", label="log_retries=False", floor=True, group=group, n=N_RETRIES)
    run("retry_hook", label="on_retry=counter", group=group, n=N_RETRIES)
    run("retry_logged_off", label="retry scheduled, structlog WARNING", group=group, n=N_RETRIES)
    run("retry_logged_on", label="retry scheduled, structlog INFO", group=group, n=N_RETRIES)
    run("peer_tenacity", label="peer: tenacity AsyncRetrying", group=group, n=N_RETRIES)
    run(
        "peer_tenacity_before_sleep",
        label="peer: tenacity AsyncRetrying + before_sleep",
        group=group,
        n=N_RETRIES,
    )


if __name__ == "__main__":
    bench.main(plan, title="Watching: engine logs, retry hooks, the breaker's ratio mode")
