"""``trioflow run``: turn a workflow file into a ``trioflow.Workflow`` and run it durably.

Built only on the public API: every step is an async function that runs its command with
:func:`run_command`; ``run_workflow`` schedules the steps with a ``ResourceManager`` (the
``max_parallel`` limit and the named pools), retries them with a ``RetryPolicy``, and records
every step in an ``SQLiteStore`` so that ``--resume`` can finish an interrupted run. SIGINT,
SIGTERM and SIGHUP cancel the run inside its task group: the steps' processes are stopped and
the run is recorded CANCELLED.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import shlex
import shutil
import signal
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, final

import anyio
import attrs

import trioflow

from ._guard import ProcessGuard, open_guard
from ._remote import RemoteSteps
from ._render import IGNORED, Reporter, RunSummary, StepRow
from ._spec import ResolvedStep, StepSpec, WorkflowSpec
from ._steps import (
    GRACE_PERIOD,
    CommandFailed,
    GracePeriods,
    attempt_output,
    describe_command,
    log_size,
    placeholders,
    run_command,
)
from ._uptodate import (
    all_generated,
    last_keys,
    sources_digest,
    step_key,
    success_value,
    was_up_to_date,
)

DEFAULT_STATE: Final = Path(".trioflow/state.db")
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_BROKEN_PIPE: Final = 141  # 128 + SIGPIPE, as a shell reports a command it killed
# The signals that stop a run, with the exit status a shell gives a process they kill. SIGHUP
# comes when the terminal closes: the steps run in sessions of their own and would not get it.
_STOP_SIGNALS: Final[Mapping[signal.Signals, int]] = {
    signal.SIGINT: 130,
    signal.SIGTERM: 143,
    **({signal.SIGHUP: 129} if hasattr(signal, "SIGHUP") else {}),
}


class UsageError(Exception):
    """A problem with the command line, a file or the state: exit status 2, no traceback."""


@final
@attrs.frozen(kw_only=True)
class RunOptions:
    """The options of ``trioflow run``.

    Attributes:
        file: The workflow file as given on the command line.
        state: The state file, or a Redis URL (``redis://HOST:PORT/DB``) whose database keeps
            the runs, shared by every machine that uses it.
        resume: The id of the run to resume, or None for a new run.
        max_parallel: Overrides the file's ``max_parallel``.
        keep_going: Let independent steps go on after a failure.
        verbose: Print each command as it starts.
        grace: Seconds a stopped command gets before it is killed.
        dask: The address of the Dask scheduler whose workers run the ``where = "dask"``
            steps, or None to run them here.
        targets: The step (or matrix) names given on the command line; none: every step.
        only: Run the targets alone, not the steps they come after.
        force: Run these steps even when they are up to date.
        force_all: Run every step even when it is up to date.
        show_output: Print every step's output after each attempt (as ``show_output = true``
            does for one step).
    """

    file: str
    state: Path | str = DEFAULT_STATE
    resume: str | None = None
    max_parallel: int | None = None
    keep_going: bool = False
    verbose: bool = False
    grace: float = GRACE_PERIOD
    dask: str | None = None
    targets: tuple[str, ...] = ()
    only: bool = False
    force: frozenset[str] = frozenset()
    force_all: bool = False
    show_output: bool = False


@final
@attrs.frozen(kw_only=True)
class RunOutcome:
    """What ``trioflow run`` reports at the end.

    Attributes:
        summary: The run's summary.
        exit_status: 0, 1, 130 (SIGINT), 143 (SIGTERM) or 129 (SIGHUP).
        resume_command: The command that finishes the run, when it did not succeed.
    """

    summary: RunSummary
    exit_status: int
    resume_command: str | None

    def to_json(self) -> dict[str, object]:
        """Return what ``trioflow run --json`` prints: the summary, exit status, resume command.

        Returns:
            The summary's JSON (:meth:`RunSummary.to_json`) with ``exit_status`` and
            ``resume_command``.
        """
        data: dict[str, object] = self.summary.to_json()
        data["exit_status"] = self.exit_status
        data["resume_command"] = self.resume_command
        return data


def new_run_id() -> str:
    """Return a fresh run id that sorts by start time, e.g. ``20240601-141503-3fa2``.

    Returns:
        The id.
    """
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def state_location(text: str) -> Path | str:
    """Read ``--state``: a Redis URL stays a string, anything else is a file path.

    Args:
        text: The option's value.

    Returns:
        The URL, or the path.
    """
    return text if text.startswith(_REDIS_SCHEMES) else Path(text)


def log_dir(state: Path | str, run_id: str) -> Path:
    """Return the directory of a run's step logs: ``logs/RUN_ID`` beside the state file.

    With the state in Redis, the logs stay on this machine, beside the default state file.

    Args:
        state: The state file, or a Redis URL.
        run_id: The run's id.

    Returns:
        The directory (it may not exist yet).
    """
    path = DEFAULT_STATE if isinstance(state, str) else state
    return path.parent / "logs" / run_id


def log_file(logs: Path, step: str) -> Path:
    """Return a step's log file in a run's log directory: ``STEP.log``.

    A matrix step's name can hold a ``/`` (``test[shard=1/3]``); such characters are
    percent-encoded (``test[shard=1%2F3].log``) so that every log is a file of the directory.

    Args:
        logs: The run's log directory.
        step: The step's name.

    Returns:
        The log file's path.
    """
    return logs / (urllib.parse.quote(step, safe="[]=,.-_+@") + ".log")


@contextlib.asynccontextmanager
async def open_store(state: Path | str) -> AsyncIterator[trioflow.WorkflowStore]:
    """Open the store of ``--state``: an ``SQLiteStore``, or a Redis store for a URL.

    Args:
        state: The state file, or a Redis URL.

    Yields:
        The store.

    Raises:
        UsageError: The Redis extra is not installed, or Redis cannot be reached.
    """
    if not isinstance(state, str):
        async with trioflow.SQLiteStore(state) as store:
            yield store
        return
    try:
        from trioflow import redis as shared  # the optional extra, imported only for a URL
    except ImportError as exc:
        raise UsageError(
            f"--state {state} needs the redis extra: pip install 'trioflow[redis]' ({exc})"
        ) from None
    async with contextlib.AsyncExitStack() as stack:
        try:
            redis = await stack.enter_async_context(shared.connect(state))
        except (shared.RedisStateError, ValueError) as exc:
            raise UsageError(f"cannot use the state {state!r}: {exc}") from None
        yield redis.store()


def resume_command(options: RunOptions, run_id: str) -> str:
    """Return the exact command that resumes a run.

    Args:
        options: The options the run was started with.
        run_id: The run's id.

    Returns:
        E.g. ``trioflow run build.toml --resume 20240601-141503-3fa2``.
    """
    words = [*program(), "run", options.file, *options.targets, "--resume", run_id]
    if options.only:
        words.append("--only")
    if options.state != DEFAULT_STATE:
        words += ["--state", str(options.state)]
    if options.dask is not None:
        words += ["--dask", options.dask]
    return shlex.join(words)


def program() -> list[str]:
    """Return the words that started this command: ``trioflow`` or ``python -m trioflow``.

    After ``python3 -m trioflow`` the console script may not be installed or on ``PATH`` (pip
    installs it in a directory it only warns about), so a printed command repeats the
    interpreter: by name when that name finds the same interpreter on ``PATH``, else by path.

    Returns:
        The program's words, to be followed by the arguments.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None or spec.name != "trioflow.__main__":
        return ["trioflow"]
    python = sys.executable
    found = shutil.which(os.path.basename(python))
    if found is not None and os.path.abspath(found) == os.path.abspath(python):
        python = os.path.basename(python)
    return [python, "-m", "trioflow"]


