"""The MCP server: a registry's tools, batches and workflow files behind one coordinator.

:func:`create_server` builds the SDK's low-level server. Its tool list is the registry's own
``describe()`` (trioflow's cattrs-based schemas) plus the built-in tools (``run_tools``, and
``run_workflow``, ``get_run`` and ``list_runs`` when workflow files are given), whose schemas
come from the same place. Every call is a :class:`~trioflow.lifecycle.Request` of one
coordinator, shared by every connection: it passes admission (global, per-user, rate limits,
pools), is validated (VALIDATED), runs (TOOL_EXECUTION for a tool, PROCESSING for a batch or a
run) and ends in one terminal state. The user is the client's connection (the HTTP session, or
the in-process / stdio connection), or the user id a client declares when the server trusts it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, final

import anyio
import attrs
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

import trioflow
from trioflow._telemetry import hooks
from trioflow.lifecycle import (
    Coordinator,
    ErrorCategory,
    OrchestrationConfig,
    Pipeline,
    ProcessingResult,
    Request,
    RequestKind,
    RequestState,
    Router,
    Stage,
    StateMachine,
    ToolRegistry,
    load_config,
    open_coordinator,
)

from ._progress import Progress, open_progress
from ._results import batch_json, error_text, failure, from_processing, text_of
from ._workflows import WorkflowFiles

__all__ = ("BUILT_IN_TOOLS", "call_once", "create_server")

BUILT_IN_TOOLS = ("run_tools", "run_workflow", "get_run", "list_runs")
"""The names of the server's own tools (the last three only when workflow files are given); a
registry tool may not take one."""

_S = RequestState
# The path of an MCP call: validated, then run as a tool (TOOL_EXECUTION) or as a batch, a
# workflow run or a read of the runs (PROCESSING), then COMPLETED; FAILED or CANCELLED from
# anywhere on the way.
_TRANSITIONS = {
    _S.RECEIVED: {_S.VALIDATED},
    _S.VALIDATED: {_S.TOOL_EXECUTION, _S.PROCESSING},
    _S.TOOL_EXECUTION: {_S.COMPLETED},
    _S.PROCESSING: {_S.COMPLETED},
}
_MACHINE_TABLE = {
    state: {*targets, _S.FAILED, _S.CANCELLED} for state, targets in _TRANSITIONS.items()
}
_BATCH = "tool_batch"


@final
class _Call:
    """What one MCP call runs: how to check its arguments, then how to run it."""

    __slots__ = ("execute", "tool", "validate")

    def __init__(
        self, tool: str, validate: Callable[[], dict[str, Any]], execute: Callable[..., Any]
    ) -> None:
        self.tool = tool
        self.validate = validate
        self.execute = execute  # (**kwargs) -> an awaitable value, or an async iterator


async def _validate(request: Request) -> dict[str, Any]:
    call: _Call = request.payload
    return call.validate()


async def _execute(request: Request) -> Any:
    call: _Call = request.payload
    return await call.execute(**request.results["validate"])


async def _execute_streaming(request: Request) -> AsyncIterator[Any]:
    call: _Call = request.payload
    chunks = call.execute(**request.results["validate"])
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()


@attrs.frozen
class BatchCall:
    """One call of a ``run_tools`` batch.

    Attributes:
        tool: The name of a registry tool.
        arguments: Its arguments.
    """

    tool: str
    arguments: dict[str, Any] = attrs.field(factory=dict)


def _built_ins(workflows: tuple[str, ...]) -> ToolRegistry:
    """The built-in tools' signatures: their schemas and argument checks (the server runs them)."""
    built_ins = ToolRegistry()

    @built_ins.tool(name="run_tools")
    async def run_tools(
        calls: list[BatchCall],
        limit: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - each call's, as in run_batch
        fail_fast: bool = False,
    ) -> None:
        """Run many tool calls at once as one batch; one failing call never hides the others.

        Args:
            calls: The calls, each {"tool": NAME, "arguments": {...}}; results keep their order.
            limit: At most this many calls at once (default: no limit but the server's).
            timeout: Seconds each call may take (default: no limit but the server's).
            fail_fast: Cancel the remaining calls after the first failure.
        """

    if not workflows:
        return built_ins

    async def run_workflow(workflow: str, resume: str | None = None) -> None:
        """Run a workflow file's steps (or resume a run), as `trioflow run` does.

        Args:
            workflow: The workflow's name.
            resume: The id of a run to finish: steps that succeeded do not run again.
        """

    # The names of this server's workflows, listed as an enum in the schema.
    run_workflow.__annotations__ = {
        "workflow": Literal[workflows],
        "resume": str | None,
        "return": None,
    }
    built_ins.tool(name="run_workflow")(run_workflow)

    @built_ins.tool(name="get_run")
    async def get_run(run_id: str) -> None:
        """Read a stored workflow run: its status and each step's status, attempts and duration.

        Args:
            run_id: The run's id.
        """

    @built_ins.tool(name="list_runs")
    async def list_runs(limit: int = 20) -> None:
        """List the most recent workflow runs: id, workflow, status and start.

        Args:
            limit: At most this many runs.
        """

    return built_ins


