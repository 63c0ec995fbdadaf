"""A Dask cluster open for an ``async with`` block, and the operations that run on it.

:func:`open_cluster` connects a synchronous ``distributed.Client`` (in a worker thread: it
blocks) to a scheduler, or starts a ``LocalCluster`` of worker processes, and closes what it
started when the block ends, also on an error or a cancellation. :func:`on_dask` makes an
operation of one call, like :func:`trioflow.in_process`; the threads that carry the calls
there and the results back are in ``_bridge``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar, final, overload

import anyio
import anyio.to_thread
import distributed

from trioflow._backend import loop_caller
from trioflow._checks import check_bool, check_int, check_name, describe

from ._bridge import Bridge, ClusterStatistics

__all__ = ("Cluster", "on_dask", "open_cluster")

R = TypeVar("R")


@final
class Cluster:
    """A connection to a Dask cluster, open for the block of :func:`open_cluster`.

    Give it to :func:`on_dask` to make operations that run there. It is not made directly.

    Attributes:
        client: The synchronous ``distributed.Client`` (for what trioflow does not wrap:
            ``scatter``, ``upload_file``, ``run``...). Its blocking methods block the event
            loop: call them through ``anyio.to_thread.run_sync``.
    """

    __slots__ = ("_address", "_bridge", "_local", "client")

    def __init__(
        self, client: distributed.Client, bridge: Bridge, local: distributed.LocalCluster | None
    ) -> None:
        self.client = client
        scheduler = client.scheduler
        self._address = str(scheduler.address) if scheduler is not None else ""
        self._bridge = bridge
        self._local = local

    def __repr__(self) -> str:
        kind = "local" if self._local is not None else "remote"
        return f"<trioflow.dask.Cluster {kind} at {self.address}>"

    @property
    def address(self) -> str:
        """The scheduler's address, e.g. ``"tcp://127.0.0.1:8786"``."""
        return self._address

    @property
    def local(self) -> bool:
        """Whether :func:`open_cluster` started this cluster (and stops it at the end)."""
        return self._local is not None

    def statistics(self) -> ClusterStatistics:
        """Return a snapshot of the calls this connection handed to the cluster.

        Returns:
            A :class:`ClusterStatistics`.
        """
        return self._bridge.statistics()


def _connect(
    address: str | None, n_workers: int | None, threads_per_worker: int
) -> tuple[distributed.Client, distributed.LocalCluster | None]:
    """Connect a client (blocking: run in a worker thread)."""
    if address is not None:
        client = distributed.Client(address, set_as_default=False)  # type: ignore[no-untyped-call]
        return client, None
    local = distributed.LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.CRITICAL,  # a failing task is the caller's error, not a log line
        scheduler_kwargs={
            # A task lost with its worker fails at once (WorkerLostError), so that the
            # operation's RetryPolicy decides, and counts, the retries, not the scheduler.
            "allowed_failures": 0,
            # The scheduler serves its HTTP routes even without a dashboard: on a free port,
            # not on 8787, which another cluster on the machine may hold.
            "dashboard_address": "127.0.0.1:0",
        },
    )
    try:
        client = distributed.Client(local, set_as_default=False)  # type: ignore[no-untyped-call]
        return client, local
    except BaseException:
        local.close()
        raise


def _disconnect(client: distributed.Client | None, local: distributed.LocalCluster | None) -> None:
    """Close the client, then the cluster trioflow started (blocking: a worker thread)."""
    try:
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]
    finally:
        if local is not None:
            local.close()


@contextlib.asynccontextmanager
async def open_cluster(
    address: str | None = None, *, n_workers: int | None = None, threads_per_worker: int = 1
) -> AsyncIterator[Cluster]:
    """Connect to a Dask scheduler, or start a local cluster, for the block.

    Example::

        async with trioflow.dask.open_cluster("tcp://scheduler:8786") as cluster:
            result = await trioflow.run_batch(
                [trioflow.dask.on_dask(cluster, analyse, path) for path in paths], limit=64
            )

    With ``address=None`` a ``distributed.LocalCluster`` of worker processes starts on
    127.0.0.1 (no dashboard, Dask's log lines below CRITICAL silenced: a failing task is its
    operation's error, not a log line) and is stopped when the block ends. Its scheduler
    reports a task lost with its worker at once (``allowed_failures=0``), so that the operation's
    :class:`~trioflow.RetryPolicy` retries it; a scheduler of your own retries such a task
    ``distributed.scheduler.allowed-failures`` times (3 by default) before trioflow hears of
    it. The block's end (normal, an error or a cancellation) releases every call still in
    flight, then closes the client (and the local cluster), shielded from cancellation.

    Args:
        address: The scheduler's address (``"tcp://host:8786"``), or None to start a local
            cluster.
        n_workers: Worker processes of the local cluster, an int >= 1; None lets Dask choose
            (about one per core). Only with ``address=None``.
        threads_per_worker: Threads (tasks at once) per worker of the local cluster, an
            int >= 1 (1 suits CPU-bound Python code, which holds the GIL).

    Yields:
        The :class:`Cluster`, for :func:`on_dask`.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``n_workers`` or ``threads_per_worker`` < 1, or ``n_workers`` given with
            an ``address``.
        OSError: The scheduler cannot be reached (Dask's own ``OSError`` after its connect
            timeout, ``distributed.comm.timeouts.connect``).
    """
    if address is not None:
        check_name(address, "address")
    if n_workers is not None:
        check_int(n_workers, "n_workers", minimum=1)
        if address is not None:
            raise ValueError(
                "n_workers is for a local cluster (address=None), got n_workers="
                f"{n_workers!r} with address={address!r}"
            )
    check_int(threads_per_worker, "threads_per_worker", minimum=1)
    call_soon = loop_caller()
    client: distributed.Client | None = None
    local: distributed.LocalCluster | None = None
    try:
        # Shielded: a cancellation while it starts still gets what was started, to close it.
        with anyio.CancelScope(shield=True):
            client, local = await anyio.to_thread.run_sync(
                _connect, address, n_workers, threads_per_worker
            )
        await anyio.lowlevel.checkpoint()
        assert client is not None
        bridge = Bridge(client, call_soon)
        bridge.start()
        try:
            yield Cluster(client, bridge, local)
        finally:
            bridge.refuse_new_calls()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(bridge.close)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_disconnect, client, local)


