"""The ``trioflow`` command line (placeholder until the workflow runner lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Run the command line and exit with its status.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.
    """
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:
        from trioflow._demo import main as demo_main

        raise SystemExit(demo_main(args[1:]))
    print("usage: trioflow demo", file=sys.stderr)
    raise SystemExit(2)
