"""A capacity limiter shared through Redis: at most ``total`` slots held by all processes.

Redis keeps, per capacity, the holders (a sorted set: slot id -> when its lease expires, in
the server's milliseconds), the waiters (a sorted set in arrival order) and each waiter's
expiry. One Lua script does every change atomically on the server's clock: it drops expired
holders and waiters, grants a slot to a waiter among the first ``free`` live ones (first come,
first served across processes), queues the others, and publishes a wake-up on the
connection's channel when a slot frees while someone waits.

Each process keeps a heartbeat (in its connection's task group) that renews the leases of the
slots it holds every third of the lease; a process that dies (SIGKILL) stops renewing, and its
slots come back once their lease expires. A waiter sleeps until it is woken (a slot was given
back, by any process) or until the next lease could expire, whichever comes first, and then
asks again: it never polls in a loop. A waiter cancelled while waiting leaves the queue, and a
slot granted in the same instant is given back, before the cancellation goes on.
"""

from __future__ import annotations

import logging
import secrets
from types import TracebackType
from typing import Any, final

import anyio
import anyio.lowlevel
import attrs
from coredis.commands.script import Script

from .._checks import check_int, check_number
from ._session import RedisStateError, Session

__all__ = ("RedisCapacity", "RedisCapacityStatistics", "RedisKeyedCapacity")

_log = logging.getLogger("trioflow.redis")

# KEYS: holders, waiters, waiter expiries, arrival counter.
# ARGV: mode, total, lease ms, channel, name, id...
_CAPACITY = """
local holders, waiters, expiry, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode, total, lease, channel, name = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  ARGV[4], ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)

local function live_head(n)
  while true do
    local head = redis.call('ZRANGE', waiters, 0, n - 1)
    local dead = false
    for _, w in ipairs(head) do
      if tonumber(redis.call('HGET', expiry, w) or 0) <= now then
        redis.call('ZREM', waiters, w)
        redis.call('HDEL', expiry, w)
        dead = true
      end
    end
    if not dead then return head end
  end
end

local function wake_if_free()
  local free = total - redis.call('ZCARD', holders)
  if free > 0 and #live_head(1) > 0 then
    redis.call('PUBLISH', channel, name)
  end
end

local function next_expiry()
  local first = redis.call('ZRANGE', holders, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) - now end
  return lease
end

if mode == 'acquire' then
  local id = ARGV[6]
  if redis.call('ZSCORE', holders, id) then
    redis.call('ZADD', holders, now + lease, id)
    return {1, 0}
  end
  local free = total - redis.call('ZCARD', holders)
  if free > 0 then
    local head = live_head(free)
    local mine = #head < free
    for _, w in ipairs(head) do
      if w == id then mine = true end
    end
    if mine then
      redis.call('ZADD', holders, now + lease, id)
      redis.call('ZREM', waiters, id)
      redis.call('HDEL', expiry, id)
      wake_if_free()
      redis.call('PEXPIRE', holders, lease * 2)
      return {1, 0}
    end
  end
  if not redis.call('ZSCORE', waiters, id) then
    redis.call('ZADD', waiters, redis.call('INCR', seq), id)
  end
  redis.call('HSET', expiry, id, now + lease)
  for _, key in ipairs({waiters, expiry, seq}) do redis.call('PEXPIRE', key, lease * 2) end
  return {0, next_expiry()}
elseif mode == 'try' then
  local free = total - redis.call('ZCARD', holders)
  if free > 0 and #live_head(free) < free then
    redis.call('ZADD', holders, now + lease, ARGV[6])
    redis.call('PEXPIRE', holders, lease * 2)
    return {1, 0}
  end
  return {0, 0}
elseif mode == 'release' then
  local changed = 0
  for i = 6, #ARGV do
    changed = changed + redis.call('ZREM', holders, ARGV[i]) + redis.call('ZREM', waiters, ARGV[i])
    redis.call('HDEL', expiry, ARGV[i])
  end
  if changed > 0 then wake_if_free() end
  return {changed, 0}
elseif mode == 'renew' then
  local lost = {}
  for i = 6, #ARGV do
    if redis.call('ZADD', holders, 'XX', 'CH', now + lease, ARGV[i]) == 0
        and not redis.call('ZSCORE', holders, ARGV[i]) then
      table.insert(lost, ARGV[i])
    end
  end
  redis.call('PEXPIRE', holders, lease * 2)
  return lost
else
  live_head(total)
  return {redis.call('ZCARD', holders), redis.call('ZCARD', waiters)}
end
"""
_SCRIPT: Script[str] = Script(script=_CAPACITY)


