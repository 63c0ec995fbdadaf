"""The workflow file format: parse a TOML file and validate it before anything runs.

A file has one ``[workflow]`` table (``name``, ``max_parallel``, ``pools``), an optional
``[env]`` table of variables for every step, and one ``[steps.NAME]`` table per step (a step
with a ``matrix`` becomes one step per combination). Every problem is reported with its
location (the table path, e.g. ``steps.build.timeout``) and all problems of a file are reported
at once, interpolation included: a ``${NAME}`` without a value is found before anything runs.
"""

from __future__ import annotations

import difflib
import graphlib
import math
import os
import re
import tomllib
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, final

import attrs

import trioflow

from .._checks import check_int, check_number, problem
from ._condition import Condition, ConditionSyntaxError, parse_condition
from ._interpolate import InterpolationError, parse_template
from ._matrix import combinations, step_name

_STEP_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*\Z")
_TOML_WHERE: Final = re.compile(r" \(at line (?P<line>\d+), column (?P<column>\d+)\)\Z")
_WORKFLOW_KEYS: Final = ("name", "max_parallel", "pools")
MAX_RETRIES: Final = 1000
"""The most retries a step may ask for: beyond it, a file is more likely wrong than patient."""
_STEP_KEYS: Final = (
    "run",
    "shell",
    "after",
    "timeout",
    "retries",
    "retry_delay",
    "backoff",
    "when",
    "env",
    "cwd",
    "exclusive",
    "continue_on_error",
    "pools",
    "where",
    "sources",
    "generates",
    "matrix",
    "show_output",
)
WHERE: Final = ("local", "dask")
"""Where a step's command may run: on this machine, or on a worker of ``--dask``'s cluster."""


async def _planned(ctx: trioflow.Context) -> None:
    """What stands for a step's command in the plan of :meth:`WorkflowSpec.waves` (never run)."""


class SpecError(Exception):
    """A workflow file cannot be used; lists every problem with its location.

    Attributes:
        source: The file's path as given.
        problems: Every problem as ``(location, message)``; location is ``""`` for the file.
    """

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(
            "\n".join(
                f"{source}: {location}: {message}" if location else f"{source}: {message}"
                for location, message in self.problems
            )
        )


@final
@attrs.frozen(kw_only=True)
class StepSpec:
    """One step of a workflow file.

    Attributes:
        name: The step's name (the ``NAME`` of ``[steps.NAME]``).
        command: An argument list (``run``, executed without a shell) or a string (``shell``).
        after: Names of the steps it comes after.
        timeout: Seconds allowed per attempt, or None.
        retries: Extra attempts after a failure (0: run once).
        retry_delay: Seconds before the first retry.
        backoff: Multiplier of the delay after each retry.
        when: The condition deciding at start time whether the step runs, or None.
        env: Extra environment variables for the command.
        cwd: The working directory, relative to the workflow file's directory.
        exclusive: Whether the step runs with no other step in flight.
        continue_on_error: Whether a failure leaves the run going (and the run successful).
        pools: Named pools the step takes one token from while it runs.
        where: ``"local"``, or ``"dask"`` to run on a worker of the cluster given with
            ``trioflow run --dask ADDRESS`` (locally without it).
        sources: Glob patterns of the files whose content decides whether the step is up to
            date (relative to its working directory); empty: the step always runs.
        generates: Glob patterns of what the step makes; each must match something for the
            step to be up to date.
        matrix: This step's values of its ``matrix`` (key -> value), empty for a plain step.
        group: The name written in the file (``test`` for ``test[python=3.12]``).
        show_output: Whether the step's output is printed after each attempt ends (as with
            ``trioflow run --show-output``), not only written to its log.
    """

    name: str
    command: tuple[str, ...] | str
    after: tuple[str, ...] = ()
    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 1.0
    backoff: float = 2.0
    when: Condition | None = None
    env: Mapping[str, str] = attrs.field(factory=dict)
    cwd: str | None = None
    exclusive: bool = False
    continue_on_error: bool = False
    pools: tuple[str, ...] = ()
    where: str = "local"
    sources: tuple[str, ...] = ()
    generates: tuple[str, ...] = ()
    matrix: Mapping[str, str] = attrs.field(factory=dict)
    group: str = ""
    show_output: bool = False

    @property
    def is_shell(self) -> bool:
        """Whether the command runs through the shell (``shell =``)."""
        return isinstance(self.command, str)


