"""Workflow files served over MCP: run, resume, read and list runs as ``trioflow run`` does.

A run goes through the command line's own runner (:func:`trioflow.cli._run.execute_file`: the
same steps, state file, step logs and JSON), under the MCP call's cancel scope, so a cancelled
call stops the step processes as Ctrl-C does and leaves the run CANCELLED and resumable. Its
events reach the client as progress: the run's id first, then each finished step.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, final

import anyio

import trioflow
from trioflow.cli._render import IGNORED, PlainReporter, QuietOnError
from trioflow.cli._run import (
    DEFAULT_STATE,
    RunOptions,
    UsageError,
    describe_store_error,
    execute_file,
    log_dir,
    summary_from_record,
)
from trioflow.cli._spec import WorkflowSpec, load_spec
from trioflow.lifecycle import ErrorCategory

from ._progress import Progress, Report, open_progress

__all__ = ("WorkflowFiles",)

_FINAL = frozenset({"succeeded", "failed", IGNORED, "skipped", "cancelled"})


@final
class _ProgressReporter:
    """A run's reporter: plain lines on stderr (never stdout), progress to the client."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._lines = QuietOnError(PlainReporter(sys.stderr))
        self._done = 0
        self._total: float | None = None

    def _notify(self, message: str) -> None:
        self._report(self._done, self._total, message)

    def run_started(self, *, run_id: str, workflow: str, total: int, resumed: int) -> None:
        self._lines.run_started(run_id=run_id, workflow=workflow, total=total, resumed=resumed)
        self._done, self._total = resumed, float(total)
        done = f", {resumed} already done" if resumed else ""
        self._notify(f"run {run_id} started: workflow {workflow!r}, {total} steps{done}")

    def step_started(self, name: str, *, attempt: int, command: str) -> None:
        self._lines.step_started(name, attempt=attempt, command=command)

    def step_finished(self, name: str, status: str, *, detail: str, elapsed: float) -> None:
        self._lines.step_finished(name, status, detail=detail, elapsed=elapsed)
        if status in _FINAL:
            self._done += 1
        self._notify(f"{name}: {status}" + (f" ({detail})" if detail else ""))

    def steps_waiting(self, names: Sequence[str]) -> None:
        self._lines.steps_waiting(names)

    def step_output(self, name: str, lines: Sequence[str]) -> None:
        self._lines.step_output(name, lines)

    def message(self, text: str) -> None:
        self._lines.message(text)

    def close(self) -> None:
        self._lines.close()


def _user_error(exc: UsageError) -> UsageError:
    """Mark a usage error (no such run, a leased run, ...) as the caller's: VALIDATION."""
    exc.error_category = ErrorCategory.VALIDATION  # type: ignore[attr-defined]
    return exc


def _users_errors(
    method: Callable[..., Awaitable[dict[str, Any]]],
) -> Callable[..., Awaitable[dict[str, Any]]]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return await method(*args, **kwargs)
        except UsageError as exc:
            raise _user_error(exc) from None

    return call


@final
class WorkflowFiles:
    """The workflow files a server runs, by name, and the state file of their runs."""

    def __init__(self, files: Iterable[str | os.PathLike[str]], state: Path | None) -> None:
        specs: dict[str, WorkflowSpec] = {}
        for file in files:
            spec = load_spec(Path(file))  # SpecError names the file and every problem
            if spec.name in specs:
                raise ValueError(
                    f"two workflow files are named {spec.name!r}: {str(specs[spec.name].path)!r} "
                    f"and {str(spec.path)!r}; give one a different name = ..."
                )
            specs[spec.name] = spec
        self.specs: Mapping[str, WorkflowSpec] = specs
        self.state = DEFAULT_STATE if state is None else state

    @property
    def names(self) -> tuple[str, ...]:
        """The workflows' names, in the order the files were given."""
        return tuple(self.specs)

    @_users_errors
    async def run(self, name: str, resume: str | None, progress: Progress) -> dict[str, Any]:
        """Run (or resume) a workflow; return what ``trioflow run --json`` prints.

        Raises:
            UsageError: As ``trioflow run`` (no such run, a leased or reshaped run, a bad
                state file).
        """
        spec = self.specs[name]
        options = RunOptions(file=str(spec.path), state=self.state, resume=resume)
        async with open_progress(progress) as report:
            outcome = await execute_file(spec, options, _ProgressReporter(report))
        return outcome.to_json()

    async def _store(self) -> trioflow.SQLiteStore | None:
        await anyio.lowlevel.checkpoint()
        return trioflow.SQLiteStore(self.state) if self.state.exists() else None

    @_users_errors
    async def get_run(self, run_id: str) -> dict[str, Any]:
        """Read a stored run in the shape of ``trioflow run --json`` (as ``trioflow show``).

        Raises:
            UsageError: No such run, or the state file cannot be used.
        """
        store = await self._store()
        if store is None:
            raise UsageError(f"no run {run_id!r}: there is no state file at {self.state}")
        try:
            async with store:
                record = await store.load_run(run_id)
        except trioflow.StoreError as exc:
            raise UsageError(describe_store_error(self.state, exc)) from None
        if record is None:
            raise UsageError(f"no run {run_id!r} in the state file {str(self.state)!r}")
        data: dict[str, Any] = summary_from_record(record, log_dir(self.state, run_id)).to_json()
        data["interrupted"] = record.interrupted
        data["created_at"] = record.created_at.isoformat()
        data["updated_at"] = record.updated_at.isoformat()
        return data

    @_users_errors
    async def list_runs(self, limit: int = 20) -> dict[str, Any]:
        """List the most recent runs first: id, workflow, status and start.

        Raises:
            UsageError: The state file cannot be used.
        """
        store = await self._store()
        if store is None:
            return {"runs": []}
        try:
            async with store:
                records = await store.list_runs()
        except trioflow.StoreError as exc:
            raise UsageError(describe_store_error(self.state, exc)) from None
        recent = sorted(records, key=lambda r: r.created_at, reverse=True)[:limit]
        return {
            "runs": [
                {
                    "run_id": r.run_id,
                    "workflow": r.workflow,
                    "status": "interrupted" if r.interrupted else str(r.status),
                    "created_at": r.created_at.isoformat(),
                }
                for r in recent
            ]
        }
