"""Token-bucket rate limiting: one bucket, or one bucket per key with bounded memory.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second. The state is
kept the way GCRA ("generic cell rate algorithm") keeps it: an anchor time at which the bucket
was full and the tokens consumed since then. The moment ``n`` tokens will be there is then a
closed formula, ``anchor + (consumed + n - burst) / rate``, so a waiter computes its deadline
once and sleeps once - no polling, and exact in virtual time (100 acquisitions at 10/s with a
burst of 5 end at exactly 9.5 s).

Waiters are served first come, first served: a request for many tokens is not starved by a
stream of small ones, because nobody may take tokens while someone is queued.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Generic, TypeVar, final

import anyio
import anyio.lowlevel
import attrs

from .._backend import checkpoint_if_cancelled, current_time
from .._checks import check_int, check_number

__all__ = (
    "KeyedRateLimiter",
    "KeyedRateLimiterStatistics",
    "TokenBucket",
    "TokenBucketStatistics",
)

K = TypeVar("K", bound=Hashable)
Clock = Callable[[], float]

# How many of the least recently used buckets a new key looks at to forget idle ones, and how
# far an eviction at max_keys searches for a full (losslessly forgettable) bucket.
_SWEEP = 2
_EVICTION_SCAN = 8


def _positive(name: str, value: object) -> float:
    return check_number(value, name, minimum=0, strict=True)


def _check_request(n: float, burst: float) -> None:
    kind = type(n)
    if (kind is int or kind is float) and 0 < n <= burst:
        return
    if not isinstance(n, bool) and isinstance(n, int | float) and 0 < n <= burst:
        return  # a subclass of int or float
    raise ValueError(f"n must be a number > 0 and <= burst ({burst:g}), got {n!r}")


@attrs.frozen(kw_only=True)
class TokenBucketStatistics:
    """A snapshot of a :class:`TokenBucket`.

    Attributes:
        rate: Tokens added per second.
        burst: The most tokens the bucket holds.
        tokens: Tokens available now (may be fractional).
        waiting: Tasks queued in :meth:`TokenBucket.acquire`.
        acquired: Successful acquisitions (``acquire`` and ``try_acquire``).
        rejected: ``try_acquire`` calls that returned ``False``.
    """

    rate: float
    burst: float
    tokens: float
    waiting: int
    acquired: int
    rejected: int


def _positive_field(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    _positive(attribute.alias or attribute.name, value)


def _clock_or_default(clock: Clock | None) -> Clock:
    if clock is None:
        return current_time
    if not callable(clock):
        raise TypeError(f"clock must be a callable returning seconds, got {clock!r}")
    return clock


@final
@attrs.define(eq=False, repr=False, on_setattr=attrs.setters.NO_OP)
class TokenBucket:
    """A token bucket: ``burst`` tokens at most, refilled at ``rate`` tokens per second.

    The bucket starts full. :meth:`acquire` waits (cancellably, in arrival order) for tokens;
    :meth:`try_acquire` takes them only if that needs no wait::

        bucket = TokenBucket(rate=10, burst=5)
        await bucket.acquire()          # the first 5 are immediate, then one every 0.1 s
        if not bucket.try_acquire():
            ...                         # over the rate: shed the request instead

    When tokens are available and nobody is queued, :meth:`acquire` takes them without
    yielding to the scheduler (like anyio's ``Lock(fast_acquire=True)``); it still raises at
    once if the surrounding scope is cancelled.

    Args:
        rate: Tokens added per second, a finite number > 0.
        burst: Capacity of the bucket, a finite number > 0; also the largest single request.
        clock: The time source in seconds. Defaults to ``anyio.current_time`` (the running
            event loop's clock, virtual in tests). A custom clock must advance in seconds
            alongside the event loop's, because :meth:`acquire` sleeps on the event loop.

    Raises:
        TypeError: If ``rate`` or ``burst`` is not a number.
        ValueError: If ``rate`` or ``burst`` is not a finite number > 0.
    """

    _rate: float = attrs.field(alias="rate", validator=_positive_field)
    _burst: float = attrs.field(alias="burst", validator=_positive_field)
    _clock: Clock = attrs.field(
        default=None, kw_only=True, converter=_clock_or_default, repr=False
    )
    # The bucket was full at _anchor and _consumed tokens were taken since: tokens(t) =
    # min(burst, burst + (t - _anchor) * rate - _consumed). None until first used, because the
    # default clock needs a running event loop.
    _anchor: float | None = attrs.field(default=None, init=False, repr=False)
    _consumed: float = attrs.field(default=0.0, init=False, repr=False)
    _lock: anyio.Lock | None = attrs.field(default=None, init=False, repr=False)
    _waiting: int = attrs.field(default=0, init=False, repr=False)
    _acquired: int = attrs.field(default=0, init=False, repr=False)
    _rejected: int = attrs.field(default=0, init=False, repr=False)

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate!r}, burst={self._burst!r})"

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._rate

    @property
    def burst(self) -> float:
        """The most tokens the bucket holds, and the largest single request."""
        return self._burst

    def _check(self, n: float) -> None:
        _check_request(n, self._burst)

    def _take(self, n: float) -> bool:
        """Take ``n`` tokens if they are there now and nobody is queued."""
        return self._take_at(n, self._clock())

    def _take_at(self, n: float, now: float) -> bool:
        """Take ``n`` tokens if they are there at ``now`` and nobody is queued."""
        if self._waiting:
            return False
        anchor = self._anchor
        if anchor is None or (now - anchor) * self._rate >= self._consumed:
            # Full (n <= burst was checked): re-anchor, which keeps the arithmetic exact.
            self._anchor = now
            self._consumed = n
        elif self._burst + (now - anchor) * self._rate - self._consumed >= n:
            self._consumed += n
        else:
            return False
        self._acquired += 1
        return True

    def _tokens(self, now: float) -> float:
        """Return the tokens available at ``now``, re-anchoring when the bucket is full."""
        anchor = self._anchor
        if anchor is None or (now - anchor) * self._rate >= self._consumed:
            # Full: a fresh anchor keeps the arithmetic exact and the numbers small.
            self._anchor = now
            self._consumed = 0.0
            return self._burst
        return self._burst + (now - anchor) * self._rate - self._consumed

    def _is_full(self, now: float) -> bool:
        anchor = self._anchor
        return self._waiting == 0 and (
            anchor is None or (now - anchor) * self._rate >= self._consumed
        )

    def try_acquire(self, n: float = 1) -> bool:
        """Take ``n`` tokens if they are available now and nobody is queued; never waits.

        Args:
            n: Tokens to take, > 0 and at most ``burst``.

        Returns:
            ``True`` if the tokens were taken, ``False`` otherwise (nothing is taken).

        Raises:
            ValueError: If ``n`` is not a number in (0, burst].
        """
        self._check(n)
        if self._take(n):
            return True
        self._rejected += 1
        return False

    async def acquire(self, n: float = 1) -> None:
        """Take ``n`` tokens, waiting until they are available.

        Waiters are served in arrival order. Each computes when its tokens will be there and
        sleeps once until then. A waiter cancelled while waiting takes nothing.

        Args:
            n: Tokens to take, > 0 and at most ``burst``.

        Raises:
            ValueError: If ``n`` is not a number in (0, burst].
        """
        kind = type(n)
        if not ((kind is int or kind is float) and 0 < n <= self._burst):
            self._check(n)
        await checkpoint_if_cancelled()
        now = self._clock()
        if not self._take_at(n, now):
            await self._acquire_queued(n)

    async def _acquire_queued(self, n: float) -> None:
        if self._lock is None:
            self._lock = anyio.Lock()
        self._waiting += 1
        try:
            async with self._lock:
                # Everyone ahead of us has taken their tokens; nobody else can take any while
                # we hold the lock (the fast paths see _waiting > 0), so one sleep is enough.
                now = self._clock()
                if self._tokens(now) < n:
                    assert self._anchor is not None
                    ready = self._anchor + (self._consumed + n - self._burst) / self._rate
                    await anyio.sleep(max(0.0, ready - now))
                else:
                    await anyio.lowlevel.checkpoint()
                self._consumed += n
                self._acquired += 1
        finally:
            self._waiting -= 1

    def statistics(self) -> TokenBucketStatistics:
        """Return a snapshot of the bucket's state and counters.

        Returns:
            A frozen :class:`TokenBucketStatistics`.
        """
        now = self._clock()
        anchor = self._anchor
        if anchor is None:
            tokens = self._burst
        else:
            tokens = min(self._burst, self._burst + (now - anchor) * self._rate - self._consumed)
        return TokenBucketStatistics(
            rate=self._rate,
            burst=self._burst,
            tokens=tokens,
            waiting=self._waiting,
            acquired=self._acquired,
            rejected=self._rejected,
        )


@attrs.frozen(kw_only=True)
class KeyedRateLimiterStatistics:
    """A snapshot of a :class:`KeyedRateLimiter`.

    Attributes:
        keys: Buckets held in memory now.
        max_keys: The most buckets held at once.
        waiting: Tasks queued in :meth:`KeyedRateLimiter.acquire` over all keys.
        acquired: Successful acquisitions over all keys.
        rejected: ``try_acquire`` calls that returned ``False``.
        forgotten: Buckets dropped because they had refilled (lossless: a full bucket is the
            same as a new one).
        evicted: Buckets dropped before refilling because ``max_keys`` was reached (that key
            starts again with a full bucket).
    """

    keys: int
    max_keys: int
    waiting: int
    acquired: int
    rejected: int
    forgotten: int
    evicted: int


def _new_bucket(rate: float, burst: float, clock: Clock) -> TokenBucket:
    """Build a bucket from already validated limits, skipping the checks (a hot path)."""
    bucket: TokenBucket = object.__new__(TokenBucket)
    bucket._rate = rate
    bucket._burst = burst
    bucket._clock = clock
    bucket._anchor = None
    bucket._consumed = 0.0
    bucket._lock = None
    bucket._waiting = 0
    bucket._acquired = 0
    bucket._rejected = 0
    return bucket


def _default_classify(key: Hashable) -> Hashable:
    if isinstance(key, tuple) and len(key) >= 2:
        second: Hashable = key[1]
        return second
    return None


def _check_limits(
    limits: Mapping[Hashable, tuple[float, float]] | None,
) -> Mapping[Hashable, tuple[float, float]]:
    if limits is None:
        return {}
    if not isinstance(limits, Mapping):
        raise TypeError(f"limits must be a mapping of class -> (rate, burst), got {limits!r}")
    checked: dict[Hashable, tuple[float, float]] = {}
    for name, pair in limits.items():
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"limits[{name!r}] must be a (rate, burst) pair, got {pair!r}")
        checked[name] = (
            _positive(f"limits[{name!r}] rate", pair[0]),
            _positive(f"limits[{name!r}] burst", pair[1]),
        )
    return checked


@final
@attrs.define(eq=False, repr=False, on_setattr=attrs.setters.NO_OP)
class KeyedRateLimiter(Generic[K]):
    """One token bucket per key, e.g. per ``(user, request type)``, with bounded memory.

    Every key gets its own :class:`TokenBucket`, so a busy key never slows down another::

        limiter = KeyedRateLimiter(
            rate=5, burst=10, limits={"cli": (1, 2), "mcp": (20, 40)}
        )
        await limiter.acquire(("alice", "mcp"))   # the "mcp" class: 20/s, burst 40
        await limiter.acquire(("bob", "web"))     # no class matched: the default 5/s, burst 10

    **Key classes.** ``classify(key)`` names the class of a key; by default it is the second
    element of a tuple key (``("alice", "mcp")`` -> ``"mcp"``) and ``None`` otherwise. A class
    listed in ``limits`` uses its ``(rate, burst)``; any other key uses ``rate`` and ``burst``.

    **Memory.** A bucket that has refilled to full is the same as a new one, so it can be
    dropped without changing any outcome. Each new key looks at the two least recently used
    buckets and forgets them if they are full; the live buckets therefore stay near the number
    of keys active within one refill period, whatever the number of distinct keys. (The sweep
    stops at the first bucket that is not full, so with key classes of very different rates
    the longest refill period is the one that counts; ``max_keys`` bounds memory anyway.) Beyond
    ``max_keys`` the least recently used bucket is dropped even if it is not full (a full one
    among the 8 least recently used first); that key then starts again with a full burst.
    Buckets with queued waiters are never dropped.

    Args:
        rate: Default tokens per second per key, a finite number > 0.
        burst: Default bucket capacity per key, a finite number > 0.
        max_keys: The most buckets kept at once, an int >= 1.
        limits: ``{class: (rate, burst)}`` overrides per key class.
        classify: Maps a key to its class; see above for the default.
        clock: The time source; see :class:`TokenBucket`.

    Raises:
        ValueError: If a rate, burst or ``max_keys`` is out of range.
        TypeError: If ``limits`` is not a mapping of ``(rate, burst)`` pairs, ``classify``
            is not callable, or a rate, burst or ``max_keys`` has the wrong type.
    """

    _rate: float = attrs.field(alias="rate", validator=_positive_field)
    _burst: float = attrs.field(alias="burst", validator=_positive_field)
    _max_keys: int = attrs.field(alias="max_keys", default=100_000, kw_only=True)
    _limits: Mapping[Hashable, tuple[float, float]] = attrs.field(
        factory=dict, kw_only=True, converter=_check_limits, repr=False
    )
    _classify: Callable[[K], Hashable] = attrs.field(
        default=_default_classify, kw_only=True, repr=False
    )
    _clock: Clock = attrs.field(
        default=None, kw_only=True, converter=_clock_or_default, repr=False
    )
    _buckets: OrderedDict[K, TokenBucket] = attrs.field(
        factory=OrderedDict, init=False, repr=False
    )
    _forgotten: int = attrs.field(default=0, init=False, repr=False)
    _evicted: int = attrs.field(default=0, init=False, repr=False)
    _acquired: int = attrs.field(default=0, init=False, repr=False)
    _rejected: int = attrs.field(default=0, init=False, repr=False)

    @_max_keys.validator
    def _check_max_keys(self, attribute: attrs.Attribute[int], value: object) -> None:
        check_int(value, "max_keys", minimum=1)

    @_classify.validator
    def _check_classify(self, attribute: attrs.Attribute[object], value: object) -> None:
        if not callable(value):
            raise TypeError(f"classify must be callable, got {value!r}")

    def __repr__(self) -> str:
        return (
            f"KeyedRateLimiter(rate={self._rate!r}, burst={self._burst!r}, "
            f"max_keys={self._max_keys!r}, keys={len(self._buckets)})"
        )

    @property
    def rate(self) -> float:
        """Default tokens per second per key."""
        return self._rate

    @property
    def burst(self) -> float:
        """Default bucket capacity per key."""
        return self._burst

    @property
    def max_keys(self) -> int:
        """The most buckets kept at once."""
        return self._max_keys

    def limits_for(self, key: K) -> tuple[float, float]:
        """Return the ``(rate, burst)`` that applies to ``key``.

        Args:
            key: Any hashable key.

        Returns:
            The class override from ``limits`` if the key's class has one, else the defaults.
        """
        if self._limits:
            found = self._limits.get(self._classify(key))
            if found is not None:
                return found
        return (self._rate, self._burst)

    def _bucket(self, key: K, n: float) -> TokenBucket:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is not None:
            buckets.move_to_end(key)
            return bucket
        rate, burst = self.limits_for(key)
        # Before the new bucket can push another key's out: a bad request changes nothing.
        _check_request(n, burst)
        bucket = _new_bucket(rate, burst, self._clock)
        if buckets:
            self._make_room()
        buckets[key] = bucket
        return bucket

    def _make_room(self) -> None:
        buckets = self._buckets
        now = self._clock()
        # Forget refilled buckets among the least recently used: lossless, O(1) per new key.
        forgotten = 0
        while forgotten < _SWEEP and buckets:
            key = next(iter(buckets))
            oldest = buckets[key]
            anchor = oldest._anchor
            if oldest._waiting or (
                anchor is not None and (now - anchor) * oldest._rate < oldest._consumed
            ):
                break  # not full yet (the inlined TokenBucket._is_full: this is a hot path)
            del buckets[key]
            forgotten += 1
        self._forgotten += forgotten
        if len(buckets) < self._max_keys:
            return
        # At capacity: prefer a full bucket near the LRU end, else the oldest without waiters.
        victim: K | None = None
        for i, (key, bucket) in enumerate(buckets.items()):
            if i >= _EVICTION_SCAN and victim is not None:
                break
            if bucket._waiting:
                continue
            if bucket._is_full(now):
                del buckets[key]
                self._forgotten += 1
                return
            if victim is None:
                victim = key
        if victim is not None:
            del buckets[victim]
            self._evicted += 1

    def try_acquire(self, key: K, n: float = 1) -> bool:
        """Take ``n`` tokens from ``key``'s bucket if available now; never waits.

        Args:
            key: The key, e.g. ``("alice", "mcp")``.
            n: Tokens to take, > 0 and at most the key's burst.

        Returns:
            ``True`` if the tokens were taken, ``False`` otherwise.

        Raises:
            ValueError: If ``n`` is not a number in (0, burst].
        """
        if self._bucket(key, n).try_acquire(n):
            self._acquired += 1
            return True
        self._rejected += 1
        return False

    async def acquire(self, key: K, n: float = 1) -> None:
        """Take ``n`` tokens from ``key``'s bucket, waiting (in arrival order) if needed.

        Args:
            key: The key, e.g. ``("alice", "mcp")``.
            n: Tokens to take, > 0 and at most the key's burst.

        Raises:
            ValueError: If ``n`` is not a number in (0, burst].
        """
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = self._bucket(key, n)
        else:
            buckets.move_to_end(key)
        await bucket.acquire(n)
        self._acquired += 1

    def statistics(self) -> KeyedRateLimiterStatistics:
        """Return a snapshot of the limiter's memory use and counters.

        Returns:
            A frozen :class:`KeyedRateLimiterStatistics`.
        """
        buckets = self._buckets.values()
        return KeyedRateLimiterStatistics(
            keys=len(self._buckets),
            max_keys=self._max_keys,
            waiting=sum(b._waiting for b in buckets),
            acquired=self._acquired,
            rejected=self._rejected,
            forgotten=self._forgotten,
            evicted=self._evicted,
        )
