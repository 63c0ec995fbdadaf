"""The package's import graph: no cycles, floors that only point down, no trio on asyncio.

The graph is read from the source with :mod:`ast`, not from ``sys.modules``: every ``import``
and ``from ... import`` of a trioflow module counts, at module level and inside functions (a
lazy import is still a dependency). Imports under ``if TYPE_CHECKING:`` count too, in both
checks: they never run, but two modules that need each other's types are still one concept
smeared over two files, and a type-only import still ties a lower floor to a higher one. The
graph keeps them apart (``GRAPH[module] == (runtime, typing_only)``) so a failure says which
kind of import closed the cycle.

An edge goes to the module named: ``from .x import y`` points at ``x`` (and at ``x.y`` when that
is a module), not at the packages above it, whose ``__init__`` Python runs first anyway.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys
import textwrap

import trioflow

PACKAGE = "trioflow"
ROOT = pathlib.Path(trioflow.__file__).parent

# The floors, lowest first (see docs/design.md): ground, engines, composition, faces.
GROUND = {
    f"{PACKAGE}.{name}"
    for name in (
        "_errors",
        "_checks",
        "_checked",
        "_structure",
        "_backend",
        "_limits",
        "_pool",
        "_retry",
        "_logs",
        "_options",
        "_status",
        "_deprecate",
        "_events",
        "_startup",
        "_telemetry",  # the engines' hooks; no OpenTelemetry import (trioflow.telemetry has it)
        "_values",  # building frozen values on the engines' hot paths
        "testing",
    )
}
ENGINES = ("_batch", "_workflow", "_resilience", "_triggers")
# What cli may import besides its own modules: the public API and a few ground helpers.
CLI_MAY_IMPORT = {
    PACKAGE,
    f"{PACKAGE}.lifecycle",
    f"{PACKAGE}.testing",
    f"{PACKAGE}._checks",
    f"{PACKAGE}._checked",
    f"{PACKAGE}._structure",
    f"{PACKAGE}._deprecate",
    f"{PACKAGE}._startup",  # the command's first moments, run before the package imports
    f"{PACKAGE}.mcp",  # `trioflow serve` and `trioflow call` (cli._serve, imported on use)
    f"{PACKAGE}.dask",  # imported only when a run is given --dask
    f"{PACKAGE}.redis",  # only for ``--state redis://...``, imported then (the redis extra)
    f"{PACKAGE}.telemetry",  # only for ``run --trace``, imported then (the otel extra)
}
# The integrations: faces built on the public API, ground helpers and, where needed, cli.
INTEGRATIONS = ("mcp", "dask", "redis", "telemetry")
# The modules outside an integration that may import it (on use, never at import time).
IMPORTS_INTEGRATIONS = {
    f"{PACKAGE}.cli._serve",  # trioflow.mcp
    f"{PACKAGE}.cli._run",  # trioflow.dask, given --dask; trioflow.redis, --state redis://
    # and trioflow.telemetry, given --trace
    f"{PACKAGE}.cli._remote",  # trioflow.dask: the steps it runs on the workers
}
# The core may load an integration's public module by name (``importlib.import_module``, an
# edge the graph above does not see: the integration imports the public API, which is above
# the core) in these places only, on use: the coordinator's admission connects to the Redis
# that ``config.shared.url`` names when no ``shared=`` limits were given.
LOADS_INTEGRATIONS_BY_NAME = {f"{PACKAGE}._lifecycle._admission": {f"{PACKAGE}.redis"}}


def _module_name(path: pathlib.Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, pathlib.Path] = {
    _module_name(path): path for path in sorted(ROOT.rglob("*.py"))
}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The trioflow modules an import statement in ``module`` names."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                found.add(alias.name)
        return found
    if node.level:
        is_package = MODULES[module].name == "__init__.py"
        anchor = module.split(".")
        # A package's own __init__ is level 1's anchor; a module's is its package.
        anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
        base = ".".join([*anchor, node.module] if node.module else anchor)
    else:
        base = node.module or ""
        if base != PACKAGE and not base.startswith(PACKAGE + "."):
            return found
    found.add(base)
    for alias in node.names:
        if f"{base}.{alias.name}" in MODULES:
            found.add(f"{base}.{alias.name}")
    return found


def _imports(module: str) -> tuple[set[str], set[str]]:
    """Return the modules ``module`` imports at run time, and those only under TYPE_CHECKING."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    runtime: set[str] = set()
    typing_only: set[str] = set()

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, guarded)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            (typing_only if guarded else runtime).update(_targets(module, node))
        for inner in ast.iter_child_nodes(node):
            visit(inner, guarded)

    visit(tree, False)
    unknown = (runtime | typing_only) - MODULES.keys()
    assert not unknown, f"{module} imports modules that do not exist: {sorted(unknown)}"
    return runtime - {module}, typing_only - runtime - {module}


