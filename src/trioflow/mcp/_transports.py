"""Running a server: over stdio, or over the SDK's streamable HTTP transport.

Both run until cancelled. HTTP runs the SDK's ASGI app under hypercorn, which runs on trio
as well as on asyncio (the SDK's own choice, uvicorn, runs on asyncio only).
"""

from __future__ import annotations

from typing import Any, Final

import anyio
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from .._backend import open_body_group, running_on_trio
from .._checks import check_int

__all__ = ("serve_http", "serve_stdio")

_GRACE: Final = 5.0  # seconds open HTTP requests get to finish when the server stops


def _check_server(server: object) -> None:
    if not isinstance(server, Server):
        raise TypeError(f"server must be an mcp Server (from create_server), got {server!r}")


async def serve_stdio(server: Server[Any]) -> None:
    """Serve one client over this process's stdin and stdout until it leaves or is cancelled.

    stdout carries the protocol and nothing else: the server's logs go to stderr.

    Args:
        server: The server, from :func:`create_server`.

    Raises:
        TypeError: ``server`` is not an SDK server.
    """
    _check_server(server)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def serve_http(server: Server[Any], *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve clients over the SDK's streamable HTTP transport at ``http://HOST:PORT/mcp``.

    Each HTTP session is a user of its own for the per-user limit. Runs until cancelled.

    Args:
        server: The server, from :func:`create_server`.
        host: The address to listen on (``127.0.0.1``: this machine only).
        port: The port, an int from 1 to 65535.

    Raises:
        TypeError: ``server``, ``host`` or ``port`` has the wrong type.
        ValueError: ``port`` is out of range.
        OSError: The address cannot be listened on (in use, not this machine's).
    """
    _check_server(server)
    if not isinstance(host, str) or not host:
        raise TypeError(f"host must be a non-empty str, got {host!r}")
    port = check_int(port, "port", minimum=1, maximum=65535)
    from hypercorn.config import Config  # here: only a server over HTTP needs it

    app = server.streamable_http_app(host=host)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = "-"  # stderr
    config.graceful_timeout = _GRACE
    if running_on_trio():
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve  # type: ignore[assignment]
    # hypercorn stops when its shutdown trigger returns, not when it is cancelled (its asyncio
    # side cannot be cancelled from outside): it runs shielded, and this task's cancellation
    # pulls the trigger; open requests get _GRACE seconds, then the server is gone.
    shutdown = anyio.Event()
    stopped = anyio.Event()
    failure: list[Exception] = []

    async def run() -> None:
        try:
            with anyio.CancelScope(shield=True):
                await serve(app, config, shutdown_trigger=shutdown.wait, mode="asgi")  # type: ignore[arg-type]
        except Exception as exc:  # cannot listen, most likely: raised here, as itself
            failure.append(exc)
        finally:
            stopped.set()

    async with open_body_group() as tg:  # a Ctrl-C in the body comes out as itself
        tg.start_soon(run)
        try:
            await stopped.wait()
        finally:
            shutdown.set()
    if failure:
        raise failure[0]
