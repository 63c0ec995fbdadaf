"""Run leases: which process executes a stored run, whether it still lives, and the heartbeat.

A process that runs (or resumes) a stored run first takes the run's lease in the store, an
atomic check-and-set: the lease is free, expired, held by a process that is gone, or it is
refused with ``RunLeasedError`` naming its owner. While the run goes on, a heartbeat in the
run's task group renews the lease every third of its time to live; the run releases it
(shielded) when it ends, however it ends. Lease times are wall-clock (``datetime.now(UTC)``):
they are shared between processes, maybe on several hosts.

A process that dies leaves its lease behind. On another host, it is free once it expires. On
this host the store asks :meth:`RunOwner.alive` (``psutil``: the pid exists, is not a zombie,
and started when the owner says it did, so a reused pid does not count), and a dead owner's
lease is free at once.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol, final

import anyio
import anyio.abc
import attrs
import psutil  # type: ignore[import-untyped]

from .._errors import RunLeasedError

__all__ = ("DEFAULT_LEASE_TTL", "Lease", "RunOwner", "live_owner")

DEFAULT_LEASE_TTL = 15.0
"""Seconds a run's lease lives unless renewed (the heartbeat renews it every third of that)."""

_HOST = socket.gethostname()


def _process_started(pid: int) -> float | None:
    try:
        started: float = psutil.Process(pid).create_time()
    except psutil.Error:
        return None
    return started


@final
@attrs.frozen(kw_only=True)
class RunOwner:
    """The process that holds a run's lease: the one executing the run.

    Attributes:
        host: The host name of its machine (``socket.gethostname()``).
        pid: Its process id.
        since: When it took the lease (UTC).
        token: A random hex string, one per ``run_workflow`` call: two calls of one process
            are two owners.
        process_started: When the process started (seconds since the epoch, as ``psutil``
            reports it), so that another process given the same pid later is not taken for
            it; None when unknown.
    """

    host: str
    pid: int
    since: datetime
    token: str
    process_started: float | None = None

    @classmethod
    def current(cls) -> RunOwner:
        """Return a new owner for this process (a fresh token, ``since`` now).

        Returns:
            The owner.
        """
        pid = os.getpid()
        return cls(
            host=_HOST,
            pid=pid,
            since=datetime.now(UTC),
            token=secrets.token_hex(8),
            process_started=_process_started(pid),
        )

    def alive(self) -> bool:
        """Return whether the owner's process may still be running.

        Returns:
            False when the owner is on this host and its process is gone (no such pid, a
            zombie, or a pid now used by a process that started at another time); True
            otherwise, including for an owner on another host, which only its lease's expiry
            can tell dead.
        """
        if self.host != _HOST:
            return True
        try:
            process = psutil.Process(self.pid)
            if (
                self.process_started is not None
                and abs(process.create_time() - self.process_started) > 0.005
            ):
                return False
            zombie: bool = process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:  # not allowed to look: assume it lives
            return True
        return not zombie

    def describe(self) -> str:
        """Say who the owner is, for messages.

        Returns:
            E.g. ``"pid 1234 on host 'build-1' since 2026-12-01 12:00:00 UTC"``.
        """
        since = self.since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"pid {self.pid} on host {self.host!r} since {since}"


def live_owner(
    holder: RunOwner | None, expires_at: datetime | None, now: datetime
) -> RunOwner | None:
    """Return the holder of a lease if the lease still binds: not expired, its owner alive.

    Stores use this to decide whether a lease may be taken, and what ``RunRecord.owner`` is.

    Args:
        holder: The stored owner, or None when there is no lease.
        expires_at: When the stored lease expires.
        now: The current wall-clock time (UTC).

    Returns:
        The holder, or None when the lease is free.
    """
    if holder is None or expires_at is None or expires_at <= now or not holder.alive():
        return None
    return holder


class _LeaseStore(Protocol):
    # The lease methods of a WorkflowStore (the protocol lives with the stores, which use this
    # module).
    async def acquire_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None: ...

    async def renew_lease(self, run_id: str, owner: RunOwner, ttl: float) -> RunOwner | None: ...

    async def release_lease(self, run_id: str, owner: RunOwner) -> None: ...


@final
class Lease:
    """The lease a run holds while it executes (internal).

    Args:
        store: The run's store.
        run_id: The run's id.
        ttl: Seconds the lease lives unless renewed.
    """

    __slots__ = ("_scope", "_stopped", "owner", "run_id", "store", "ttl")

    def __init__(self, store: _LeaseStore, run_id: str, ttl: float) -> None:
        self.store = store
        self.run_id = run_id
        self.ttl = ttl
        self.owner = RunOwner.current()
        self._scope: anyio.CancelScope | None = None
        self._stopped = False

    async def acquire(self) -> None:
        """Take the lease.

        Raises:
            RunLeasedError: Another live owner holds it.
            Exception: What the store raised.
        """
        holder = await self.store.acquire_lease(self.run_id, self.owner, self.ttl)
        if holder is not None:
            raise RunLeasedError(self.run_id, holder)

    async def keep(
        self,
        lost: Callable[[Exception], Any],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Renew the lease every third of its time to live, until :meth:`stop`.

        Shielded from the caller's cancellation, so that the lease stays renewed while a
        cancelled run compensates and records its end; :meth:`stop` ends it.

        Args:
            lost: Called with the exception when the lease cannot be renewed: a
                ``RunLeasedError`` when another owner took it (it had expired), or what the
                store raised. The heartbeat then ends.
            task_status: Started once the heartbeat runs.
        """
        with anyio.CancelScope(shield=True) as scope:
            self._scope = scope
            if self._stopped:  # stopped before it began: end at once
                scope.cancel()
            task_status.started()
            while True:
                await anyio.sleep(self.ttl / 3)
                try:
                    holder = await self.store.renew_lease(self.run_id, self.owner, self.ttl)
                except Exception as exc:
                    lost(exc)
                    return
                if holder is not None:
                    lost(RunLeasedError(self.run_id, holder, lost=True))
                    return

    def stop(self) -> None:
        """End the heartbeat (also one that has not begun yet)."""
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def release(self) -> Exception | None:
        """Give the lease back (shielded); a lease another owner took is left alone.

        Returns:
            What the store raised, if it failed (the lease then expires by itself).
        """
        with anyio.CancelScope(shield=True):
            try:
                await self.store.release_lease(self.run_id, self.owner)
            except Exception as exc:
                return exc
        return None
