"""A registry of typed async tools, called with JSON-like arguments.

What an MCP server needs between its clients and its tools: ``@registry.tool`` on typed async
functions; :meth:`ToolRegistry.call` structures the arguments (a mapping as parsed from JSON, or
the JSON text itself) into the parameter types with cattrs, strictly, and reports every bad
field with its path;
:meth:`ToolRegistry.describe` lists the tools with a JSON Schema of their parameters (built by
``_schema`` from the type hints, defaults and docstrings); :func:`run_tools` runs many calls as
one bounded batch. A tool may be an async generator function (a streaming tool): its chunks go
to the caller's ``on_chunk`` as they are produced, and its value is the list of every chunk.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar, final, overload

import attrs

from .._batch._outcomes import BatchResult
from .._batch._run import run_batch
from .._errors import ToolArgumentError, UnknownToolError
from .._limits import ResourceManager
from .._retry import RetryPolicy
from .._structure import describe as _describe_value
from .._structure import problems_of, strict_converter
from ._schema import json_default, json_schema, parse_docstring
from ._stream import ChunkSink, drain, is_streaming

__all__ = ("Arguments", "Tool", "ToolRegistry", "check_calls", "run_tools")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]] | Callable[..., AsyncIterator[Any]])

_CONVERTER = strict_converter()

Arguments = Mapping[str, Any] | str | bytes | bytearray | None
"""Tool arguments: a mapping (as parsed from JSON), the JSON text of an object, or None."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} is given twice")
        out[key] = value
    return out


