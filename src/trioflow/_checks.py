"""Argument checks shared by every layer: one wording for one kind of bad input."""

from __future__ import annotations

import math

__all__ = ("check_timeout",)


def check_timeout(value: object, name: str = "timeout") -> float | None:
    """Check a timeout-like argument: None (no limit), or a finite number of seconds >= 0.

    Args:
        value: What the caller passed.
        name: How the message names the argument, e.g. ``"timeout of step 'build'"``.

    Returns:
        The value as a float, or None.

    Raises:
        TypeError: Not a number (``bool`` included).
        ValueError: Negative, NaN or infinite.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds >= 0 or None, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{name} must be a finite number of seconds >= 0 (None for no timeout), got {value!r}"
        )
    return float(value)
