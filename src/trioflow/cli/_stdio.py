"""Standard streams the command can always write to, whatever it was started with.

Two ways a shell can hand the command unusable streams, and what the command does about them:

* A closed descriptor (``trioflow run ... --json 2>&-``): Python then sets ``sys.stderr`` to
  None, ``print(file=None)`` writes to stdout instead, and the next file opened takes the free
  descriptor. Each closed one of 0, 1 and 2 is pointed at the null device first, so stdout holds
  what it should (the JSON) and nothing else.
* A terminal whose encoding cannot show a step's output (latin-1, ASCII): text is written with
  replacement characters instead of failing with ``UnicodeEncodeError``, so the summary and the
  resume command are never lost.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

__all__ = ("prepare_stdio",)


def prepare_stdio() -> None:
    """Point closed standard descriptors at the null device; make output never fail to encode."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:  # the lowest free descriptor: fd itself, unless a lower one is free
                os.dup2(null, fd)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="replace")
