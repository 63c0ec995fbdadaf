"""RedisRequestStore: request state in Redis, each request one hash with an expiry.

Keys, under the store's prefix (``trioflow:request:`` by default):

* ``id:<request id>``: the request's hash (its :class:`~trioflow.lifecycle.RequestRecord`),
  expiring ``ttl`` seconds after the request finished; an unfinished one does not expire;
* ``state:<state>``: a sorted set of the ids in each state, scored by when they expire
  (``+inf`` while unfinished);
* ``user:<user id>``: the same for each user;
* ``owner:<token>``: a live coordinator's registration, expiring unless renewed.

Every write of a record is one Lua script (atomic): the hash, its expiry, its move between the
state sets, and the tidying of the sets it touches (members that expired are dropped, and a set
expires with its last member), so memory stays bounded by the requests in flight and those
finished within ``ttl``. A batch of records is one pipelined round trip.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, final

import attrs
import coredis
import coredis.exceptions

from trioflow import RunOwner, StoreError
from trioflow._checks import check_name, check_number
from trioflow.lifecycle import ErrorCategory, RequestRecord, RequestState

__all__ = ("RedisRequestStore",)

_STATES = tuple(RequestState)
_FINISHED = frozenset({RequestState.COMPLETED, RequestState.FAILED, RequestState.CANCELLED})
_UNFINISHED = tuple(state for state in _STATES if state not in _FINISHED)

# KEYS: the hash, the user's set, then the set of every state in _STATES order.
# ARGV: id, the index (1-based) of the new state, the expiry score (seconds since the epoch, or
# "inf"), now, the expected state and owner token ("" for none: write unconditionally), then
# the hash's fields and values.
_WRITE = """
local id, slot, score, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
if ARGV[5] ~= '' then
  local current = redis.call('HMGET', KEYS[1], 'state', 'token')
  if current[1] ~= ARGV[5] or (current[2] or '') ~= ARGV[6] then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
if score == 'inf' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(score) * 1000))
end
local function tidy(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. now)
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #top == 0 then return end
  if top[2] == 'inf' then
    redis.call('PERSIST', key)
  else
    redis.call('PEXPIREAT', key, math.ceil(tonumber(top[2]) * 1000))
  end
end
for i = 3, #KEYS do
  if i - 2 == slot then
    redis.call('ZADD', KEYS[i], score, id)
    tidy(KEYS[i])
  else
    redis.call('ZREM', KEYS[i], id)
  end
