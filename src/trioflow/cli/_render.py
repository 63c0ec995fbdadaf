"""What a run prints: a live view on a terminal, plain lines elsewhere, and the final summary.

rich is an optional extra (``pip install trioflow[cli]``) imported only here and only when the
output is a terminal; without it, or when the output goes to a file or a CI log, every event
is one plain line such as ``[  3.2s] build: succeeded (1.9s)``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TextIO, final

import attrs

from ._graph import count
from ._steps import last_output_line, tail

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

TAIL_LINES: Final = 10
IGNORED: Final = "failed (ignored)"
"""The status of a ``continue_on_error`` step that failed, in every line that shows it."""
_FINAL: Final = frozenset({"succeeded", "failed", IGNORED, "skipped", "up_to_date"})
_STYLES: Final = {
    "succeeded": "green",
    "failed": "bold red",
    IGNORED: "red",
    "cancelled": "yellow",
    "skipped": "dim",
    "not_run": "dim",
    "running": "cyan",
    "compensated": "magenta",
    "pending": "dim",
    "up_to_date": "green",
}
_WORDS: Final = {"retrying": "attempt failed", "up_to_date": "up to date"}
_UNTIMED: Final = ("skipped", "up_to_date")  # nothing ran: no time to show


@final
@attrs.frozen(kw_only=True)
class StepRow:
    """One line of the summary table.

    Attributes:
        name: The step's name.
        status: Its final status, lowercase (``succeeded``, ``failed``, ``skipped``, ...).
        attempts: How many times its command ran.
        duration: Seconds it took, or None if it did not run.
        error: Why it failed, or None.
        log: Its log file, or None if it has none.
        continue_on_error: Whether its failure leaves the run successful.
        restored: Whether it was done in an earlier attempt of a resumed run (not run again).
    """

    name: str
    status: str
    attempts: int = 0
    duration: float | None = None
    error: str | None = None
    log: Path | None = None
    continue_on_error: bool = False
    restored: bool = False


@final
@attrs.frozen(kw_only=True)
class RunSummary:
    """The outcome of one run, as shown at the end and by ``trioflow show``.

    Attributes:
        run_id: The run's id.
        workflow: The workflow's name.
        status: ``succeeded``, ``failed``, ``cancelled`` (or ``running`` for an unfinished
            stored run).
        duration: Seconds the run took, or None when unknown.
        steps: One row per step, in file order.
        log_dir: The run's log directory, or None.
    """

    run_id: str
    workflow: str
    status: str
    duration: float | None
    steps: tuple[StepRow, ...]
    log_dir: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the summary as JSON-ready data (``--json``).

        Returns:
            A dict with ``run_id``, ``workflow``, ``status``, ``ok``, ``duration``, ``log_dir``
            and ``steps`` (a list of dicts with the fields of :class:`StepRow`).
        """
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "status": self.status,
            "ok": self.status == "succeeded",
            "duration": self.duration,
            "log_dir": None if self.log_dir is None else str(self.log_dir),
            "steps": [
                {
                    "name": row.name,
                    "status": row.status,
                    "attempts": row.attempts,
                    "duration": row.duration,
                    "error": row.error,
                    "log": None if row.log is None else str(row.log),
                    "continue_on_error": row.continue_on_error,
                    "restored": row.restored,
                }
                for row in self.steps
            ],
        }


def format_seconds(seconds: float | None) -> str:
    """Format a duration for people: ``0.31s``, ``12.5s``, ``3m07s``; ``-`` for None.

    Args:
        seconds: The duration.

    Returns:
        The text.
    """
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


class Reporter(Protocol):
    """Receives the events of a run while it goes (plain lines or a live view)."""

    def run_started(self, *, run_id: str, workflow: str, total: int, resumed: int) -> None:
        """A run starts; ``resumed`` steps are already done from an earlier attempt."""

    def step_started(self, name: str, *, attempt: int, command: str) -> None:
        """A step's command starts (once per attempt)."""

    def step_finished(self, name: str, status: str, *, detail: str, elapsed: float) -> None:
        """An attempt ended: succeeded, failed, failed (ignored), retrying, skipped or cancelled.

        ``failed (ignored)`` (:data:`IGNORED`) is the last failed attempt of a step with
        ``continue_on_error``: the run goes on, as the summary says too.
        """

    def steps_waiting(self, names: Sequence[str]) -> None:
        """These steps are ready but wait for a slot (``max_parallel`` or a pool), oldest first.

        Called whenever the set changes; an empty sequence when none waits.
        """

    def step_output(self, name: str, lines: Sequence[str]) -> None:
        """An attempt of a step with ``show_output`` ended: its command's output."""

    def message(self, text: str) -> None:
        """Print a line that is not about a step."""

    def close(self) -> None:
        """The run is over: stop any live display."""