def _retry_policy(step: StepSpec) -> trioflow.RetryPolicy | None:
    if step.retries == 0:
        return None
    try:
        largest = step.retry_delay * step.backoff ** (step.retries - 1)
    except OverflowError:
        largest = math.inf
    return trioflow.RetryPolicy(
        attempts=step.retries + 1,
        initial_delay=step.retry_delay,
        multiplier=step.backoff,
        max_delay=max(step.retry_delay, min(largest, 86400.0)),
        on=lambda exc: isinstance(exc, CommandFailed) and exc.retryable,
        log_retries=False,  # the reporter says "attempt failed; retrying in ..." already
    )


def step_fingerprint(step: StepSpec, workflow_env: Mapping[str, str] | None = None) -> str:
    """Return a digest of what a step does: its command, its environment and its directory.

    A resumed run runs a step that succeeded earlier again when this changed since. Timeouts,
    retries and conditions are not part of it: they decide whether and how often the step
    runs, not what a success did.

    Args:
        step: The step of the workflow file.
        workflow_env: The file's ``[env]`` table (as written), part of every step's
            environment; a file without one has the digest it had before ``[env]`` existed.

    Returns:
        A hex digest.
    """
    parts: list[object] = [
        list(step.command) if not step.is_shell else step.command,
        sorted(step.env.items()),
        step.cwd,
    ]
    if workflow_env:
        parts.append(list(workflow_env.items()))  # in order: a value sees the ones before it
    definition = json.dumps(parts, separators=(",", ":"))
    return hashlib.sha256(definition.encode()).hexdigest()[:32]


