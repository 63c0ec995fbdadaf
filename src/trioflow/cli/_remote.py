"""Running a step's command on a Dask worker: ``where = "dask"`` with ``trioflow run --dask``.

The command runs on the worker through :func:`~trioflow.cli._steps.run_command`, as a local
step runs here: in its own session, with its timeout, and its whole process group stopped
(SIGTERM, then SIGKILL after the grace period) when the attempt is cancelled. The function
that does it is an ``async def``, so ``trioflow.dask`` runs it under trio on the worker and
cancels it there when the step is cancelled here (a Ctrl-C, a timeout of the run, a
``fail_fast`` stop) or when this process dies (the scheduler then drops its tasks).

The output goes to a log file on the worker, whose content comes back with the outcome and is
appended to the step's log here: the workers need the step's files (a shared filesystem or the
same checkout at the same path), not the run's log directory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import anyio

from ._steps import CommandFailed, run_command

if TYPE_CHECKING:
    import trioflow.dask

# What run_on_worker returns: the log's bytes, and (message, exit code, retryable) on failure.
RemoteOutcome = tuple[bytes, tuple[str, int | None, bool] | None]


async def run_on_worker(
    command: Sequence[str] | str,
    cwd: str,
    env: Mapping[str, str],
    timeout: float | None,  # noqa: ASYNC109 - the attempt's, given to run_command
    grace: float,
    attempt: int,
) -> RemoteOutcome:
    """Run one attempt of a step's command where this runs (a Dask worker).

    Args:
        command: The argument list or shell line.
        cwd: The working directory (the same path as on the machine that runs the workflow).
        env: The variables to set over the worker's own environment.
        timeout: Seconds the attempt may take, or None.
        grace: Seconds a stopped command gets before it is killed.
        attempt: The attempt number, for the log header.

    Returns:
        The log's content, and the failure (message, exit code, retryable) or None.
    """
    handle, name = tempfile.mkstemp(prefix="trioflow-step-", suffix=".log")
    os.close(handle)
    log = Path(name)
    failure: tuple[str, int | None, bool] | None = None
    try:
        try:
            await run_command(
                command,
                cwd=Path(cwd),
                env={**os.environ, **env},
                log_path=log,
                timeout=timeout,
                grace=grace,
                attempt=attempt,
            )
        except CommandFailed as exc:
            failure = (str(exc), exc.exit_code, exc.retryable)
        output = await anyio.to_thread.run_sync(log.read_bytes)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(log.unlink, True)
    return output, failure


def _append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as log:
        log.write(data)


@final
class RemoteSteps:
    """Runs the commands of ``where = "dask"`` steps on a cluster's workers.

    Args:
        cluster: The cluster, open for the run.
    """

    def __init__(self, cluster: trioflow.dask.Cluster) -> None:
        self._cluster = cluster

    async def run_command(
        self,
        command: Sequence[str] | str,
        *,
        cwd: Path,
        env: Mapping[str, str],
        log_path: Path,
        timeout: float | None = None,  # noqa: ASYNC109 - the attempt's, run on the worker
        grace: float,
        attempt: int = 1,
        **_local_only: Any,  # grace_periods, guard: they stop local processes
    ) -> None:
        """Run one attempt on a worker, like :func:`~trioflow.cli._steps.run_command` here.

        Only the variables that differ from this process's environment are sent: the worker
        keeps its own ``PATH``, ``HOME`` and the rest.

        Raises:
            CommandFailed: The command is missing, failed, was killed or timed out.
        """
        from trioflow.dask import on_dask

        changed = {key: value for key, value in env.items() if os.environ.get(key) != value}
        operation = on_dask(
            self._cluster, run_on_worker, command, str(cwd), changed, timeout, grace, attempt
        )
        try:
            output, failure = await operation()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                note = b"--- cancelled: the command on the Dask worker is stopped\n"
                await anyio.to_thread.run_sync(_append, log_path, note)
            raise
        await anyio.to_thread.run_sync(_append, log_path, output)
        if failure is not None:
            message, exit_code, retryable = failure
            raise CommandFailed(message, exit_code=exit_code, retryable=retryable)
