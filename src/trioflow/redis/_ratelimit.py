"""Token buckets shared through Redis: one bucket, or one bucket per key.

The bucket is kept the way GCRA ("generic cell rate algorithm") keeps it: one number in
Redis, the theoretical arrival time ``tat`` at which the bucket will be full again. One Lua
script reads the server's clock (``TIME``), decides and writes, atomically, so the clocks of
the machines sharing the bucket never matter: across any number of processes at most
``burst + rate * t`` acquisitions succeed in any window of ``t`` seconds of the server's time.

``acquire()`` reserves its tokens in one round trip (the bucket goes into debt) and sleeps
once, for the deficit the script computed: no polling, and waiters are served in the order
their reservations reached Redis. A waiter cancelled before its reservation matures gives the
tokens back (a second script, which gives back only a reservation not yet due). The key
expires when the bucket is full again (a full bucket and no key are the same), so idle keys
of a keyed limiter cost no memory in Redis.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Hashable, Mapping
from typing import Any, final

import anyio
import anyio.lowlevel
import attrs
from coredis.commands.script import Script

from .. import KeyedRateLimiter
from .._checks import check_name, check_number
from ._session import RedisStateError, Session

__all__ = (
    "RedisKeyedRateLimiter",
    "RedisKeyedRateLimiterStatistics",
    "RedisTokenBucket",
    "RedisTokenBucketStatistics",
)

# ARGV: rate, burst, n, mode ("try", "reserve", "refund", "peek"), due (for "refund").
# Returns {granted 0/1, wait seconds, tokens left, due time}, numbers as strings (Lua numbers
# in replies are truncated to integers).
_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local mode = ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tau = burst / rate
local granted = 0
local wait = 0
local due = now
local changed = false
if mode == 'refund' then
  if now < tonumber(ARGV[5]) then
    tat = math.max(now, tat - n / rate)
    changed = true
  end
elseif mode ~= 'peek' then
  local after = tat + n / rate
  due = after - tau
  if due <= now then
    tat = after
    granted = 1
    due = now
    changed = true
  else
    wait = due - now
    if mode == 'reserve' then
      tat = after
      granted = 1
      changed = true
    end
  end
end
if changed then
  local ttl = math.ceil((tat - now) * 1000)
  if ttl > 0 then
    redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', ttl)
  else
    redis.call('DEL', KEYS[1])
  end
end
return {granted, string.format('%.17g', wait), string.format('%.17g', (tau - (tat - now)) * rate),
  string.format('%.17g', due)}
"""

_SCRIPT: Script[str] = Script(script=_BUCKET)


def _check_request(n: object, burst: float) -> float:
    if isinstance(n, bool) or not isinstance(n, int | float):
        raise TypeError(f"n must be a number > 0 and <= burst ({burst:g}), got {n!r}")
    if not 0 < n <= burst:
        raise ValueError(f"n must be a number > 0 and <= burst ({burst:g}), got {n!r}")
    return float(n)


def _positive(value: object, name: str) -> float:
    return check_number(value, name, minimum=0, strict=True)