def step_command(
    spec: WorkflowSpec, step: StepSpec, *, run_id: str, logs: Path
) -> tuple[tuple[str, ...] | str, Path, dict[str, str]]:
    """Return a step's command, working directory and environment, everything interpolated.

    Relative entries of ``PATH`` (``.venv/bin``) are made absolute against the step's
    working directory: a program is found there whatever directory trioflow was started in,
    and a ``cd`` inside a shell line does not lose it.

    Args:
        spec: The workflow file.
        step: The step.
        run_id: The run's id.
        logs: The run's log directory.

    Returns:
        The command (argument list or shell line), the directory it runs in (the workflow
        file's directory, or ``cwd`` relative to it) and its complete environment.
    """
    values = placeholders(run_id=run_id, step=step.name, logs=logs)
    resolved = spec.resolve(step, placeholders=values.__getitem__)
    env = dict(os.environ)
    env.update(resolved.env)
    if "PATH" in resolved.env:
        env["PATH"] = os.pathsep.join(
            str(resolved.cwd / entry) if entry and not os.path.isabs(entry) else entry
            for entry in env["PATH"].split(os.pathsep)
        )
    env.update(TRIOFLOW_RUN_ID=run_id, TRIOFLOW_STEP=step.name, TRIOFLOW_LOG_DIR=values["logs"])
    return resolved.command, resolved.cwd, env


def _key_fields(spec: WorkflowSpec, step: StepSpec) -> ResolvedStep:
    """The step's fields as its up-to-date key sees them: the run's own placeholders as written."""
    values = {"python": sys.executable, "step": step.name}
    return spec.resolve(step, placeholders=lambda name: values.get(name, "{" + name + "}"))


def current_key(spec: WorkflowSpec, step: StepSpec) -> tuple[str, bool]:
    """Return a step's up-to-date key as its files are now, and whether its outputs exist.

    Reads every file its ``sources`` match: call it in a worker thread.

    Args:
        spec: The workflow file.
        step: A step with ``sources``.

    Returns:
        The key, and whether every ``generates`` pattern matches something.
    """
    fields = _key_fields(spec, step)
    digest = sources_digest(fields.cwd, fields.sources)
    key = step_key(fields.command, fields.env, fields.cwd, digest)
    return key, all_generated(fields.cwd, fields.generates)


async def up_to_date_steps(spec: WorkflowSpec, state: Path | str) -> set[str]:
    """Return the steps a run would skip as up to date, as the files are now (``--dry-run``).

    Args:
        spec: The workflow file.
        state: The state file, or a Redis URL.

    Returns:
        The names of the steps whose key equals that of their last success.

    Raises:
        UsageError: The state cannot be used.
    """
    sourced = [n for n, s in spec.steps.items() if s.sources]
    if not sourced or (isinstance(state, Path) and not await anyio.Path(state).exists()):
        return set()
    async with open_store(state) as store:
        try:
            previous = await last_keys(store, spec.name, sourced)
        except trioflow.StoreError as exc:
            raise UsageError(describe_store_error(state, exc)) from None
    fresh = set()
    for name in previous:
        key, generated = await anyio.to_thread.run_sync(current_key, spec, spec.steps[name])
        if generated and key == previous[name]:
            fresh.add(name)
    return fresh


