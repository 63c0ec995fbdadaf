"""Placeholder demo; replaced by the executor demo."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    """Run the demo and return an exit status.

    Args:
        argv: Extra command-line arguments (unused).

    Returns:
        The exit status.
    """
    print("trioflow demo: coming with the batch executor")
    return 0
