"""One connection's plumbing: the coredis client, key names, errors, and background tasks.

``connect(url)`` opens one session for an ``async with`` block. It owns the
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
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar, final

import anyio
import anyio.abc
import coredis
import coredis.exceptions

from .._errors import TrioflowError
from ..lifecycle import ErrorCategory

__all__ = ("RedisStateError", "Session", "ping", "translate")

T = TypeVar("T")
_Release = Callable[[], Awaitable[None]]
_log = logging.getLogger("trioflow.redis")

_SENT_AT_ONCE = 16  # give-backs sent concurrently by the background sender
_WAKE = "wake"  # the Pub/Sub channel (after the prefix) that says "a slot of <name> is free"


class RedisStateError(TrioflowError):
    """Redis could not be reached, did not answer in time, or refused a command.

    Shared limits raise it from the operation that needed Redis; nothing is held when it is
    raised. The store raises ``trioflow.StoreError`` instead, caused by this error. A request
    that a coordinator could not admit for it fails with the category ``dependency``.
    """

    error_category = ErrorCategory.DEPENDENCY


def translate(what: str, exc: Exception) -> RedisStateError:
    """Return the :class:`RedisStateError` for a coredis (or socket) failure of ``what``."""
    if isinstance(exc, RedisStateError):
        return exc
    if isinstance(exc, TimeoutError):
        reason = "no answer in time"
    elif isinstance(
        exc,
        coredis.exceptions.ConnectionError
        | OSError
        | anyio.ClosedResourceError
        | anyio.BrokenResourceError,
    ):
        reason = "connection failed"
    else:
        reason = "error reply"
    error = RedisStateError(f"redis {what}: {reason}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


# coredis raises anyio's ClosedResourceError / BrokenResourceError for a command sent on a
# connection that is being torn down.
_FAILURES = (
    coredis.exceptions.RedisError,
    TimeoutError,
    OSError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
)


async def ping(client: coredis.Redis[str], timeout: float) -> None:  # noqa: ASYNC109
    """Check that Redis answers, within ``timeout`` seconds.

    Raises:
        RedisStateError: It does not.
    """
    try:
        with anyio.fail_after(timeout):
            await client.ping()
    except _FAILURES as exc:
        raise translate("PING", exc) from exc


async def _await(send: _Release) -> None:
    await send()


async def _logged(what: str, send: _Release) -> None:
    try:
        await send()
    except RedisStateError as exc:  # what it gives back expires by itself in Redis
        _log.warning("redis: could not %s: %s", what, exc)


@final
class Session:
    """What the shared limits and the store use of one connection (internal).

    Attributes:
        client: The ``coredis.Redis`` client (responses decoded as ``str``), for anything
            else the application keeps in Redis.
        prefix: The start of every key this connection writes, e.g. ``"trioflow:"``.
        timeout: Seconds one Redis command may take before it fails.
    """

    __slots__ = (
        "_group",
        "_releases",
        "_send_release",
        "_sent",
        "_started",
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
        self._wakers: dict[str, Callable[[], None]] = {}
        send, receive = anyio.create_memory_object_stream[_Release](math.inf)
        self._send_release = send
        self._releases = receive
        self._sent = anyio.Event()
        self._started = False

    def __repr__(self) -> str:
        return f"<Session {self.client.connection_pool.location} prefix={self.prefix!r}>"

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

        The round trip is shielded from cancellation, and bounded by the timeout: a command
        sent runs on the server anyway, so its caller always learns what it did (a token
        taken, a slot granted) and can undo it; and coredis is never interrupted while it opens
        a connection (which would leave that connection half made). A cancellation arriving
        meanwhile takes effect at the caller's next checkpoint.

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
            with anyio.CancelScope(shield=True), anyio.fail_after(self.timeout):
                reply = await command()
        except _FAILURES as exc:
            raise translate(what, exc) from exc
        return reply

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

    def off_wake(self, name: str, wake: Callable[[], None]) -> None:
        """Stop calling ``wake()`` for ``name`` (if it is still the one registered).

        Args:
            name: What is published.
            wake: What :meth:`on_wake` was given.
        """
        if self._wakers.get(name) == wake:
            del self._wakers[name]

    async def publish_wake(self, name: str) -> None:
        """Tell every process (this one too) that ``name`` has a slot free.

        Args:
            name: A capacity's name.
        """
        await self.call("PUBLISH", lambda: self.client.publish(self.prefix + _WAKE, name))

    @property
    def wake_channel(self) -> str:
        """The Pub/Sub channel of wake-ups."""
        return self.prefix + _WAKE

    def dispatch(self, message: Mapping[str, Any]) -> None:
        """Pass a message of the wake channel to the waker of the name it carries."""
        wake = self._wakers.get(str(message.get("data")))
        if wake is not None:
            wake()

    async def send_queued(self) -> None:
        """Send the writes queued by :meth:`send_soon`, one after the other, until flushed."""
        self._started = True
        try:
            async for send in self._releases:
                # Everything queued meanwhile goes out at once (a few at a time), so that code
                # giving back faster than one round trip never outruns the sender.
                sends = [send]
                with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
                    while len(sends) < _SENT_AT_ONCE:
                        sends.append(self._releases.receive_nowait())
                if len(sends) == 1:
                    await send()
                    continue
                async with anyio.create_task_group() as group:
                    for each in sends:
                        group.start_soon(_await, each)
        finally:
            self._sent.set()

    async def flush(self) -> None:
        """Close the queue of :meth:`send_soon` and wait (within the timeout) until it is sent."""
        # The block ends: the sender sends the writes still queued (within the timeout).
        self._send_release.close()
        if self._started:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout):
                await self._sent.wait()
        self._releases.close()