@final
@attrs.frozen(kw_only=True)
class RedisCapacityStatistics:
    """A snapshot of a :class:`RedisCapacity`, across processes and for this one.

    Attributes:
        total: The most slots held at once, by all processes.
        borrowed: Slots held now, by all processes (leases not expired).
        waiting: Tasks waiting for a slot now, in all processes.
        held: Slots this process holds.
        waiting_here: Tasks of this process waiting for a slot.
        lost: Slots of this process whose lease expired before the heartbeat could renew it
            (the process stalled for longer than the lease, or Redis lost its data): another
            holder may have been given them.
    """

    total: int
    borrowed: int
    waiting: int
    held: int
    waiting_here: int
    lost: int


@final
class RedisCapacity:
    """A capacity limiter in Redis: at most ``total`` slots held at once by all processes.

    Made by ``redis.capacity(name, total=N, lease=SECONDS)``, used like anyio's
    ``CapacityLimiter``, and accepted wherever trioflow takes a limit (it is a
    ``trioflow.Capacity``)::

        llm = redis.capacity("llm", total=20)
        async with llm:
            ...                                           # one of 20 slots over every process
        await trioflow.run_batch(calls, limit=llm)
        rm = trioflow.ResourceManager(limit=50, pools={"llm": llm})

    A held slot is a lease, renewed every third of ``lease`` by a heartbeat in the
    connection's task group; a holder that dies frees its slot when the lease expires.
    Waiters are served first come, first served across processes, and woken when a slot is
    given back (Redis Pub/Sub), not by polling. A waiter cancelled while waiting never ends up
    holding a slot.

    Args:
        redis: The connection.
        name: The capacity's name.
        total: The most slots held at once, an int >= 1 (the same in every process).
        lease: Seconds a slot lives unless renewed, a finite number > 0.

    Raises:
        TypeError: ``total`` is not an int, or ``lease`` not a number.
        ValueError: ``total`` is below 1, or ``lease`` is not > 0.
    """

    __slots__ = (
        "_giving_back",
        "_held",
        "_keys",
        "_lease_ms",
        "_lost",
        "_name",
        "_redis",
        "_renewing",
        "_total",
        "_waiting",
        "_woken",
        "lease",
    )

    def __init__(self, redis: Session, name: str, *, total: int, lease: float) -> None:
        self._total = check_int(total, "total", minimum=1)
        self.lease = check_number(lease, "lease", minimum=0, strict=True, maximum=86400 * 365)
        self._lease_ms = max(1, round(self.lease * 1000))
        self._name = name
        self._redis = redis
        self._keys = tuple(redis.key("cap", name, part) for part in ("h", "w", "e", "seq"))
        self._held: dict[object, str] = {}
        self._giving_back: list[str] = []  # holders given back, not sent yet
        self._waiting = 0
        self._lost = 0
        self._renewing = False
        self._woken = anyio.Event()
        redis.on_wake(name, self._wake)

    def __repr__(self) -> str:
        return f"RedisCapacity({self._name!r}, total={self._total}, lease={self.lease:g})"

    @property
    def name(self) -> str:
        """The capacity's name."""
        return self._name

    @property
    def total_tokens(self) -> int:
        """The most slots held at once, by all processes."""
        return self._total

    def _wake(self) -> None:
        self._woken.set()
        self._woken = anyio.Event()

    async def _run(self, what: str, mode: str, *ids: str) -> Any:
        redis = self._redis
        args = (
            mode,
            str(self._total),
            str(self._lease_ms),
            redis.prefix + "wake",
            self._name,
            *ids,
        )
        return await redis.call(
            f"capacity {self._name!r} {what}",
            lambda: _SCRIPT(keys=self._keys, args=args, client=redis.client),
        )

    async def _release(self, *ids: str) -> None:
        await self._run("release", "release", *ids)

    async def _give_back(self, holder: str) -> None:
        # Shielded and bounded by the connection's timeout; if Redis is unreachable, the
        # lease frees the slot when it expires.
        with anyio.CancelScope(shield=True):
            try:
                await self._release(holder)
            except RedisStateError as exc:
                _log.warning("could not give back a slot of capacity %r: %s", self._name, exc)

    def acquire_on_behalf_of_nowait(self, borrower: object) -> None:
        """Always raise ``anyio.WouldBlock``: only a Redis round trip can tell.

        trioflow (a ``ResourceManager`` slot, ``run_batch``) then calls
        :meth:`acquire_on_behalf_of`.

        Args:
            borrower: Who would hold the slot.

        Raises:
            anyio.WouldBlock: Always.
        """
        raise anyio.WouldBlock

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        """Take a slot for ``borrower``, waiting until one is free.

        Args:
            borrower: Who holds the slot (give it back with :meth:`release_on_behalf_of`).

        Raises:
            RuntimeError: ``borrower`` holds a slot of this capacity already.
            RedisStateError: Redis could not be reached or did not answer in time (nothing
                is held).
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        if borrower in self._held:
            raise RuntimeError(f"{borrower!r} already holds a slot of capacity {self._name!r}")
        holder = secrets.token_hex(8)
        self._waiting += 1
        try:
            while True:
                woken = self._woken  # before asking, so a wake-up during the trip counts
                granted, wait_ms = await self._run("acquire", "acquire", holder)
                if granted:
                    break
                # Until woken, or until a lease may have expired; at the latest a third of the
                # lease, which keeps this waiter's place in the queue alive.
                wait = min(max(int(wait_ms), 1), self._lease_ms / 3) / 1000
                with anyio.move_on_after(wait):
                    await woken.wait()
        except BaseException:
            await self._give_back(holder)  # maybe queued, maybe granted as it was cancelled
            raise
        finally:
            self._waiting -= 1
        self._hold(borrower, holder)

    async def try_acquire_on_behalf_of(self, borrower: object) -> bool:
        """Take a slot for ``borrower`` if one is free now, without waiting in line.

        One round trip. A slot is free now when fewer than ``total`` are held and the tasks
        already waiting (in any process) leave one over: a newcomer never overtakes them.

        Args:
            borrower: Who holds the slot (give it back with :meth:`release_on_behalf_of`).

        Returns:
            Whether the slot was taken.

        Raises:
            RuntimeError: ``borrower`` holds a slot of this capacity already.
            RedisStateError: Redis could not be reached or did not answer in time (nothing
                is held).
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        if borrower in self._held:
            raise RuntimeError(f"{borrower!r} already holds a slot of capacity {self._name!r}")
        holder = secrets.token_hex(8)
        granted, _ = await self._run("try", "try", holder)
        if not granted:
            return False
        self._hold(borrower, holder)  # no checkpoint since the reply: never lost to a cancel
        return True

    def _hold(self, borrower: object, holder: str) -> None:
        self._held[borrower] = holder
        if not self._renewing:
            self._renewing = True
            self._redis.start_soon(self._heartbeat)

    def release_on_behalf_of(self, borrower: object) -> None:
        """Give back ``borrower``'s slot; the Redis write is sent at once in the background.

        Args:
            borrower: Who holds it.

        Raises:
            RuntimeError: ``borrower`` holds no slot of this capacity.
        """
        holder = self._held.pop(borrower, None)
        if holder is None:
            raise RuntimeError(f"{borrower!r} holds no slot of capacity {self._name!r}")
        # Slots given back while the last give-back is on its way go together, in one script:
        # a caller that takes and gives back faster than one round trip never outruns them.
        self._giving_back.append(holder)
        if len(self._giving_back) == 1:
            self._redis.send_soon(
                f"give back slots of capacity {self._name!r}", self._send_given_back
            )

    async def _send_given_back(self) -> None:
        holders, self._giving_back = self._giving_back, []
        await self._release(*holders)

    async def __aenter__(self) -> None:
        await self.acquire_on_behalf_of(anyio.get_current_task().id)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        holder = self._held.pop(anyio.get_current_task().id, None)
        if holder is not None:
            await self._give_back(holder)

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            held = tuple(self._held.values())
            if not held:
                # Started again by the next slot taken: a capacity nobody holds (a user's,
                # gone idle) keeps no task.
                self._renewing = False
                return
            try:
                lost = await self._run("renew", "renew", *held)
            except RedisStateError as exc:
                _log.warning("could not renew the slots of capacity %r: %s", self._name, exc)
                continue
            if lost:
                self._lost += len(lost)
                _log.warning(
                    "capacity %r: %d held slot(s) expired before they could be renewed",
                    self._name,
                    len(lost),
                )

    async def statistics(self) -> RedisCapacityStatistics:
        """Return the slots held and waited for, over all processes and in this one.

        Asynchronous: the figures over all processes are read from Redis.

        Returns:
            A frozen :class:`RedisCapacityStatistics`.

        Raises:
            RedisStateError: Redis could not be reached or did not answer in time.
        """
        borrowed, waiting = await self._run("statistics", "statistics")
        return RedisCapacityStatistics(
            total=self._total,
            borrowed=int(borrowed),
            waiting=int(waiting),
            held=len(self._held),
            waiting_here=self._waiting,
            lost=self._lost,
        )


