"""``trioflow prune``: remove old runs from the state store, and their logs from the disk.

Which runs go: with ``--keep N``, every run but the newest N; with ``--older-than AGE``, every
run last updated more than AGE ago; with both, the runs that both select (older than AGE and
not among the newest N). A run that a live process is running is never removed: the store
deletes a run only if no live owner holds its lease, in the same transaction, so a run that
starts (or resumes) while ``prune`` looks is kept too.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Protocol, final, runtime_checkable

import anyio
import attrs

import trioflow

from ._run import UsageError, describe_store_error, log_dir

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_MAX_AGE: Final = 100 * 365 * 86400.0  # past this, a datetime cannot go back that far


def parse_age(text: str) -> float:
    """Read an age such as ``30m``, ``12h``, ``7d`` or ``2w`` (also ``45s``, ``1.5d``).

    Args:
        text: The option's value.

    Returns:
        The age in seconds.

    Raises:
        ValueError: ``text`` is not a number followed by one of s, m, h, d, w, or is too large.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"must be an age such as 30m, 12h or 7d, got {text!r}")
    seconds = float(match[1]) * _UNITS[match[2]]
    if not math.isfinite(seconds) or seconds > _MAX_AGE:
        raise ValueError(f"must be an age of at most 100 years, got {text!r}")
    return seconds


@runtime_checkable
class DeletingStore(trioflow.WorkflowStore, Protocol):
    """A workflow store that can delete a run (the three stores of trioflow can)."""

    async def delete_run(self, run_id: str) -> bool:
        """Delete a run unless a live owner holds its lease (``RunLeasedError`` then)."""
        ...


@final
@attrs.frozen(kw_only=True)
class Pruned:
    """What ``trioflow prune`` removed (or, with ``--dry-run``, would remove).

    Attributes:
        removed: The runs removed, newest first.
        running: Runs that matched but are running (a live process holds their lease): kept.
        kept: How many runs stay in the store.
        failures: Log directories that could not be removed: (run id, why).
        dry_run: Whether nothing was removed.
    """

    removed: tuple[trioflow.RunRecord, ...]
    running: tuple[trioflow.RunRecord, ...]
    kept: int
    failures: tuple[tuple[str, str], ...] = ()
    dry_run: bool = False


def select_old(
    records: Sequence[trioflow.RunRecord],
    *,
    keep: int | None,
    older_than: float | None,
    now: datetime,
) -> list[trioflow.RunRecord]:
    """Return the runs that ``--keep`` and ``--older-than`` select for removal.

    Args:
        records: The stored runs, newest first.
        keep: Keep the newest this many, or None.
        older_than: Select runs last updated more than this many seconds ago, or None.
        now: The current time (UTC).

    Returns:
        The selected runs, newest first; running ones included (the caller keeps them).
    """
    selected = list(records if keep is None else records[keep:])
    if older_than is not None:
        cutoff = now - timedelta(seconds=older_than)
        selected = [record for record in selected if record.updated_at < cutoff]
    return selected


def _remove_logs(directory: Path) -> str | None:
    try:
        shutil.rmtree(directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


async def prune(
    store: trioflow.WorkflowStore,
    state: Path | str,
    *,
    keep: int | None,
    older_than: float | None,
    dry_run: bool = False,
) -> Pruned:
    """Remove the runs that ``keep`` and ``older_than`` select, and their log directories.

    Args:
        store: The open store of ``--state``.
        state: Where it is (the logs are beside it).
        keep: Keep the newest this many runs, or None.
        older_than: Remove runs last updated more than this many seconds ago, or None.
        dry_run: Remove nothing; say what would be removed.

    Returns:
        What was removed, and what was kept because it is running.

    Raises:
        UsageError: The store cannot be read or written, or cannot delete runs.
    """
    if not isinstance(store, DeletingStore):
        raise UsageError(f"the store {store!r} cannot delete runs")
    try:
        records = await store.list_runs()
    except trioflow.StoreError as exc:
        raise UsageError(describe_store_error(state, exc)) from None
    removed: list[trioflow.RunRecord] = []
    running: list[trioflow.RunRecord] = []
    failures: list[tuple[str, str]] = []
    now = datetime.now(UTC)
    for record in select_old(records, keep=keep, older_than=older_than, now=now):
        if record.owner is not None:
            running.append(record)
            continue
        if not dry_run:
            try:
                if not await store.delete_run(record.run_id):
                    continue  # deleted meanwhile (another prune)
            except trioflow.RunLeasedError:
                running.append(record)  # it started since it was listed
                continue
            except trioflow.StoreError as exc:
                raise UsageError(describe_store_error(state, exc)) from None
            why = await anyio.to_thread.run_sync(_remove_logs, log_dir(state, record.run_id))
            if why is not None:
                failures.append((record.run_id, why))
        removed.append(record)
    return Pruned(
        removed=tuple(removed),
        running=tuple(running),
        kept=len(records) - len(removed),
        failures=tuple(failures),
        dry_run=dry_run,
    )