@final
@attrs.define(eq=False)
class _Connection:
    """What the server's lifespan yields to the handlers of one connection."""

    id: str
    coordinator: Coordinator


@final
class _Service:
    """The server's state: the tools, the workflow files and the one shared coordinator."""

    def __init__(
        self,
        registry: ToolRegistry,
        workflows: WorkflowFiles,
        config: OrchestrationConfig,
        user_meta_key: str | None,
        logger: Any,
    ) -> None:
        self.registry = registry
        self.workflows = workflows
        self.config = config
        self.user_meta_key = user_meta_key
        self.log = logger
        self.built_ins = _built_ins(workflows.names)
        self.tools = self._list_tools()
        machine = StateMachine(_MACHINE_TABLE, _S.RECEIVED)
        tool_pools = ("tool",) if "tool" in config.pools else ()
        validate = Stage("validate", _S.VALIDATED, _validate)

        def pipeline(state: RequestState, fn: Any, pools: tuple[str, ...] = ()) -> Pipeline:
            return Pipeline([validate, Stage("execute", state, fn, pools=pools)], machine=machine)

        self.machine = machine
        self.router = Router(
            _kind_of_unclassified,
            {
                RequestKind.TOOL_EXECUTION: pipeline(_S.TOOL_EXECUTION, _execute, tool_pools),
                RequestKind.STREAMING: pipeline(_S.TOOL_EXECUTION, _execute_streaming, tool_pools),
                _BATCH: pipeline(_S.PROCESSING, _execute),
                RequestKind.COMPLEX_WORKFLOW: pipeline(_S.PROCESSING, _execute),
                RequestKind.SIMPLE_QUERY: pipeline(_S.PROCESSING, _execute),
            },
        )
        self._coordinator: Coordinator | None = None
        self._connections = 0
        self._changed: anyio.Event | None = None  # set when _connections changes

    def _list_tools(self) -> list[types.Tool]:
        described = [*self.registry.describe(), *self.built_ins.describe()]
        return [
            types.Tool(
                name=tool["name"],
                description=tool["description"],
                input_schema=tool["inputSchema"],
            )
            for tool in described
        ]

    # --- connections ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, server: Server[Any] | None) -> AsyncIterator[_Connection]:
        """Serve one connection (stdio, in-process) or the HTTP transport (every session).

        The first opens the coordinator; the others share it; the first waits for the others
        to end before it closes the coordinator (its task group is its own).
        """
        connection_id = "connection-" + secrets.token_hex(6)
        if self._coordinator is not None:
            self._connections += 1
            try:
                yield _Connection(id=connection_id, coordinator=self._coordinator)
            finally:
                self._connections -= 1
                if self._changed is not None:
                    self._changed.set()
            return
        async with open_coordinator(
            self.config,
            router=self.router,
            registry=self.registry,
            logger=self.log,
            machine=self.machine,
        ) as coordinator:
            self._coordinator = coordinator
            self._changed = changed = anyio.Event()
            try:
                yield _Connection(id=connection_id, coordinator=coordinator)
                while self._connections:
                    await changed.wait()
                    self._changed = changed = anyio.Event()
            finally:
                self._coordinator = None

    def user_of(self, ctx: ServerRequestContext[Any, Any], connection: _Connection) -> str:
        """Who calls: a declared user (when trusted), the HTTP session, or the connection."""
        if self.user_meta_key is not None and ctx.meta is not None:
            declared = ctx.meta.get(self.user_meta_key)
            if isinstance(declared, str) and declared:
                return declared
        http = ctx.request
        headers = getattr(http, "headers", None)
        if headers is not None:
            session = headers.get("mcp-session-id")
            if session:
                return f"http-session-{session}"
            client = getattr(http, "client", None)  # a stateless HTTP request: its address
            if client is not None:
                return f"http-{client.host}"
        return connection.id

    # --- calls ----------------------------------------------------------------------------
    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools)

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        connection: _Connection = ctx.lifespan_context
        user = self.user_of(ctx, connection)
        progress: Progress = ctx.session.report_progress
        return await self.call(
            connection, user, "mcp", params.name, params.arguments or {}, progress
        )

    async def call(
        self,
        connection: _Connection,
        user: str,
        source: str,
        name: str,
        arguments: Mapping[str, Any],
        progress: Progress,
    ) -> types.CallToolResult:
        """Make one call a request of the coordinator; answer its tool result."""
        telemetry = hooks.current
        if telemetry is None:
            return await self._call(connection, user, source, name, arguments, progress)
        # A span per tool call, named and tagged as OpenTelemetry's MCP conventions say.
        attributes = {"mcp.method.name": "tools/call", "gen_ai.tool.name": name}
        with telemetry.span(f"tools/call {name}", attributes) as span:
            result = await self._call(connection, user, source, name, arguments, progress)
            if result.is_error:
                span.fail("the tool call failed")
        return result

    async def _call(
        self,
        connection: _Connection,
        user: str,
        source: str,
        name: str,
        arguments: Mapping[str, Any],
        progress: Progress,
    ) -> types.CallToolResult:
        try:
            request, wrap, on_chunk = self._request(connection, user, name, arguments, progress)
            request.source = source
            timeout: Any = None if request.kind == RequestKind.COMPLEX_WORKFLOW else ...
            result = await connection.coordinator.process(
                request, timeout=timeout, on_chunk=on_chunk
            )
        except Exception as exc:  # a defect of the server's own: a tool error, never a crash
            self.log.exception("tool call failed inside the server", tool=name)
            return failure(exc, ErrorCategory.of(exc))
        if not result.ok:
            self._log_failure(name, request, result)
        return from_processing(result, wrap)

    def _log_failure(self, name: str, request: Request, result: ProcessingResult) -> None:
        self.log.warning(
            "tool call failed",
            tool=name,
            user_id=request.user_id,
            status=result.status.value,
            category=None if result.category is None else result.category.value,
            error=error_text(result.error) if result.error is not None else None,
        )

    def _request(
        self,
        connection: _Connection,
        user: str,
        name: str,
        arguments: Mapping[str, Any],
        progress: Progress,
    ) -> tuple[Request, bool, Any]:
        """The request of one call, whether its value is wrapped, and where its chunks go."""
        built_in = name in self.built_ins and name not in self.registry
        if built_in:
            tool = self.built_ins.get(name)
            execute, kind = self._built_in(connection, name, progress)
            call = _Call(
                tool=name, validate=functools.partial(tool.bind, arguments), execute=execute
            )
            return Request(call, user_id=user, source="mcp", kind=kind), False, None
        registry = self.registry
        if name not in registry:
            call = _Call(name, functools.partial(_unknown, registry, name), _unreachable)
            return (
                Request(call, user_id=user, source="mcp", kind=RequestKind.TOOL_EXECUTION),
                True,
                None,
            )
        tool = registry.get(name)
        call = _Call(name, functools.partial(tool.bind, arguments), tool.fn)
        if not tool.streaming:
            return (
                Request(call, user_id=user, source="mcp", kind=RequestKind.TOOL_EXECUTION),
                True,
                None,
            )
        sent = 0

        async def on_chunk(chunk: Any) -> None:
            nonlocal sent
            sent += 1
            await progress(sent, None, text_of(chunk))

        return (
            Request(call, user_id=user, source="mcp", kind=RequestKind.STREAMING),
            True,
            on_chunk,
        )

    def _built_in(
        self, connection: _Connection, name: str, progress: Progress
    ) -> tuple[Callable[..., Awaitable[Any]], str]:
        if name == "run_tools":
            return functools.partial(self._run_tools, connection, progress), _BATCH
        if name == "run_workflow":
            return functools.partial(self._run_workflow, progress), RequestKind.COMPLEX_WORKFLOW
        if name == "get_run":
            return self.workflows.get_run, RequestKind.SIMPLE_QUERY
        return self.workflows.list_runs, RequestKind.SIMPLE_QUERY

    async def _run_tools(
        self,
        connection: _Connection,
        progress: Progress,
        *,
        calls: list[BatchCall],
        limit: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - each call's, as in run_batch
        fail_fast: bool = False,
    ) -> dict[str, Any]:
        coordinator = connection.coordinator
        operations = [
            functools.partial(coordinator.call_tool, call.tool, call.arguments) for call in calls
        ]
        async with open_progress(progress) as report:

            def on_progress(snapshot: trioflow.Progress) -> None:
                message = f"{snapshot.completed} of {len(calls)} calls done"
                if snapshot.failed:
                    message += f", {snapshot.failed} failed"
                report(snapshot.completed, len(calls), message)

            batch = await trioflow.run_batch(
                operations,
                limit=limit,
                timeout=timeout,
                fail_fast=fail_fast,
                on_progress=on_progress,
            )
        return batch_json(batch)

    async def _run_workflow(
        self, progress: Progress, *, workflow: str, resume: str | None = None
    ) -> dict[str, Any]:
        return await self.workflows.run(workflow, resume, progress)