@final
class PlainReporter:
    """One line per event, with the time since the run started: for logs and pipes."""

    def __init__(self, stream: TextIO, *, verbose: bool = False) -> None:
        self._stream = stream
        self._verbose = verbose
        self._start = time.monotonic()

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self._start
        print(f"[{elapsed:6.1f}s] {text}", file=self._stream, flush=True)

    def run_started(self, *, run_id: str, workflow: str, total: int, resumed: int) -> None:
        """Print the run's id and size."""
        self._start = time.monotonic()
        done = f", {resumed} already done" if resumed else ""
        self._line(f"run {run_id}: workflow {workflow!r}, {count(total, 'step')}{done}")

    def step_started(self, name: str, *, attempt: int, command: str) -> None:
        """Print that a step started (with its command when verbose)."""
        again = f" (attempt {attempt})" if attempt > 1 else ""
        self._line(f"{name}: started{again}")
        if self._verbose:
            self._line(f"{name}: $ {command}")

    def step_finished(self, name: str, status: str, *, detail: str, elapsed: float) -> None:
        """Print how an attempt ended."""
        took = f" ({format_seconds(elapsed)})" if status not in _UNTIMED else ""
        word = _WORDS.get(status, status)
        self._line(f"{name}: {word}{': ' + detail if detail else ''}{took}")

    def steps_waiting(self, names: Sequence[str]) -> None:
        """Nothing: plain lines say when steps start and end (the live view shows the wait)."""

    def step_output(self, name: str, lines: Sequence[str]) -> None:
        """Print the output under a heading line, each line indented."""
        self._line(f"{name}: output" if lines else f"{name}: no output")
        for line in lines:
            print(f"  {line}", file=self._stream)
        self._stream.flush()

    def message(self, text: str) -> None:
        """Print a line."""
        self._line(text)

    def close(self) -> None:
        """Nothing to stop."""


@final
class LiveReporter:
    """A rich live view: a progress bar and the running steps with their elapsed time."""

    def __init__(
        self,
        console: Console,
        *,
        verbose: bool = False,
        log_of: Callable[[str, str], Path] | None = None,
    ) -> None:
        from rich.live import Live

        self._console = console
        self._verbose = verbose
        self._log_of = log_of
        self._run_id = ""
        self._lock = threading.Lock()
        self._running: dict[str, tuple[float, int]] = {}  # name -> (start, attempt)
        self._waiting: tuple[str, ...] = ()
        self._total = 0
        self._done = 0
        self._start = time.monotonic()
        self._live = Live(
            console=console,
            get_renderable=self._renderable,
            refresh_per_second=8,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def _renderable(self) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        with self._lock:
            running = sorted(self._running.items(), key=lambda item: item[1][0])
            waiting = self._waiting
            done, total = self._done, self._total
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(
                total=max(total, 1),
                completed=done,
                width=max(10, min(40, self._console.width - 24)),  # fits narrow terminals
                complete_style="cyan",
                finished_style="green",
            ),
            f"{done}/{total} steps",
            format_seconds(now - self._start),
        )
        steps = Table.grid(padding=(0, 1))
        steps.add_column(no_wrap=True)
        steps.add_column(no_wrap=True)
        steps.add_column(no_wrap=True)
        steps.add_column(no_wrap=True, overflow="ellipsis", style="dim")
        for name, (started, attempt) in running:
            again = f"(attempt {attempt}) " if attempt > 1 else ""
            steps.add_row(
                Spinner("dots", style="cyan"),
                name,
                format_seconds(now - started),
                Text(again + self._last_line(name)),  # the command's text: no markup
            )
        for name in waiting:
            steps.add_row(Text("·"), Text(name, style="dim"), "", "waiting for a slot")
        return Group(bar, steps)

    def _last_line(self, name: str) -> str:
        if self._log_of is None:
            return ""
        return last_output_line(self._log_of(self._run_id, name))

    def run_started(self, *, run_id: str, workflow: str, total: int, resumed: int) -> None:
        """Start the live view."""
        self._start = time.monotonic()
        self._run_id = run_id
        with self._lock:
            self._total, self._done = total, resumed
        done = f", {resumed} already done" if resumed else ""
        from rich.markup import escape

        self._console.print(
            f"run [bold]{escape(run_id)}[/]: workflow {escape(repr(workflow))}, "
            f"{count(total, 'step')}{done}",
            highlight=False,
        )
        self._live.start()

    def step_started(self, name: str, *, attempt: int, command: str) -> None:
        """Show the step as running."""
        with self._lock:
            self._running[name] = (time.monotonic(), attempt)
        self._live.refresh()
        if self._verbose:
            from rich.markup import escape

            self._console.print(f"[dim]{escape(name)}: $ {escape(command)}[/]", highlight=False)

    def step_finished(self, name: str, status: str, *, detail: str, elapsed: float) -> None:
        """Print how the attempt ended above the live view."""
        from rich.markup import escape

        with self._lock:
            self._running.pop(name, None)
            if status in _FINAL:
                self._done += 1
        style = _STYLES.get(status, "yellow" if status == "retrying" else "")
        took = f" [dim]({format_seconds(elapsed)})[/]" if status not in _UNTIMED else ""
        extra = f": {escape(detail)}" if detail else ""
        word = _WORDS.get(status, status)
        # Redraw first: printing above the live view draws its last rendering again, which
        # would still show this step running until the next timed refresh.
        self._live.refresh()
        self._console.print(f"[{style}]{word:>9}[/] {escape(name)}{extra}{took}", highlight=False)

    def steps_waiting(self, names: Sequence[str]) -> None:
        """Show the steps waiting for a slot under the running ones."""
        with self._lock:
            self._waiting = tuple(names)
        # No redraw now: a step that gets its slot at once would flash by; the next timed
        # refresh shows the ones that really wait.

    def step_output(self, name: str, lines: Sequence[str]) -> None:
        """Print the output above the live view, under a heading line."""
        from rich.markup import escape

        self._console.print(
            f"[dim]--- output of {escape(name)}{'' if lines else ': none'}[/]", highlight=False
        )
        for line in lines:
            self._console.print(escape(line), highlight=False, markup=False)

    def message(self, text: str) -> None:
        """Print a line above the live view."""
        from rich.markup import escape

        self._console.print(escape(text), highlight=False)

    def close(self) -> None:
        """Stop the live view."""
        self._live.stop()