@final
class _Runner:
    """Builds the workflow of a file; its step functions report to the reporter."""

    def __init__(
        self, spec: WorkflowSpec, options: RunOptions, reporter: Reporter, run_id: str
    ) -> None:
        self.spec = spec
        self.options = options
        self.reporter = reporter
        self.run_id = run_id
        self.logs = log_dir(options.state, run_id)
        self.statuses: dict[str, str] = {}  # what `when` conditions read
        self.attempts: dict[str, int] = {}
        self.grace_periods = GracePeriods()
        self.guard: ProcessGuard | None = None  # stops the steps if trioflow dies
        self.remote: RemoteSteps | None = None  # runs the where = "dask" steps
        self.previous_keys: dict[str, str] = {}  # of each step's last success
        # What the live view shows as waiting for a slot: steps the run admitted (the last
        # progress report's `running`) whose command has not started.
        self.admitted: tuple[str, ...] = ()
        self.busy: set[str] = set()  # started, and not ended for good
        self.waiting: list[str] = []

    def progress(self, progress: trioflow.WorkflowProgress) -> None:
        """Take the run's progress report (``run_workflow``'s ``on_progress``)."""
        self.admitted = progress.running
        self._report_waiting()

    def _report_waiting(self) -> None:
        waiting = [name for name in self.admitted if name not in self.busy]
        if waiting != self.waiting:
            self.waiting = waiting
            self.reporter.steps_waiting(tuple(waiting))

    async def _show_output(self, step: StepSpec, start: int) -> None:
        if step.show_output or self.options.show_output:
            lines = await anyio.to_thread.run_sync(attempt_output, self.log_path(step.name), start)
            self.reporter.step_output(step.name, lines)

    def workflow(self) -> trioflow.Workflow:
        wf = trioflow.Workflow(self.spec.name)
        for step in self.spec.steps.values():
            wf.step(
                step.name,
                self._step_function(step),
                after=step.after,
                when=None if step.when is None else self._condition(step),
                exclusive=step.exclusive,
                retry=_retry_policy(step),
                pools=step.pools,
                optional=step.continue_on_error,
                fingerprint=step_fingerprint(step, self.spec.env),
            )
        return wf

    def command(self, step: StepSpec) -> tuple[tuple[str, ...] | str, Path, dict[str, str]]:
        """Return the step's command, working directory and environment for this run."""
        return step_command(self.spec, step, run_id=self.run_id, logs=self.logs)

    def log_path(self, name: str) -> Path:
        return log_file(self.logs, name)

    async def _up_to_date(self, step: StepSpec) -> tuple[str | None, bool]:
        """The step's key (None without sources), and whether it is up to date."""
        if not step.sources:
            return None, False
        key, generated = await anyio.to_thread.run_sync(current_key, self.spec, step)
        forced = self.options.force_all or step.name in self.options.force
        return key, not forced and generated and self.previous_keys.get(step.name) == key

    def _condition(self, step: StepSpec) -> Callable[[trioflow.Context], bool]:
        condition = step.when
        assert condition is not None

        def when(ctx: trioflow.Context) -> bool:
            go = condition.evaluate(os.environ, self.statuses)
            if not go:
                self.statuses[step.name] = "skipped"
                self.reporter.step_finished(
                    step.name,
                    "skipped",
                    detail=f"condition is false: {condition.source}",
                    elapsed=0.0,
                )
            return go

        return when

    def _step_function(self, step: StepSpec) -> Callable[[trioflow.Context], Awaitable[Any]]:
        policy = _retry_policy(step)  # each delay computed when needed: retries may be many

        async def run_step(ctx: trioflow.Context) -> Any:
            # The key is taken before the command runs: a source it changes meanwhile makes
            # the next run run it again.
            key, fresh = await self._up_to_date(step)
            if key is not None and fresh:
                self.statuses[step.name] = "succeeded"
                self.reporter.step_finished(step.name, "up_to_date", detail="", elapsed=0.0)
                return success_value(key, up_to_date=True)
            attempt = self.attempts[step.name] = self.attempts.get(step.name, 0) + 1
            command, cwd, env = self.command(step)
            self.busy.add(step.name)
            self.reporter.step_started(
                step.name, attempt=attempt, command=describe_command(command)
            )
            self._report_waiting()
            start = log_size(self.log_path(step.name))
            started = time.monotonic()
            remote = self.remote if step.where == "dask" else None
            try:
                await (run_command if remote is None else remote.run_command)(
                    command,
                    cwd=cwd,
                    env=env,
                    log_path=self.log_path(step.name),
                    timeout=step.timeout,
                    grace=self.options.grace,
                    grace_periods=self.grace_periods,
                    guard=self.guard,
                    attempt=attempt,
                )
            except CommandFailed as exc:
                elapsed = time.monotonic() - started
                await self._show_output(step, start)
                if exc.retryable and policy is not None and attempt < policy.attempts:
                    detail = f"{exc}; retrying in {policy.delay(attempt):g}s"
                    self.reporter.step_finished(
                        step.name, "retrying", detail=detail, elapsed=elapsed
                    )
                else:
                    self.statuses[step.name] = "failed"
                    self.busy.discard(step.name)
                    status = IGNORED if step.continue_on_error else "failed"
                    self.reporter.step_finished(
                        step.name, status, detail=str(exc), elapsed=elapsed
                    )
                raise
            except anyio.get_cancelled_exc_class():
                elapsed = time.monotonic() - started
                self.busy.discard(step.name)
                self.reporter.step_finished(step.name, "cancelled", detail="", elapsed=elapsed)
                raise
            await self._show_output(step, start)
            self.statuses[step.name] = "succeeded"
            self.busy.discard(step.name)
            self.reporter.step_finished(
                step.name, "succeeded", detail="", elapsed=time.monotonic() - started
            )
            return None if key is None else success_value(key, up_to_date=False)

        return run_step


