"""Shared limits and a workflow store on Redis, for several processes on several machines.

Install with ``pip install 'trioflow[redis]'`` (the coredis client, which runs on trio and on
asyncio). ``async with trioflow.redis.connect(url) as redis:`` opens the connection; from it:

* ``redis.rate_limiter(name, rate=R, burst=B)``: one token bucket shared by every process
  that uses the name (:class:`RedisTokenBucket`);
* ``redis.keyed_rate_limiter(name, rate=R, burst=B, limits={...})``: one shared bucket per
  key (:class:`RedisKeyedRateLimiter`);
* ``redis.capacity(name, total=N, lease=SECONDS)``: a capacity limiter shared by every
  process, accepted wherever trioflow takes a limit (:class:`RedisCapacity`);
* ``redis.keyed_capacity(name, total=N, lease=SECONDS)``: one shared capacity per key (per
  user), made on use and dropped when idle (:class:`RedisKeyedCapacity`);
* ``redis.store()``: a ``WorkflowStore`` for durable runs (:class:`RedisStore`);
* ``redis.request_store(ttl=3600)``: request state, one hash per request with an expiry
  (:class:`RedisRequestStore`), for ``open_coordinator(..., requests=...)``.
"""

from __future__ import annotations

from ._capacity import RedisCapacity as RedisCapacity
from ._capacity import RedisCapacityStatistics as RedisCapacityStatistics
from ._capacity import RedisKeyedCapacity as RedisKeyedCapacity
from ._connection import RedisConnection as RedisConnection
from ._connection import connect as connect
from ._ratelimit import RedisKeyedRateLimiter as RedisKeyedRateLimiter
from ._ratelimit import RedisKeyedRateLimiterStatistics as RedisKeyedRateLimiterStatistics
from ._ratelimit import RedisTokenBucket as RedisTokenBucket
from ._ratelimit import RedisTokenBucketStatistics as RedisTokenBucketStatistics
from ._requests import RedisRequestStore as RedisRequestStore
from ._session import RedisStateError as RedisStateError
from ._store import RedisStore as RedisStore

__all__ = (
    "connect",
    "RedisConnection",
    "RedisStateError",
    "RedisTokenBucket",
    "RedisTokenBucketStatistics",
    "RedisKeyedRateLimiter",
    "RedisKeyedRateLimiterStatistics",
    "RedisCapacity",
    "RedisCapacityStatistics",
    "RedisKeyedCapacity",
    "RedisStore",
    "RedisRequestStore",
)


def _fix_module_names() -> None:
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("trioflow.redis._"):
            obj.__module__ = "trioflow.redis"


_fix_module_names()
del _fix_module_names