def rich_console(stream: TextIO) -> Console | None:
    """Return a rich console for ``stream`` if rich is installed and it is a terminal.

    Args:
        stream: Where the output goes.

    Returns:
        The console, or None to use plain lines.
    """
    isatty = getattr(stream, "isatty", None)
    if isatty is None or not isatty():
        return None  # decided before importing rich: plain output stays cheap
    try:
        from rich.console import Console
    except ImportError:
        return None
    console = Console(file=stream)
    if not console.is_terminal or console.is_dumb_terminal:
        return None
    return console


@final
class QuietOnError:
    """Forwards events until writing fails, then drops them.

    The output may go away while the run goes on (``trioflow run ... | head``, a closed
    terminal): losing the progress lines must not fail the steps that report them.
    """

    def __init__(self, reporter: Reporter) -> None:
        self._reporter: Reporter | None = reporter

    def _call(self, event: Callable[[Reporter], None]) -> None:
        if self._reporter is None:
            return
        try:
            event(self._reporter)
        except OSError:
            reporter, self._reporter = self._reporter, None
            with contextlib.suppress(OSError):
                reporter.close()

    def run_started(self, *, run_id: str, workflow: str, total: int, resumed: int) -> None:
        """Forward the event."""
        self._call(
            lambda r: r.run_started(run_id=run_id, workflow=workflow, total=total, resumed=resumed)
        )

    def step_started(self, name: str, *, attempt: int, command: str) -> None:
        """Forward the event."""
        self._call(lambda r: r.step_started(name, attempt=attempt, command=command))

    def step_finished(self, name: str, status: str, *, detail: str, elapsed: float) -> None:
        """Forward the event."""
        self._call(lambda r: r.step_finished(name, status, detail=detail, elapsed=elapsed))

    def steps_waiting(self, names: Sequence[str]) -> None:
        """Forward the event."""
        self._call(lambda r: r.steps_waiting(names))

    def step_output(self, name: str, lines: Sequence[str]) -> None:
        """Forward the output."""
        self._call(lambda r: r.step_output(name, lines))

    def message(self, text: str) -> None:
        """Forward the line."""
        self._call(lambda r: r.message(text))

    def close(self) -> None:
        """Forward the end of the run."""
        self._call(lambda r: r.close())