def _is_async(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the class's, not the instance's
    return not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


@overload
def on_dask(
    cluster: Cluster,
    fn: Callable[..., Awaitable[R]],
    /,
    *args: Any,
    isolate: bool = False,
    **kwargs: Any,
) -> Callable[[], Coroutine[Any, Any, R]]: ...


@overload
def on_dask(
    cluster: Cluster, fn: Callable[..., R], /, *args: Any, isolate: bool = False, **kwargs: Any
) -> Callable[[], Coroutine[Any, Any, R]]: ...


def on_dask(
    cluster: Cluster, fn: Callable[..., Any], /, *args: Any, isolate: bool = False, **kwargs: Any
) -> Callable[[], Coroutine[Any, Any, Any]]:
    """Wrap a call as an operation that runs on a Dask worker.

    Like :func:`trioflow.in_process`, it returns a zero-argument async callable, so it goes
    anywhere an operation does: :func:`~trioflow.run_batch`, :func:`~trioflow.amap`,
    :func:`~trioflow.as_completed`, :func:`~trioflow.hedge`, :func:`~trioflow.resilient`, a
    workflow step. Each call of it submits one task; awaiting it never blocks the event loop.

    Example::

        result = await run_batch([on_dask(cluster, analyse, f) for f in files], limit=64)

    What a cancellation (a timeout, a ``fail_fast`` stop, a cancel scope) does: the task is
    released on the cluster at once, so a task still queued never starts. A task already
    running goes on to its end on the worker (Dask cannot interrupt Python code), keeping its
    worker busy, unless:

    * ``fn`` is an ``async def`` function: it runs under a trio loop on the worker, whose
      cancel scope is cancelled as soon as the worker sees the task released (it looks every
      50 ms);
    * ``isolate=True``: it runs in a child process on the worker (a fresh interpreter, in a
      new session) whose process group is then stopped (SIGTERM, SIGKILL half a second
      later), so the worker is free within a second. It costs the start of a Python
      process per call.

    Args:
        cluster: The cluster, from :func:`open_cluster`.
        fn: A picklable function (a module-level ``def`` or ``async def``, which the workers
            must be able to import; a lambda or a local function is sent by value).
        *args: Its positional arguments (picklable).
        isolate: Run it in a child process that a cancellation kills.
        **kwargs: Its keyword arguments (picklable).

    Returns:
        A zero-argument async callable returning ``fn(*args, **kwargs)``'s value (an async
        ``fn``'s awaited value). It raises ``fn``'s exception, with its own type and a note
        naming the worker; :class:`~trioflow.dask.WorkerLostError` when the worker died under
        it; ``RuntimeError`` when called after the cluster's block ended.

    Raises:
        TypeError: ``cluster`` is not a :class:`Cluster`, ``fn`` is not callable, or
            ``isolate`` is not a bool.
    """
    if not isinstance(cluster, Cluster):
        raise TypeError(f"cluster must be a trioflow.dask.Cluster, got {describe(cluster)}")
    if not callable(fn):
        raise TypeError(f"fn must be a callable, got {describe(fn)}")
    check_bool(isolate, "isolate")
    bridge = cluster._bridge  # this module's own class
    is_async = _is_async(fn)

    async def run_on_dask() -> Any:
        pending = bridge.submit(fn, args, kwargs, is_async=is_async, isolate=isolate)
        try:
            await pending.done.wait()
        except BaseException:
            bridge.cancel(pending)
            raise
        return pending.outcome()

    run_on_dask.__qualname__ = f"on_dask({getattr(fn, '__qualname__', fn)!s})"
    return run_on_dask
