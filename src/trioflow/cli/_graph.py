"""``trioflow graph`` and ``--dry-run``: the workflow as Mermaid, DOT, or waves of steps."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from ._spec import StepSpec, WorkflowSpec


def _notes(step: StepSpec) -> list[str]:
    notes = []
    if step.when is not None:
        notes.append(f"when {step.when.source}")
    if step.exclusive:
        notes.append("exclusive")
    if step.pools:
        notes.append("pools: " + ", ".join(step.pools))
    if step.continue_on_error:
        notes.append("continue on error")
    return notes


def _mermaid_text(text: str) -> str:
    return (
        text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    )


def mermaid(spec: WorkflowSpec) -> str:
    """Return the workflow as a Mermaid flowchart.

    Node ids are ``s0``, ``s1``... (step names such as ``end`` would confuse Mermaid); the
    labels are the step names, with conditions, exclusivity and pools on a second line.
    Conditional steps have rounded corners.

    Args:
        spec: The workflow.

    Returns:
        The Mermaid text, ending with a newline.
    """
    ids = {name: f"s{i}" for i, name in enumerate(spec.steps)}
    lines = ["flowchart TD"]
    for name, step in spec.steps.items():
        label = _mermaid_text(name)
        notes = _notes(step)
        if notes:
            label += "<br/><small>" + _mermaid_text("; ".join(notes)) + "</small>"
        shape = ('("', '")') if step.when is not None else ('["', '"]')
        lines.append(f"    {ids[name]}{shape[0]}{label}{shape[1]}")
    for name, step in spec.steps.items():
        for before in step.after:
            lines.append(f"    {ids[before]} --> {ids[name]}")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot(spec: WorkflowSpec) -> str:
    """Return the workflow as a Graphviz DOT digraph (``dot -Tsvg`` draws it).

    Args:
        spec: The workflow.

    Returns:
        The DOT text, ending with a newline.
    """
    lines = [f"digraph {_dot_text(spec.name)} {{", "    rankdir=LR;", "    node [shape=box];"]
    for name, step in spec.steps.items():
        attributes = []
        notes = _notes(step)
        if notes:
            # \n inside a DOT string is a line break in the drawn label.
            label = _dot_text(name)[:-1] + "\\n" + _dot_text("; ".join(notes))[1:]
            attributes.append(f"label={label}")
        if step.when is not None:
            attributes.append("style=dashed")
        suffix = f" [{', '.join(attributes)}]" if attributes else ""
        lines.append(f"    {_dot_text(name)}{suffix};")
    for name, step in spec.steps.items():
        for before in step.after:
            lines.append(f"    {_dot_text(before)} -> {_dot_text(name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def plan(
    spec: WorkflowSpec,
    *,
    max_parallel: int,
    show: Callable[[StepSpec], str],
    up_to_date: Collection[str] = (),
) -> str:
    """Return the dry-run plan: the waves of steps that would run together, with commands.

    Args:
        spec: The workflow.
        max_parallel: The limit the run would use.
        show: Returns a step's command as it would run.
        up_to_date: The steps that would be skipped as up to date (marked so).

    Returns:
        The text, ending with a newline.
    """
    waves = spec.waves()
    lines = [
        f"workflow {spec.name!r}: {count(len(spec.steps), 'step')} in "
        f"{count(len(waves), 'wave')} "
        f"(max_parallel {max_parallel})"
    ]
    for number, wave in enumerate(waves, 1):
        lines.append(f"wave {number}: {', '.join(wave)}")
        for name in wave:
            step = spec.steps[name]
            fresh = " (up to date)" if name in up_to_date else ""
            lines.append(f"  {name}{fresh}: {show(step)}")
            options = _notes(step)
            if step.timeout is not None:
                options.append(f"timeout {step.timeout:g}s")
            if step.retries:
                options.append(f"retries {step.retries}")
            if step.cwd is not None:
                options.append(f"cwd {step.cwd}")
            if options:
                lines.append(f"    ({'; '.join(options)})")
    return "\n".join(lines) + "\n"


def plan_json(
    spec: WorkflowSpec, *, max_parallel: int, up_to_date: Collection[str] = ()
) -> dict[str, Any]:
    """Return the dry-run plan as JSON-ready data.

    Args:
        spec: The workflow.
        max_parallel: The limit the run would use.
        up_to_date: The steps that would be skipped as up to date.

    Returns:
        ``{"workflow", "max_parallel", "waves": [[step names]], "steps": {name: {...}}}``.
    """
    return {
        "workflow": spec.name,
        "max_parallel": max_parallel,
        "waves": spec.waves(),
        "steps": {
            name: {
                "command": list(step.command) if not step.is_shell else None,
                "shell": step.command if step.is_shell else None,
                "after": list(step.after),
                "when": None if step.when is None else step.when.source,
                "timeout": step.timeout,
                "retries": step.retries,
                "exclusive": step.exclusive,
                "continue_on_error": step.continue_on_error,
                "pools": list(step.pools),
                "sources": list(step.sources),
                "generates": list(step.generates),
                "matrix": dict(step.matrix),
                "up_to_date": name in up_to_date,
            }
            for name, step in spec.steps.items()
        },
    }


def count(n: int, word: str) -> str:
    """``"1 step"``, ``"3 steps"``: a number and its noun, in the singular for one."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