def make_reporter(
    stream: TextIO,
    *,
    verbose: bool,
    live: bool,
    log_of: Callable[[str, str], Path] | None = None,
) -> Reporter:
    """Choose the live view when possible, else plain lines.

    Args:
        stream: Where the output goes.
        verbose: Also print each command as it starts.
        live: Allow the live view (False for ``--json``).
        log_of: ``log_of(run_id, step)`` is a step's log file: the live view shows the last
            line of each running step's output from it.

    Returns:
        The reporter.
    """
    console = rich_console(stream) if live else None
    if console is None:
        return PlainReporter(stream, verbose=verbose)
    return LiveReporter(console, verbose=verbose, log_of=log_of)


def print_summary(
    summary: RunSummary, stream: TextIO, *, tail_lines: int = TAIL_LINES, tails: bool = True
) -> None:
    """Print the summary table, the last lines of each failed step's log, and the run id.

    Args:
        summary: The run's outcome.
        stream: Where to print.
        tail_lines: How many log lines to show per failed step.
        tails: Whether to show the failed steps' last log lines.
    """
    console = rich_console(stream)
    if tails:
        for row in summary.steps:
            if row.status == "failed" and row.log is not None:
                lines = [line for line in tail(row.log, tail_lines + 1) if line]
                lines = lines[-tail_lines:]
                _print_tail(console, stream, row, lines)
    if console is None:
        _plain_table(summary, stream)
    else:
        _rich_table(summary, console)


def _print_tail(
    console: Console | None, stream: TextIO, row: StepRow, lines: Sequence[str]
) -> None:
    heading = f"--- last lines of {row.name} ({row.log}) ---"
    if console is None:
        print(heading, file=stream)
        for line in lines:
            print(f"  {line}", file=stream)
        return
    from rich.markup import escape

    console.print(f"[bold red]{escape(heading)}[/]", highlight=False)
    for line in lines:
        console.print(f"  {escape(line)}", highlight=False)


def _status_text(row: StepRow) -> str:
    if row.status == "failed" and row.continue_on_error:
        return IGNORED
    status = _WORDS.get(row.status, row.status)
    if row.restored:
        return f"{status} (earlier)"
    return status


def _footer(summary: RunSummary) -> list[str]:
    lines = [
        f"run {summary.run_id} {summary.status} in {format_seconds(summary.duration)}"
        f" (workflow {summary.workflow!r})"
    ]
    if summary.log_dir is not None:
        lines.append(f"logs: {summary.log_dir}")
    return lines


def _plain_table(summary: RunSummary, stream: TextIO) -> None:
    header = ("step", "status", "attempts", "duration", "error")
    rows = [
        (
            row.name,
            _status_text(row),
            str(row.attempts),
            format_seconds(row.duration),
            row.error or "",
        )
        for row in summary.steps
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for cells in [header, *rows]:
        line = "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=True))
        print(f"{line}  {cells[-1]}".rstrip(), file=stream)
    for line in _footer(summary):
        print(line, file=stream)


def _rich_table(summary: RunSummary, console: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{summary.workflow} ({summary.run_id})", title_justify="left")
    table.add_column("step")
    table.add_column("status")
    table.add_column("attempts", justify="right")
    table.add_column("duration", justify="right")
    table.add_column("error", overflow="fold")
    for row in summary.steps:
        style = _STYLES.get(row.status, "")
        table.add_row(
            escape(row.name),
            f"[{style}]{_status_text(row)}[/]" if style else _status_text(row),
            str(row.attempts),
            format_seconds(row.duration),
            escape(row.error or ""),
        )
    console.print(table)
    style = _STYLES.get(summary.status, "")
    first, *rest = _footer(summary)
    console.print(f"[{style}]{escape(first)}[/]" if style else escape(first), highlight=False)
    for line in rest:
        console.print(escape(line), highlight=False)


def print_json(data: object, stream: TextIO | None = None) -> None:
    """Print data as indented JSON.

    Args:
        data: JSON-ready data.
        stream: Where to print (stdout by default).
    """
    print(json.dumps(data, indent=2), file=stream or sys.stdout)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], stream: TextIO) -> None:
    """Print a table: a rich table on a terminal, aligned plain columns elsewhere.

    Args:
        headers: The column titles.
        rows: The cells, as text.
        stream: Where to print.
    """
    console = rich_console(stream)
    if console is None:
        widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
        for cells in [headers, *rows]:
            line = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
            print(line.rstrip(), file=stream)
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for header in headers:
        table.add_column(header)
    for cells in rows:
        table.add_row(*(escape(c) for c in cells))
    console.print(table)
