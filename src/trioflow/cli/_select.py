"""Which stored run a command means: a run id, a unique prefix of one, or ``latest``.

``trioflow show``, ``trioflow logs`` and ``trioflow run --resume`` take a run id the way git
takes a commit: the whole id, any prefix that only one run's id starts with, or ``latest`` for
the newest run. An ambiguous prefix is an error that lists the runs it matches; an unknown one
is an error too (exit status 2). A run whose id is exactly the text wins over any prefix.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

import anyio

import trioflow

from ._run import UsageError, describe_store_error, open_store

LATEST: Final = "latest"
"""The word that selects the newest run."""
_SHOWN: Final = 10  # candidates listed in the message of an ambiguous prefix


def select_run(run_ids: Sequence[str], text: str, *, where: str) -> str:
    """Return the id of the run that ``text`` selects among ``run_ids`` (newest first).

    Args:
        run_ids: The stored runs' ids, newest first (as ``list_runs`` returns them).
        text: A run id, a prefix of one, or ``latest``.
        where: The state's name, for messages (``the state file '.trioflow/state.db'``).

    Returns:
        The selected run's id.

    Raises:
        UsageError: No run matches, or more than one does.
    """
    if text in run_ids:
        return text
    if text == LATEST:
        if not run_ids:
            raise UsageError(f"there is no run in {where} yet")
        return run_ids[0]
    matches = [run_id for run_id in run_ids if run_id.startswith(text)] if text else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no run {text!r} in {where}")
    shown = ", ".join(matches[:_SHOWN])
    more = f" and {len(matches) - _SHOWN} more" if len(matches) > _SHOWN else ""
    raise UsageError(
        f"run id prefix {text!r} is ambiguous: it matches {len(matches)} runs "
        f"({shown}{more}); give more of the id"
    )


def describe_state(state: Path | str) -> str:
    """Name the state for messages.

    Args:
        state: The state file, or a Redis URL.

    Returns:
        E.g. ``the state file '.trioflow/state.db'``.
    """
    return f"the state {state}" if isinstance(state, str) else f"the state file {str(state)!r}"


@contextlib.asynccontextmanager
async def open_existing(state: Path | str, run: str) -> AsyncIterator[trioflow.WorkflowStore]:
    """Open the store of ``--state`` to read runs from it, without creating a state file.

    Args:
        state: The state file, or a Redis URL.
        run: The run the command looks for, for the message when there is no state file.

    Yields:
        The store.

    Raises:
        UsageError: There is no state file there, or the store cannot be opened.
    """
    if isinstance(state, Path) and not await anyio.Path(state).exists():
        raise UsageError(f"no run {run!r} in {describe_state(state)}")
    async with open_store(state) as store:
        yield store


async def find_run(store: trioflow.WorkflowStore, state: Path | str, text: str) -> str:
    """Return the id of the stored run that ``text`` selects (see :func:`select_run`).

    Args:
        store: The open store.
        state: Where it is, for messages.
        text: A run id, a prefix of one, or ``latest``.

    Returns:
        The run's id.

    Raises:
        UsageError: No run or several runs match, or the store cannot be read.
    """
    try:
        if text != LATEST and await store.load_run(text) is not None:
            return text  # the whole id: no need to list every run
        run_ids = [record.run_id for record in await store.list_runs()]
    except trioflow.StoreError as exc:
        raise UsageError(describe_store_error(state, exc)) from None
    return select_run(run_ids, text, where=describe_state(state))
