"""Shared fixtures: every async test runs on trio and on asyncio, in virtual time by default.

Mark a test ``@pytest.mark.real_time`` when it waits on threads, processes or files, where a
virtual clock would jump past its timeouts.
"""

from __future__ import annotations

import os
from typing import Any

import hypothesis
import pytest
import trio.testing

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
