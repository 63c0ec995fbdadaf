"""A step's ``matrix``: one step per combination of values, named ``NAME[KEY=VALUE,...]``.

``matrix = { python = ["3.11", "3.12"], shard = ["1/3", "2/3", "3/3"] }`` makes six steps,
``test[python=3.11,shard=1/3]`` ... ``test[python=3.12,shard=3/3]``: keys in the order written,
values in the order listed, the last key varying fastest. Each step reads its values as
``${matrix.KEY}``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Final

_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_COMBINATIONS: Final = 1000
"""The most steps one matrix may make: beyond it, a file is more likely wrong than large."""


def combinations(matrix: object, where: str) -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
    """Expand a ``matrix`` table into its combinations.

    Args:
        matrix: The table as read from the file.
        where: The table's location, for the problems (``steps.test.matrix``).

    Returns:
        The combinations (each key -> value as text, keys in the order written) and the
        problems found, as ``(location, message)``; no combinations when there is a problem.
    """
    problems: list[tuple[str, str]] = []
    if not isinstance(matrix, dict) or not matrix:
        return [], [(where, "expected a non-empty table of lists, e.g. { python = ['3.12'] }")]
    axes: list[tuple[str, list[str]]] = []
    for key, values in matrix.items():
        if not _KEY.match(key):
            message = "a matrix key is letters, digits and '_', not starting with a digit"
            problems.append((where, f"{message}, got {key!r}"))
            continue
        if not isinstance(values, list) or not values:
            problems.append((f"{where}.{key}", "expected a non-empty list of strings or numbers"))
            continue
        texts: list[str] = []
        for value in values:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                problems.append(
                    (
                        f"{where}.{key}",
                        f"expected strings or numbers, got {type(value).__name__} {value!r}",
                    )
                )
            elif isinstance(value, str) and (not value or any(c in value for c in ",=[]\0")):
                problems.append(
                    (
                        f"{where}.{key}",
                        f"a matrix value must be non-empty, without ',', '=', '[', ']' or NUL, "
                        f"got {value!r}",
                    )
                )
            else:
                texts.append(str(value))
        if len(set(texts)) != len(texts):
            problems.append((f"{where}.{key}", f"the values repeat: {texts}"))
        axes.append((key, texts))
    if problems:
        return [], problems
    count = 1
    for _, texts in axes:
        count *= len(texts)
    if count > MAX_COMBINATIONS:
        return [], [(where, f"makes {count} steps, more than {MAX_COMBINATIONS}")]
    keys = [key for key, _ in axes]
    return [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(texts for _, texts in axes))
    ], []


def step_name(base: str, combination: Mapping[str, str]) -> str:
    """Return the name of one combination's step.

    Args:
        base: The step's name as written (``test``).
        combination: Its values, keys in the order written.

    Returns:
        E.g. ``test[python=3.11,shard=1/3]``.
    """
    return base + "[" + ",".join(f"{k}={v}" for k, v in combination.items()) + "]"