GRAPH: dict[str, tuple[set[str], set[str]]] = {module: _imports(module) for module in MODULES}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Return one cycle (as a path that ends where it starts) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            connect(node)

    cycles = []
    for component in components:
        # The shortest way back to the start, inside the component (breadth first).
        start = min(component)
        paths = {start: [start]}
        frontier = [start]
        cycle: list[str] | None = None
        while frontier and cycle is None:
            following = []
            for node in frontier:
                for nxt in sorted(edges[node] & component):
                    if nxt == start:
                        cycle = [*paths[node], start]
                        break
                    if nxt not in paths:
                        paths[nxt] = [*paths[node], nxt]
                        following.append(nxt)
                if cycle is not None:
                    break
            frontier = following
        assert cycle is not None
        cycles.append(cycle)
    return cycles


def test_the_graph_sees_the_whole_package() -> None:
    assert f"{PACKAGE}._batch._engine" in MODULES
    assert f"{PACKAGE}._backend" in GRAPH[f"{PACKAGE}._batch._engine"][0]
    assert f"{PACKAGE}._lifecycle._coordinator" in GRAPH[f"{PACKAGE}.lifecycle"][0]
    assert set(ENGINES) <= {name.split(".")[1] for name in MODULES if name.count(".") >= 1}


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _cycles(edges) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_there_is_no_import_cycle_at_run_time() -> None:
    cycles = _cycles({module: runtime for module, (runtime, _) in GRAPH.items()})
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_there_is_no_import_cycle_even_through_type_checking_imports() -> None:
    edges = {module: runtime | typing_only for module, (runtime, typing_only) in GRAPH.items()}
    cycles = _cycles(edges)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _floor(module: str) -> str:
    """``ground``, an engine's folder, ``_lifecycle``, ``cli``, or ``face`` (public modules)."""
    if module in GROUND:
        return "ground"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in (*ENGINES, "_lifecycle", "cli"):
        return parts[1]
    return "face"


def _is_public_lifecycle(module: str) -> bool:
    return module == f"{PACKAGE}.lifecycle"