def _unknown(registry: ToolRegistry, name: str) -> dict[str, Any]:
    registry.get(name)  # raises UnknownToolError (VALIDATION), listing the known tools
    raise AssertionError(f"tool {name!r} is registered")


def _unreachable(**kwargs: Any) -> Any:  # validate() of an unknown tool raised first
    raise AssertionError("an unknown tool ran")


def _kind_of_unclassified(request: Request) -> str:
    # Every request of the server is made with its kind; nothing else reaches this router.
    raise ValueError(f"request {request.id!r} has no kind")


def _default_logger() -> Any:
    import logging

    import structlog

    # Logs go to stderr: a stdio server's stdout carries the protocol and nothing else.
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )


async def _no_progress(done: float, total: float | None, message: str | None) -> None:
    pass


async def call_once(
    registry: ToolRegistry | None,
    name: str,
    arguments: Mapping[str, Any],
    *,
    workflows: Iterable[str | os.PathLike[str]] = (),
    config: OrchestrationConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None,
    progress: Progress = _no_progress,
    logger: Any = None,
) -> types.CallToolResult:
    """Make one call as a server would, through the same admission, for ``trioflow call``.

    The request's user is ``"cli"`` and its source ``"cli"``; the arguments are those of
    :func:`create_server`.
    """
    service = _make_service(registry, workflows, config, store, None, logger)
    async with service.lifespan(None) as connection:
        return await service.call(connection, "cli", "cli", name, arguments, progress)


