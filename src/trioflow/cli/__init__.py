"""The ``trioflow`` command line: run workflow files of shell commands.

``python -m trioflow run FILE.toml`` (or the ``trioflow`` console script) runs the steps of a
workflow file in parallel as their dependencies allow, with retries, timeouts, conditions and
resource pools, shows live progress, and records every run in a state file so that an
interrupted or failed run can be resumed. See ``trioflow --help`` and the command-line page of
the documentation. The command is built only on trioflow's public API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

__all__ = ("main",)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the command line and exit with its status.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Raises:
        SystemExit: Always, with the command's exit status.
    """
    import sys

    from trioflow import _startup

    try:
        from ._stdio import prepare_stdio

        prepare_stdio()
        from ._app import run

        _startup.finished()  # from here on, Ctrl-C is a KeyboardInterrupt again
        status = run(argv)
    except KeyboardInterrupt:  # before the command could handle it (no traceback: not a bug)
        print("trioflow: interrupted", file=sys.stderr)
        status = 130
    raise SystemExit(status)
