"""``trioflow watch``: run a workflow, then again whenever the steps' sources change.

The first run runs every selected step (up-to-date steps are skipped, as ``trioflow run``
does). Then ``watchfiles.awatch`` reports changed files in the workflow's directory and the
steps' working directories (the state directory left out); after each batch of changes the
steps' up-to-date keys are computed again, and a run starts of the steps whose key changed
and every step that comes after them. A change during a run cancels it (its steps' processes
are stopped) and starts a run of what was unfinished plus what the change affects. Each run is
a run of its own in the state store. SIGINT exits with status 130, SIGTERM with 143.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Final, TextIO, final

import anyio
import anyio.abc
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import trioflow

from ._render import QuietOnError, make_reporter, print_summary
from ._run import (
    DEFAULT_STATE,
    RunOptions,
    UsageError,
    current_key,
    describe_store_error,
    execute_file,
    open_store,
)
from ._spec import WorkflowSpec
from ._steps import GRACE_PERIOD, GracePeriods
from ._uptodate import last_keys

_EXIT_STATUS: Final = {signal.SIGINT: 130, signal.SIGTERM: 143}
_DONE: Final = ("succeeded", "up_to_date", "skipped")


@final
@attrs.frozen(kw_only=True)
class WatchOptions:
    """The options of ``trioflow watch``.

    Attributes:
        file: The workflow file as given on the command line.
        state: The state file, or a Redis URL.
        max_parallel: Overrides the file's ``max_parallel``.
        grace: Seconds a stopped command gets before it is killed.
        debounce: Seconds the files must be quiet before a batch of changes is taken.
    """

    file: str
    state: Path | str = DEFAULT_STATE
    max_parallel: int | None = None
    grace: float = GRACE_PERIOD
    debounce: float = 0.3


def watched_directories(spec: WorkflowSpec) -> list[Path]:
    """Return the directories to watch: the workflow's and the steps' working directories.

    Args:
        spec: The workflow.

    Returns:
        Existing directories, none inside another.
    """
    found = {spec.directory}
    for step in spec.steps.values():
        if step.sources:
            cwd = spec.resolve(step, placeholders=lambda name: "{" + name + "}").cwd
            if cwd.is_dir():
                found.add(cwd.resolve())
    return [d for d in sorted(found) if not any(o != d and d.is_relative_to(o) for o in found)]


@final
class _Watcher:
    def __init__(self, spec: WorkflowSpec, options: WatchOptions, stream: TextIO) -> None:
        self.spec = spec
        self.options = options
        self.stream = stream
        self.sourced = [n for n, s in spec.steps.items() if s.sources]
        self.keys: dict[str, str] = {}

    async def changed_steps(self) -> set[str]:
        """The steps whose key changed since it was last taken, and what comes after them."""
        changed = set()
        for name in self.sourced:
            key, _ = await anyio.to_thread.run_sync(current_key, self.spec, self.spec.steps[name])
            if self.keys.get(name) != key:
                self.keys[name] = key
                changed.add(name)
        return changed | self.spec.descendants(changed) if changed else set()

    async def run(
        self,
        names: Collection[str],
        forced: Collection[str],
        changes: MemoryObjectReceiveStream[object],
    ) -> tuple[set[str], set[str]]:
        """Run the steps; return those left unfinished and those a change during it affects."""
        spec = self.spec.select([n for n in self.spec.steps if n in names], only=True)
        options = RunOptions(
            file=self.options.file,
            state=self.options.state,
            max_parallel=self.options.max_parallel,
            grace=self.options.grace,
            force=frozenset(forced),
        )
        affected: set[str] = set()
        scopes: list[anyio.CancelScope] = []

        @contextlib.asynccontextmanager
        async def stoppable(grace_periods: GracePeriods) -> AsyncIterator[anyio.CancelScope]:
            scope = anyio.CancelScope()
            scopes.append(scope)
            if affected:
                scope.cancel()
            yield scope

        async def listen() -> None:
            async for _ in changes:
                found = await self.changed_steps()
                if found:
                    affected.update(found)
                    if scopes:
                        scopes[0].cancel()
                    return

        reporter = QuietOnError(make_reporter(self.stream, verbose=False, live=True))
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            outcome = await execute_file(spec, options, reporter, watch=stoppable)
            tg.cancel_scope.cancel()
        print_summary(outcome.summary, self.stream)
        unfinished = {row.name for row in outcome.summary.steps if row.status not in _DONE}
        # A step that succeeded ran with the key it stored: a change made before it started
        # is in that key, one made later is not.
        succeeded = [n for n in self.sourced if n in spec.steps and n not in unfinished]
        async with open_store(self.options.state) as store:
            try:
                self.keys.update(await last_keys(store, spec.name, succeeded))
            except trioflow.StoreError as exc:
                raise UsageError(describe_store_error(self.options.state, exc)) from None
        if affected:
            print(f"changes during the run: running {_names(affected)} again", file=self.stream)
            return unfinished, affected
        return set(), set()

    async def loop(self, changes: MemoryObjectReceiveStream[object]) -> None:
        for name in self.sourced:
            key, _ = await anyio.to_thread.run_sync(current_key, self.spec, self.spec.steps[name])
            self.keys[name] = key
        pending, forced = set(self.spec.steps), set[str]()
        while True:
            if pending:
                unfinished, affected = await self.run(pending, forced, changes)
                if affected:
                    pending, forced = unfinished | affected, forced | affected
                    continue
            directories = ", ".join(str(d) for d in watched_directories(self.spec))
            print(f"watching {directories} (Ctrl-C to stop)", file=self.stream, flush=True)
            pending = set()
            while not pending:
                await changes.receive()
                pending = await self.changed_steps()
            forced = set(pending)
            print(f"sources changed: running {_names(pending)}", file=self.stream, flush=True)


def _names(names: Collection[str]) -> str:
    return ", ".join(sorted(names))


async def _watch_files(
    directories: list[Path],
    ignore: Path,
    debounce: float,
    send: MemoryObjectSendStream[object],
    stop: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    import watchfiles  # the cli extra, imported only by this command

    task_status.started()
    async with send:
        async for found in watchfiles.awatch(
            *directories,
            watch_filter=watchfiles.DefaultFilter(ignore_paths=[ignore]),
            debounce=max(1, round(debounce * 1000)),
            step=50,
            stop_event=stop,
        ):
            await send.send(found)


async def watch_file(spec: WorkflowSpec, options: WatchOptions, stream: TextIO) -> int:
    """Run a workflow file, then rerun what each change to its sources affects, until a signal.

    Args:
        spec: The validated workflow (already narrowed to the steps asked for).
        options: The command line's options.
        stream: Where the progress and summaries go.

    Returns:
        130 after SIGINT, 143 after SIGTERM.

    Raises:
        UsageError: The state cannot be used.
    """
    state_dir = (DEFAULT_STATE if isinstance(options.state, str) else options.state).parent
    watcher = _Watcher(spec, options, stream)
    send, receive = anyio.create_memory_object_stream[object](math.inf)
    stop = anyio.Event()
    received: list[signal.Signals] = []
    with anyio.open_signal_receiver(*_EXIT_STATUS) as signals, receive:
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                async for signum in signals:
                    received.append(signal.Signals(signum))
                    print(f"{received[0].name}: stopping", file=stream, flush=True)
                    stop.set()  # the watching thread ends at once, not at its next timeout
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(on_signal)
            await tg.start(
                _watch_files,
                watched_directories(spec),
                state_dir.resolve(),
                options.debounce,
                send,
                stop,
            )
            await watcher.loop(receive)
    return _EXIT_STATUS[received[0]] if received else 130