def _make_service(
    registry: ToolRegistry | None,
    workflows: Iterable[str | os.PathLike[str]],
    config: OrchestrationConfig | Mapping[str, Any] | str | os.PathLike[str] | None,
    store: str | os.PathLike[str] | None,
    user_meta_key: str | None,
    logger: Any,
) -> _Service:
    if registry is None:
        registry = ToolRegistry()
    elif not isinstance(registry, ToolRegistry):
        raise TypeError(f"registry must be a ToolRegistry or None, got {registry!r}")
    if user_meta_key is not None and (not isinstance(user_meta_key, str) or not user_meta_key):
        raise TypeError(f"user_meta_key must be a non-empty str or None, got {user_meta_key!r}")
    if isinstance(workflows, str | os.PathLike):
        raise TypeError(f"workflows must be a list of file paths, got {workflows!r}")
    if store is not None and not isinstance(store, str | os.PathLike):
        raise TypeError(f"store must be a file path or None, got {store!r}")
    files = WorkflowFiles(list(workflows), None if store is None else Path(store))
    taken = [n for n in registry.names if n in BUILT_IN_TOOLS[: 4 if files.names else 1]]
    if taken:
        raise ValueError(
            f"the registry has a tool named {taken[0]!r}, a name of the server's own "
            f"(built-in: {', '.join(BUILT_IN_TOOLS)}); register it under another name"
        )
    if not isinstance(config, OrchestrationConfig):
        config = OrchestrationConfig() if config is None else load_config(config)
    return _Service(
        registry, files, config, user_meta_key, _default_logger() if logger is None else logger
    )


