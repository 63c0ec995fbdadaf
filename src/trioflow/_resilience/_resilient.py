"""One call wrapped in several resilience strategies, in one documented order.

From the outside in::

    fallback -> retry -> circuit breaker -> hedge -> rate limit -> timeout -> fn

* **fallback** is outermost: the last resort once every other strategy has given up, so it
  sees whatever escapes them (as in Polly, where fallback wraps everything).
* **retry** wraps the breaker: every attempt asks the breaker, so a circuit that opens during
  the retries stops them at once (``CircuitOpenError`` is not retried unless the policy's
  ``on`` says so). This is the order of Polly's and Microsoft's standard pipelines.
* **circuit breaker** wraps hedging: the breaker judges one logical attempt - a hedged attempt
  that succeeds through its backup is a success, and when every hedged call fails the breaker
  counts one failure, not several; an open circuit launches no hedged calls at all.
* **hedge** wraps the rate limit, so each hedged call takes its own token: the dependency
  never sees more than the rate, and a backup cancelled while waiting for its token spends
  nothing.
* **rate limit** is charged per call that reaches ``fn``, retries and backups included: those
  are real load on the dependency. With a :class:`~trioflow.KeyedRateLimiter`, ``rate_key``
  picks the bucket from the call's arguments (per user, per tenant). (To throttle incoming
  requests once each, call the limiter at the entrance instead.)
* **timeout** is innermost, per call of ``fn``: it bounds the dependency, not the wait for a
  token; it raises the builtin ``TimeoutError``, which the default retry policy retries.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, ParamSpec, TypeVar

import anyio

from .._checks import (
    NotAwaitableError,
    check_async_callable,
    check_timeout,
    describe,
    is_awaitable,
    not_awaitable,
)
from .._retry import RetryPolicy
from ._breaker import CircuitBreaker, protect
from ._hedge import check_attempts, check_delay
from ._hedge import hedge as _hedge
from ._ratelimit import KeyedRateLimiter, TokenBucket

__all__ = ("resilient",)

P = ParamSpec("P")
T = TypeVar("T")


def _check_type(name: str, value: object, kind: type) -> None:
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__} or None, got {describe(value)}")


def resilient(
    fn: Callable[P, Awaitable[T]],
    *,
    rate: TokenBucket | KeyedRateLimiter[Any] | None = None,
    rate_key: Callable[P, Hashable] | None = None,
    breaker: CircuitBreaker | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    hedge: float | None = None,
    hedge_attempts: int = 2,
    fallback: Callable[[Exception], Awaitable[T]] | None = None,
) -> Callable[P, Awaitable[T]]:
    """Wrap an async function in the resilience strategies given, in one fixed order.

    The order, outermost first, is fallback -> retry -> circuit breaker -> hedge -> rate
    limit -> timeout -> ``fn``; the module documentation explains why. Strategies left out
    cost nothing. The result is an async function taking the same arguments as ``fn``, so it
    can be a batch operation (``fn`` with no arguments) or a workflow step (``fn(ctx)``)::

        call_model = resilient(
            ask_model,
            rate=TokenBucket(rate=5, burst=10),
            breaker=CircuitBreaker(failure_threshold=5, reset_timeout=30),
            retry=RetryPolicy(attempts=3, initial_delay=1),
            timeout=20,
            fallback=lambda exc: cached_answer(),
        )
        answer = await call_model(prompt)

    Share one ``rate`` bucket and one ``breaker`` between every function that calls the
    same dependency. To rate-limit per user (or tenant, or request type), pass a
    :class:`~trioflow.KeyedRateLimiter` and a ``rate_key`` that names the key from the call's
    arguments::

        per_user = resilient(
            ask_model,
            rate=KeyedRateLimiter(rate=1, burst=5),
            rate_key=lambda user, prompt: (user, "llm"),
        )
        answer = await per_user("alice", prompt)

    Args:
        fn: The async function to protect.
        rate: A :class:`~trioflow.TokenBucket`, or a :class:`~trioflow.KeyedRateLimiter`
            with ``rate_key``; each call of ``fn`` takes one token (waiting for it).
        rate_key: With a keyed limiter (and only then), a function called with ``fn``'s
            arguments that returns the key whose bucket the call draws from.
        breaker: A circuit breaker; each attempt goes through it.
        retry: A retry policy; each attempt is retried as it says.
        timeout: Seconds each call of ``fn`` may take (``TimeoutError`` past it); None or
            ``math.inf`` for no limit.
        hedge: Hedging delay in seconds: start another call of ``fn`` each time this passes
            without a result (see :func:`~trioflow.hedge`); None for no hedging.
        hedge_attempts: The most calls of ``fn`` per hedged attempt, an int >= 1.
        fallback: ``async def fallback(exc) -> value``, called with the exception when
            everything else failed; its value is returned instead. Cancellation and other
            ``BaseException`` s never reach it.

    Returns:
        An async function with ``fn``'s signature.

    A callable that can only be judged by calling it (a lambda) is judged by its result:
    one that cannot be awaited raises ``TypeError`` from the call, and no strategy retries
    it, counts it as a failure, hedges it or hands it to ``fallback``.

    Raises:
        TypeError: If ``fn`` or ``fallback`` is not callable or is a plain ``def`` function
            (refused here, at decoration), a strategy has the wrong type, or ``rate_key`` is
            missing with a keyed limiter (or given without one).
        ValueError: If ``timeout``, ``hedge`` or ``hedge_attempts`` is out of range.
    """
    check_async_callable(fn, "fn")
    if rate is not None and not isinstance(rate, TokenBucket | KeyedRateLimiter):
        raise TypeError(f"rate must be a TokenBucket, a KeyedRateLimiter or None, got {rate!r}")
    if isinstance(rate, KeyedRateLimiter):
        if not callable(rate_key):
            raise TypeError(
                "rate_key must be a callable taking fn's arguments when rate is a "
                f"KeyedRateLimiter, got {rate_key!r}"
            )
    elif rate_key is not None:
        raise TypeError(f"rate_key needs rate to be a KeyedRateLimiter, got rate={rate!r}")
    _check_type("breaker", breaker, CircuitBreaker)
    _check_type("retry", retry, RetryPolicy)
    timeout = check_timeout(timeout)
    if hedge is not None:
        check_delay(hedge, "hedge")
    check_attempts(hedge_attempts, "hedge_attempts")
    if fallback is not None:
        check_async_callable(fallback, "fallback", "an async callable or None")

    call: Callable[P, Awaitable[T]] = fn

    if not inspect.iscoroutinefunction(fn):
        # Judged by its result (a lambda returning a coroutine is valid), once per call.
        unjudged = fn

        async def judged(*args: P.args, **kwargs: P.kwargs) -> T:
            awaitable = unjudged(*args, **kwargs)
            if not is_awaitable(awaitable):
                raise not_awaitable("fn", awaitable)
            return await awaitable

        call = judged

    if timeout is not None:
        seconds = timeout
        timed_inner = call

        async def timed(*args: P.args, **kwargs: P.kwargs) -> T:
            with anyio.fail_after(seconds):
                return await timed_inner(*args, **kwargs)

        call = timed

    if isinstance(rate, TokenBucket):
        bucket = rate
        limited_inner = call

        async def limited(*args: P.args, **kwargs: P.kwargs) -> T:
            await bucket.acquire()
            return await limited_inner(*args, **kwargs)

        call = limited
    elif isinstance(rate, KeyedRateLimiter):
        assert rate_key is not None
        limiter, key_of = rate, rate_key
        keyed_inner = call

        async def keyed(*args: P.args, **kwargs: P.kwargs) -> T:
            await limiter.acquire(key_of(*args, **kwargs))
            return await keyed_inner(*args, **kwargs)

        call = keyed

    if hedge is not None:
        delay, attempts = hedge, hedge_attempts
        hedged_inner = call

        async def hedged(*args: P.args, **kwargs: P.kwargs) -> T:
            return await _hedge(
                functools.partial(hedged_inner, *args, **kwargs),
                delay=delay,
                max_attempts=attempts,
            )

        call = hedged

    if breaker is not None:
        call = protect(breaker, call)

    if retry is not None:
        policy = retry
        retried_inner = call

        async def retried(*args: P.args, **kwargs: P.kwargs) -> T:
            return await policy.call(functools.partial(retried_inner, *args, **kwargs))

        call = retried

    if fallback is not None:
        rescue = fallback
        rescued_inner = call

        async def rescued(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return await rescued_inner(*args, **kwargs)
            except NotAwaitableError:
                raise  # the caller's bug, not a failure to rescue
            except Exception as exc:
                awaitable = rescue(exc)
                if not is_awaitable(awaitable):
                    raise not_awaitable("fallback", awaitable) from exc
                return await awaitable

        call = rescued

    if call is fn:
        # Always hand back a coroutine function of our own (callers may inspect it).
        bare = call

        async def direct(*args: P.args, **kwargs: P.kwargs) -> T:
            return await bare(*args, **kwargs)

        call = direct

    return functools.wraps(fn)(call)
