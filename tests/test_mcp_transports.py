"""trioflow over real transports: a ``trioflow serve`` subprocess over stdio, HTTP on 127.0.0.1.

The stdio server is the real command, driven by the SDK's stdio client; the HTTP server is
``serve_http`` (hypercorn) on a free port, driven by the SDK's streamable HTTP client. The
command line's user errors end with exit status 2 and a message, before any server starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

import trioflow.mcp
from mcp import Client, StdioServerParameters
from trioflow.lifecycle import ToolRegistry

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]

SRC = str(Path(trioflow.__file__).parent.parent)
SERVE = [sys.executable, "-m", "trioflow", "serve"]

TOOLS = textwrap.dedent(
    """
    import pathlib
    import anyio
    from trioflow.lifecycle import ToolRegistry

    registry = ToolRegistry()
    here = pathlib.Path(__file__).parent

    @registry.tool
    async def add(a: int, b: int = 1) -> int:
        \"\"\"Add two numbers.\"\"\"
        return a + b

    @registry.tool
    async def nap(seconds: float) -> str:
        \"\"\"Sleep.\"\"\"
        (here / "nap.started").touch()
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            (here / "nap.cancelled").touch()
            raise
        return "rested"

    @registry.tool
    async def words(n: int):
        \"\"\"Stream n words.\"\"\"
        for i in range(n):
            yield f"word {i}"

    not_a_registry = 42
    """
)


def structured(result: types.CallToolResult) -> Any:
    assert result.structured_content is not None
    return result.structured_content


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "mytools.py").write_text(TOOLS, encoding="utf-8")
    return tmp_path


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC}


async def wait_for(path: Path) -> None:
    with anyio.fail_after(30):
        while not path.exists():
            await anyio.sleep(0.02)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_trioflow_serve_subprocess_over_stdio(
    project: Path, mode: str, anyio_backend: Any
) -> None:
    parameters = StdioServerParameters(
        command=sys.executable,
        args=["-m", "trioflow", "serve", "--tools", "mytools:registry"],
        env={"PYTHONPATH": SRC},
        cwd=project,
    )
    chunks: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        chunks.append(message)

    with (project / "stderr.txt").open("w") as errlog:
        async with Client(parameters, mode=mode) as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            added = await client.call_tool("add", {"a": 41})
            bad = await client.call_tool("add", {"a": "x"})
            streamed = await client.call_tool("words", {"n": 2}, progress_callback=on_progress)
            with anyio.move_on_after(30) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.call_tool, "nap", {"seconds": 60})
                    await wait_for(project / "nap.started")
                    tg.cancel_scope.cancel()
            assert not scope.cancelled_caught
            await wait_for(project / "nap.cancelled")
            after = await client.call_tool("add", {"a": 1})
        del errlog
    assert names == ["add", "nap", "words", "run_tools"]
    assert structured(added) == {"result": 42}
    assert bad.is_error
    assert structured(bad)["problems"] == [{"path": "a", "message": "expected int, got 'x'"}]
    assert chunks == ["word 0", "word 1"]
    assert structured(streamed) == {"result": ["word 0", "word 1"]}
    assert structured(after) == {"result": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for_port(port: int) -> None:
    with anyio.fail_after(30):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.02)
                continue
            await stream.aclose()
            return


# The SDK's HTTP client (httpx2) leaves the async generators of a response it abandons (the
# cancelled call's stream) to the garbage collector, which trio reports: the client's, not the
# server's, and only on trio.
CLIENT_LEAKS = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object "
    "(EventSource|PoolByteStream|Response)[.]:pytest.PytestUnraisableExceptionWarning",
    "ignore:Async generator 'httpx2:ResourceWarning",
    "ignore:Async generator 'httpcore2:ResourceWarning",
)


@CLIENT_LEAKS
async def test_the_http_transport_serves_calls_progress_and_cancellation() -> None:
    registry = ToolRegistry()
    cancelled = anyio.Event()

    @registry.tool
    async def nap(seconds: float) -> str:
        """Sleep."""
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return "rested"

    @registry.tool
    async def words(n: int) -> Any:
        """Stream n words."""
        for i in range(n):
            yield f"word {i}"

    arrived = [0]
    both_here = anyio.Event()

    @registry.tool
    async def meet() -> str:
        """Wait until two calls are in flight at once (ends in error if they cannot be)."""
        arrived[0] += 1
        if arrived[0] == 2:
            both_here.set()
        with anyio.fail_after(10):
            await both_here.wait()
        return "met"

    server = trioflow.mcp.create_server(
        registry, config={"per_user_limit": 1, "enable_metrics": False}
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    chunks: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        chunks.append(message)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: trioflow.mcp.serve_http(server, host="127.0.0.1", port=port))
        await wait_for_port(port)
        for mode in ("auto", "legacy"):
            cancelled = anyio.Event()
            async with Client(url, mode=mode) as client:
                streamed = await client.call_tool("words", {"n": 3}, progress_callback=on_progress)
                assert structured(streamed) == {"result": ["word 0", "word 1", "word 2"]}
                async with anyio.create_task_group() as calls:
                    calls.start_soon(client.call_tool, "nap", {"seconds": 60})
                    await anyio.sleep(0.5)
                    calls.cancel_scope.cancel()
                with anyio.fail_after(10):
                    await cancelled.wait()
        # Two clients of the handshake era are two HTTP sessions, two users: with a per-user
        # limit of 1, their calls still run side by side.
        met: list[Any] = []

        async def call(client: Client) -> None:
            met.append(structured(await client.call_tool("meet", {})))

        async with (
            Client(url, mode="legacy") as a,
            Client(url, mode="legacy") as b,
            anyio.create_task_group() as calls,
        ):
            calls.start_soon(call, a)
            calls.start_soon(call, b)
        assert met == [{"result": "met"}, {"result": "met"}]
        tg.cancel_scope.cancel()
    assert chunks == ["word 0", "word 1", "word 2"] * 2


def run_command(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioflow", *args],
        cwd=project,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tools", "nothere:registry"], "cannot import module 'nothere'"),
        (["--tools", "mytools:missing"], "module 'mytools' has no attribute 'missing'"),
        (["--tools", "mytools:not_a_registry"], "mytools:not_a_registry is not a trioflow"),
        (["--tools", "mytools"], "--tools must be MODULE:ATTR"),
        (["--tools", "mytools:registry", "--workflow", "nope.toml"], "nope.toml"),
        (["--tools", "mytools:registry", "--config", "nope.toml"], "nope.toml"),
        ([], "give --tools MODULE:ATTR, --workflow FILE.toml, or both"),
    ],
)
def test_a_user_error_exits_2_with_a_message_before_the_server_starts(
    project: Path, args: list[str], message: str
) -> None:
    done = run_command(project, "serve", *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_a_module_that_fails_to_import_is_named(project: Path) -> None:
    (project / "broken.py").write_text("raise RuntimeError('half written')\n")
    done = run_command(project, "serve", "--tools", "broken:registry")
    assert done.returncode == 2
    assert "cannot import module 'broken'" in done.stderr
    assert "RuntimeError: half written" in done.stderr
    assert "Traceback" not in done.stderr


def test_trioflow_call_runs_one_call_and_prints_json(project: Path) -> None:
    done = run_command(project, "call", "--tools", "mytools:registry", "add", '{"a": 1}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"result": 2}
    failed = run_command(project, "call", "--tools", "mytools:registry", "add", '{"a": "x"}')
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["category"] == "validation"
    batch = run_command(
        project,
        "call",
        "--tools",
        "mytools:registry",
        "run_tools",
        json.dumps({"calls": [{"tool": "add", "arguments": {"a": 2}}, {"tool": "nope"}]}),
    )
    assert batch.returncode == 0, batch.stderr
    data = json.loads(batch.stdout)
    assert (data["succeeded"], data["failed"]) == (1, 1)
    assert "1 of 2 calls done" in batch.stderr
    not_json = run_command(project, "call", "--tools", "mytools:registry", "add", "{")
    assert not_json.returncode == 2
    assert "the arguments must be a JSON object" in not_json.stderr


def test_sigterm_stops_an_http_server_cleanly(project: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [*SERVE, "--tools", "mytools:registry", "--http", f"127.0.0.1:{port}"],
        cwd=project,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # the server says where it listens once it starts
            if "Running on" in line:
                break
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 143, err
    assert "SIGTERM: stopping the server" in err
    assert "coordinator closed" in err
    assert "Traceback" not in err
    assert out == ""