@final
class _Bucket:
    """One bucket's key and limits, and the script calls on it (shared by the two classes)."""

    __slots__ = ("burst", "keys", "limits", "rate", "redis")

    def __init__(self, redis: Session, key: str, rate: float, burst: float) -> None:
        self.redis = redis
        self.keys = (key,)
        self.rate = rate
        self.burst = burst
        self.limits = (repr(rate), repr(burst))  # the script's first arguments, made once

    async def run(self, n: float, mode: str, due: float = 0.0) -> tuple[bool, float, float, float]:
        args = (*self.limits, repr(n), mode, repr(due))
        client = self.redis.client
        reply: Any = await self.redis.call(
            "token bucket script", lambda: _SCRIPT(keys=self.keys, args=args, client=client)
        )
        return bool(reply[0]), float(reply[1]), float(reply[2]), float(reply[3])

    async def acquire(self, n: float) -> float:
        """Reserve ``n`` tokens and sleep until they are due; return the tokens left.

        The round trip is shielded (see ``Session.call``), so that its answer is known; a
        cancellation during the sleep gives the reservation back.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        _, wait, tokens, due = await self.run(n, "reserve")
        if wait > 0:
            try:
                await anyio.sleep(wait)
            except BaseException:
                # Unrefunded tokens (Redis gone) only make the limit stricter for a while.
                with anyio.CancelScope(shield=True), contextlib.suppress(RedisStateError):
                    await self.run(n, "refund", due)
                raise
        return tokens


@final
@attrs.frozen(kw_only=True)
class RedisTokenBucketStatistics:
    """A snapshot of a :class:`RedisTokenBucket` (the fields of ``TokenBucketStatistics``).

    Attributes:
        rate: Tokens added per second.
        burst: The most tokens the bucket holds.
        tokens: Tokens in the shared bucket as of this process's last round trip (negative
            while reservations of waiters are due).
        waiting: This process's tasks waiting in :meth:`RedisTokenBucket.acquire`.
        acquired: This process's successful acquisitions.
        rejected: This process's ``try_acquire`` calls that returned ``False``.
    """

    rate: float
    burst: float
    tokens: float
    waiting: int
    acquired: int
    rejected: int


@final
class RedisTokenBucket:
    """A token bucket in Redis, shared by every process that uses its name.

    Made by ``redis.rate_limiter(name, rate=R, burst=B)``. It has the methods of
    ``trioflow.TokenBucket``, asynchronous because each is a Redis round trip::

        llm = redis.rate_limiter("llm", rate=50, burst=100)
        await llm.acquire()            # waits for the deficit, once
        if not await llm.try_acquire():
            ...                        # over the shared rate: shed the request

    Exact across processes and machines: at most ``burst + rate * t`` acquisitions succeed in
    any window of ``t`` seconds (of the Redis server's clock). Every process must use the same
    rate and burst for one name.

    Args:
        redis: The connection.
        name: The bucket's name.
        rate: Tokens added per second, a finite number > 0.
        burst: The most tokens the bucket holds, a finite number > 0.

    Raises:
        TypeError: ``name`` is not a non-empty string, or ``rate`` or ``burst`` is not a
                number.
        ValueError: ``rate`` or ``burst`` is not a finite number > 0.
    """

    __slots__ = ("_acquired", "_bucket", "_name", "_rejected", "_tokens", "_waiting")

    def __init__(self, redis: Session, name: str, *, rate: float, burst: float) -> None:
        check_name(name, "name")
        rate = _positive(rate, "rate")
        burst = _positive(burst, "burst")
        self._name = name
        self._bucket = _Bucket(redis, redis.key("bucket", name), rate, burst)
        self._tokens = burst
        self._waiting = 0
        self._acquired = 0
        self._rejected = 0

    def __repr__(self) -> str:
        b = self._bucket
        return f"RedisTokenBucket({self._name!r}, rate={b.rate!r}, burst={b.burst!r})"

    @property
    def name(self) -> str:
        """The bucket's name."""
        return self._name

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._bucket.rate

    @property
    def burst(self) -> float:
        """The most tokens the bucket holds, and the largest single request."""
        return self._bucket.burst

    async def try_acquire(self, n: float = 1) -> bool:
        """Take ``n`` tokens if the shared bucket has them now; never waits for tokens.

        Args:
            n: Tokens to take, > 0 and at most ``burst``.

        Returns:
            ``True`` if the tokens were taken, ``False`` otherwise (nothing is taken).

        Raises:
            TypeError: ``n`` is not a number.
            ValueError: ``n`` is not in (0, burst].
            RedisStateError: Redis could not be reached or did not answer in time.
        """
        n = _check_request(n, self._bucket.burst)
        granted, _, self._tokens, _ = await self._bucket.run(n, "try")
        if granted:
            self._acquired += 1
        else:
            self._rejected += 1
        return granted

    async def acquire(self, n: float = 1) -> None:
        """Take ``n`` tokens, waiting (once, for the computed deficit) until they are there.

        Waiters of every process are served in the order their requests reached Redis. A
        waiter cancelled while waiting takes nothing.

        Args:
            n: Tokens to take, > 0 and at most ``burst``.

        Raises:
            TypeError: ``n`` is not a number.
            ValueError: ``n`` is not in (0, burst].
            RedisStateError: Redis could not be reached or did not answer in time.
        """
        n = _check_request(n, self._bucket.burst)
        self._waiting += 1
        try:
            self._tokens = await self._bucket.acquire(n)
        finally:
            self._waiting -= 1
        self._acquired += 1

    async def tokens(self) -> float:
        """Return the tokens in the shared bucket now (negative while reservations wait).

        Raises:
            RedisStateError: Redis could not be reached or did not answer in time.
        """
        _, _, self._tokens, _ = await self._bucket.run(1.0, "peek")
        return self._tokens

    def statistics(self) -> RedisTokenBucketStatistics:
        """Return a snapshot of this process's use of the bucket.

        ``tokens`` is what the last answer from Redis said (call :meth:`tokens` for the
        current figure); ``waiting``, ``acquired`` and ``rejected`` count this process's calls.

        Returns:
            A frozen :class:`RedisTokenBucketStatistics`.
        """
        b = self._bucket
        return RedisTokenBucketStatistics(
            rate=b.rate,
            burst=b.burst,
            tokens=min(b.burst, self._tokens),
            waiting=self._waiting,
            acquired=self._acquired,
            rejected=self._rejected,
        )


def _encode_key(key: object) -> str:
    """Return a key's text in Redis: JSON of a string, an int or a tuple of those."""

    def plain(part: object) -> bool:
        return isinstance(part, str) or (isinstance(part, int) and not isinstance(part, bool))

    if plain(key) or (isinstance(key, tuple) and key and all(plain(p) for p in key)):
        return json.dumps(key, separators=(",", ":"))
    raise TypeError(f"key must be a str, an int or a tuple of those, got {key!r}")


@final
@attrs.frozen(kw_only=True)
class RedisKeyedRateLimiterStatistics:
    """A snapshot of this process's use of a :class:`RedisKeyedRateLimiter`.

    Attributes:
        waiting: This process's tasks waiting in :meth:`RedisKeyedRateLimiter.acquire`.
        acquired: This process's successful acquisitions over all keys.
        rejected: This process's ``try_acquire`` calls that returned ``False``.
    """

    waiting: int
    acquired: int
    rejected: int


@final
class RedisKeyedRateLimiter:
    """One shared token bucket per key, e.g. per user or per ``(user, kind)``, in Redis.

    Made by ``redis.keyed_rate_limiter(name, rate=R, burst=B, limits={...})``; the shared
    counterpart of ``trioflow.KeyedRateLimiter``, with its key classes: ``limits`` maps a
    class (by default the second element of a tuple key, ``("alice", "mcp")`` -> ``"mcp"``) to
    its ``(rate, burst)``; other keys use ``rate`` and ``burst``::

        per_user = redis.keyed_rate_limiter("users", rate=5, burst=10, limits={"mcp": (20, 40)})
        await per_user.acquire(("alice", "mcp"))

    Each key's bucket is exact across processes, as for :class:`RedisTokenBucket`. A key's
    bucket expires from Redis once it has refilled, so memory stays bounded by the keys active
    within one refill period. Keys are strings, ints or tuples of those.

    Args:
        redis: The connection.
        name: The limiter's name.
        rate: Default tokens per second per key, a finite number > 0.
        burst: Default bucket capacity per key, a finite number > 0.
        limits: ``{class: (rate, burst)}`` overrides per key class.
        classify: Maps a key to its class, as for ``trioflow.KeyedRateLimiter``.

    Raises:
        TypeError: An argument has the wrong type (``name`` must be a non-empty string).
        ValueError: A rate or burst is not a finite number > 0.
    """

    __slots__ = ("_acquired", "_classes", "_name", "_redis", "_rejected", "_waiting")

    def __init__(
        self,
        redis: Session,
        name: str,
        *,
        rate: float,
        burst: float,
        limits: Mapping[Hashable, tuple[float, float]] | None = None,
        classify: Callable[[Hashable], Hashable] | None = None,
    ) -> None:
        check_name(name, "name")
        # The local limiter checks the limits and classifies keys, the same way; its own
        # buckets are never used.
        options: dict[str, Any] = {} if classify is None else {"classify": classify}
        self._classes = KeyedRateLimiter[Hashable](rate, burst, limits=limits, **options)
        self._redis = redis
        self._name = name
        self._waiting = 0
        self._acquired = 0
        self._rejected = 0

    def __repr__(self) -> str:
        c = self._classes
        return f"RedisKeyedRateLimiter({self._name!r}, rate={c.rate!r}, burst={c.burst!r})"

    @property
    def name(self) -> str:
        """The limiter's name."""
        return self._name

    def limits_for(self, key: Hashable) -> tuple[float, float]:
        """Return the ``(rate, burst)`` that applies to ``key``.

        Args:
            key: A key.

        Returns:
            The class override from ``limits`` if the key's class has one, else the defaults.
        """
        return self._classes.limits_for(key)

    def _bucket(self, key: Hashable, n: object) -> tuple[_Bucket, float]:
        text = _encode_key(key)
        rate, burst = self.limits_for(key)
        checked = _check_request(n, burst)
        return _Bucket(
            self._redis, self._redis.key("keyed", self._name, text), rate, burst
        ), checked

    async def try_acquire(self, key: Hashable, n: float = 1) -> bool:
        """Take ``n`` tokens from ``key``'s shared bucket if it has them now; never waits.

        Args:
            key: The key, e.g. ``"alice"`` or ``("alice", "mcp")``.
            n: Tokens to take, > 0 and at most the key's burst.

        Returns:
            ``True`` if the tokens were taken, ``False`` otherwise.

        Raises:
            TypeError: ``key`` is not a string, an int or a tuple of those, or ``n`` is not a
                number.
            ValueError: ``n`` is not in (0, burst].
            RedisStateError: Redis could not be reached or did not answer in time.
        """
        bucket, checked = self._bucket(key, n)
        granted, _, _, _ = await bucket.run(checked, "try")
        if granted:
            self._acquired += 1
        else:
            self._rejected += 1
        return granted

    async def acquire(self, key: Hashable, n: float = 1) -> None:
        """Take ``n`` tokens from ``key``'s shared bucket, waiting (once) if needed.

        Args:
            key: The key.
            n: Tokens to take, > 0 and at most the key's burst.

        Raises:
            TypeError: ``key`` or ``n`` has the wrong type.
            ValueError: ``n`` is not in (0, burst].
            RedisStateError: Redis could not be reached or did not answer in time.
        """
        bucket, checked = self._bucket(key, n)
        self._waiting += 1
        try:
            await bucket.acquire(checked)
        finally:
            self._waiting -= 1
        self._acquired += 1

    def statistics(self) -> RedisKeyedRateLimiterStatistics:
        """Return a snapshot of this process's use of the limiter.

        Returns:
            A frozen :class:`RedisKeyedRateLimiterStatistics`.
        """
        return RedisKeyedRateLimiterStatistics(
            waiting=self._waiting, acquired=self._acquired, rejected=self._rejected
        )
