"""A real ``redis-server`` for the tests: started on a free port on 127.0.0.1, no persistence.

The session fixture ``redis_url`` (in ``conftest.py``) starts one server for the whole run;
a test that must restart or stop its server starts its own with :func:`start_redis`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import attrs
import pytest

import trioflow.redis
from trioflow import MemoryStore, SQLiteStore, WorkflowStore


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on (as of now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@attrs.define
class RedisServer:
    """One running ``redis-server`` process.

    Attributes:
        port: The port it listens on, on 127.0.0.1.
        directory: Its working directory (it saves nothing there).
        process: The server process, or None while it is stopped.
    """

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (again) on its port and wait until it answers."""
        executable = shutil.which("redis-server")
        if executable is None:  # .ci/run installs it; a developer machine needs it too
            raise RuntimeError("redis-server is not installed: apt-get install redis-server")
        self.process = subprocess.Popen(
            [
                executable,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--protected-mode", "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server at once (SIGKILL: what a crash or a lost machine looks like)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@contextmanager
def start_redis(directory: Path) -> Iterator[RedisServer]:
    """Run a ``redis-server`` of its own for one block, on a free port."""
    server = RedisServer(port=free_port(), directory=directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# The workflow stores the store contract tests run against (Redis: on the session's server).
STORE_KINDS = (
    "memory",
    pytest.param("sqlite", marks=pytest.mark.real_time),
    pytest.param("redis", marks=pytest.mark.real_time),
)


@asynccontextmanager
async def open_store(request: pytest.FixtureRequest, path: Path) -> AsyncIterator[WorkflowStore]:
    """Open the store of kind ``request.param``: in memory, an SQLite file at ``path``, Redis."""
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "sqlite":
        async with SQLiteStore(path) as sqlite:
            yield sqlite
    else:
        url: str = request.getfixturevalue("redis_url")
        async with trioflow.redis.connect(url) as redis:
            yield redis.store()


def store_location(request: pytest.FixtureRequest, path: Path) -> str:
    """Return where the store of kind ``request.param`` is: the SQLite file, or the Redis URL."""
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return str(path)


@asynccontextmanager
async def store_at(location: str) -> AsyncIterator[WorkflowStore]:
    """Open the store at ``location``: a Redis URL, or the path of an SQLite file."""
    if location.startswith("redis://"):
        async with trioflow.redis.connect(location) as redis:
            yield redis.store()
    else:
        async with SQLiteStore(location) as sqlite:
            yield sqlite