end
redis.call('ZADD', KEYS[2], score, id)
tidy(KEYS[2])
return 1
"""

_REDIS_ERRORS = (coredis.exceptions.RedisError, OSError, TimeoutError)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


def _utc(seconds: str) -> datetime:
    return datetime.fromtimestamp(float(seconds), UTC)


def _fields(record: RequestRecord) -> list[str]:
    fields = {
        "id": record.request_id,
        "state": record.state.value,
        "user_id": record.user_id,
        "source": record.source,
        "stages": json.dumps(record.stages),
        "created_at": repr(record.created_at.timestamp()),
        "updated_at": repr(record.updated_at.timestamp()),
    }
    if record.kind is not None:
        fields["kind"] = record.kind
    if record.category is not None:
        fields["category"] = record.category.value
    if record.reason is not None:
        fields["reason"] = record.reason
    owner = record.owner
    if owner is not None:
        fields["host"] = owner.host
        fields["pid"] = str(owner.pid)
        fields["token"] = owner.token
        fields["since"] = repr(owner.since.timestamp())
        if owner.process_started is not None:
            fields["process_started"] = repr(owner.process_started)
    return [item for pair in fields.items() for item in pair]


def _record(raw: Mapping[Any, Any]) -> RequestRecord:
    data = {_text(k): _text(v) for k, v in raw.items()}
    names = json.loads(data["stages"])
    if type(names) is not list or not all(type(n) is str for n in names):
        raise ValueError(f"stages is {names!r}, not a list of names")
    owner = None
    if "token" in data:
        started = data.get("process_started")
        owner = RunOwner(
            host=data["host"],
            pid=int(data["pid"]),
            token=data["token"],
            since=_utc(data["since"]),
            process_started=None if started is None else float(started),
        )
    category = data.get("category")
    return RequestRecord(
        request_id=data["id"],
        state=RequestState(data["state"]),
        user_id=data["user_id"],
        source=data["source"],
        kind=data.get("kind"),
        stages=tuple(names),
        category=None if category is None else ErrorCategory(category),
        reason=data.get("reason"),
        created_at=_utc(data["created_at"]),
        updated_at=_utc(data["updated_at"]),
        owner=owner,
    )


@final
class RedisRequestStore:
    """A request store (:class:`~trioflow.lifecycle.RequestStore`) in Redis, shared by processes.

    Each request is one hash that expires ``ttl`` seconds after the request finished; per-state
    and per-user sorted sets, which expire with their last member, serve :meth:`list` and
    :meth:`fail_interrupted`. The store uses the client it is given and never closes it.

    Example::

        client = coredis.Redis.from_url("redis://cache:6379/0")
        async with client:
            store = RedisRequestStore(client, ttl=3600)
            async with open_coordinator(config, router=router, requests=store) as c:
                ...

    Args:
        client: A ``coredis.Redis`` client (``decode_responses`` either way).
        ttl: Seconds a finished request is kept after it ended.
        prefix: The prefix of every key the store uses.

    Raises:
        TypeError: ``client`` is not a ``coredis.Redis``, ``ttl`` not a number, or
            ``prefix`` not a non-empty str.
        ValueError: ``ttl`` is not > 0, or is NaN or infinite.
    """

    __slots__ = ("_client", "_prefix", "_script", "_ttl")

    def __init__(
        self,
        client: coredis.Redis[Any],
        *,
        ttl: float = 3600.0,
        prefix: str = "trioflow:request:",
    ) -> None:
        if not isinstance(client, coredis.Redis):
            raise TypeError(f"client must be a coredis.Redis, got {client!r}")
        self._ttl = check_number(ttl, "ttl", minimum=0, strict=True)
        self._prefix = check_name(prefix, "prefix")
        self._client = client
        self._script = client.register_script(_WRITE)

    def __repr__(self) -> str:
        return f"<RedisRequestStore prefix={self._prefix!r}>"

    @property
    def ttl(self) -> float:
        """Seconds a finished request is kept after it ended."""
        return self._ttl

    @property
    def prefix(self) -> str:
        """The prefix of every key the store uses."""
        return self._prefix

    # --- keys and plumbing ------------------------------------------------------------------
    def _key(self, request_id: str) -> str:
        return f"{self._prefix}id:{request_id}"

    def _state_key(self, state: RequestState) -> str:
        return f"{self._prefix}state:{state.value}"

    def _user_key(self, user_id: str) -> str:
        return f"{self._prefix}user:{user_id}"

    def _owner_key(self, token: str) -> str:
        return f"{self._prefix}owner:{token}"

    def _fail(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"request store {self._prefix!r} on Redis: {what}: {exc}")

    def _write(
        self, pipe: Any, record: RequestRecord, now: float, expect: RequestRecord | None = None
    ) -> Any:
        finished = record.state in _FINISHED
        score = repr(record.updated_at.timestamp() + self._ttl) if finished else "inf"
        keys = [
            self._key(record.request_id),
            self._user_key(record.user_id),
            *(self._state_key(state) for state in _STATES),
        ]
        expected = ["", ""]
        if expect is not None:
            token = "" if expect.owner is None else expect.owner.token
            expected = [expect.state.value, token]
        args = [
            record.request_id,
            str(_STATES.index(record.state) + 1),
            score,
            repr(now),
            *expected,
            *_fields(record),
        ]
        return self._script(keys, args, client=pipe)

    async def _records(self, ids: Iterable[Any]) -> list[RequestRecord]:
        keys = [self._key(_text(i)) for i in dict.fromkeys(ids)]
        if not keys:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            replies = [pipe.hgetall(key) for key in keys]
        records = []
        for key, reply in zip(keys, replies, strict=True):
            raw = await reply
            if not raw:
                continue  # expired, or gone, between the index and the hash
            try:
                records.append(_record(raw))
            except (KeyError, ValueError, TypeError) as exc:
                raise StoreError(
                    f"request store {self._prefix!r} on Redis: {key!r} is malformed: {exc}"
                ) from exc
        return records

    async def _members(self, keys: Sequence[str], now: float) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            # Exclusive of now: a member scored now expired (the "(" form, which the typing
            # of coredis does not know).
            low: Any = f"({now!r}"
            replies = [pipe.zrangebyscore(key, low, math.inf) for key in keys]
        members: list[Any] = []
        for reply in replies:
            members.extend(await reply)
        return members

    # --- the protocol -----------------------------------------------------------------------
    async def save(self, records: Sequence[RequestRecord]) -> None:
        """Write records, each replacing the stored record with its id, in one round trip.

        Each record is written atomically (one script); the batch is pipelined.

        Args:
            records: The records.

        Raises:
            TypeError: An item is not a RequestRecord.
            StoreError: Redis cannot be reached or refused the write.
        """
        for record in records:
            if not isinstance(record, RequestRecord):
                raise TypeError(f"records must be RequestRecords, got {record!r}")
        if not records:
            return
        now = time.time()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for record in records:
                    self._write(pipe, record, now)
        except _REDIS_ERRORS as exc:
            raise self._fail("cannot write", exc) from exc

    async def load(self, request_id: str) -> RequestRecord | None:
        """Return the record of a request, or None.

        Args:
            request_id: The request's id.

        Returns:
            The record, or None when there is none or it expired.

        Raises:
            StoreError: Redis cannot be reached, or the hash is malformed.
        """
        try:
            records = await self._records([request_id])
        except _REDIS_ERRORS as exc:
            raise self._fail(f"cannot read request {request_id!r}", exc) from exc
        return records[0] if records else None

    async def list(
        self, *, state: RequestState | None = None, user_id: str | None = None
    ) -> tuple[RequestRecord, ...]:
        """Return the stored records, newest first, of a state and of a user if given.

        Args:
            state: Only records in this state.
            user_id: Only records of this user.

        Returns:
            The records.

        Raises:
            TypeError: ``state`` is not a RequestState, or ``user_id`` not a str.
            StoreError: Redis cannot be reached, or a hash is malformed.
        """
        if state is not None and not isinstance(state, RequestState):
            raise TypeError(f"state must be a RequestState or None, got {state!r}")
        if user_id is not None and not isinstance(user_id, str):
            raise TypeError(f"user_id must be a str or None, got {user_id!r}")
        if user_id is not None:
            keys = [self._user_key(user_id)]
        elif state is not None:
            keys = [self._state_key(state)]
        else:
            keys = [self._state_key(s) for s in _STATES]
        try:
            records = await self._records(await self._members(keys, time.time()))
        except _REDIS_ERRORS as exc:
            raise self._fail("cannot read", exc) from exc
        return tuple(
            sorted(
                (
                    r
                    for r in records
                    if (state is None or r.state is state)
                    and (user_id is None or r.user_id == user_id)
                ),
                key=lambda r: (r.created_at, r.request_id),
                reverse=True,
            )
        )

    async def renew_owner(self, owner: RunOwner, ttl: float) -> None:
        """Register ``owner`` for ``ttl`` seconds from now (a key that expires).

        Args:
            owner: The owner.
            ttl: Seconds its registration lives.

        Raises:
            StoreError: Redis cannot be reached.
        """
        try:
            await self._client.set(
                self._owner_key(owner.token), owner.describe(), px=max(1, math.ceil(ttl * 1000))
            )
        except _REDIS_ERRORS as exc:
            raise self._fail("cannot register the coordinator", exc) from exc

    async def release_owner(self, owner: RunOwner) -> None:
        """End ``owner``'s registration.

        Args:
            owner: The owner.

        Raises:
            StoreError: Redis cannot be reached.
        """
        try:
            await self._client.delete([self._owner_key(owner.token)])
        except _REDIS_ERRORS as exc:
            raise self._fail("cannot release the coordinator", exc) from exc

    async def fail_interrupted(self) -> tuple[RequestRecord, ...]:
        """Mark FAILED (``internal``, ``"interrupted"``) each unfinished request of a gone owner.

        Each request is marked by a script that checks it is still in the state, and with the
        owner, it was read with: of several processes recovering at once, one marks it.

        Returns:
            The records as marked, newest first.

        Raises:
            StoreError: Redis cannot be reached, or a hash is malformed.
        """
        try:
            now = time.time()
            keys = [self._state_key(s) for s in _UNFINISHED]
            candidates = [
                r
                for r in await self._records(await self._members(keys, now))
                if r.state not in _FINISHED
            ]
            tokens = list({r.owner.token for r in candidates if r.owner is not None})
            registered: set[str] = set()
            if tokens:
                async with self._client.pipeline(transaction=False) as pipe:
                    replies = [pipe.exists([self._owner_key(t)]) for t in tokens]
                registered = {t for t, reply in zip(tokens, replies, strict=True) if await reply}
            wall = datetime.fromtimestamp(now, UTC)
            gone = [
                r
                for r in candidates
                if r.owner is None or r.owner.token not in registered or not r.owner.alive()
            ]
            if not gone:
                return ()
            marked = [
                attrs.evolve(
                    r,
                    state=RequestState.FAILED,
                    category=ErrorCategory.INTERNAL,
                    reason="interrupted",
                    updated_at=wall,
                )
                for r in gone
            ]
            async with self._client.pipeline(transaction=False) as pipe:
                replies = [
                    self._write(pipe, new, now, expect=old)
                    for old, new in zip(gone, marked, strict=True)
                ]
            won = [r for r, reply in zip(marked, replies, strict=True) if await reply]
        except _REDIS_ERRORS as exc:
            raise self._fail("cannot recover interrupted requests", exc) from exc
        return tuple(sorted(won, key=lambda r: (r.created_at, r.request_id), reverse=True))
