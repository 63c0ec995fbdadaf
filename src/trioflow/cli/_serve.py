"""``trioflow serve`` and ``trioflow call``: a tool registry over MCP, or one call from the shell.

``serve`` finds the registry named ``MODULE:ATTR`` (importable from the current directory or
``sys.path``), loads the workflow files and the configuration, and only then starts the server
(stdio by default, streamable HTTP with ``--http``): a user error is a message and exit status
2, never a traceback of a server that half started. ``call`` makes one call through the same
admission and prints its result as JSON. Both import the MCP SDK only when they run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import anyio

import trioflow  # trioflow.lifecycle loads on first use: `trioflow runs` never does

from ._render import print_json
from ._run import EXIT_FAILED, EXIT_OK, UsageError

__all__ = ("add_commands",)

EXIT_TERMINATED = 143  # 128 + SIGTERM, as for `trioflow run`


def load_registry(target: str) -> trioflow.lifecycle.ToolRegistry:
    """Import the registry named ``MODULE:ATTR`` (``ATTR`` may be dotted).

    Args:
        target: E.g. ``"mytools:registry"``.

    Returns:
        The registry.

    Raises:
        UsageError: The text is not ``MODULE:ATTR``, the module cannot be imported (or fails
            while it is), it has no such attribute, or that is not a ToolRegistry.
    """
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--tools must be MODULE:ATTR (e.g. mytools:registry), got {target!r}")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, "")  # the current directory, as `python -m` has it
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise UsageError(
                f"cannot import module {module_name!r} (--tools {target}): no module named "
                f"{exc.name!r} in the current directory or on sys.path"
            ) from None
        raise UsageError(
            f"cannot import module {module_name!r} (--tools {target}): {type(exc).__name__}: {exc}"
        ) from None
    except Exception as exc:  # the module's own code failed: say where, without a traceback
        raise UsageError(
            f"cannot import module {module_name!r} (--tools {target}): {type(exc).__name__}: {exc}"
        ) from None
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}")
        value = getattr(value, part)
    if not isinstance(value, trioflow.lifecycle.ToolRegistry):
        raise UsageError(
            f"{target} is not a trioflow.lifecycle.ToolRegistry, got {type(value).__name__}"
        )
    return value


def _host_port(text: str) -> tuple[str, int]:
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not host or not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT (e.g. 127.0.0.1:8000), got {text!r}")
    return host, port


def _configure_logging() -> None:
    import structlog

    # stdout carries the protocol: every log line goes to stderr.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)


def _config(path: str | None) -> trioflow.lifecycle.OrchestrationConfig | None:
    if path is None:
        return None
    try:
        return trioflow.lifecycle.load_config(path)
    except trioflow.ConfigError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read the configuration {path!r}: {exc.strerror}") from None


def _serve(args: argparse.Namespace) -> int:
    registry = None if args.tools is None else load_registry(args.tools)
    if registry is None and not args.workflow:
        raise UsageError("give --tools MODULE:ATTR, --workflow FILE.toml, or both")
    config = _config(args.config)
    _configure_logging()
    import trioflow.mcp

    try:
        server = trioflow.mcp.create_server(
            registry,
            workflows=args.workflow,
            config=config,
            store=args.state,
            user_meta_key=args.user_meta,
        )
    except ValueError as exc:  # a tool named like a built-in one, two workflows of one name
        raise UsageError(str(exc)) from None
    if args.http is None:
        return _run_server(trioflow.mcp.serve_stdio, server)
    host, port = args.http
    try:
        return _run_server(_serve_http, server, host, port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


async def _until_terminated(serve: Any, *args: Any) -> bool:
    """Serve until done or SIGTERM (what a supervisor sends); whether SIGTERM stopped it."""
    stopped = False
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal stopped
                async for _ in signals:
                    print("trioflow: SIGTERM: stopping the server", file=sys.stderr, flush=True)
                    stopped = True
                    tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await serve(*args)
            tg.cancel_scope.cancel()
    return stopped


def _run_server(serve: Any, *args: Any) -> int:
    """Run a server; SIGTERM stops it as Ctrl-C does: calls cancelled, runs recorded."""
    try:
        terminated = anyio.run(_until_terminated, serve, *args, backend="trio")
    except BaseExceptionGroup as group:
        # Ctrl-C reaches the server inside the transport's task groups: it is still a Ctrl-C
        # (exit status 130, no traceback), whatever groups it comes out in.
        _, rest = group.split(KeyboardInterrupt)
        if rest is None:
            raise KeyboardInterrupt from None
        raise
    return EXIT_TERMINATED if terminated else EXIT_OK


async def _serve_http(server: Any, host: str, port: int) -> None:
    import trioflow.mcp

    print(f"trioflow: serving MCP at http://{host}:{port}/mcp", file=sys.stderr, flush=True)
    await trioflow.mcp.serve_http(server, host=host, port=port)


def _call(args: argparse.Namespace) -> int:
    registry = None if args.tools is None else load_registry(args.tools)
    try:
        arguments = json.loads(args.arguments)
    except ValueError as exc:
        raise UsageError(
            f"the arguments must be a JSON object, got {args.arguments!r}: {exc}"
        ) from None
    if not isinstance(arguments, dict):
        raise UsageError(f"the arguments must be a JSON object, got {args.arguments!r}")
    config = _config(args.config)
    _configure_logging()
    from trioflow.mcp._server import call_once

    async def progress(done: float, total: float | None, message: str | None) -> None:
        if message:
            print(f"trioflow: {message}", file=sys.stderr, flush=True)

    async def call() -> Any:
        return await call_once(
            registry,
            args.name,
            arguments,
            workflows=args.workflow,
            config=config,
            store=args.state,
            progress=progress,
        )

    try:
        result = anyio.run(call, backend="trio")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print_json(result.structured_content)
    return EXIT_FAILED if result.is_error else EXIT_OK


def add_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    """Add the ``serve`` and ``call`` commands to the ``trioflow`` parser.

    Args:
        commands: The parser's sub-commands.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--tools",
        metavar="MODULE:ATTR",
        help="the ToolRegistry to serve, importable from the current directory or sys.path",
    )
    common.add_argument(
        "--workflow",
        metavar="FILE",
        action="append",
        default=[],
        help="a workflow file to serve as run_workflow (repeat for more)",
    )
    common.add_argument(
        "--config", metavar="FILE", help="the orchestration configuration (TOML or JSON)"
    )
    common.add_argument(
        "--state",
        metavar="PATH",
        type=Path,
        default=None,
        help="the state file of workflow runs (default: .trioflow/state.db)",
    )
    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="serve tools and workflows over MCP (stdio, or HTTP)",
        description="Serve a tool registry, batches of its tools and workflow files to MCP "
        "clients: over stdin/stdout by default, over streamable HTTP at /mcp with --http.",
    )
    serve.add_argument(
        "--http",
        metavar="HOST:PORT",
        type=_host_port,
        help="serve over streamable HTTP at http://HOST:PORT/mcp instead of stdio",
    )
    serve.add_argument(
        "--user-meta",
        metavar="KEY",
        help="trust a user id clients send in the requests' _meta under KEY (default: each "
        "client connection is a user of its own)",
    )
    serve.set_defaults(handler=_serve)
    call = commands.add_parser(
        "call",
        parents=[common],
        help="call one tool through the server's admission and print the result as JSON",
    )
    call.add_argument("name", metavar="TOOL", help="the tool (or run_tools, run_workflow, ...)")
    call.add_argument(
        "arguments", metavar="JSON", nargs="?", default="{}", help="its arguments (a JSON object)"
    )
    call.set_defaults(handler=_call)