def _error_text(error: BaseException | str | None) -> str | None:
    if error is None:
        return None
    if isinstance(error, CommandFailed):
        return str(error)
    if isinstance(error, BaseException):
        text = str(error)
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    # A stored error is "Type: message"; the command's own failures read better without it.
    return error.removeprefix(f"{CommandFailed.__qualname__}: ")


def summary_from_result(
    spec: WorkflowSpec, result: trioflow.WorkflowResult, logs: Path, duration: float
) -> RunSummary:
    """Summarize a finished run.

    Args:
        spec: The workflow file.
        result: What ``run_workflow`` returned.
        logs: The run's log directory.
        duration: Seconds the command ran.

    Returns:
        The summary.
    """
    rows = []
    for name, step in spec.steps.items():
        outcome = result.steps[name]
        log = log_file(logs, name)
        status = _row_status(str(outcome.status), outcome.value)
        ran = outcome.attempts and status != "up_to_date"
        rows.append(
            StepRow(
                name=name,
                status=status,
                attempts=outcome.attempts if ran else 0,
                duration=outcome.duration if ran else None,
                error=_error_text(outcome.error),
                log=log if log.exists() else None,
                continue_on_error=step.continue_on_error,
                restored=outcome.restored,
            )
        )
    return RunSummary(
        run_id=result.run_id,
        workflow=spec.name,
        status="succeeded" if result.ok else "failed",
        duration=duration,
        steps=tuple(rows),
        log_dir=logs if logs.exists() else None,
    )


def _row_status(status: str, value: object) -> str:
    """A step skipped as up to date succeeded for the workflow; the summary says which."""
    return "up_to_date" if status == "succeeded" and was_up_to_date(value) else status


