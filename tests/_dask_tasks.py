"""Functions the tests run on Dask workers (module-level, so the workers import them)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio


class Refused(Exception):
    """The error the failing task raises, of a type of its own."""


def square(x: int) -> int:
    return x * x


def noop() -> None:
    return None


def refuse(x: int) -> int:
    raise Refused(f"no {x}")


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def mark_then_sleep(marker: str, seconds: float) -> int:
    """Write this process's pid to ``marker``, then sleep."""
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def mark(marker: str) -> int:
    Path(marker).write_text("ran")
    return 1


def die_first_time(marker: str, seconds: float) -> str:
    """The first call writes its pid to ``marker`` and sleeps (the test kills the worker)."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        time.sleep(seconds)
        return "slept"
    return f"second run in {os.getpid()}"


async def nap_then_record(marker: str, seconds: float) -> str:
    """Sleep on the worker's trio loop; record whether the sleep was cancelled."""
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        Path(marker).write_text("cancelled")
        raise
    return "slept"


def append_line(path: str, text: str) -> str:
    with open(path, "a") as f:
        f.write(text + "\n")
    return text.upper()
