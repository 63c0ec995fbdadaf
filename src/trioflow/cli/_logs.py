"""``trioflow logs RUN STEP [--follow]``: print a step's log, or keep printing it as it grows.

The log is the file the step's attempts append to (``logs/RUN_ID/STEP.log`` beside the state
file), printed byte for byte. With ``--follow`` the command keeps printing what the step writes
until the step ends, as ``tail -f`` would but without being told when to stop: the run's
record in the state store says when. The step has ended when the store holds a record of it
written since the run's current owner took the run, or when nobody runs the run any more (it
ended, was stopped, or its process died). Ctrl-C stops following with exit status 130.
"""

from __future__ import annotations

import difflib
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Final

import anyio

import trioflow

from ._run import UsageError, describe_store_error, log_dir, log_file
from ._select import find_run

FOLLOW_INTERVAL: Final = 0.2
"""Seconds between two looks at the log and the run's record while following."""
_CHUNK: Final = 64 * 1024


def _unknown_step(record: trioflow.RunRecord, step: str) -> UsageError:
    names = list(record.shape)
    close = difflib.get_close_matches(step, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (its steps: {', '.join(names)})"
    return UsageError(f"run {record.run_id} has no step {step!r}{hint}")


def step_ended(record: trioflow.RunRecord, step: str) -> bool:
    """Return whether a step of a stored run is over: it will write no more to its log.

    Args:
        record: The run's record, with its steps.
        step: The step's name.

    Returns:
        True when nobody runs the run any more, or when the store holds a record of the step
        that ended since the run's current owner took it.
    """
    owner = record.owner
    if owner is None:
        return True
    stored = record.steps.get(step)
    finished: datetime | None = None if stored is None else stored.finished_at
    return finished is not None and finished >= owner.since


def _copy(path: Path, position: int, out: BinaryIO) -> int:
    # Copy what the log holds from `position` on; a log that shrank was replaced: start over.
    try:
        with path.open("rb") as log:
            log.seek(0, 2)
            if log.tell() < position:
                position = 0
            log.seek(position)
            while chunk := log.read(_CHUNK):
                out.write(chunk)
                position += len(chunk)
    except FileNotFoundError:
        return 0
    out.flush()
    return position


async def print_log(
    store: trioflow.WorkflowStore,
    state: Path | str,
    run: str,
    step: str,
    *,
    out: BinaryIO,
    follow: bool = False,
    interval: float = FOLLOW_INTERVAL,
) -> None:
    """Print a step's log; with ``follow``, keep printing it until the step ends.

    Args:
        store: The open store of ``--state``.
        state: Where it is (the logs are beside it).
        run: A run id, a unique prefix of one, or ``latest``.
        step: The step's name.
        out: Where the log's bytes go.
        follow: Keep printing as the log grows, until the step ends.
        interval: Seconds between two looks while following.

    Raises:
        UsageError: No such run or step, or the step has no log (and is not running).
    """
    run_id = await find_run(store, state, run)
    record = await _load(store, state, run_id)
    if step not in record.shape:
        raise _unknown_step(record, step)
    path = log_file(log_dir(state, run_id), step)
    position = await anyio.to_thread.run_sync(_copy, path, 0, out)
    if not follow:
        if position == 0 and not await anyio.Path(path).exists():
            stored = record.steps.get(step)
            status = "not run yet" if stored is None else str(stored.status)
            raise UsageError(f"step {step!r} of run {run_id} has no log ({status})")
        return
    while not step_ended(record, step):
        await anyio.sleep(interval)
        position = await anyio.to_thread.run_sync(_copy, path, position, out)
        record = await _load(store, state, run_id)
    # The step's last words were written before the store recorded its end.
    await anyio.to_thread.run_sync(_copy, path, position, out)


async def _load(
    store: trioflow.WorkflowStore, state: Path | str, run_id: str
) -> trioflow.RunRecord:
    try:
        record = await store.load_run(run_id)
    except trioflow.StoreError as exc:
        raise UsageError(describe_store_error(state, exc)) from None
    if record is None:
        raise UsageError(f"run {run_id} is no longer in the state (it was pruned)")
    return record