def _nothing_ran(spec: WorkflowSpec, run_id: str, duration: float) -> RunSummary:
    """Summarize a run stopped before it was first stored: cancelled, every step ``not_run``."""
    rows = tuple(
        StepRow(
            name=name,
            status="not_run",
            attempts=0,
            duration=None,
            error=None,
            log=None,
            continue_on_error=step.continue_on_error,
        )
        for name, step in spec.steps.items()
    )
    return RunSummary(
        run_id=run_id, workflow=spec.name, status="cancelled", duration=duration, steps=rows
    )


def summary_from_record(
    record: trioflow.RunRecord,
    logs: Path,
    *,
    duration: float | None = None,
    continue_on_error: Mapping[str, bool] | None = None,
) -> RunSummary:
    """Summarize a stored run (``trioflow show``, or a run that was interrupted).

    Args:
        record: The stored run, with its steps.
        logs: The run's log directory.
        duration: Seconds the run took, if known.
        continue_on_error: Which steps may fail without failing the run, if known.

    Returns:
        The summary; steps without a record are ``not_run``.
    """
    rows = []
    for name in record.shape:
        stored = record.steps.get(name)
        log = log_file(logs, name)
        value = None if stored is None or stored.value is None else stored.value.data()
        status = "not_run" if stored is None else _row_status(str(stored.status), value)
        ran = stored is not None and stored.attempts and status != "up_to_date"
        rows.append(
            StepRow(
                name=name,
                status=status,
                attempts=stored.attempts if stored is not None and ran else 0,
                duration=stored.duration if stored is not None and ran else None,
                error=None if stored is None else _error_text(stored.error),
                log=log if log.exists() else None,
                continue_on_error=bool(continue_on_error and continue_on_error.get(name)),
            )
        )
    if duration is None:
        duration = record.active_seconds  # time spent running, not the idle gaps between
    return RunSummary(
        run_id=record.run_id,
        workflow=record.workflow,
        status=str(record.status),
        duration=duration,
        steps=tuple(rows),
        log_dir=logs if logs.exists() else None,
    )


def describe_store_error(state: Path | str, exc: BaseException) -> str:
    """Explain a state file that cannot be used.

    Args:
        state: The state file.
        exc: What the store raised.

    Returns:
        The message.
    """
    # The store names its file too; say it once.
    text = str(exc).removeprefix(f"workflow store {str(state)!r}: ")
    return f"cannot use the state file {str(state)!r}: {text}"


_DONE: Final = (trioflow.StepStatus.SUCCEEDED, trioflow.StepStatus.SKIPPED)


def _check_resumable(
    record: trioflow.RunRecord, workflow: trioflow.Workflow, options: RunOptions
) -> None:
    """Refuse, before anything is printed, a resume that ``run_workflow`` would refuse.

    ``run_workflow`` checks both again when it starts (another process may have begun the run
    meanwhile); checked here first, the command fails before its start line.
    """
    if record.owner is not None and record.status is trioflow.RunStatus.RUNNING:
        raise UsageError(
            f"run {record.run_id!r} is being run by {record.owner.describe()}; "
            "wait for it to end (or stop that process) and resume it then"
        )
    shape = {name: set(step.after) for name, step in workflow.steps.items()}
    if {name: set(after) for name, after in record.shape.items()} != shape:
        added = [n for n in shape if n not in record.shape]
        removed = [n for n in record.shape if n not in shape]
        parts = [
            f"{label}: " + ", ".join(repr(n) for n in names)
            for label, names in (("steps added", added), ("steps removed", removed))
            if names
        ] or ["the steps some steps come after changed"]
        raise UsageError(
            f"the workflow in {str(options.file)!r} changed since the run was stored "
            f"({'; '.join(parts)}); start a new run instead of resuming {record.run_id!r}"
        )