@final
@attrs.frozen(kw_only=True)
class WorkflowSpec:
    """A validated workflow file.

    Attributes:
        path: The file's path as given on the command line.
        name: The workflow's name (default: the file name without ``.toml``).
        max_parallel: At most this many steps at once, or None for the default.
        pools: Sizes of the named pools.
        steps: The steps, in file order (a matrix's steps in the place of the step written).
        env: The ``[env]`` table as written (values not yet interpolated), in file order.
        groups: Each name written in the file -> the names of its steps (one, or a matrix's).
    """

    path: Path
    name: str
    max_parallel: int | None
    pools: Mapping[str, int]
    steps: Mapping[str, StepSpec]
    env: Mapping[str, str] = attrs.field(factory=dict)
    groups: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)

    @property
    def directory(self) -> Path:
        """The directory holding the file: the default working directory of every step."""
        return self.path.resolve().parent

    def waves(self) -> list[list[str]]:
        """Group the steps into waves that could run together, as :meth:`Workflow.waves` does.

        A step's wave is one more than the latest wave among the steps it comes after; an
        exclusive step gets a wave of its own. Limits are not taken into account.

        Returns:
            The waves in order, each a list of step names in file order.
        """
        workflow = trioflow.Workflow(self.name)
        for step in self.steps.values():
            workflow.step(step.name, _planned, after=step.after, exclusive=step.exclusive)
        return [list(wave) for wave in workflow.waves()]

    def ancestors(self, name: str) -> set[str]:
        """Every step that ``name`` comes after, directly or not.

        Args:
            name: A step name.

        Returns:
            The names of its ancestors.
        """
        seen: set[str] = set()
        todo = list(self.steps[name].after)
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self.steps[current].after)
        return seen

    def descendants(self, names: Collection[str]) -> set[str]:
        """Every step that comes after one of ``names``, directly or not (``names`` excluded).

        Args:
            names: Step names.

        Returns:
            The names of the steps that depend on them.
        """
        found: set[str] = set()
        frontier = set(names)
        while frontier:
            frontier = {
                n
                for n, s in self.steps.items()
                if n not in found and n not in names and frontier.intersection(s.after)
            }
            found |= frontier
        return found

    def step_names(self, names: Sequence[str], *, what: str = "step") -> list[str]:
        """Turn names from the command line into step names: a matrix's name means its steps.

        Args:
            names: Names as given (``test``, ``test[python=3.12]``, ``lint``).
            what: How messages call them.

        Returns:
            The step names, in the order of the file, each once.

        Raises:
            SpecError: A name is neither a step nor a matrix; the message suggests the closest.
        """
        chosen: set[str] = set()
        problems = []
        for name in names:
            if name in self.steps:
                chosen.add(name)
            elif name in self.groups:
                chosen.update(self.groups[name])
            else:
                known = [*self.groups, *(n for n in self.steps if n not in self.groups)]
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(("", f"unknown {what} {name!r}{hint}"))
        if problems:
            raise SpecError(str(self.path), problems)
        return [n for n in self.steps if n in chosen]

    def select(self, names: Sequence[str], *, only: bool = False) -> WorkflowSpec:
        """Keep the named steps and, unless ``only``, every step they come after.

        Args:
            names: Step or matrix names (none: every step).
            only: Keep the named steps alone; what they come after is treated as done.

        Returns:
            The workflow with those steps.

        Raises:
            SpecError: A name is unknown.
        """
        if not names:
            return self
        chosen = set(self.step_names(names))
        if not only:
            for name in list(chosen):
                chosen |= self.ancestors(name)
        steps = {
            n: attrs.evolve(s, after=tuple(a for a in s.after if a in chosen))
            for n, s in self.steps.items()
            if n in chosen
        }
        groups = {g: tuple(m for m in ms if m in chosen) for g, ms in self.groups.items()}
        groups = {g: members for g, members in groups.items() if members}
        return attrs.evolve(self, steps=steps, groups=groups)

    def resolve(
        self,
        step: StepSpec,
        *,
        placeholders: Callable[[str], str],
        environ: Mapping[str, str] | None = None,
        quote_placeholders: bool = True,
    ) -> ResolvedStep:
        """Interpolate a step's fields: its command, environment, directory and globs.

        The process environment, then ``[env]``, then the step's ``env`` are applied in the
        order written; each value sees the variables set before it (so
        ``PATH = "bin:${PATH}"`` extends the ``PATH`` so far). The command, ``cwd``, ``sources``
        and ``generates`` see them all, and ``${matrix.KEY}``.

        Args:
            step: One of the workflow's steps.
            placeholders: The value of ``{python}``, ``{run_id}``, ``{step}`` and ``{logs}``.
            environ: The process environment (default: ``os.environ``).
            quote_placeholders: In a ``shell`` line, quote each substituted value.

        Returns:
            The resolved step.

        Raises:
            SpecError: A variable has no value (not raised for a file that loaded: it was
                checked with the same environment).
        """
        environ = os.environ if environ is None else environ
        resolved, problems = _resolve(self, step, placeholders, environ, quote_placeholders)
        if resolved is None:
            raise SpecError(str(self.path), problems)
        return resolved