def create_server(
    registry: ToolRegistry | None = None,
    *,
    workflows: Iterable[str | os.PathLike[str]] = (),
    config: OrchestrationConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None,
    name: str = "trioflow",
    user_meta_key: str | None = None,
    logger: Any = None,
) -> Server[Any]:
    """Build an MCP server serving a registry's tools, batches of them and workflow files.

    Example::

        server = trioflow.mcp.create_server(registry, workflows=["build.toml"])
        await trioflow.mcp.serve_stdio(server)

    Every call (a tool, a ``run_tools`` batch, a workflow run) is a request of one coordinator
    opened for the server's lifetime and shared by its connections: admitted within the
    configuration's limits (each client is a user of its own for ``per_user_limit``), it ends
    in exactly one terminal state. A refused or failed call is a tool result with
    ``isError: true``, never a protocol error; the server never dies of a call.

    Args:
        registry: The tools to serve (none by default: only the built-in tools).
        workflows: Workflow files (TOML, as ``trioflow run`` takes) served by ``run_workflow``
            under their names; ``get_run`` and ``list_runs`` read their runs.
        config: The :class:`~trioflow.lifecycle.OrchestrationConfig` of admission and pools,
            or what :func:`~trioflow.lifecycle.load_config` takes.
        store: The state file of workflow runs (``.trioflow/state.db`` by default, as
            ``trioflow run``).
        name: The server's name, as clients see it.
        user_meta_key: A key of the requests' ``_meta`` that names the user (a client's own
            user id); ``None`` (the default) trusts no client: each connection is a user.
        logger: A structlog logger; by default one that writes to stderr at INFO level.

    Returns:
        The SDK's :class:`mcp.server.lowlevel.Server`, to run with :func:`serve_stdio`,
        :func:`serve_http` or any transport of the SDK.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: A registry tool has the name of a built-in tool, or two workflow files
            have the same name.
        ConfigError: ``config`` does not load.
        trioflow.cli.SpecError: A workflow file is not valid (the message names the file).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    service = _make_service(registry, workflows, config, store, user_meta_key, logger)
    return Server(
        name,
        version=trioflow.__version__,
        lifespan=service.lifespan,
        on_list_tools=service.list_tools,
        on_call_tool=service.call_tool,
    )
