"""MCP serving overhead: a no-op tool call through trioflow's server against a bare SDK server.

Both servers are the SDK's low-level ``Server`` with one tool, ``noop(x: int) -> int``, called
by the SDK's own ``Client`` in the same process, one call after the other. Rows, per backend
and per client mode (each row in a fresh process, see ``_harness.py``):

* floor: the bare SDK server, its handlers written by hand (a fixed tool list, the arguments
  read from the dict, a result with ``structuredContent`` and text, as trioflow answers);
* trioflow: ``trioflow.mcp.create_server(registry)`` with the default configuration: every call
  a request of the coordinator (admission under the global and per-user limits, the 30 s
  request timeout, validated arguments, state machine, one terminal state).

The client modes are the SDK's two in-process pairings: ``auto`` (the per-request path, no
JSON-RPC framing) and ``legacy`` (JSON-RPC over memory streams, the handshake era).

A last figure runs both servers as subprocesses over stdio (``serve_stdio``), called by the
SDK's stdio client in alternating rounds: what a desktop client sees, wall clock per call.

The wall-clock table has the harness's fresh process per row. On a loaded machine the wall
clock of two processes run at different moments is a poor judge of a 1.3x ratio, so the
verdict uses a paired measurement: one process per group alternates rounds of calls through
both servers (bare, trioflow, bare, trioflow, ...) and takes the median CPU time
(``time.process_time()``) per call of each; the load the rounds share cancels out of the ratio.
Usage: ``python bench/mcp.py`` (or ``nox -s bench``). The target, checked at the end: trioflow's
server at most 1.3 times the bare server's CPU time per call, in every group.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

# This file is bench/mcp.py, and its folder comes first on sys.path: without it there while the
# SDK is imported, `import mcp` finds the SDK, not this script.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import anyio  # noqa: E402
import mcp_types as types  # noqa: E402
import trio  # noqa: E402, F401 - imported up front, so that no row pays for an import
from mcp.server.lowlevel import Server  # noqa: E402

import trioflow.mcp  # noqa: E402
from mcp import Client  # noqa: E402
from trioflow.lifecycle import ToolRegistry  # noqa: E402

sys.path.insert(0, _HERE)
from _harness import Bench, Row  # noqa: E402

bench = Bench(__file__)

N = 2_000
TARGET = 1.3
SUMMARY: list[str] = []


def _bare_server() -> Server[Any]:
    tool = types.Tool(
        name="noop",
        description="Return x.",
        input_schema={
            "type": "object",
            "properties": {"x": {"type": "integer"}},
            "required": ["x"],
            "additionalProperties": False,
        },
    )

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        data = {"result": (params.arguments or {})["x"]}
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(data))],
            structured_content=data,
        )

    return Server("bare", on_list_tools=list_tools, on_call_tool=call_tool)


def _trioflow_server() -> Server[Any]:
    registry = ToolRegistry()

    @registry.tool
    async def noop(x: int) -> int:
        """Return x."""
        return x

    return trioflow.mcp.create_server(registry)


async def _calls(server: Server[Any], mode: str, n: int) -> None:
    async with Client(server, mode=mode) as client:
        for i in range(n):
            result = await client.call_tool("noop", {"x": i})
            assert not result.is_error, result


@bench.case
def bare_sdk(n: int, backend: str, mode: str) -> int:
    anyio.run(_calls, _bare_server(), mode, n, backend=backend)
    return n


@bench.case
def trioflow_server(n: int, backend: str, mode: str) -> int:
    anyio.run(_calls, _trioflow_server(), mode, n, backend=backend)
    return n


ROUNDS = 9  # of the paired measurement; the first is a warm-up and not counted


def _paired_child(backend: str, mode: str) -> None:
    servers = {"bare": _bare_server(), "trioflow": _trioflow_server()}
    cpu: dict[str, list[float]] = {name: [] for name in servers}
    for _ in range(ROUNDS):
        for name, server in servers.items():
            start = time.process_time()
            anyio.run(_calls, server, mode, N // 4, backend=backend)
            cpu[name].append((time.process_time() - start) / (N // 4) * 1e6)
    print(json.dumps({name: statistics.median(v[1:]) for name, v in cpu.items()}))


def _serve_child(which: str) -> None:
    server = _bare_server() if which == "bare" else _trioflow_server()
    anyio.run(trioflow.mcp.serve_stdio, server, backend="trio")


async def _stdio_rounds() -> dict[str, float]:
    from mcp import StdioServerParameters

    def command(which: str) -> StdioServerParameters:
        env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        return StdioServerParameters(
            command=sys.executable, args=[__file__, "--serve", which], env=env
        )

    wall: dict[str, list[float]] = {"bare": [], "trioflow": []}
    async with Client(command("bare")) as bare, Client(command("trioflow")) as ours:
        clients = {"bare": bare, "trioflow": ours}
        for _ in range(ROUNDS):
            for name, client in clients.items():
                start = time.perf_counter()
                for i in range(N // 8):
                    await client.call_tool("noop", {"x": i})
                wall[name].append((time.perf_counter() - start) / (N // 8) * 1e6)
    return {name: statistics.median(v[1:]) for name, v in wall.items()}


def _paired(backend: str, mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--paired", backend, mode],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def plan(run: Any) -> None:
    for backend in ("trio", "asyncio"):
        for mode in ("auto", "legacy"):
            group = f"{backend}, client mode {mode}"
            params = {"n": N, "backend": backend, "mode": mode}
            floor: Row = run(
                "bare_sdk", group=group, floor=True, label="bare SDK server", **params
            )
            ours: Row = run("trioflow_server", group=group, label="trioflow server", **params)
            cpu = _paired(backend, mode)
            ratio = cpu["trioflow"] / cpu["bare"]
            verdict = "meets" if ratio <= TARGET else "MISSES"
            SUMMARY.append(
                f"- {group}: CPU time per call {cpu['bare']:.1f} us bare, "
                f"{cpu['trioflow']:.1f} us through trioflow: {ratio:.2f}x ({verdict} the "
                f"{TARGET}x target; wall clock {floor.per_op_us:.1f} / {ours.per_op_us:.1f} us, "
                f"{ours.per_op_us / floor.per_op_us:.2f}x)"
            )
    stdio = anyio.run(_stdio_rounds, backend="trio")
    SUMMARY.append(
        f"- over stdio (each server a subprocess, the SDK's stdio client, wall clock per call, "
        f"alternating rounds): {stdio['bare']:.1f} us bare, {stdio['trioflow']:.1f} us through "
        f"trioflow: {stdio['trioflow'] / stdio['bare']:.2f}x"
    )
    SUMMARY.append(
        f"- load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs while measuring"
    )


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--serve":
        _serve_child(sys.argv[2])
        sys.exit(0)
    if len(sys.argv) >= 2 and sys.argv[1] == "--paired":
        _paired_child(sys.argv[2], sys.argv[3])
        sys.exit(0)
    bench.main(plan, title="MCP: a no-op tool call, trioflow's server against a bare SDK server")
    if SUMMARY:
        print("\n".join(["", "Overhead:", *SUMMARY]))
        sys.stdout.flush()