@final
class _SignalWatch:
    """Stops a run on SIGINT, SIGTERM or SIGHUP: what ``trioflow run`` wraps the run in."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.received: list[signal.Signals] = []

    @contextlib.asynccontextmanager
    async def __call__(self, grace_periods: GracePeriods) -> AsyncIterator[anyio.CancelScope]:
        with anyio.open_signal_receiver(*_STOP_SIGNALS) as signals:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if not self.received:
                            self.received.append(signal.Signals(signum))
                            self.reporter.message(
                                f"{name}: stopping the running steps (again to kill them at once)"
                            )
                            scope.cancel()
                        elif not grace_periods.ended:
                            self.reporter.message(f"{name}: killing the running steps")
                            grace_periods.end()

                scope = anyio.CancelScope()  # the run's: the watcher outlives its cancellation
                tg.start_soon(watch)
                try:
                    yield scope
                finally:
                    tg.cancel_scope.cancel()


Watch = Callable[[GracePeriods], contextlib.AbstractAsyncContextManager[anyio.CancelScope]]
"""``watch(grace_periods)``: entered around a run, yields the scope the run goes in; cancelling
that scope stops the run."""


@contextlib.asynccontextmanager
async def _unwatched(grace_periods: GracePeriods) -> AsyncIterator[anyio.CancelScope]:
    yield anyio.CancelScope()


@contextlib.asynccontextmanager
async def _open_remote(
    spec: WorkflowSpec, options: RunOptions
) -> AsyncIterator[RemoteSteps | None]:
    """Connect to ``--dask``'s scheduler when a step asks for it; None runs every step here."""
    if options.dask is None or not any(s.where == "dask" for s in spec.steps.values()):
        yield None
        return
    import trioflow.dask  # only now: a run without --dask never imports Dask

    async with contextlib.AsyncExitStack() as stack:
        try:
            cluster = await stack.enter_async_context(trioflow.dask.open_cluster(options.dask))
        except (OSError, ValueError, TypeError) as exc:
            raise UsageError(f"cannot use the Dask scheduler at {options.dask!r}: {exc}") from None
        yield RemoteSteps(cluster)


async def run_file(spec: WorkflowSpec, options: RunOptions, reporter: Reporter) -> RunOutcome:
    """Run (or resume) a workflow file and summarize the run.

    SIGINT, SIGTERM and SIGHUP cancel the run: the running steps' processes are stopped, the
    steps are recorded CANCELLED, and the outcome carries the command that resumes the run.

    Args:
        spec: The validated workflow file.
        options: The command line's options.
        reporter: Where progress goes.

    Returns:
        The outcome: summary, exit status and, unless it succeeded, the resume command.

    Raises:
        UsageError: The state file cannot be used, the run to resume does not exist, or the
            workflow changed since that run.
    """
    signals = _SignalWatch(reporter)
    outcome = await execute_file(spec, options, reporter, watch=signals)
    if signals.received and outcome.summary.status == "cancelled":
        status = _STOP_SIGNALS.get(signals.received[0], 130)
        outcome = attrs.evolve(outcome, exit_status=status)
    return outcome


