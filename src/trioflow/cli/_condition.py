"""The small condition language of a step's ``when``: parsed once, evaluated without ``eval``.

Grammar (keywords are lowercase; strings take single or double quotes, without escapes)::

    condition  := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := operand (("==" | "!=") operand)?
    operand    := "(" condition ")" | STRING | "env." NAME | "steps." STEP ".status"

A bare ``env.NAME`` is true when the variable is set to anything but ``""``, ``0``, ``false``,
``no`` or ``off`` (any case). In a comparison an unset variable is ``""``. ``steps.NAME.status``
is ``"succeeded"``, ``"failed"`` (a ``continue_on_error`` step) or ``"skipped"``, and must be
compared with one of those.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final, final

import attrs

STEP_STATUSES: Final = ("succeeded", "failed", "skipped")
_FALSY: Final = frozenset({"", "0", "false", "no", "off"})

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>==|!=|\(|\))
      | (?P<str>'[^']*'|"[^"]*")
      | (?P<word>[A-Za-z_][A-Za-z0-9_.\-]*)
      | (?P<bad>\S)
    )""",
    re.VERBOSE,
)


class ConditionSyntaxError(ValueError):
    """A ``when`` condition does not parse; the message names the column."""


@final
@attrs.frozen
class _Lit:
    value: str


@final
@attrs.frozen
class _Env:
    name: str


@final
@attrs.frozen
class _Status:
    step: str


@final
@attrs.frozen
class _Not:
    operand: _Node


@final
@attrs.frozen
class _Bool:
    op: str  # "and" | "or"
    left: _Node
    right: _Node


@final
@attrs.frozen
class _Cmp:
    op: str  # "==" | "!="
    left: _Node
    right: _Node


_Node = _Lit | _Env | _Status | _Not | _Bool | _Cmp


@final
@attrs.frozen(kw_only=True)
class Condition:
    """A parsed ``when`` condition.

    Attributes:
        source: The text it was parsed from.
        steps: The names of the steps whose status it reads.
    """

    source: str
    steps: frozenset[str]
    _tree: _Node = attrs.field(alias="tree", repr=False)

    def evaluate(self, env: Mapping[str, str], statuses: Mapping[str, str]) -> bool:
        """Evaluate the condition.

        Args:
            env: The environment variables (usually ``os.environ``).
            statuses: Status (``"succeeded"``, ``"failed"``, ``"skipped"``) of finished steps.

        Returns:
            Whether the step should run.
        """
        return _truth(self._tree, env, statuses)


def _value(node: _Node, env: Mapping[str, str], statuses: Mapping[str, str]) -> str:
    if isinstance(node, _Lit):
        return node.value
    if isinstance(node, _Env):
        return env.get(node.name, "")
    if isinstance(node, _Status):
        return statuses.get(node.step, "")
    return "true" if _truth(node, env, statuses) else "false"


def _truth(node: _Node, env: Mapping[str, str], statuses: Mapping[str, str]) -> bool:
    if isinstance(node, _Not):
        return not _truth(node.operand, env, statuses)
    if isinstance(node, _Bool):
        if node.op == "and":
            return _truth(node.left, env, statuses) and _truth(node.right, env, statuses)
        return _truth(node.left, env, statuses) or _truth(node.right, env, statuses)
    if isinstance(node, _Cmp):
        equal = _value(node.left, env, statuses) == _value(node.right, env, statuses)
        return equal if node.op == "==" else not equal
    return _value(node, env, statuses).strip().lower() not in _FALSY


def parse_condition(source: str, *, is_step: Callable[[str], bool] | None = None) -> Condition:
    """Parse a ``when`` condition.

    Args:
        source: The condition text, e.g. ``"env.CI == 'true' and not env.FAST"``.
        is_step: Optional check that a name used in ``steps.NAME.status`` is acceptable.

    Returns:
        The parsed condition.

    Raises:
        ConditionSyntaxError: The text does not parse; the message names the column.
    """
    parser = _Parser(source)
    tree = parser.parse()
    steps = frozenset(_steps_of(tree))
    if is_step is not None:
        for step in sorted(steps):
            if not is_step(step):
                raise ConditionSyntaxError(f"refers to unknown step {step!r}")
    return Condition(source=source, steps=steps, tree=tree)