@final
@attrs.frozen(kw_only=True)
class ResolvedStep:
    """A step's fields with every ``${NAME}``, ``${matrix.KEY}`` and placeholder replaced.

    Attributes:
        command: The argument list or shell line.
        cwd: The absolute working directory.
        env: The variables the file sets for the step (``[env]`` then the step's ``env``).
        sources: The ``sources`` patterns.
        generates: The ``generates`` patterns.
    """

    command: tuple[str, ...] | str
    cwd: Path
    env: Mapping[str, str]
    sources: tuple[str, ...]
    generates: tuple[str, ...]


def _resolve(
    spec: WorkflowSpec,
    step: StepSpec,
    placeholders: Callable[[str], str],
    environ: Mapping[str, str],
    quote_placeholders: bool,
) -> tuple[ResolvedStep | None, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    where = f"steps.{step.group or step.name}"
    declared: dict[str, str] = {}  # over the process environment, which is not copied

    def lookup(name: str) -> str | None:
        if name.startswith("matrix."):
            key = name.removeprefix("matrix.")
            if key in step.matrix:
                return step.matrix[key]
            keys = ", ".join(step.matrix) or "none: the step has no matrix"
            raise InterpolationError(f"${{{name}}}: no such matrix key (the keys are {keys})")
        return declared[name] if name in declared else environ.get(name)

    def render(text: str, location: str, quote: bool = False) -> str:
        try:
            return parse_template(text).render(lookup, placeholders, quote=quote)
        except InterpolationError as exc:
            problems.append((location, str(exc)))
            return text

    for table, prefix in ((spec.env, "env"), (step.env, f"{where}.env")):
        for key, value in table.items():
            declared[key] = render(value, f"{prefix}.{key}")
    if isinstance(step.command, str):
        command: tuple[str, ...] | str = render(step.command, f"{where}.shell", quote_placeholders)
    else:
        command = tuple(render(a, f"{where}.run[{i}]") for i, a in enumerate(step.command))
    cwd = spec.directory
    if step.cwd is not None:
        cwd = cwd / render(step.cwd, f"{where}.cwd")
    sources = tuple(render(g, f"{where}.sources[{i}]") for i, g in enumerate(step.sources))
    generates = tuple(render(g, f"{where}.generates[{i}]") for i, g in enumerate(step.generates))
    if problems:
        return None, problems
    resolved = ResolvedStep(
        command=command, cwd=cwd, env=declared, sources=sources, generates=generates
    )
    return resolved, []


def load_spec(path: Path | str) -> WorkflowSpec:
    """Read and validate a workflow file.

    Args:
        path: The file's path.

    Returns:
        The validated workflow.

    Raises:
        SpecError: The file cannot be read, is not valid TOML, or does not describe a valid
            workflow; every problem is listed with its location.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), [("", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(str(path), [("", f"cannot read the file: {_os_message(exc)}")]) from None
    return parse_spec(text, path=path)


def parse_spec(text: str, *, path: Path | str) -> WorkflowSpec:
    """Validate the text of a workflow file.

    Args:
        text: The TOML text.
        path: The file's path (for messages, and as the steps' default working directory).

    Returns:
        The validated workflow.

    Raises:
        SpecError: The text is not valid TOML or does not describe a valid workflow.
    """
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)": show it as compilers do,
        # FILE:LINE:COLUMN, which terminals and editors turn into a link to the spot.
        message, source = str(exc), str(path)
        where = _TOML_WHERE.search(message)
        if where is not None:
            message = message[: where.start()]
            source = f"{source}:{where['line']}:{where['column']}"
        raise SpecError(source, [("", f"invalid TOML: {message}")]) from None
    checker = _Checker()
    spec = checker.workflow(data, path)
    if checker.problems or spec is None:
        raise SpecError(str(path), checker.problems)
    return spec


def _os_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _describe(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if type(value) in names:
        return f"{names[type(value)]} ({value!r})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


class _Checker:
    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def fail(self, location: str, message: str) -> None:
        self.problems.append((location, message))

    def unknown_keys(self, table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.fail(where, f"unknown key {key!r}{hint}")

    def names(self, value: object, where: str) -> tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        self.fail(where, f"expected a step name or a list of step names, got {_describe(value)}")
        return ()

    def workflow(self, data: Mapping[str, Any], path: Path) -> WorkflowSpec | None:
        self.unknown_keys(data, ("workflow", "env", "steps"), "(top level)")
        head = data.get("workflow", {})
        if not isinstance(head, dict):
            self.fail("workflow", f"expected a table, got {_describe(head)}")
            head = {}
        self.unknown_keys(head, _WORKFLOW_KEYS, "workflow")
        name = head.get("name", path.stem)
        if not isinstance(name, str) or not name:
            self.fail("workflow.name", f"expected a non-empty string, got {_describe(name)}")
            name = path.stem
        max_parallel = head.get("max_parallel")
        if max_parallel is not None and problem(check_int, max_parallel, minimum=1):
            self.fail(
                "workflow.max_parallel", f"expected an integer >= 1, got {_describe(max_parallel)}"
            )
            max_parallel = None
        pools = self.pools(head.get("pools", {}))
        env = self.env_table(data.get("env", {}), "env")

        raw_steps = data.get("steps")
        if raw_steps is None:
            self.fail("", "no steps: add at least one [steps.NAME] table")
            return None
        if not isinstance(raw_steps, dict):
            self.fail("steps", f"expected tables [steps.NAME], got {_describe(raw_steps)}")
            return None
        if not raw_steps:
            self.fail("steps", "no steps: add at least one [steps.NAME] table")
            return None
        written: dict[str, StepSpec] = {}
        groups: dict[str, tuple[str, ...]] = {}
        for written_name, table in raw_steps.items():
            step = self.step(written_name, table, pools)
            groups[written_name] = (written_name,)
            if step is None:
                continue
            written[written_name] = step
            if isinstance(table, dict) and "matrix" in table:
                found, problems = combinations(table["matrix"], f"steps.{written_name}.matrix")
                self.problems.extend(problems)
                groups[written_name] = tuple(step_name(written_name, c) for c in found)
        known = set(raw_steps) | {m for members in groups.values() for m in members}
        # The graph is checked even when some steps have problems, so that every problem of
        # the file is reported at once (a step with a problem still exists for `after`).
        for step in written.values():
            for dependency in step.after:
                if dependency not in known:
                    close = difflib.get_close_matches(dependency, list(raw_steps), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    self.fail(f"steps.{step.name}.after", f"unknown step {dependency!r}{hint}")
                elif dependency == step.name or dependency in groups[step.name]:
                    self.fail(f"steps.{step.name}.after", "a step cannot come after itself")
        steps: dict[str, StepSpec] = {}
        for group, step in written.items():
            after = tuple(
                dict.fromkeys(
                    m for a in step.after for m in groups.get(a, (a,)) if m not in groups[group]
                )
            )
            if groups[group] == (group,):
                steps[group] = attrs.evolve(step, after=after, group=group)
                continue
            for combination, member in zip(
                combinations(raw_steps[group]["matrix"], "")[0], groups[group], strict=True
            ):
                steps[member] = attrs.evolve(
                    step, name=member, after=after, matrix=combination, group=group
                )
        graph = {n: tuple(a for a in s.after if a in steps and a != n) for n, s in steps.items()}
        try:
            graphlib.TopologicalSorter(graph).prepare()
        except graphlib.CycleError as exc:
            # graphlib lists the cycle in running order: each step comes after the one before.
            self.fail("steps", "the steps form a cycle: " + " -> ".join(exc.args[1]))
        if self.problems:
            return None
        spec = WorkflowSpec(
            path=path,
            name=name,
            max_parallel=max_parallel,
            pools=pools,
            steps=steps,
            env=env,
            groups={g: m for g, m in groups.items() if m != (g,)},
        )
        seen: set[tuple[str, str]] = set()
        for step in steps.values():
            # Checked with the environment the run will have: this process's.
            for problem_found in _resolve(spec, step, lambda name: name, os.environ, False)[1]:
                if problem_found not in seen:  # once per matrix, not once per combination
                    seen.add(problem_found)
                    self.fail(*problem_found)
            if step.when is not None:
                missing = sorted(step.when.steps - spec.ancestors(step.name))
                for other in missing:
                    self.fail(
                        f"steps.{step.name}.when",
                        f"reads the status of step {other!r}, which is not among the steps "
                        f"it comes after (add it to after)",
                    )
        return spec

    def pools(self, value: object) -> dict[str, int]:
        if not isinstance(value, dict):
            self.fail("workflow.pools", f"expected a table of sizes, got {_describe(value)}")
            return {}
        pools: dict[str, int] = {}
        for name, size in value.items():
            if problem(check_int, size, minimum=1):
                self.fail(
                    f"workflow.pools.{name}", f"expected an integer >= 1, got {_describe(size)}"
                )
            else:
                pools[name] = size
        return pools

    def step(self, name: str, table: object, pools: Mapping[str, int]) -> StepSpec | None:
        where = f"steps.{name}"
        if not _STEP_NAME.match(name):
            self.fail(
                where,
                "a step name may contain only letters, digits, '_' and '-' "
                "and may not start with '-'",
            )
        if not isinstance(table, dict):
            self.fail(where, f"expected a table, got {_describe(table)}")
            return None
        before = len(self.problems)
        self.unknown_keys(table, _STEP_KEYS, where)

        command: tuple[str, ...] | str = ()
        if ("run" in table) == ("shell" in table):
            self.fail(where, "give exactly one of run (an argument list) or shell (a string)")
        elif "run" in table:
            run = table["run"]
            if (
                not isinstance(run, list)
                or not run
                or not all(isinstance(a, str) for a in run)
                or not run[0]
            ):
                self.fail(
                    f"{where}.run",
                    f"expected a non-empty list of strings, got {_describe(run)}"
                    + (
                        "; use shell = '...' for a shell command line"
                        if isinstance(run, str)
                        else ""
                    ),
                )
            else:
                for index, argument in enumerate(run):
                    self.no_nul(argument, f"{where}.run[{index}]")
                command = tuple(run)
        else:
            shell = table["shell"]
            if not isinstance(shell, str) or not shell.strip():
                self.fail(f"{where}.shell", f"expected a non-empty string, got {_describe(shell)}")
            else:
                self.no_nul(shell, f"{where}.shell")
                command = shell

        after = self.names(table.get("after", []), f"{where}.after")
        # A timeout of inf means no deadline, as everywhere in trioflow.
        timeout = self.number(table, "timeout", where, None, positive=True, finite=False)
        if timeout == math.inf:
            timeout = None
        retries = table.get("retries", 0)
        if problem(check_int, retries, minimum=0, maximum=MAX_RETRIES):
            self.fail(
                f"{where}.retries",
                f"expected an integer from 0 to {MAX_RETRIES}, got {_describe(retries)}",
            )
            retries = 0
        retry_delay = self.number(table, "retry_delay", where, 1.0) or 0.0
        backoff = table.get("backoff", 2.0)
        if problem(check_number, backoff, minimum=1):
            self.fail(f"{where}.backoff", f"expected a number >= 1, got {_describe(backoff)}")
            backoff = 2.0

        when: Condition | None = None
        raw_when = table.get("when")
        if raw_when is not None:
            if not isinstance(raw_when, str):
                self.fail(
                    f"{where}.when", f"expected a condition string, got {_describe(raw_when)}"
                )
            else:
                try:
                    when = parse_condition(raw_when)
                except ConditionSyntaxError as exc:
                    self.fail(f"{where}.when", str(exc))

        env = self.env_table(table.get("env", {}), f"{where}.env")
        globs = {
            key: self.names_list(table.get(key, []), f"{where}.{key}", "glob patterns")
            for key in ("sources", "generates")
        }
        for key, patterns in globs.items():
            for index, pattern in enumerate(patterns):
                if not pattern:
                    self.fail(f"{where}.{key}[{index}]", "expected a non-empty glob pattern")
                self.no_nul(pattern, f"{where}.{key}[{index}]")

        cwd = table.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or not cwd):
            self.fail(f"{where}.cwd", f"expected a non-empty string, got {_describe(cwd)}")
        elif cwd is not None:
            self.no_nul(cwd, f"{where}.cwd")

        flags: dict[str, bool] = {}
        for flag in ("exclusive", "continue_on_error", "show_output"):
            value = table.get(flag, False)
            if not isinstance(value, bool):
                self.fail(f"{where}.{flag}", f"expected true or false, got {_describe(value)}")
            flags[flag] = value is True

        runs_on = table.get("where", "local")
        if runs_on not in WHERE:
            choices = " or ".join(repr(w) for w in WHERE)
            self.fail(f"{where}.where", f"expected {choices}, got {_describe(runs_on)}")

        step_pools = self.names_list(table.get("pools", []), f"{where}.pools", "pool names")
        for pool in step_pools:
            if pool not in pools:
                declared = ", ".join(sorted(pools)) or "none"
                self.fail(
                    f"{where}.pools",
                    f"unknown pool {pool!r} (declared in [workflow] pools: {declared})",
                )

        if len(self.problems) > before:
            return None
        return StepSpec(
            name=name,
            command=command,
            after=tuple(dict.fromkeys(after)),
            timeout=timeout,
            retries=retries,
            retry_delay=retry_delay,
            backoff=float(backoff),
            when=when,
            env=dict(env),
            cwd=cwd,
            exclusive=flags["exclusive"],
            continue_on_error=flags["continue_on_error"],
            pools=tuple(dict.fromkeys(step_pools)),
            where=runs_on,
            sources=globs["sources"],
            generates=globs["generates"],
            show_output=flags["show_output"],
        )

    def env_table(self, env: object, where: str) -> dict[str, str]:
        if not isinstance(env, dict):
            self.fail(where, f"expected a table of strings, got {_describe(env)}")
            return {}
        good: dict[str, str] = {}
        for key, value in env.items():
            if not key or "=" in key or "\0" in key:
                self.fail(
                    where,
                    "an environment variable name must be non-empty, without '=' or NUL, "
                    f"got {key!r}",
                )
            elif not isinstance(value, str):
                self.fail(f"{where}.{key}", f"expected a string, got {_describe(value)}")
            else:
                self.no_nul(value, f"{where}.{key}")
                good[key] = value
        return good

    def no_nul(self, text: str, where: str) -> None:
        # The operating system ends a string at a NUL: it cannot reach a command intact.
        if "\0" in text:
            self.fail(where, f"must not contain a NUL character, got {text!r}")

    def names_list(self, value: object, where: str, what: str) -> tuple[str, ...]:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        self.fail(where, f"expected a list of {what}, got {_describe(value)}")
        return ()

    def number(
        self,
        table: Mapping[str, Any],
        key: str,
        where: str,
        default: float | None,
        *,
        positive: bool = False,
        finite: bool = True,
    ) -> float | None:
        value = table.get(key, default)
        if value is None:
            return None
        bound = "> 0" if positive else ">= 0"
        if problem(check_number, value, minimum=0, strict=positive, finite=finite):
            self.fail(
                f"{where}.{key}", f"expected a number of seconds {bound}, got {_describe(value)}"
            )
            return default
        return float(value)