async def execute_file(
    spec: WorkflowSpec, options: RunOptions, reporter: Reporter, *, watch: Watch | None = None
) -> RunOutcome:
    """Run (or resume) a workflow file under the caller's cancel scope; summarize the run.

    What ``trioflow run`` does, without its signal handling (a server runs many of these and
    must not install handlers per run). Cancelled from outside, the running steps' processes
    are stopped as Ctrl-C stops them, the run is recorded CANCELLED (resumable), and the
    cancellation propagates.

    Args:
        spec: The validated workflow file.
        options: The options of the run.
        reporter: Where progress goes.
        watch: Entered around the run with its grace periods (the command line's signal
            handling), it yields the cancel scope the run goes in; cancelling that scope ends
            the run CANCELLED with an outcome (exit status 130) instead of propagating.

    Returns:
        The outcome: summary, exit status and, unless it succeeded, the resume command.

    Raises:
        UsageError: The state file cannot be used, the run to resume does not exist, or the
            workflow changed since that run.
    """
    run_id = options.resume or new_run_id()
    limit = options.max_parallel or spec.max_parallel or os.cpu_count() or 1
    limits = trioflow.ResourceManager(limit=limit, pools=dict(spec.pools) or None)
    runner = _Runner(spec, options, reporter, run_id)
    workflow = runner.workflow()
    continue_on_error = {n: s.continue_on_error for n, s in spec.steps.items()}
    started = time.monotonic()
    result: trioflow.WorkflowResult | None = None
    never_stored = False
    async with (
        open_store(options.state) as store,
        open_guard(options.grace) as guard,
        _open_remote(spec, options) as remote,
    ):
        runner.guard = guard
        runner.remote = remote
        try:
            record = await store.load_run(run_id)
        except trioflow.StoreError as exc:
            raise UsageError(describe_store_error(options.state, exc)) from None
        if options.resume is not None:
            if record is None:
                raise UsageError(f"no run {run_id!r} in the state file {str(options.state)!r}")
            _check_resumable(record, workflow, options)
            for name, stored in record.steps.items():
                if stored.status not in (
                    trioflow.StepStatus.SUCCEEDED,
                    trioflow.StepStatus.SKIPPED,
                ):
                    continue
                if stored.fingerprint not in (None, workflow.steps[name].fingerprint):
                    reporter.message(
                        f"{name}: its command, environment or directory changed since it "
                        f"{stored.status}; it runs again"
                    )
                    continue
                runner.statuses[name] = str(stored.status)
        elif record is not None:  # pragma: no cover - ids carry 16 random bits and the time
            raise UsageError(f"run id {run_id!r} is already taken; try again")
        sourced = [n for n, s in spec.steps.items() if s.sources and n not in runner.statuses]
        try:
            runner.previous_keys = await last_keys(store, spec.name, sourced)
        except trioflow.StoreError as exc:
            raise UsageError(describe_store_error(options.state, exc)) from None
        resumed = len(runner.statuses)
        reporter.run_started(
            run_id=run_id, workflow=spec.name, total=len(spec.steps), resumed=resumed
        )
        failure: Exception | None = None
        try:
            async with (watch or _unwatched)(runner.grace_periods) as run_scope:
                with run_scope:
                    try:
                        result = await trioflow.run_workflow(
                            workflow,
                            limit=limits,
                            fail_fast=not options.keep_going,
                            store=store,
                            run_id=run_id,
                            on_progress=runner.progress,
                        )
                    except (
                        trioflow.WorkflowShapeChangedError,
                        trioflow.RunLeasedError,
                        trioflow.StoreError,
                    ) as exc:
                        failure = exc  # caught here, not wrapped in the watch's task group
        finally:
            reporter.close()
        if isinstance(failure, trioflow.StoreError):
            raise UsageError(describe_store_error(options.state, failure))
        if failure is not None:
            raise UsageError(str(failure))
        duration = time.monotonic() - started
        logs = runner.logs
        if result is not None:
            summary = summary_from_result(spec, result, logs, duration)
        else:
            try:
                stored_run = await store.load_run(run_id)
            except trioflow.StoreError as exc:
                raise UsageError(describe_store_error(options.state, exc)) from None
            if stored_run is None:
                # Stopped before the run was first stored: no step ran, nothing to resume.
                never_stored = True
                summary = _nothing_ran(spec, run_id, duration)
            else:
                summary = summary_from_record(
                    stored_run, logs, duration=duration, continue_on_error=continue_on_error
                )
                summary = attrs.evolve(summary, status="cancelled")
    status = 130 if result is None else EXIT_OK if result.ok else EXIT_FAILED
    resumable = status != EXIT_OK and not never_stored
    hint = resume_command(options, run_id) if resumable else None
    return RunOutcome(summary=summary, exit_status=status, resume_command=hint)


# --- run --trace ---------------------------------------------------------------------------


@contextlib.contextmanager
def tracing(enabled: bool) -> Iterator[None]:
    """``run --trace``: export the run's spans as the ``OTEL_*`` environment variables say.

    Raises:
        UsageError: The OpenTelemetry SDK, or the exporter ``OTEL_TRACES_EXPORTER`` names,
            is not installed.
    """
    with contextlib.ExitStack() as stack:
        if enabled:
            try:
                from .. import telemetry  # the otel extra: imported only for --trace

                stack.enter_context(telemetry.tracing_from_environment(console=sys.stderr))
            except ModuleNotFoundError as exc:
                raise UsageError(f"--trace: {exc}") from None
        yield