def _steps_of(node: _Node) -> list[str]:
    if isinstance(node, _Status):
        return [node.step]
    if isinstance(node, _Not):
        return _steps_of(node.operand)
    if isinstance(node, _Bool | _Cmp):
        return _steps_of(node.left) + _steps_of(node.right)
    return []


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, column)
        pos = 0
        while pos < len(source):
            match = _TOKEN.match(source, pos)
            if match is None:  # only trailing whitespace is left
                break
            kind = match.lastgroup
            assert kind is not None
            text = match.group(kind)
            column = match.start(kind) + 1
            if kind == "bad":
                raise ConditionSyntaxError(f"unexpected character {text!r} at column {column}")
            self.tokens.append((kind, text, column))
            pos = match.end()
        self.index = 0

    def _peek(self) -> tuple[str, str, int]:
        if self.index < len(self.tokens):
            return self.tokens[self.index]
        return ("end", "", len(self.source) + 1)

    def _take(self) -> tuple[str, str, int]:
        token = self._peek()
        self.index += 1
        return token

    def _error(self, expected: str) -> ConditionSyntaxError:
        kind, text, column = self._peek()
        got = "end of condition" if kind == "end" else repr(text)
        return ConditionSyntaxError(f"expected {expected} at column {column}, got {got}")

    def parse(self) -> _Node:
        if not self.tokens:
            raise ConditionSyntaxError("empty condition")
        node = self._or()
        if self._peek()[0] != "end":
            raise self._error("'and', 'or' or the end of the condition")
        self._check_boolean(node)
        return node

    def _or(self) -> _Node:
        node = self._and()
        while self._peek()[:2] == ("word", "or"):
            self._take()
            node = _Bool("or", node, self._and())
        return node

    def _and(self) -> _Node:
        node = self._not()
        while self._peek()[:2] == ("word", "and"):
            self._take()
            node = _Bool("and", node, self._not())
        return node

    def _not(self) -> _Node:
        if self._peek()[:2] == ("word", "not"):
            self._take()
            return _Not(self._not())
        return self._comparison()

    def _comparison(self) -> _Node:
        left = self._operand()
        kind, text, _ = self._peek()
        if kind == "op" and text in ("==", "!="):
            self._take()
            right = self._operand()
            for a, b in ((left, right), (right, left)):
                if isinstance(a, _Status) and isinstance(b, _Lit) and b.value not in STEP_STATUSES:
                    raise ConditionSyntaxError(
                        f"unknown status {b.value!r} for step {a.step!r}; expected one of "
                        + ", ".join(repr(s) for s in STEP_STATUSES)
                    )
            return _Cmp(text, left, right)
        return left

    def _operand(self) -> _Node:
        kind, text, column = self._peek()
        if kind == "op" and text == "(":
            self._take()
            node = self._or()
            if self._peek()[:2] != ("op", ")"):
                raise self._error("')'")
            self._take()
            return node
        if kind == "str":
            self._take()
            return _Lit(text[1:-1])
        if kind == "word" and text not in ("and", "or", "not"):
            self._take()
            parts = text.split(".")
            if parts[0] == "env" and len(parts) == 2 and parts[1]:
                return _Env(parts[1])
            if parts[0] == "steps" and len(parts) == 3 and parts[1] and parts[2] == "status":
                return _Status(parts[1])
            raise ConditionSyntaxError(
                f"unknown name {text!r} at column {column}; expected env.NAME or steps.NAME.status"
            )
        raise self._error("env.NAME, steps.NAME.status, a 'string', 'not' or '('")

    def _check_boolean(self, node: _Node) -> None:
        # A bare string or step status used as a truth value is always a mistake.
        if isinstance(node, _Lit):
            raise ConditionSyntaxError(
                f"a bare string {node.value!r} is not a condition; compare it with ==/!="
            )
        if isinstance(node, _Status):
            raise ConditionSyntaxError(
                f"compare steps.{node.step}.status with a status, e.g. "
                f"steps.{node.step}.status == 'succeeded'"
            )
        if isinstance(node, _Not):
            self._check_boolean(node.operand)
        elif isinstance(node, _Bool):
            self._check_boolean(node.left)
            self._check_boolean(node.right)