def _parse_arguments(tool: str, text: str | bytes | bytearray) -> object:
    """Parse JSON text of arguments as strictly as JSON is written (RFC 8259).

    NaN and Infinity, which are not JSON, and a key given twice (which of the two would the
    caller mean?) are refused; so is text nested too deeply for the parser, and an integer
    longer than Python converts (``sys.get_int_max_str_digits()``).
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_object_pairs)
    except RecursionError:
        problem = "nested too deeply"
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and the checks above
        problem = str(exc)
    raise ToolArgumentError(tool, [("$", f"not valid JSON: {problem}")])


@final
@attrs.frozen(kw_only=True)
class Tool:
    """One registered tool: its function, name, description and parameter schema.

    Attributes:
        name: The name clients call it by.
        description: What it does (the first paragraph of its docstring by default).
        fn: The async function (or async generator function, for a streaming tool).
        parameters: Parameter types by name, in signature order.
        required: Names of the parameters without a default.
        schema: The JSON Schema of its arguments object (do not modify it; ``describe()``
            returns copies).
        streaming: Whether :attr:`fn` is an async generator function: it yields chunks as it
            goes (see :meth:`ToolRegistry.call`).
    """

    name: str
    description: str
    fn: Callable[..., Awaitable[Any]] | Callable[..., AsyncIterator[Any]] = attrs.field(repr=False)
    parameters: Mapping[str, Any] = attrs.field(repr=False)
    required: frozenset[str] = attrs.field(repr=False)
    schema: Mapping[str, Any] = attrs.field(repr=False)
    streaming: bool = attrs.field(default=False, repr=False)

    def bind(self, arguments: object) -> dict[str, Any]:
        """Structure JSON-like arguments into keyword arguments for :attr:`fn`.

        Args:
            arguments: A mapping of argument name to value (as parsed from JSON), or the JSON
                text of such an object (``str``, ``bytes`` or ``bytearray``, as an outside
                caller sends it).

        Returns:
            Keyword arguments, each structured into its parameter's type.

        Raises:
            ToolArgumentError: Listing every missing, unknown or badly typed argument; or
                saying why JSON text is not an object of arguments (not valid JSON, with the
                parser's position, or JSON of something else).
        """
        if isinstance(arguments, str | bytes | bytearray):
            arguments = _parse_arguments(self.name, arguments)
            if not isinstance(arguments, dict):
                got = _describe_value(arguments)
                raise ToolArgumentError(
                    self.name, [("$", f"expected a JSON object of arguments, got {got}")]
                )
        if not isinstance(arguments, Mapping):
            raise ToolArgumentError(
                self.name,
                [("$", f"expected an object of arguments, got {_describe_value(arguments)}")],
            )
        problems: list[tuple[str, str]] = []
        kwargs: dict[str, Any] = {}
        parameters = self.parameters
        for key in arguments:
            if key not in parameters:
                problems.append((str(key), "unknown argument"))
        for name, tp in parameters.items():
            if name in arguments:
                try:
                    kwargs[name] = _CONVERTER.structure(arguments[name], tp)
                except Exception as exc:
                    problems.extend(problems_of(exc, name))
            elif name in self.required:
                problems.append((name, "required argument is missing"))
        if problems:
            raise ToolArgumentError(self.name, problems)
        return kwargs


def _make_tool(
    fn: Callable[..., Awaitable[Any]] | Callable[..., AsyncIterator[Any]],
    name: str | None,
    description: str | None,
) -> Tool:
    if not callable(fn):
        raise TypeError(f"a tool must be an async function, got {fn!r}")
    target = inspect.unwrap(fn)
    if not (
        inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(fn) or is_streaming(fn)
    ):
        raise TypeError(
            f"a tool must be an async function (async def), or an async generator function, "
            f"got {fn!r}"
        )
    tool_name = name if name is not None else getattr(fn, "__name__", None)
    if not isinstance(tool_name, str) or not tool_name:
        raise TypeError(f"name must be a non-empty str, got {tool_name!r}")
    summary, arg_docs = parse_docstring(inspect.getdoc(fn))
    if description is not None and not isinstance(description, str):
        raise TypeError(f"description must be a str, got {description!r}")
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise TypeError(f"cannot resolve the type hints of tool {tool_name!r}: {exc}") from exc
    parameters: dict[str, Any] = {}
    required: set[str] = set()
    properties: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(
                f"tool {tool_name!r}: parameter {param.name!r} must be passable by keyword "
                f"(no *args, **kwargs or positional-only parameters)"
            )
        if param.name not in hints:
            raise TypeError(f"tool {tool_name!r}: parameter {param.name!r} needs a type hint")
        tp = hints[param.name]
        try:
            schema = json_schema(tp)
        except TypeError as exc:
            raise TypeError(f"tool {tool_name!r}: parameter {param.name!r}: {exc}") from None
        if param.name in arg_docs and "description" not in schema:
            schema = {**schema, "description": arg_docs[param.name]}
        if param.default is param.empty:
            required.add(param.name)
        else:
            ok, value = json_default(param.default)
            if ok:
                schema = {**schema, "default": value}
        parameters[param.name] = tp
        properties[param.name] = schema
    input_schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        input_schema["required"] = [p for p in parameters if p in required]
    input_schema["additionalProperties"] = False
    return Tool(
        name=tool_name,
        description=description if description is not None else summary,
        fn=fn,
        parameters=types.MappingProxyType(parameters),
        required=frozenset(required),
        schema=input_schema,
        streaming=is_streaming(fn),
    )


@final
@attrs.define(eq=False, init=False, repr=False)
class ToolRegistry:
    """Typed async tools by name, callable with JSON-like arguments.

    Example::

        registry = ToolRegistry()

        @registry.tool
        async def add(a: int, b: int = 1) -> int:
            \"\"\"Add two numbers.\"\"\"
            return a + b

        await registry.call("add", {"a": 2})        # 3
        registry.describe()  # [{"name": "add", "description": "Add two numbers.", ...}]

    Every parameter needs a type hint of a kind :meth:`describe` can express as JSON Schema
    (checked when the tool is registered). Arguments are structured strictly: ``"5"`` is not an
    int and ``1`` is not a bool, as in JSON Schema; unknown arguments are refused.
    """

    _tools: dict[str, Tool]

    def __init__(self) -> None:
        self._tools = {}

    def __repr__(self) -> str:
        return f"ToolRegistry({', '.join(self._tools)})"

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the registered tools, in registration order."""
        return tuple(self._tools)

    @overload
    def tool(self, fn: F, /) -> F: ...
    @overload
    def tool(
        self, /, *, name: str | None = ..., description: str | None = ...
    ) -> Callable[[F], F]: ...
    def tool(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> F | Callable[[F], F]:
        """Register an async function as a tool: ``@registry.tool`` or ``@registry.tool(...)``.

        Args:
            fn: The async function (omit it to get a decorator taking options); an async
                generator function makes a streaming tool (see :meth:`call`).
            name: The tool's name; the function's ``__name__`` by default.
            description: What the tool does; the first paragraph of the docstring by default.
                Parameter descriptions come from the docstring's ``Args:`` section.

        Returns:
            ``fn`` itself (unchanged), or a decorator when ``fn`` is omitted.

        Raises:
            TypeError: ``fn`` is not an async (generator) function, a parameter has no type
                hint or an unsupported one, or is not passable by keyword.
            ValueError: A tool of that name is already registered.
        """

        def register(function: F) -> F:
            tool = _make_tool(function, name, description)
            if tool.name in self._tools:
                raise ValueError(f"a tool named {tool.name!r} is already registered")
            self._tools[tool.name] = tool
            return function

        return register if fn is None else register(fn)

    def get(self, name: str) -> Tool:
        """Return the registered tool of that name.

        Args:
            name: The tool's name.

        Returns:
            The :class:`Tool`.

        Raises:
            UnknownToolError: No tool has that name.
        """
        try:
            return self._tools[name]
        except (KeyError, TypeError):
            known = ", ".join(repr(n) for n in self._tools) or "none"
            raise UnknownToolError(f"unknown tool {name!r}; known tools: {known}") from None

    async def call(
        self, name: str, arguments: Arguments = None, *, on_chunk: ChunkSink | None = None
    ) -> Any:
        """Call a tool with JSON-like arguments.

        Args:
            name: The tool's name.
            arguments: Argument values by parameter name, as parsed from JSON, or that JSON
                text itself (``'{"path": "a.cs"}'``); ``None`` for none.
            on_chunk: For a streaming tool, ``async on_chunk(chunk)``, awaited with each chunk
                as the tool yields it (a slow one holds the tool back). Ignored by other tools.

        Returns:
            What the tool returned; for a streaming tool, the list of every chunk it yielded.

        Raises:
            UnknownToolError: No tool has that name (nothing ran).
            ToolArgumentError: Listing every bad argument with its path (nothing ran).
            Exception: Whatever the tool raised, as it is.
        """
        tool = self.get(name)
        kwargs = tool.bind({} if arguments is None else arguments)
        if tool.streaming:
            return await drain(tool.fn(**kwargs), on_chunk)  # type: ignore[arg-type]
        return await tool.fn(**kwargs)  # type: ignore[misc]

    def describe(self) -> list[dict[str, Any]]:
        """List the tools as an MCP server lists them.

        Returns:
            One dict per tool, in registration order: ``name``, ``description`` and
            ``inputSchema`` (the JSON Schema of its arguments object).
        """
        return [
            {
                "name": tool.name,
                "description": tool.description,
                "inputSchema": copy.deepcopy(dict(tool.schema)),
            }
            for tool in self._tools.values()
        ]


async def run_tools(
    registry: ToolRegistry,
    calls: Iterable[tuple[str, Arguments]],
    *,
    limit: int | ResourceManager | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - per call, as in run_batch
    fail_fast: bool = False,
    retry: RetryPolicy | None = None,
) -> BatchResult[Any]:
    """Run many tool calls concurrently as one bounded batch.

    Each call is structured and run like :meth:`ToolRegistry.call`; an unknown tool or bad
    arguments fail that call only (its outcome holds :class:`~trioflow.UnknownToolError` or
    :class:`~trioflow.ToolArgumentError`).

    Args:
        registry: The tools.
        calls: ``(tool name, arguments)`` pairs, the arguments a mapping, JSON text or
            ``None``; outcomes keep their order.
        limit: At most this many calls at once (an int, or a ResourceManager to share), or
            ``None`` for no limit.
        timeout: Seconds allowed for each call (each attempt, with ``retry``), or ``None``.
        fail_fast: Cancel the remaining calls after the first failure.
        retry: A :class:`~trioflow.RetryPolicy` applied to each call, or ``None``.

    Returns:
        The :class:`~trioflow.BatchResult` of the calls, one outcome per call.

    Raises:
        TypeError: ``registry`` is not a ToolRegistry, a call is not a ``(name, arguments)``
            pair, or an option has the wrong type (raised before anything runs).
        ValueError: ``limit`` < 1, or ``timeout`` negative or NaN (before anything runs).
    """
    if not isinstance(registry, ToolRegistry):
        raise TypeError(f"registry must be a ToolRegistry, got {registry!r}")
    operations = [
        functools.partial(registry.call, name, arguments) for name, arguments in check_calls(calls)
    ]
    return await run_batch(
        operations, limit=limit, timeout=timeout, fail_fast=fail_fast, retry=retry
    )


def check_calls(
    calls: Iterable[tuple[str, Arguments]],
) -> list[tuple[str, Arguments]]:
    """Check that every call is a ``(tool name, arguments)`` pair.

    Args:
        calls: The calls.

    Returns:
        The calls, as a list.

    Raises:
        TypeError: A call is not a pair with a string name; the message names its index.
    """
    checked: list[tuple[str, Arguments]] = []
    for index, call in enumerate(calls):
        entry: object = call
        if not isinstance(entry, tuple) or len(entry) != 2 or not isinstance(entry[0], str):
            got = _describe_value(entry)
            raise TypeError(f"calls[{index}] must be a (tool name, arguments) pair, got {got}")
        checked.append(call)
    return checked
