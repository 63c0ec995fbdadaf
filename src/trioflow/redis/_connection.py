"""The public connection: ``connect(url)`` and the factories of the shared limits and store.

``connect(url)`` opens a :class:`RedisConnection` for one ``async with`` block; everything made
from it (token buckets, keyed limiters, capacities, the workflow store) is shared with every
process, on any machine, that uses the same Redis database, key prefix and name.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from typing import final

import anyio
import anyio.abc
import coredis

from .._checks import check_name, check_number
from ._capacity import RedisCapacity, RedisKeyedCapacity
from ._ratelimit import RedisKeyedRateLimiter, RedisTokenBucket
from ._requests import RedisRequestStore
from ._session import RedisStateError, Session, ping
from ._store import RedisStore

__all__ = ("RedisConnection", "connect")


@final
class RedisConnection:
    """A connection to one Redis database, shared by the limits and stores made from it.

    Made by :func:`connect`, usable inside its ``async with`` block only.

    Attributes:
        client: The ``coredis.Redis`` client (responses decoded as ``str``), for anything
            else the application keeps in Redis.
        prefix: The start of every key this connection writes, e.g. ``"trioflow:"``; keys
            are ``<prefix><kind>:<name>...`` (kinds ``bucket``, ``keyed``, ``cap``, ``run``).
        timeout: Seconds one Redis command may take before it fails.
    """

    __slots__ = ("_capacities", "_keyed_capacities", "_session", "client", "prefix", "timeout")

    def __init__(self, session: Session) -> None:
        self._session = session
        self.client = session.client
        self.prefix = session.prefix
        self.timeout = session.timeout
        self._capacities: dict[str, RedisCapacity] = {}
        self._keyed_capacities: dict[str, RedisKeyedCapacity] = {}

    def __repr__(self) -> str:
        return f"<RedisConnection {self.client.connection_pool.location} prefix={self.prefix!r}>"

    def key(self, kind: str, *parts: str) -> str:
        """Return the Redis key for one object: ``<prefix><kind>:<part>:<part>...``.

        Args:
            kind: What the key holds, e.g. ``"requests"``.
            *parts: The object's name and sub-keys.

        Returns:
            The key.
        """
        return self._session.key(kind, *parts)

    def rate_limiter(self, name: str, *, rate: float, burst: float) -> RedisTokenBucket:
        """Return the token bucket ``name``, shared by every process that uses that name.

        Args:
            name: The bucket's name (processes using one name share one bucket).
            rate: Tokens added per second, a finite number > 0.
            burst: The most tokens the bucket holds, a finite number > 0.

        Returns:
            A :class:`RedisTokenBucket`.

        Raises:
            TypeError: ``name`` is not a non-empty string, or ``rate`` or ``burst`` is not a
                number.
            ValueError: ``rate`` or ``burst`` is not > 0.
        """
        return RedisTokenBucket(self._session, name, rate=rate, burst=burst)

    def keyed_rate_limiter(
        self,
        name: str,
        *,
        rate: float,
        burst: float,
        limits: Mapping[Hashable, tuple[float, float]] | None = None,
        classify: Callable[[Hashable], Hashable] | None = None,
    ) -> RedisKeyedRateLimiter:
        """Return the keyed rate limiter ``name``: one shared token bucket per key.

        Args:
            name: The limiter's name.
            rate: Default tokens per second per key, a finite number > 0.
            burst: Default bucket capacity per key, a finite number > 0.
            limits: ``{class: (rate, burst)}`` overrides per key class (the second element
                of a tuple key, as for ``trioflow.KeyedRateLimiter``).
            classify: Maps a key to its class, instead of that default.

        Returns:
            A :class:`RedisKeyedRateLimiter`.

        Raises:
            TypeError: An argument has the wrong type (``name`` must be a non-empty string).
            ValueError: A rate or burst is not > 0.
        """
        return RedisKeyedRateLimiter(
            self._session, name, rate=rate, burst=burst, limits=limits, classify=classify
        )

    def capacity(self, name: str, *, total: int, lease: float = 10.0) -> RedisCapacity:
        """Return the capacity ``name``: at most ``total`` slots held at once, by all processes.

        Args:
            name: The capacity's name.
            total: The most slots held at once over every process, an int >= 1. Every
                process using the name must give the same total.
            lease: Seconds a held slot lives unless its heartbeat renews it (every third of
                that); a holder that dies frees its slots once they expire.

        Returns:
            A :class:`RedisCapacity`; one per name per connection (the same object again).

        Raises:
            TypeError: An argument has the wrong type (``name`` must be a non-empty string).
            ValueError: ``total`` is below 1, ``lease`` is not > 0, or
                the name is already a capacity of this connection with another total or
                lease.
        """
        check_name(name, "name")
        found = self._capacities.get(name)
        if found is not None:
            if (found.total_tokens, found.lease) != (total, lease):
                raise ValueError(
                    f"capacity {name!r} exists with total={found.total_tokens} and "
                    f"lease={found.lease:g}, got total={total!r} and lease={lease!r}"
                )
            return found
        made = RedisCapacity(self._session, name, total=total, lease=lease)
        self._capacities[name] = made
        return made

    def keyed_capacity(self, name: str, *, total: int, lease: float = 10.0) -> RedisKeyedCapacity:
        """Return the capacities ``name``: ``total`` slots per key, shared by all processes.

        A coordinator's per-user limit over several processes is one of these (the
        ``trioflow.SharedLimits`` shape); see :class:`RedisKeyedCapacity`.

        Args:
            name: The capacities' name.
            total: The most slots of one key held at once over every process, an int >= 1.
            lease: Seconds a held slot lives unless its heartbeat renews it.

        Returns:
            A :class:`RedisKeyedCapacity`; one per name per connection (the same object again).

        Raises:
            TypeError: An argument has the wrong type (``name`` must be a non-empty string).
            ValueError: ``total`` is below 1, ``lease`` is not > 0, or the name is already
                keyed capacities of this connection with another total or lease.
        """
        check_name(name, "name")
        found = self._keyed_capacities.get(name)
        if found is not None:
            if (found.total_tokens, found.lease) != (total, lease):
                raise ValueError(
                    f"keyed capacity {name!r} exists with total={found.total_tokens} and "
                    f"lease={found.lease:g}, got total={total!r} and lease={lease!r}"
                )
            return found
        made = RedisKeyedCapacity(self._session, name, total=total, lease=lease)
        self._keyed_capacities[name] = made
        return made

    def store(self) -> RedisStore:
        """Return a ``trioflow.WorkflowStore`` keeping runs in this Redis database.

        Returns:
            A :class:`RedisStore`.
        """
        return RedisStore(self._session)

    def request_store(self, ttl: float = 3600.0) -> RedisRequestStore:
        """Return a request store keeping request state in this Redis database.

        Each request is one hash with an expiry, under this connection's prefix
        (``<prefix>requests:...``), for ``open_coordinator(..., requests=...)``; a finished
        request expires ``ttl`` seconds after it ended. Several processes (and machines) that
        connect with the same prefix share the requests, and ``coordinator.recover()`` in one
        finds those that were in flight in another that died.

        Example::

            async with trioflow.redis.connect(url) as redis:
                async with open_coordinator(config, router=router,
                                            requests=redis.request_store()) as coordinator:
                    for record in await coordinator.recover():
                        ...  # retry what was in flight when a process died

        Args:
            ttl: Seconds a finished request is kept, a number > 0.

        Returns:
            A :class:`RedisRequestStore`, usable while this connection is open.

        Raises:
            TypeError: ``ttl`` is not a number.
            ValueError: ``ttl`` is not a positive finite number.
        """
        return RedisRequestStore(self.client, ttl=ttl, prefix=self.key("requests") + ":")


@contextlib.asynccontextmanager
async def connect(
    url: str,
    *,
    prefix: str = "trioflow:",
    timeout: float = 5.0,  # noqa: ASYNC109 (each command's time limit, not the block's)
) -> AsyncIterator[RedisConnection]:
    """Connect to Redis for one ``async with`` block.

    Example::

        async with trioflow.redis.connect("redis://cache:6379/0") as redis:
            llm = redis.rate_limiter("llm", rate=50, burst=100)
            await llm.acquire()

    The block owns the connection pool and the background tasks of the shared limits (slot
    heartbeats, wake-ups); they end with it.

    Args:
        url: ``redis://[:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
            ``unix:///path/to/socket?db=0``.
        prefix: The start of every key written, so that applications can share a database.
        timeout: Seconds a Redis command (and connecting) may take before it fails with
            :class:`RedisStateError`, a finite number > 0.

    Yields:
        The :class:`RedisConnection`.

    Raises:
        TypeError: ``url`` is not a non-empty string, ``prefix`` not a string, or
            ``timeout`` not a number.
        ValueError: ``url`` is not a Redis URL, or ``timeout`` is not > 0.
        RedisStateError: Redis cannot be reached (checked with a ``PING`` on entry).
    """
    check_name(url, "url")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    seconds = check_number(timeout, "timeout", minimum=0, strict=True, maximum=86400)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"url must start with redis://, rediss:// or unix://, got {url!r}")
    client: coredis.Redis[str] = coredis.Redis.from_url(
        url,
        decode_responses=True,
        stream_timeout=seconds,
        connect_timeout=seconds,
        pool_timeout=seconds,
    )
    # coredis's pool, its Pub/Sub and this block's task group each wrap what passes through
    # them in an ExceptionGroup; the caller's own exception (or the PING's) comes out as itself.
    own: BaseException | None = None
    try:
        async with client:
            try:
                await ping(client, seconds)
            except RedisStateError as exc:
                own = exc
                raise
            async with anyio.create_task_group() as group:
                session = Session(client, prefix=prefix, timeout=seconds, group=group)
                try:
                    # Subscribed before anything waits, so no wake-up is missed.
                    await group.start(_listen, client, session)
                    group.start_soon(session.send_queued)
                    try:
                        yield RedisConnection(session)
                    except BaseException as exc:
                        own = exc
                        raise
                finally:
                    await session.flush()
                    group.cancel_scope.cancel()
    except BaseExceptionGroup as failures:
        if own is None or failures.split(lambda exc: _own_or_teardown(exc, own))[1] is not None:
            raise
    if own is not None:
        raise own


async def _listen(
    client: coredis.Redis[str],
    session: Session,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    # The wake-up subscription, in a task of its own that the block's end cancels: coredis
    # resubscribes after a dropped connection (with a backoff, waiters re-check on a timer
    # meanwhile), and a cancel scope of ours ends it even in the middle of that.
    pubsub = client.pubsub(
        channel_handlers={session.wake_channel: session.dispatch}, ignore_subscribe_messages=True
    )
    try:
        async with pubsub:
            task_status.started()
            await anyio.sleep_forever()
    except* anyio.ClosedResourceError:
        pass  # cancelled, its clean-up wrote to a connection already closed


def _own_or_teardown(exc: BaseException, own: BaseException) -> bool:
    # A cancelled block cancels coredis's connection tasks at the same time as its Pub/Sub,
    # whose clean-up may then write to a closed connection: artefacts of the cancellation,
    # which goes on as the body's own.
    cancelled = anyio.get_cancelled_exc_class()
    if exc is own:
        return True
    return isinstance(own, cancelled) and isinstance(exc, cancelled | anyio.ClosedResourceError)
