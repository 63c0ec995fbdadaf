"""Shared fixtures: every async test runs on trio and on asyncio, in virtual time by default.

Mark a test ``@pytest.mark.real_time`` when it waits on threads, processes or files, where a
virtual clock would jump past its timeouts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import trio.testing

from _redis_server import RedisServer, start_redis
from trioflow.testing import VirtualTimeEventLoop

hypothesis.settings.register_profile(
    "default", deadline=None, max_examples=60, print_blob=True, derandomize=False
)
hypothesis.settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    name: str = request.param
    if request.node.get_closest_marker("real_time") is not None:
        return (name, {})
    if name == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return ("asyncio", {"loop_factory": VirtualTimeEventLoop})


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real ``redis-server`` for the whole run, on a free port on 127.0.0.1."""
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The shared server's URL, emptied after each test (``FLUSHALL``)."""
    yield redis_server.url
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=5) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        sock.recv(64)
