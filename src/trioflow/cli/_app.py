"""The ``trioflow`` command line: argument parsing and the commands.

Exit statuses: 0 when the run succeeded (every step succeeded, was skipped, or failed with
``continue_on_error``), 1 when a step failed, 2 for a usage, file or state error (a message,
never a traceback), 130 on SIGINT, 143 on SIGTERM, 129 on SIGHUP, and 141 when the output
pipe closes early.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import anyio

import trioflow

from .._checks import check_int, check_number, problem
from ._graph import dot, mermaid, plan, plan_json
from ._render import (
    TAIL_LINES,
    QuietOnError,
    format_seconds,
    make_reporter,
    print_json,
    print_summary,
    print_table,
)
from ._run import (
    DEFAULT_STATE,
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    RunOptions,
    UsageError,
    describe_store_error,
    log_dir,
    log_file,
    open_store,
    run_file,
    state_location,
    step_command,
    summary_from_record,
    tracing,
)
from ._serve import add_commands as add_serve_commands
from ._spec import SpecError, StepSpec, WorkflowSpec, load_spec
from ._steps import describe_command

_DESCRIPTION = """\
Run workflows of shell commands in parallel, with dependencies, retries, timeouts,
conditions, resource pools, live progress and resumable runs.

examples:
  trioflow run build.toml              run every step of a workflow file
  trioflow run build.toml --dry-run    show the waves of steps that would run together
  trioflow run build.toml --resume ID  finish an interrupted or failed run
  trioflow runs                        list past runs
  trioflow show ID                     show one run, step by step (ID: an id, a prefix, latest)
  trioflow logs latest test --follow   print a step's log as it grows, until the step ends
  trioflow prune --keep 20             remove all but the newest 20 runs and their logs
  trioflow graph build.toml            print the steps as a Mermaid diagram
  trioflow serve --tools mytools:registry   serve tools to MCP clients over stdio
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if problem(check_int, value, minimum=1):
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if problem(check_int, value, minimum=0):
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _age(text: str) -> float:
    from ._prune import parse_age

    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if problem(check_number, value, minimum=0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``trioflow`` command.

    Returns:
        The parser; each sub-command sets ``handler``.
    """
    parser = argparse.ArgumentParser(
        prog="trioflow",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"trioflow {trioflow.__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands.required = True

    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state",
        metavar="PATH",
        type=state_location,
        default=DEFAULT_STATE,
        help=f"the state file of runs, or redis://HOST:PORT/DB (default: {DEFAULT_STATE})",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print machine-readable JSON")

    run = commands.add_parser(
        "run",
        parents=[state, as_json],
        help="run a workflow file",
        description="Run the steps of a workflow file, each as soon as the steps it comes "
        "after are done. Step output goes to log files beside the state file "
        "(logs/RUN_ID/STEP.log).",
    )
    run.add_argument("file", metavar="FILE", help="the workflow file (TOML)")
    _add_target_arguments(run)
    run.add_argument(
        "--force",
        metavar="STEP",
        nargs="?",
        action="append",
        const="",
        help="run steps even when they are up to date: every step, or the STEP given "
        "(repeat for more)",
    )
    run.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="finish an earlier run (its id, a unique prefix of it, or latest): steps that "
        "succeeded or were skipped do not run again",
    )
    run.add_argument(
        "--max-parallel",
        metavar="N",
        type=_positive_int,
        help="run at most N steps at once (default: the file's max_parallel, else the CPUs)",
    )
    run.add_argument(
        "-k",
        "--keep-going",
        action="store_true",
        help="after a failure, let steps that do not depend on it go on",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="print the plan (waves of steps) and run nothing"
    )
    run.add_argument(
        "--grace",
        metavar="SECONDS",
        type=_seconds,
        default=5.0,
        help="how long a stopped step's processes get to exit before they are killed "
        "(default: 5; a second Ctrl-C kills them at once)",
    )
    run.add_argument(
        "-v", "--verbose", action="store_true", help="print each command as it starts"
    )
    run.add_argument(
        "--show-output",
        action="store_true",
        help="print each step's output after each attempt (as show_output = true does for "
        "one step); with --json it goes to stderr with the progress lines",
    )
    run.add_argument(
        "--dask",
        metavar="ADDRESS",
        help='run the steps marked where = "dask" on the workers of the Dask scheduler at '
        "ADDRESS (tcp://host:8786); they need the same files at the same paths",
    )
    run.add_argument(
        "--trace",
        action="store_true",
        help="export the run's spans with OpenTelemetry, as the OTEL_* environment variables "
        "say (OTEL_TRACES_EXPORTER: otlp by default, or console); needs opentelemetry-sdk",
    )
    run.set_defaults(handler=_run)

    watch = commands.add_parser(
        "watch",
        parents=[state],
        help="run a workflow file, then again on every change to the steps' sources",
        description="Run the steps (all, or the STEPs given and what they come after), then "
        "watch their sources: on a change, run again the steps whose sources changed and "
        "what comes after them; a change during a run restarts them. Ctrl-C exits.",
    )
    watch.add_argument("file", metavar="FILE", help="the workflow file (TOML)")
    _add_target_arguments(watch)
    watch.add_argument(
        "--debounce",
        metavar="SECONDS",
        type=_seconds,
        default=0.3,
        help="wait until the files are quiet this long before running (default: 0.3)",
    )
    watch.add_argument(
        "--max-parallel", metavar="N", type=_positive_int, help="run at most N steps at once"
    )
    watch.add_argument(
        "--grace",
        metavar="SECONDS",
        type=_seconds,
        default=5.0,
        help="how long a stopped step's processes get to exit before they are killed (default: 5)",
    )
    watch.set_defaults(handler=_watch)

    runs = commands.add_parser("runs", parents=[state, as_json], help="list past runs")
    runs.set_defaults(handler=_runs)

    show = commands.add_parser("show", parents=[state, as_json], help="show one run")
    show.add_argument(
        "run_id", metavar="RUN_ID", help="the run's id, a unique prefix of it, or latest"
    )
    show.set_defaults(handler=_show)

    logs = commands.add_parser(
        "logs",
        parents=[state],
        help="print a step's log",
        description="Print the log of one step of a run (every attempt's output, as the "
        "step wrote it). With --follow, keep printing as the log grows until the step ends.",
    )
    logs.add_argument(
        "run_id", metavar="RUN_ID", help="the run's id, a unique prefix of it, or latest"
    )
    logs.add_argument("step", metavar="STEP", help="the step's name")
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing as the step writes, until it ends (Ctrl-C stops: exit status 130)",
    )
    logs.set_defaults(handler=_logs)

    prune = commands.add_parser(
        "prune",
        parents=[state, as_json],
        help="remove old runs and their logs",
        description="Remove old runs from the state, and their log directories. --keep N "
        "keeps the newest N runs; --older-than AGE removes runs last updated more than AGE "
        "ago; with both, a run goes when both select it. A running run is never removed.",
    )
    prune.add_argument("--keep", metavar="N", type=_count, help="keep the newest N runs (0: none)")
    prune.add_argument(
        "--older-than",
        metavar="AGE",
        type=_age,
        help="remove runs last updated more than AGE ago: 30m, 12h, 7d, 2w",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="list the runs it would remove; remove nothing"
    )
    prune.set_defaults(handler=_prune)

    graph = commands.add_parser(
        "graph", help="print a workflow file's steps as Mermaid (or DOT) text"
    )
    graph.add_argument("file", metavar="FILE", help="the workflow file (TOML)")
    graph.add_argument("--dot", action="store_true", help="print Graphviz DOT instead")
    graph.set_defaults(handler=_graph)

    add_serve_commands(commands)

    demo = commands.add_parser(
        "demo", help="run a short demonstration of the library", add_help=False
    )
    demo.add_argument("args", nargs=argparse.REMAINDER)
    demo.set_defaults(handler=_demo)
    return parser


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "steps",
        metavar="STEP",
        nargs="*",
        help="run only these steps (or matrices) and the steps they come after",
    )
    parser.add_argument(
        "--only",
        action="store_true",
        help="run the STEPs given alone, not the steps they come after",
    )


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status.

    Args:
        argv: The arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        # The demo has options of its own; argparse.REMAINDER would drop leading ones.
        return _demo(argparse.Namespace(args=argv[1:]))
    args = build_parser().parse_args(argv)  # exits with status 2 on a usage error
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except SpecError as exc:
        for line in str(exc).splitlines():
            print(f"trioflow: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"trioflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("trioflow: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Whoever read the output went away (`trioflow runs | head -1`): stop quietly, with
        # the status of a command killed by SIGPIPE. Point stdout at /dev/null so that
        # Python's final flush does not fail again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _limit(args: argparse.Namespace, spec_limit: int | None) -> int:
    limit: int = args.max_parallel or spec_limit or os.cpu_count() or 1
    return limit


def _targets(args: argparse.Namespace) -> WorkflowSpec:
    if args.only and not args.steps:
        raise UsageError("--only needs the names of the steps to run")
    return load_spec(args.file).select(args.steps, only=args.only)


def _run(args: argparse.Namespace) -> int:
    from ._run import up_to_date_steps

    spec = _targets(args)
    forced = args.force or []
    force = frozenset(spec.step_names([n for n in forced if n]))
    if args.dry_run:
        fresh = set()
        if "" not in forced:
            fresh = anyio.run(up_to_date_steps, spec, args.state, backend="trio") - force
        if args.json:
            print_json(
                plan_json(spec, max_parallel=_limit(args, spec.max_parallel), up_to_date=fresh)
            )
        else:
            logs = log_dir(args.state, "RUN_ID")

            def show(step: StepSpec) -> str:
                command = step_command(spec, step, run_id="RUN_ID", logs=logs)[0]
                return describe_command(command)

            limit = _limit(args, spec.max_parallel)
            print(plan(spec, max_parallel=limit, show=show, up_to_date=fresh), end="")
        return EXIT_OK
    options = RunOptions(
        file=args.file,
        state=args.state,
        resume=None if args.resume is None else _whole_id(args.state, args.resume),
        max_parallel=args.max_parallel,
        keep_going=args.keep_going,
        verbose=args.verbose,
        grace=args.grace,
        dask=args.dask,
        targets=tuple(args.steps),
        only=args.only,
        force=force,
        force_all="" in forced,
        show_output=args.show_output,
    )
    progress = sys.stderr if args.json else sys.stdout

    def log_of(run_id: str, step: str) -> Path:
        return log_file(log_dir(args.state, run_id), step)

    reporter = QuietOnError(
        make_reporter(progress, verbose=args.verbose, live=not args.json, log_of=log_of)
    )
    with tracing(args.trace):
        outcome = anyio.run(run_file, spec, options, reporter, backend="trio")
    if args.json:
        print_json(outcome.to_json())
        return outcome.exit_status
    print_summary(outcome.summary, sys.stdout, tail_lines=40 if args.verbose else TAIL_LINES)
    if outcome.resume_command is not None:
        if outcome.summary.status == "cancelled":
            print("the run was interrupted; to finish it (completed steps will not run again):")
        else:
            print("to run the steps that did not succeed again:")
        print(f"  {outcome.resume_command}")
    return outcome.exit_status


def _whole_id(state: Path | str, text: str) -> str:
    """The id of the run that ``--resume TEXT`` means (an id, a unique prefix, ``latest``)."""
    from ._select import find_run, open_existing

    async def main() -> str:
        async with open_existing(state, text) as store:
            return await find_run(store, state, text)

    run_id: str = anyio.run(main, backend="trio")
    return run_id


def _open_state(args: argparse.Namespace) -> trioflow.SQLiteStore | None:
    path: Path | str = args.state
    if isinstance(path, str):
        raise UsageError(f"runs and show read a state file; --state {path} is a Redis URL")
    if not path.exists():
        return None
    return trioflow.SQLiteStore(path)


async def _list_runs(store: trioflow.SQLiteStore) -> tuple[trioflow.RunRecord, ...]:
    async with store:
        return await store.list_runs()


async def _load_run(
    store: trioflow.SQLiteStore, state: Path, run_id: str
) -> trioflow.RunRecord | None:
    from ._select import find_run

    async with store:
        return await store.load_run(await find_run(store, state, run_id))


def _when(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _counts(record: trioflow.RunRecord) -> str:
    counts = {str(status): n for status, n in record.step_counts.items() if n}
    done = sum(counts.values())
    if done < record.total:
        counts["not_run"] = counts.get("not_run", 0) + record.total - done
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _status(record: trioflow.RunRecord) -> str:
    # A run whose owner died (or whose lease expired) is not running: it waits to be resumed.
    if record.interrupted:
        return "interrupted"
    if record.owner is not None and record.status is trioflow.RunStatus.RUNNING:
        return f"running (pid {record.owner.pid} on {record.owner.host})"
    return str(record.status)


def _owner_json(owner: trioflow.RunOwner) -> dict[str, object]:
    return {"host": owner.host, "pid": owner.pid, "since": owner.since.isoformat()}


def _runs(args: argparse.Namespace) -> int:
    store = _open_state(args)
    try:
        records = () if store is None else anyio.run(_list_runs, store, backend="trio")
    except trioflow.StoreError as exc:
        raise UsageError(describe_store_error(args.state, exc)) from None
    if args.json:
        print_json(
            [
                {
                    "run_id": r.run_id,
                    "workflow": r.workflow,
                    "status": str(r.status),
                    "interrupted": r.interrupted,
                    "owner": None if r.owner is None else _owner_json(r.owner),
                    "created_at": r.created_at.isoformat(),
                    "updated_at": r.updated_at.isoformat(),
                    "active_seconds": r.active_seconds,
                    "steps": r.total,
                    "step_counts": {str(s): n for s, n in r.step_counts.items()},
                }
                for r in records
            ]
        )
        return EXIT_OK
    if not records:
        print(f"no runs recorded in {args.state}")
        return EXIT_OK
    print_table(
        ("run id", "workflow", "status", "started", "took", "steps"),
        [
            (
                r.run_id,
                r.workflow,
                _status(r),
                _when(r.created_at),
                format_seconds(r.active_seconds),
                _counts(r),
            )
            for r in records
        ],
        sys.stdout,
    )
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    store = _open_state(args)
    if store is None:
        raise UsageError(f"no run {args.run_id!r}: there is no state file at {args.state}")
    try:
        record = anyio.run(_load_run, store, args.state, args.run_id, backend="trio")
    except trioflow.StoreError as exc:
        raise UsageError(describe_store_error(args.state, exc)) from None
    if record is None:
        raise UsageError(f"no run {args.run_id!r} in the state file {str(args.state)!r}")
    summary = summary_from_record(record, log_dir(args.state, record.run_id))
    if args.json:
        data = summary.to_json()
        data["created_at"] = record.created_at.isoformat()
        data["updated_at"] = record.updated_at.isoformat()
        print_json(data)
        return EXIT_OK
    print(f"run {record.run_id} of workflow {record.workflow!r}: {_status(record)}")
    print(f"started {_when(record.created_at)}, last update {_when(record.updated_at)}")
    print_summary(summary, sys.stdout)
    return EXIT_OK


def _graph(args: argparse.Namespace) -> int:
    spec = load_spec(args.file)
    print(dot(spec) if args.dot else mermaid(spec), end="")
    return EXIT_OK


def _watch(args: argparse.Namespace) -> int:
    from ._watch import WatchOptions, watch_file

    spec = _targets(args)
    options = WatchOptions(
        file=args.file,
        state=args.state,
        max_parallel=args.max_parallel,
        grace=args.grace,
        debounce=args.debounce,
    )
    status: int = anyio.run(watch_file, spec, options, sys.stdout, backend="trio")
    return status


def _demo(args: argparse.Namespace) -> int:
    from trioflow.cli._demo import main as demo_main

    status: int = demo_main(list(args.args))
    return status


def _logs(args: argparse.Namespace) -> int:
    from ._logs import print_log
    from ._select import open_existing

    async def main() -> None:
        async with open_existing(args.state, args.run_id) as store:
            await print_log(
                store,
                args.state,
                args.run_id,
                args.step,
                out=sys.stdout.buffer,
                follow=args.follow,
            )

    sys.stdout.flush()
    try:
        anyio.run(main, backend="trio")
    except KeyboardInterrupt:
        return 130  # Ctrl-C is how one stops following: no message, as with tail -f
    return EXIT_OK


def _prune(args: argparse.Namespace) -> int:
    from ._prune import Pruned, prune

    if args.keep is None and args.older_than is None:
        raise UsageError("prune needs --keep N or --older-than AGE (or both)")
    state: Path | str = args.state
    if isinstance(state, Path) and not state.exists():
        pruned = Pruned(removed=(), running=(), kept=0, dry_run=args.dry_run)
    else:

        async def main() -> Pruned:
            async with open_store(state) as store:
                return await prune(
                    store, state, keep=args.keep, older_than=args.older_than, dry_run=args.dry_run
                )

        pruned = anyio.run(main, backend="trio")
    if args.json:
        print_json(
            {
                "dry_run": pruned.dry_run,
                "removed": [_brief(r) for r in pruned.removed],
                "running": [_brief(r) for r in pruned.running],
                "kept": pruned.kept,
                "failures": [{"run_id": i, "error": why} for i, why in pruned.failures],
            }
        )
    else:
        verb = "would remove" if pruned.dry_run else "removed"
        for r in pruned.removed:
            print(f"{verb} run {r.run_id} ({r.workflow!r}, {_status(r)}, {_when(r.updated_at)})")
        for r in pruned.running:
            print(f"kept run {r.run_id} ({r.workflow!r}): it is {_status(r)}")
        for run_id, why in pruned.failures:
            print(
                f"trioflow: error: cannot remove the logs of run {run_id}: {why}", file=sys.stderr
            )
        runs = (
            "1 run and its logs"
            if len(pruned.removed) == 1
            else (f"{len(pruned.removed)} runs and their logs")
        )
        print(f"{verb} {runs}; {pruned.kept} left")
    return EXIT_FAILED if pruned.failures else EXIT_OK


def _brief(record: trioflow.RunRecord) -> dict[str, object]:
    return {
        "run_id": record.run_id,
        "workflow": record.workflow,
        "status": _status(record),
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
    }
