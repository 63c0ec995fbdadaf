"""RedisStore: durable workflow runs in Redis, shared by processes on any number of machines.

Each run is a few keys under the connection's prefix: ``run:<id>`` (a hash: workflow, status,
times, shape), ``run:<id>:steps`` and ``run:<id>:state`` (hashes of JSON records), and
``run:<id>:lease`` (the owner's JSON, with a Redis expiry: the lease's time to live is counted
on the server's clock). ``runs`` lists the runs in the order they were created. Writes that
belong together (the steps and state of ``save_steps``, a lease's check-and-set) are one Lua
script each, so they are atomic; a run is written only by the holder of its lease.

Values arrive as :class:`~trioflow.StoredValue` (JSON text and type name) and are kept as
they are. A record that cannot be read back raises ``StoreError`` naming the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, final

import attrs
from coredis.commands.script import Script

from .. import (
    RunLeasedError,
    RunOwner,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    StoredValue,
    StoreError,
)
from ._session import RedisStateError, Session

__all__ = ("RedisStore",)

_LOAD = """
local head = redis.call('HGETALL', KEYS[1])
if #head == 0 then return false end
return {head, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]),
  redis.call('GET', KEYS[4]) or ''}
"""

# KEYS: runs list, then per run: head, steps, lease. ARGV: the prefix.
_LIST = """
local out = {}
for _, id in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, -1)) do
  local base = ARGV[1] .. id
  local head = redis.call('HGETALL', base)
  if #head > 0 then
    table.insert(out, {head, redis.call('HVALS', base .. ':steps'),
      redis.call('GET', base .. ':lease') or ''})
  end
end
return out
"""

# KEYS: head, steps, state. ARGV: now, now (epoch microseconds), number of steps, then
# name/record pairs, then key/value pairs of state.
_SAVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[3])
for i = 4, 3 + 2 * n, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
for i = 4 + 2 * n, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1], 'updated_t', ARGV[2])
return 1
"""

# KEYS: head. ARGV: now, now (epoch microseconds), status, elapsed.
_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'updated_at', ARGV[1], 'updated_t', ARGV[2],
  'session', '', 'session_t', '')
redis.call('HINCRBYFLOAT', KEYS[1], 'active', ARGV[4])
return 1
"""

# KEYS: head, runs list, run counter. ARGV: run id, now, now (epoch microseconds), workflow,
# fingerprint, shape. A session that died without finish_run counts up to its last write.
_BEGIN = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local h = redis.call('HMGET', KEYS[1], 'session_t', 'updated_t')
  if h[1] and h[1] ~= '' then
    local gap = (tonumber(h[2]) - tonumber(h[1])) / 1000000
    if gap > 0 then redis.call('HINCRBYFLOAT', KEYS[1], 'active', string.format('%.17g', gap)) end
  end
  redis.call('HSET', KEYS[1], 'status', 'running', 'updated_at', ARGV[2], 'updated_t', ARGV[3],
    'session', ARGV[2], 'session_t', ARGV[3])
  return 0
end
redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'workflow', ARGV[4], 'status', 'running',
  'created_at', ARGV[2], 'updated_at', ARGV[2], 'updated_t', ARGV[3], 'fingerprint', ARGV[5],
  'shape', ARGV[6], 'active', '0', 'session', ARGV[2], 'session_t', ARGV[3])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
return 1
"""

# KEYS: lease. ARGV: token, owner JSON, ttl ms, a token that may be replaced (a dead owner's).
# Returns nothing when taken (or given back, ttl 0), else the holder's JSON.
_LEASE = """
local current = redis.call('GET', KEYS[1])
if current then
  local token = cjson.decode(current)['token']
  if token ~= ARGV[1] and token ~= ARGV[4] then return current end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return false
"""