_IDLE_KEYS = 64  # idle keys' capacities kept for reuse, per keyed capacity


@final
class _Key:
    __slots__ = ("capacity", "users")

    def __init__(self, capacity: RedisCapacity) -> None:
        self.capacity = capacity
        self.users = 0  # borrowers holding or waiting for a slot of the key, in this process


@final
class RedisKeyedCapacity:
    """One :class:`RedisCapacity` per key (per user, say), each shared by all processes.

    Made by ``redis.keyed_capacity(name, total=N, lease=SECONDS)``: at most ``total`` slots
    of one key are held at once, over every process using the name; that is how a
    coordinator shares its per-user limit (it is a ``trioflow.SharedCapacity``)::

        per_user = redis.keyed_capacity("users", total=10)
        if not await per_user.try_acquire("alice", me):
            await per_user.acquire("alice", me)          # waits in line, across processes
        try:
            ...
        finally:
            per_user.release("alice", me)

    A key's capacity is made when a borrower first asks for it and dropped (with its
    heartbeat and its wake-up handler) once no borrower of this process holds or waits for
    it (the last 64 idle ones are kept for reuse); in Redis, a key nobody holds or waits for
    expires within two leases. Memory stays bounded by the keys in use.

    Args:
        redis: The connection.
        name: The capacities' name (a key's capacity is named ``<name>:<key>``).
        total: The most slots of one key held at once, an int >= 1 (the same in every process).
        lease: Seconds a slot lives unless renewed, a finite number > 0.

    Raises:
        TypeError: ``total`` is not an int, or ``lease`` not a number.
        ValueError: ``total`` is below 1, or ``lease`` is not > 0.
    """

    __slots__ = ("_idle", "_keys", "_name", "_redis", "_total", "lease")

    def __init__(self, redis: Session, name: str, *, total: int, lease: float) -> None:
        self._total = check_int(total, "total", minimum=1)
        self.lease = check_number(lease, "lease", minimum=0, strict=True, maximum=86400 * 365)
        self._name = name
        self._redis = redis
        self._keys: dict[str, _Key] = {}
        self._idle: dict[str, _Key] = {}  # keys nobody here holds or waits for, oldest first

    def __repr__(self) -> str:
        return f"RedisKeyedCapacity({self._name!r}, total={self._total}, lease={self.lease:g})"

    @property
    def name(self) -> str:
        """The capacities' name."""
        return self._name

    @property
    def total_tokens(self) -> int:
        """The most slots of one key held at once, by all processes."""
        return self._total

    @property
    def keys(self) -> int:
        """Keys this process holds or waits for a slot of."""
        return len(self._keys)

    def _join(self, key: str) -> RedisCapacity:
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, got {type(key).__name__}")
        entry = self._keys.get(key)
        if entry is None:
            entry = self._idle.pop(key, None)
            if entry is None:
                made = RedisCapacity(
                    self._redis, f"{self._name}:{key}", total=self._total, lease=self.lease
                )
                entry = _Key(made)
            self._keys[key] = entry
        entry.users += 1
        return entry.capacity

    def _leave(self, key: str) -> None:
        entry = self._keys[key]
        entry.users -= 1
        if not entry.users:
            del self._keys[key]
            # The last few idle keys are kept (with their heartbeat, which ends by itself once
            # nothing is held): a user who comes back soon costs no new capacity and task.
            self._idle[key] = entry
            if len(self._idle) > _IDLE_KEYS:
                oldest = next(iter(self._idle))
                dropped = self._idle.pop(oldest).capacity
                self._redis.off_wake(dropped.name, dropped._wake)

    async def try_acquire(self, key: str, borrower: object) -> bool:
        """Take a slot of ``key`` for ``borrower`` if one is free now (one round trip).

        Args:
            key: The key, e.g. a user id.
            borrower: Who holds the slot (give it back with :meth:`release`).

        Returns:
            Whether the slot was taken.

        Raises:
            TypeError: ``key`` is not a str.
            RuntimeError: ``borrower`` holds a slot of ``key`` already.
            RedisStateError: Redis could not be reached or did not answer in time (nothing
                is held).
        """
        capacity = self._join(key)
        try:
            taken = await capacity.try_acquire_on_behalf_of(borrower)
        except BaseException:
            self._leave(key)
            raise
        if not taken:
            self._leave(key)
        return taken

    async def acquire(self, key: str, borrower: object) -> None:
        """Take a slot of ``key`` for ``borrower``, waiting in line (first come, first served).

        Args:
            key: The key.
            borrower: Who holds the slot.

        Raises:
            TypeError: ``key`` is not a str.
            RuntimeError: ``borrower`` holds a slot of ``key`` already.
            RedisStateError: Redis could not be reached or did not answer in time (nothing
                is held, and the waiter left the line).
        """
        capacity = self._join(key)
        try:
            await capacity.acquire_on_behalf_of(borrower)
        except BaseException:
            self._leave(key)
            raise

    def release(self, key: str, borrower: object) -> None:
        """Give back ``borrower``'s slot of ``key``; the Redis write is sent in the background.

        Args:
            key: The key.
            borrower: Who holds it.

        Raises:
            RuntimeError: ``borrower`` holds no slot of ``key``.
        """
        entry = self._keys.get(key)
        if entry is None:
            raise RuntimeError(f"{borrower!r} holds no slot of {self._name!r} key {key!r}")
        entry.capacity.release_on_behalf_of(borrower)
        self._leave(key)
