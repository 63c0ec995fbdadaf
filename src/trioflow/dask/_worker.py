"""What runs on a Dask worker: the user's function, in the worker or in a child process.

The event loop side submits :func:`run_call` with a :class:`RemoteCall`, an object Dask does
not look into (a tuple argument with a callable first would be taken for a task). The worker
runs the function in one of three ways:

* a plain function, in the worker's thread: a cancellation cannot interrupt it;
* an ``async def`` function, under a trio loop of its own in the worker's thread, whose
  cancel scope is cancelled when the task is (the worker's task state says so);
* ``isolate=True``: in a child process, in a new session, that is killed (its whole process
  group) when the task is cancelled, so the worker is free again at once.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, final

import anyio
import cloudpickle  # type: ignore[import-untyped]
import distributed

from ._errors import WorkerLostError

__all__ = ("POLL", "RemoteCall", "run_call", "task_cancelled")

POLL: Final = 0.05
"""Seconds between two looks at whether a running task was cancelled."""

_GRACE: Final = 0.5
"""Seconds an isolated child gets after SIGTERM before its process group is killed."""

_INACTIVE = frozenset({"cancelled", "released", "forgotten"})

# Run by the child of an isolated call: read (fn, args, kwargs, is_async) from stdin, write
# ("ok", value) or ("error", exception) to the file named by argv[1].
_CHILD: Final = """
import pickle, sys, traceback
fn, args, kwargs, is_async = pickle.load(sys.stdin.buffer)
try:
    if is_async:
        import anyio
        value = anyio.run(lambda: fn(*args, **kwargs), backend="trio")
    else:
        value = fn(*args, **kwargs)
    outcome = ("ok", value)
except BaseException as exc:
    outcome = ("error", exc)
import cloudpickle  # type: ignore[import-untyped]
try:
    data = cloudpickle.dumps(outcome)
except Exception as problem:
    text = "".join(traceback.format_exception(outcome[1])) if outcome[0] == "error" else ""
    data = cloudpickle.dumps(("error", TypeError(
        f"the isolated call's {'exception' if text else 'value'} cannot be pickled: {problem}"
        + (chr(10) + text if text else "")
    )))
with open(sys.argv[1], "wb") as out:
    out.write(data)
"""


@final
class RemoteCall:
    """One call to run on a worker: the function, its arguments and how to run it.

    Attributes:
        fn: The function (plain or ``async def``).
        args: Its positional arguments.
        kwargs: Its keyword arguments.
        is_async: Whether ``fn`` is an ``async def`` function.
        isolate: Whether to run it in a child process that a cancellation kills.
        key: The Dask key of the task (the worker looks its state up by it).
    """

    __slots__ = ("args", "fn", "is_async", "isolate", "key", "kwargs")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        is_async: bool,
        isolate: bool,
        key: str,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = dict(kwargs)
        self.is_async = is_async
        self.isolate = isolate
        self.key = key

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.fn, self.args, self.kwargs, self.is_async, self.isolate, self.key)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.fn, self.args, self.kwargs, self.is_async, self.isolate, self.key = state


def _worker() -> distributed.Worker | None:
    try:
        return distributed.get_worker()
    except ValueError:
        return None


def task_cancelled(key: str) -> bool:
    """Return whether the task ``key`` running on this worker was cancelled or released.

    Dask cannot interrupt a running task; when its last client releases it (or cancels it, or
    disconnects), the worker marks the task cancelled and lets it run on. Code on the worker
    asks here to stop early.

    Args:
        key: The task's key.

    Returns:
        True when the worker no longer wants the task's result (or is closing); False when it
        does, and outside a worker.
    """
    worker = _worker()
    if worker is None:
        return False
    if worker.status.name in ("closing", "closed", "closing_gracefully", "failed"):
        return True
    task = worker.state.tasks.get(key)
    return task is None or task.state in _INACTIVE


def _where() -> str:
    worker = _worker()
    return "a Dask worker" if worker is None else f"Dask worker {worker.address}"


def run_call(call: RemoteCall) -> Any:
    """Run one call on this worker; what Dask submits for every ``on_dask`` operation.

    Args:
        call: The call.

    Returns:
        The function's value.

    Raises:
        Exception: The function's exception itself, with a note naming the worker.
        WorkerLostError: An isolated child process died without a result.
    """
    try:
        if call.isolate:
            return _in_child(call)
        if call.is_async:
            return anyio.run(_watched, call, backend="trio")
        return call.fn(*call.args, **call.kwargs)
    except Exception as exc:
        exc.add_note(f"trioflow.dask: raised on {_where()}")
        raise


async def _watched(call: RemoteCall) -> Any:
    """Run an async call, cancelling it when its task is cancelled on the worker."""
    value: Any = None
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while not task_cancelled(call.key):  # noqa: ASYNC110 - no event to wait on
                await anyio.sleep(POLL)
            group.cancel_scope.cancel()

        group.start_soon(watch)
        value = await call.fn(*call.args, **call.kwargs)
        group.cancel_scope.cancel()
    return value


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _stop(child: subprocess.Popen[bytes]) -> None:
    """Stop the child's process group: SIGTERM, then SIGKILL after a short grace period."""
    _signal_group(child.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(_GRACE)
    _signal_group(child.pid, signal.SIGKILL)  # the child's own children too
    child.wait()


def _in_child(call: RemoteCall) -> Any:
    payload = cloudpickle.dumps((call.fn, call.args, call.kwargs, call.is_async))
    env = dict(os.environ)
    # The child imports the function's module as the worker did: give it the worker's path.
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    with tempfile.TemporaryDirectory(prefix="trioflow-dask-") as directory:
        out = Path(directory) / "outcome"
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(out)],
            stdin=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        try:
            assert child.stdin is not None
            with child.stdin:
                child.stdin.write(payload)
            while True:
                try:
                    code = child.wait(POLL)
                    break
                except subprocess.TimeoutExpired:
                    if task_cancelled(call.key):
                        _stop(child)
                        return None  # nobody wants the result any more
        except BaseException:
            _stop(child)
            raise
        _signal_group(child.pid, signal.SIGKILL)  # what the call left running
        if not out.exists():
            raise WorkerLostError(
                f"the isolated process of {getattr(call.fn, '__qualname__', call.fn)!s} "
                f"ended without a result ({_exit(code)})"
            )
        kind, value = pickle.loads(out.read_bytes())
    if kind == "error":
        if not isinstance(value, Exception):  # SystemExit, KeyboardInterrupt in the child
            raise RuntimeError(f"the isolated call raised {value!r}")
        raise value
    return value


def _exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
