"""A stand-in for a real build or test command, used by the example workflows.

usage: work.py NAME SECONDS [--fail-once MARKER] [--fail] [--write FILE]

Prints what it does, sleeps SECONDS, and exits 0. With --fail-once, the first run (when
MARKER does not exist yet) creates MARKER and exits 1, so a retry succeeds. With --fail, it
always exits 1. With --write, it appends a line to FILE when done.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("seconds", type=float)
    parser.add_argument("--fail-once", metavar="MARKER", type=Path)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--write", metavar="FILE", type=Path)
    args = parser.parse_args()

    print(f"{args.name}: working for {args.seconds:g}s", flush=True)
    if args.fail_once is not None and not args.fail_once.exists():
        args.fail_once.parent.mkdir(parents=True, exist_ok=True)
        args.fail_once.touch()
        print(f"{args.name}: transient failure (will succeed when retried)", file=sys.stderr)
        return 1
    time.sleep(args.seconds)
    if args.fail:
        print(f"{args.name}: FAILED", file=sys.stderr)
        return 1
    if args.write is not None:
        with args.write.open("a", encoding="utf-8") as out:
            out.write(f"{args.name} ok\n")
    print(f"{args.name}: done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
