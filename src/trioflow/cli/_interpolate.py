"""``${NAME}`` interpolation in the fields of a workflow file.

One syntax, parsed once and checked before anything runs:

* ``${NAME}`` is the value of the variable ``NAME``; ``${NAME:-default}`` is ``default`` when
  the variable is unset or empty. The default is plain text: it may not hold ``$``, ``{`` or
  ``}`` (nesting is not supported).
* ``${matrix.KEY}`` is the value of ``KEY`` in the step's matrix combination.
* ``$$`` is a literal ``$``, and ``$${NAME}`` (or ``$${NAME:-default}``) the literal text
  ``${NAME}``: the shell's own ``${HOME}``. A ``$`` before anything else (``$HOME``, ``$1``)
  is left as it is, for the shell.
* ``{python}``, ``{run_id}``, ``{step}`` and ``{logs}`` are the placeholders of a run; any other
  ``{identifier}`` is an error (write ``{{identifier}}`` for the literal text ``{identifier}``).
  Braces around anything that is not an identifier (``awk '{print $1}'``, ``{a,b}``, ``{}``)
  are plain text.
"""

from __future__ import annotations

import difflib
import functools
import re
import shlex
from collections.abc import Callable, Iterator
from typing import Final, final

import attrs

PLACEHOLDERS: Final = ("python", "run_id", "step", "logs")
"""The names of the ``{name}`` placeholders, which a run gives values."""

_VARIABLE: Final = re.compile(r"(?:matrix\.)?[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN: Final = re.compile(
    r"\$\$(?P<literal>\{[A-Za-z_][A-Za-z0-9_]*(?::-[^${}]*)?\})?|\$\{|\{\{(?P<escaped>[A-Za-z_][A-Za-z0-9_]*)\}\}|\{(?P<placeholder>[A-Za-z_][A-Za-z0-9_]*)\}"
)


class InterpolationError(ValueError):
    """A field's text is not a valid template, or names something that has no value."""


@final
@attrs.frozen
class Variable:
    """A ``${NAME}`` or ``${NAME:-default}`` reference.

    Attributes:
        name: ``NAME``, or ``matrix.KEY``.
        default: The text used when the variable is unset or empty, or None for none.
    """

    name: str
    default: str | None = None


@final
@attrs.frozen
class Placeholder:
    """A ``{name}`` placeholder of the run (one of :data:`PLACEHOLDERS`).

    Attributes:
        name: The placeholder's name.
    """

    name: str


Part = str | Variable | Placeholder


@final
@attrs.frozen
class Template:
    """A parsed field: literal text, variables and placeholders, in order.

    Attributes:
        parts: The pieces; literal text is a ``str``, already unescaped.
    """

    parts: tuple[Part, ...]

    def variables(self) -> Iterator[Variable]:
        """Yield the variable references, in order.

        Yields:
            Each :class:`Variable`.
        """
        for part in self.parts:
            if isinstance(part, Variable):
                yield part

    def render(
        self,
        lookup: Callable[[str], str | None],
        placeholders: Callable[[str], str],
        *,
        quote: bool = False,
    ) -> str:
        """Return the text with every reference replaced.

        Args:
            lookup: A variable's value by name (``matrix.KEY`` included), None when unset.
            placeholders: A placeholder's value by name.
            quote: Quote each substituted value as one shell word (for ``shell``).

        Returns:
            The text.

        Raises:
            InterpolationError: A variable without a default has no value.
        """
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            if isinstance(part, Placeholder):
                value = placeholders(part.name)
            else:
                found = lookup(part.name)
                if part.default is not None and not found:
                    value = part.default
                elif found is None:
                    raise InterpolationError(f"${{{part.name}}} is not set (and has no default)")
                else:
                    value = found
            out.append(shlex.quote(value) if quote else value)
        return "".join(out)


@functools.lru_cache(maxsize=4096)  # a run renders each field of each step again and again
def parse_template(text: str) -> Template:
    """Parse a field's text.

    Args:
        text: The text as written in the file.

    Returns:
        The template.

    Raises:
        InterpolationError: An unterminated ``${``, a bad variable name, a nested reference in
            a default, or an unknown ``{placeholder}``.
    """
    parts: list[Part] = []
    literal: list[str] = []
    position = 0
    while True:
        match = _TOKEN.search(text, position)
        if match is None:
            literal.append(text[position:])
            break
        literal.append(text[position : match.start()])
        token = match.group()
        position = match.end()
        if token.startswith("$$"):
            literal.append("$" + (match["literal"] or ""))
        elif match["escaped"] is not None:
            literal.append("{" + match["escaped"] + "}")
        elif match["placeholder"] is not None:
            name = match["placeholder"]
            if name not in PLACEHOLDERS:
                close = difflib.get_close_matches(name, PLACEHOLDERS, n=1)
                hint = f"did you mean {{{close[0]}}}? " if close else ""
                known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                raise InterpolationError(
                    f"unknown placeholder {{{name}}} ({hint}the placeholders are {known}; "
                    f"write {{{{{name}}}}} for the text {{{name}}})"
                )
            parts.extend(_flush(literal))
            parts.append(Placeholder(name))
        else:  # "${"
            end = text.find("}", position)
            if end < 0:
                raise InterpolationError(
                    f"unterminated ${{ at character {match.start() + 1} (write $$ for a literal $)"
                )
            parts.extend(_flush(literal))
            parts.append(_variable(text[position:end]))
            position = end + 1
    parts.extend(_flush(literal))
    return Template(tuple(parts))


def _flush(literal: list[str]) -> list[Part]:
    text = "".join(literal)
    literal.clear()
    return [text] if text else []


def _variable(body: str) -> Variable:
    name, sep, default = body.partition(":-")
    if "${" in name or "$" in default or "{" in default or "}" in default:
        raise InterpolationError(
            f"${{{body}}}: nested references are not supported (a default is plain text)"
        )
    if not _VARIABLE.match(name):
        raise InterpolationError(
            f"${{{body}}}: expected ${{NAME}}, ${{NAME:-default}} or ${{matrix.KEY}}, where NAME "
            "is letters, digits and '_', not starting with a digit"
        )
    return Variable(name, default if sep else None)


def escape(text: str) -> str:
    """Return a template whose value is exactly ``text`` (the inverse of parsing).

    Args:
        text: Any text.

    Returns:
        The text with ``$`` doubled and every ``{identifier}`` not after a ``$`` braced twice.
    """
    doubled = text.replace("$", "$$")
    return re.sub(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}", r"{{\1}}", doubled)
