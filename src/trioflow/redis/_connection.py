"""The connection to Redis: one coredis client and its pool, and the tasks shared state needs.

``connect(url)`` opens one :class:`RedisConnection` for an ``async with`` block. It owns the
coredis client (and so its connection pool), and a task group for what must run in the
background while shared limits are in use: one Pub/Sub subscription that wakes this
process's capacity waiters when another process frees a slot, the heartbeat that renews held
capacity slots, and a sender that gives slots back for code that releases synchronously. Every
key this connection writes starts with its ``prefix`` (``"trioflow:"`` unless told), so
several applications can share one Redis database.

Every coredis failure (a refused or dropped connection, a reply that did not come within
``timeout``, an error reply) is raised as :class:`RedisStateError` naming the operation:
nothing waits on a Redis that is gone for longer than ``timeout`` (plus coredis's two quick
retries of a dropped connection).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, final

import anyio
import anyio.abc
import coredis
import coredis.exceptions

from .._checks import check_name, check_number, check_timeout
from .._errors import TrioflowError

if TYPE_CHECKING:
    from ._capacity import RedisCapacity
    from ._ratelimit import RedisKeyedRateLimiter, RedisTokenBucket
    from ._store import RedisStore

__all__ = ("RedisConnection", "RedisStateError", "connect")

T = TypeVar("T")
_Release = Callable[[], Awaitable[None]]
_log = logging.getLogger("trioflow.redis")

_WAKE = "wake"  # the Pub/Sub channel (after the prefix) that says "a slot of <name> is free"


class RedisStateError(TrioflowError):
    """Redis could not be reached, did not answer in time, or refused a command.

    Shared limits raise it from the operation that needed Redis; nothing is held when it is
    raised. The store raises ``trioflow.StoreError`` instead, caused by this error.
    """


def translate(what: str, exc: Exception) -> RedisStateError:
    """Return the :class:`RedisStateError` for a coredis (or socket) failure of ``what``."""
    if isinstance(exc, RedisStateError):
        return exc
    if isinstance(exc, TimeoutError):
        reason = "no answer in time"
    elif isinstance(exc, coredis.exceptions.ConnectionError | OSError):
        reason = "connection failed"
    else:
        reason = "error reply"
    error = RedisStateError(f"redis {what}: {reason}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


_FAILURES = (coredis.exceptions.RedisError, TimeoutError, OSError)


async def _logged(what: str, send: _Release) -> None:
    try:
        await send()
    except RedisStateError as exc:  # what it gives back expires by itself in Redis
        _log.warning("redis: could not %s: %s", what, exc)


@final
class RedisConnection:
    """A connection to one Redis database, shared by the limits and stores made from it.

    Made by :func:`connect`, usable inside its ``async with`` block only. Every limiter,
    capacity and store made from it is shared with every process (on any machine) that uses
    the same Redis database, prefix and name.

    Attributes:
        client: The ``coredis.Redis`` client (responses decoded as ``str``), for anything
            else the application keeps in Redis.
        prefix: The start of every key this connection writes, e.g. ``"trioflow:"``.
        timeout: Seconds one Redis command may take before it fails.
    """

    __slots__ = (
        "_capacities",
        "_group",
        "_releases",
        "_send_release",
        "_sent",
        "_wakers",
        "client",
        "prefix",
        "timeout",
    )

    def __init__(
        self,
        client: coredis.Redis[str],
        *,
        prefix: str,
        timeout: float,
        group: anyio.abc.TaskGroup,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self._group = group
        self._capacities: dict[str, RedisCapacity] = {}
        self._wakers: dict[str, Callable[[], None]] = {}
        send, receive = anyio.create_memory_object_stream[_Release](math.inf)
        self._send_release = send
        self._releases = receive
        self._sent = anyio.Event()

    def __repr__(self) -> str:
        return f"<RedisConnection {self.client.connection_pool.location} prefix={self.prefix!r}>"

    def key(self, kind: str, *parts: str) -> str:
        """Return the Redis key for one object: ``<prefix><kind>:<part>:<part>...``.

        Args:
            kind: What the key holds, e.g. ``"bucket"``, ``"cap"``, ``"run"``.
            *parts: The object's name and sub-keys.

        Returns:
            The key.
        """
        return ":".join((self.prefix + kind, *parts))

    async def call(self, what: str, command: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis command, raising :class:`RedisStateError` when it fails.

        Args:
            what: What the command does, for the error message.
            command: Makes the coredis request (called once; coredis retries a dropped
                connection twice).

        Returns:
            The reply.

        Raises:
            RedisStateError: Redis could not be reached, timed out, or refused the command.
        """
        try:
            with anyio.fail_after(self.timeout):
                return await command()
        except _FAILURES as exc:
            raise translate(what, exc) from exc

    def start_soon(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a background task in the connection's task group (ended with the block)."""
        self._group.start_soon(fn)

    def send_soon(self, what: str, send: _Release) -> None:
        """Run ``send()`` (a Redis write) soon in the background, from synchronous code.

        Used to give back what synchronous code releases; the writes run one after the other,
        and those still queued when the block ends are sent before it closes (within
        ``timeout``).

        Args:
            what: What it does, for the warning logged when it fails.
            send: The write.
        """
        self._send_release.send_nowait(functools.partial(_logged, what, send))

    def on_wake(self, name: str, wake: Callable[[], None]) -> None:
        """Call ``wake()`` whenever a process publishes ``name`` on the wake channel.

        Args:
            name: What is published (a capacity's name).
            wake: Called in the subscriber's task; it must not block.
        """
        self._wakers[name] = wake

    async def publish_wake(self, name: str) -> None:
        """Tell every process (this one too) that ``name`` has a slot free.

        Args:
            name: A capacity's name.
        """
        await self.call("PUBLISH", lambda: self.client.publish(self.prefix + _WAKE, name))

    def _woken(self, message: Mapping[str, Any]) -> None:
        wake = self._wakers.get(str(message.get("data")))
        if wake is not None:
            wake()

    async def _send_queued(self) -> None:
        try:
            async for send in self._releases:
                await send()
        finally:
            self._sent.set()

    async def _flush(self) -> None:
        # The block ends: the sender sends the writes still queued (within the timeout).
        self._send_release.close()
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout):
            await self._sent.wait()
        self._releases.close()

    # -- factories --------------------------------------------------------------------------

    def rate_limiter(self, name: str, *, rate: float, burst: float) -> RedisTokenBucket:
        """Return the token bucket ``name``, shared by every process that uses that name.

        Args:
            name: The bucket's name (processes using one name share one bucket).
            rate: Tokens added per second, a finite number > 0.
            burst: The most tokens the bucket holds, a finite number > 0.

        Returns:
            A :class:`RedisTokenBucket`.

        Raises:
            TypeError: ``name`` is not a string, or ``rate`` or ``burst`` is not a number.
            ValueError: ``name`` is empty, or ``rate`` or ``burst`` is not > 0.
        """
        from ._ratelimit import RedisTokenBucket

        return RedisTokenBucket(self, name, rate=rate, burst=burst)

    def keyed_rate_limiter(
        self,
        name: str,
        *,
        rate: float,
        burst: float,
        limits: Mapping[str, tuple[float, float]] | None = None,
    ) -> RedisKeyedRateLimiter:
        """Return the keyed rate limiter ``name``: one shared token bucket per key.

        Args:
            name: The limiter's name.
            rate: Default tokens per second per key, a finite number > 0.
            burst: Default bucket capacity per key, a finite number > 0.
            limits: ``{class: (rate, burst)}`` overrides per key class (the second element
                of a tuple key, as for ``trioflow.KeyedRateLimiter``).

        Returns:
            A :class:`RedisKeyedRateLimiter`.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: ``name`` is empty, or a rate or burst is not > 0.
        """
        from ._ratelimit import RedisKeyedRateLimiter

        return RedisKeyedRateLimiter(self, name, rate=rate, burst=burst, limits=limits)

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
            TypeError: An argument has the wrong type.
            ValueError: ``name`` is empty, ``total`` is below 1, ``lease`` is not > 0, or
                the name is already a capacity of this connection with another total or
                lease.
        """
        from ._capacity import RedisCapacity

        check_name(name, "name")
        found = self._capacities.get(name)
        if found is not None:
            if (found.total_tokens, found.lease) != (total, lease):
                raise ValueError(
                    f"capacity {name!r} exists with total={found.total_tokens} and "
                    f"lease={found.lease:g}, got total={total!r} and lease={lease!r}"
                )
            return found
        capacity = self._capacities[name] = RedisCapacity(self, name, total=total, lease=lease)
        return capacity

    def store(self) -> RedisStore:
        """Return a ``trioflow.WorkflowStore`` keeping runs in this Redis database.

        Returns:
            A :class:`RedisStore`.
        """
        from ._store import RedisStore

        return RedisStore(self)


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
        TypeError: ``url`` or ``prefix`` is not a string, or ``timeout`` not a number.
        ValueError: ``url`` is not a Redis URL, or ``timeout`` is not > 0.
        RedisStateError: Redis cannot be reached (checked with a ``PING`` on entry).
    """
    check_name(url, "url")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    check_timeout(timeout)
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
    async with client, anyio.create_task_group() as group:
        redis = RedisConnection(client, prefix=prefix, timeout=seconds, group=group)
        await redis.call("PING", lambda: client.ping())
        # Subscribed before anything waits, so no wake-up is missed; coredis resubscribes
        # after a dropped connection (waiters re-check on a timer meanwhile).
        pubsub = client.pubsub(
            channel_handlers={prefix + _WAKE: redis._woken}, ignore_subscribe_messages=True
        )
        async with pubsub:
            group.start_soon(redis._send_queued)
            try:
                yield redis
            finally:
                await redis._flush()
                group.cancel_scope.cancel()