def _integration(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in INTEGRATIONS else None


def _violation(source: str, target: str) -> str | None:
    """Why ``source`` may not import ``target``, or None when it may."""
    mine, theirs = _integration(source), _integration(target)
    if theirs is not None and mine != theirs:
        return None if source in IMPORTS_INTEGRATIONS else "the core imports an integration"
    if mine is not None and mine != theirs:
        public = target in (PACKAGE, f"{PACKAGE}.lifecycle") or target in GROUND
        if not (public or _floor(target) == "cli"):
            return f"{mine} imports beyond the public API, ground and cli"
        return None
    here, there = _floor(source), _floor(target)
    if here == "ground":
        if there in (*ENGINES, "_lifecycle", "cli") or _is_public_lifecycle(target):
            return "ground imports a higher floor"
    elif here in ENGINES:
        if there in ENGINES and there != here:
            return "an engine imports another engine"
        if there in ("_lifecycle", "cli") or _is_public_lifecycle(target):
            return "an engine imports the composition or a face"
    elif here == "_lifecycle":
        if there == "cli":
            return "_lifecycle imports cli"
    elif here == "cli" and there != "cli" and target not in CLI_MAY_IMPORT:
        return "cli imports beyond the public API"
    return None


def test_the_floor_rules_catch_what_they_should() -> None:
    p = PACKAGE
    assert _violation(f"{p}._limits", f"{p}._batch._engine") is not None
    assert _violation(f"{p}._backend", f"{p}.lifecycle") is not None
    assert _violation(f"{p}._batch._run", f"{p}._resilience._breaker") is not None
    assert _violation(f"{p}._workflow._graph", f"{p}._lifecycle._machine") is not None
    assert _violation(f"{p}._lifecycle._pipeline", f"{p}.cli._app") is not None
    assert _violation(f"{p}.cli._app", f"{p}._batch._run") is not None
    assert _violation(f"{p}._batch._run", f"{p}._batch._engine") is None
    assert _violation(f"{p}._lifecycle._pipeline", f"{p}._resilience._breaker") is None
    assert _violation(f"{p}.cli._app", f"{p}.lifecycle") is None
    assert _violation(f"{p}.cli._app", f"{p}._checks") is None
    assert _violation(f"{p}._lifecycle._tools", f"{p}.mcp") is not None
    assert _violation(f"{p}.cli._app", f"{p}.mcp._server") is not None
    assert _violation(f"{p}.mcp._server", f"{p}._lifecycle._tools") is not None
    assert _violation(f"{p}.mcp._server", f"{p}.lifecycle") is None
    assert _violation(f"{p}.mcp._workflows", f"{p}.cli._run") is None
    assert _violation(f"{p}.cli._serve", f"{p}.mcp") is None
    assert _violation(f"{p}.dask._cluster", f"{p}._batch._run") is not None
    assert _violation(f"{p}._batch._run", f"{p}.dask") is not None
    assert _violation(f"{p}.dask._cluster", f"{p}.mcp") is not None
    assert _violation(f"{p}.dask._cluster", f"{p}._backend") is None
    assert _violation(f"{p}.cli._run", f"{p}.dask") is None
    assert _violation(f"{p}.redis._requests", f"{p}._lifecycle._requests") is not None
    assert _violation(f"{p}._lifecycle._coordinator", f"{p}.redis._requests") is not None
    assert _violation(f"{p}.redis._requests", f"{p}.lifecycle") is None
    assert _violation(f"{p}.redis._requests", f"{p}._checks") is None
    assert _violation(f"{p}._limits", f"{p}.redis._capacity") is not None
    assert _violation(f"{p}._lifecycle._admission", f"{p}.redis") is not None
    assert _violation(f"{p}.redis._capacity", f"{p}._limits") is None
    assert _violation(f"{p}.cli._run", f"{p}.redis") is None
    assert _violation(f"{p}._batch._run", f"{p}._telemetry") is None
    assert _violation(f"{p}._batch._run", f"{p}.telemetry") is not None
    assert _violation(f"{p}.telemetry", f"{p}._resilience._breaker") is not None
    assert _violation(f"{p}.telemetry", f"{p}._telemetry") is None


def _loaded_by_name(module: str) -> set[str]:
    """The integrations ``module`` loads with ``import_module("trioflow.<integration>...")``."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            target = node.args[0].value
            if not isinstance(target, str) or name not in ("import_module", "__import__"):
                continue
            if _integration(target) is not None:
                found.add(target)
    return found


def test_the_core_loads_integrations_by_name_only_where_allowed() -> None:
    loaded = {
        module: targets
        for module in MODULES
        if _integration(module) is None and (targets := _loaded_by_name(module))
    }
    assert loaded == LOADS_INTEGRATIONS_BY_NAME


def test_floors_only_point_down() -> None:
    wrong = [
        f"{source} -> {target}: {why}"
        for source, (runtime, typing_only) in sorted(GRAPH.items())
        for target in sorted(runtime | typing_only)
        if (why := _violation(source, target)) is not None
    ]
    assert wrong == [], "imports that point up:\n" + "\n".join(wrong)


ASYNCIO_PROGRAM = textwrap.dedent(
    """
    import sys

    import anyio
    import trioflow
    import trioflow.lifecycle

    async def one() -> int:
        return 1

    async def step(ctx: trioflow.Context) -> int:
        return 2

    async def main() -> None:
        result = await trioflow.run_batch([one, one], limit=1)
        assert [o.value for o in result.outcomes] == [1, 1], result
        await trioflow.TokenBucket(rate=10, burst=2).acquire()
        assert await trioflow.CircuitBreaker().call(one) == 1
        workflow = trioflow.Workflow("w")
        workflow.step("s", step)
        done = await trioflow.run_workflow(workflow)
        assert done.ok, done

    anyio.run(main, backend="asyncio")
    loaded = sorted(m for m in sys.modules if m == "trio" or m.startswith("trio."))
    assert not loaded, loaded
    print("ok")
    """
)


def test_import_trioflow_on_asyncio_loads_no_trio() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    done = subprocess.run(
        [sys.executable, "-c", ASYNCIO_PROGRAM],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_import_trioflow_loads_no_integration_library() -> None:
    program = textwrap.dedent(
        """
        import sys
        import trioflow, trioflow.lifecycle, trioflow.cli
        from trioflow.cli import _app
        heavy = ("mcp", "mcp_types", "hypercorn", "starlette", "opentelemetry", "coredis")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
        assert not loaded, loaded
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    done = subprocess.run(
        [sys.executable, "-c", program],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