# KEYS: lease. ARGV: token.
_RELEASE = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['token'] == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: head, steps, state, lease, runs list. ARGV: run id, a token whose lease may be deleted
# (a dead owner's). Returns the holder's JSON when another owner holds the lease (nothing
# deleted), else 1 when the run was deleted, 0 when there was none.
_DELETE = """
local current = redis.call('GET', KEYS[4])
if current and cjson.decode(current)['token'] ~= ARGV[2] then return current end
local found = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[1])
return found
"""

_SCRIPTS = {
    name: Script[str](script=text)
    for name, text in {
        "load": _LOAD,
        "list": _LIST,
        "save": _SAVE,
        "finish": _FINISH,
        "begin": _BEGIN,
        "lease": _LEASE,
        "release": _RELEASE,
        "delete": _DELETE,
    }.items()
}


def _plain(inst: type, field: attrs.Attribute[Any], value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, StepStatus):
        return value.value
    return value


def _dumps(value: Any) -> str:
    data = attrs.asdict(value, value_serializer=_plain)
    return json.dumps({k: v for k, v in data.items() if v is not None}, separators=(",", ":"))


def _when(data: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        if data.get(name) is not None:
            data[name] = datetime.fromisoformat(data[name])
    return data


def _step(text: str) -> StepRecord:
    data = _when(json.loads(text), "started_at", "finished_at")
    data["status"] = StepStatus(data["status"])
    if data.get("value") is not None:
        data["value"] = StoredValue(**data["value"])
    return StepRecord(**data)


def _value(text: str) -> StoredValue:
    return StoredValue(**json.loads(text))


def _run_owner(text: str) -> RunOwner:
    return RunOwner(**_when(json.loads(text), "since"))


_MALFORMED = (ValueError, TypeError, KeyError, AttributeError)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _stamps(now: datetime) -> list[str]:
    # The ISO text for records, and integer microseconds for the scripts' exact arithmetic.
    return [now.isoformat(), str((now - _EPOCH) // timedelta(microseconds=1))]


def _now() -> list[str]:
    return _stamps(datetime.now(UTC))


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[0::2], flat[1::2], strict=True))


def _owner(text: str) -> RunOwner | None:
    if not text:
        return None
    owner = _run_owner(text)
    return owner if owner.alive() else None


def _active(head: Mapping[str, str], updated_at: datetime) -> float:
    active = float(head["active"])
    if head.get("session"):
        started = datetime.fromisoformat(head["session"])
        active += max(0.0, (updated_at - started).total_seconds())
    return active


def _counts(records: Sequence[StepRecord]) -> dict[StepStatus, int]:
    counts: dict[StepStatus, int] = {}
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    return counts


def _record(
    head: Mapping[str, str],
    run_id: str,
    steps: Sequence[StepRecord],
    state: Mapping[str, StoredValue],
    owner: RunOwner | None,
    *,
    full: bool,
) -> RunRecord:
    updated_at = datetime.fromisoformat(head["updated_at"])
    return RunRecord(
        run_id=run_id,
        workflow=head["workflow"],
        status=RunStatus(head["status"]),
        created_at=datetime.fromisoformat(head["created_at"]),
        updated_at=updated_at,
        fingerprint=head["fingerprint"],
        shape={name: tuple(after) for name, after in json.loads(head["shape"]).items()},
        step_counts=_counts(steps),
        steps={s.name: s for s in steps} if full else {},
        state=state if full else {},
        active_seconds=_active(head, updated_at),
        owner=owner,
    )


@final
class RedisStore:
    """A ``trioflow.WorkflowStore`` in Redis: runs shared by processes on many machines.

    Made by ``redis.store()``; usable while its connection's ``async with`` block is open::

        async with trioflow.redis.connect("redis://state:6379/0") as redis:
            result = await trioflow.run_workflow(wf, store=redis.store(), run_id="nightly")

    Two processes resuming one run: exactly one takes its lease and runs it, the other gets
    ``trioflow.RunLeasedError``. The lease expires on the Redis server's clock; an owner on
    this host that died frees it at once. Redis keeps what its persistence settings keep: use
    ``appendonly yes`` (or replicas) for runs that must survive a restart of Redis.

    Args:
        redis: The connection.
    """

    __slots__ = ("_redis",)

    def __init__(self, redis: Session) -> None:
        self._redis = redis

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self._redis.prefix!r}>"

    def _key(self, run_id: str, part: str = "") -> str:
        key = self._redis.key("run", run_id)
        return f"{key}:{part}" if part else key

    async def _run(self, what: str, script: str, keys: Sequence[str], args: Sequence[str]) -> Any:
        redis = self._redis
        try:
            return await redis.call(
                what, lambda: _SCRIPTS[script](keys=keys, args=args, client=redis.client)
            )
        except RedisStateError as exc:
            raise StoreError(f"workflow store in redis: {exc}") from exc

    def _malformed(self, run_id: str, exc: Exception) -> StoreError:
        return StoreError(
            f"workflow store in redis: run {run_id!r} has a malformed record: "
            f"{type(exc).__name__}: {exc}"
        )

    async def load_run(self, run_id: str) -> RunRecord | None:
        """Return a stored run with its steps and state, or None when there is none.

        Args:
            run_id: The run's id.

        Returns:
            The run's record, or None.

        Raises:
            StoreError: Redis could not be read, or the record is malformed.
        """
        keys = [self._key(run_id, p) for p in ("", "steps", "state", "lease")]
        found = await self._run(f"load run {run_id!r}", "load", keys, ())
        if not found:
            return None
        try:
            head, steps, state, lease = found
            records = [_step(t) for t in _pairs(steps).values()]
            values = {k: _value(t) for k, t in _pairs(state).items()}
            return _record(_pairs(head), run_id, records, values, _owner(lease), full=True)
        except _MALFORMED as exc:
            raise self._malformed(run_id, exc) from exc

    async def list_runs(self) -> tuple[RunRecord, ...]:
        """Return every stored run, newest first, without steps and state (counts only).

        Returns:
            The runs' records.

        Raises:
            StoreError: Redis could not be read, or a record is malformed.
        """
        prefix = self._key("")
        found = await self._run("list runs", "list", [self._redis.key("runs")], [prefix])
        runs: list[RunRecord] = []
        for head, steps, lease in found:
            fields = _pairs(head)
            run_id = fields.get("run_id", "?")
            try:
                records = [_step(t) for t in steps]
                runs.append(
                    _record(fields, fields["run_id"], records, {}, _owner(lease), full=False)
                )
            except _MALFORMED as exc:
                raise self._malformed(run_id, exc) from exc
        return tuple(runs)

    async def begin_run(
        self, run_id: str, *, workflow: str, fingerprint: str, shape: Mapping[str, Sequence[str]]
    ) -> None:
        """Create a run, or mark an existing one RUNNING again (a resume: a new session).

        Args:
            run_id: The run's id.
            workflow: The workflow's name.
            fingerprint: Digest of the workflow's shape.
            shape: Step name -> names it comes after.

        Raises:
            StoreError: Redis could not be written.
        """
        shape_json = json.dumps({name: list(after) for name, after in shape.items()})
        args = [run_id, *_now(), workflow, fingerprint, shape_json]
        keys = [self._key(run_id), self._redis.key("runs"), self._redis.key("runs", "seq")]
        await self._run(f"begin run {run_id!r}", "begin", keys, args)

    async def acquire_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None:
        """Take the lease of a run for ``ttl`` seconds, unless a live owner holds it.

        One atomic check-and-set; an owner on this host whose process is gone is replaced in a
        second one, which succeeds only if that owner still holds the lease.

        Args:
            run_id: The run's id.
            owner: Who takes it.
            ttl: Seconds it lives unless renewed (on the Redis server's clock).

        Returns:
            None when ``owner`` now holds the lease; else the live owner that holds it.

        Raises:
            StoreError: Redis could not be read or written.
        """
        text = _dumps(owner)
        ttl_ms = str(max(0, round(ttl * 1000)))
        keys = [self._key(run_id, "lease")]
        what = f"lease of run {run_id!r}"
        current = await self._run(what, "lease", keys, [owner.token, text, ttl_ms, ""])
        if not current:
            return None
        try:
            holder = _run_owner(current)
        except _MALFORMED as exc:
            raise self._malformed(run_id, exc) from exc
        if holder.alive():
            return holder
        again = await self._run(what, "lease", keys, [owner.token, text, ttl_ms, holder.token])
        return None if not again else _run_owner(again)

    async def renew_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None:
        """Extend ``owner``'s lease to ``ttl`` seconds from now.

        Args:
            run_id: The run's id.
            owner: The owner that holds it.
            ttl: Seconds it lives from now.

        Returns:
            None when renewed (or taken again, when it was free); else the owner that took it.

        Raises:
            StoreError: Redis could not be read or written.
        """
        return await self.acquire_lease(run_id, owner, ttl)

    async def release_lease(self, run_id: str, owner: RunOwner) -> None:
        """Give a lease back, if ``owner`` still holds it.

        Args:
            run_id: The run's id.
            owner: The owner that took it.

        Raises:
            StoreError: Redis could not be written.
        """
        keys = [self._key(run_id, "lease")]
        await self._run(f"release lease of run {run_id!r}", "release", keys, [owner.token])

    async def save_steps(
        self, run_id: str, steps: Sequence[StepRecord], state: Mapping[str, StoredValue]
    ) -> None:
        """Write step records and changed state of a run, in one atomic script.

        Args:
            run_id: The run's id (begun with :meth:`begin_run`).
            steps: Records that replace earlier records of the same steps.
            state: State values that replace earlier values of the same keys.

        Raises:
            StoreError: Redis could not be written, or the run was never begun.
        """
        args = [*_now(), str(len(steps))]
        for record in steps:
            args += (record.name, _dumps(record))
        for key, value in state.items():
            args += (key, _dumps(value))
        keys = [self._key(run_id, p) for p in ("", "steps", "state")]
        if not await self._run(f"save steps of run {run_id!r}", "save", keys, args):
            raise StoreError(f"workflow store in redis: run {run_id!r} was never begun")

    async def finish_run(self, run_id: str, status: RunStatus, *, elapsed: float) -> None:
        """Record how a run ended, and how long this session of it ran.

        Args:
            run_id: The run's id.
            status: The final status.
            elapsed: Seconds this session ran (added to ``active_seconds``).

        Raises:
            StoreError: Redis could not be written, or the run was never begun.
        """
        args = [*_now(), status.value, repr(float(elapsed))]
        if not await self._run(f"finish run {run_id!r}", "finish", [self._key(run_id)], args):
            raise StoreError(f"workflow store in redis: run {run_id!r} was never begun")

    async def delete_run(self, run_id: str) -> bool:
        """Delete a run with its steps, state and lease, unless a live owner holds its lease.

        One atomic script; the lease of an owner on this host whose process is gone is
        deleted with the run, in a second one that succeeds only if that owner still holds it.

        Args:
            run_id: The run's id.

        Returns:
            True when the run was deleted, False when there was no such run.

        Raises:
            RunLeasedError: A live owner holds the run's lease (it is running); nothing was
                deleted.
            StoreError: Redis could not be read or written.
        """
        keys = [self._key(run_id, p) for p in ("", "steps", "state", "lease")]
        keys.append(self._redis.key("runs"))
        what = f"delete run {run_id!r}"
        found = await self._run(what, "delete", keys, [run_id, ""])
        if isinstance(found, str):
            try:
                holder = _run_owner(found)
            except _MALFORMED as exc:
                raise self._malformed(run_id, exc) from exc
            if holder.alive():
                raise RunLeasedError(run_id, holder)
            found = await self._run(what, "delete", keys, [run_id, holder.token])
            if isinstance(found, str):  # another owner took the lease meanwhile
                raise RunLeasedError(run_id, _run_owner(found))
        return bool(found)
