"""What a tool call answers: MCP tool results built from trioflow's results.

Every answer carries ``structuredContent`` (JSON) and the same JSON as text, for clients that
read only text. A failure is a tool result with ``isError: true`` (never a protocol error):
``{"error": "Type: message", "category": ...}``, plus the bad fields with their paths when
the arguments did not fit.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types

from trioflow import BatchResult, OutcomeStatus, ToolArgumentError
from trioflow.lifecycle import ErrorCategory, ProcessingResult, ProcessingStatus

from .._structure import strict_converter

__all__ = (
    "batch_json",
    "error_text",
    "failure",
    "from_processing",
    "jsonable",
    "success",
    "text_of",
)

_CONVERTER = strict_converter()


_PLAIN = frozenset({int, str, bool, type(None)})


def jsonable(value: Any) -> Any:
    """Return ``value`` as JSON data: attrs classes and enums unstructured, the rest as text."""
    if type(value) in _PLAIN:  # the common case, answered at once
        return value
    try:
        data = _CONVERTER.unstructure(value)
    except Exception:  # a value cattrs cannot take apart: its text stands for it
        data = value
    return json.loads(json.dumps(data, default=str, allow_nan=False))


def text_of(value: Any) -> str:
    """Return a chunk or value as text: a string as it is, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(jsonable(value), ensure_ascii=False)


def error_text(error: BaseException | None) -> str:
    """Return ``"Type: message"`` for an exception (its type alone when it has no message)."""
    if error is None:
        return "unknown error"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _result(data: dict[str, Any], *, is_error: bool) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(data, ensure_ascii=False))],
        structured_content=data,
        is_error=is_error,
    )


def success(data: dict[str, Any]) -> types.CallToolResult:
    """A successful tool result holding ``data`` (already JSON data)."""
    return _result(data, is_error=False)


def failure(
    error: BaseException | None, category: ErrorCategory | None, *, status: str = "failed"
) -> types.CallToolResult:
    """A tool result with ``isError: true`` saying why the call failed."""
    data: dict[str, Any] = {
        "status": status,
        "error": error_text(error),
        "category": None if category is None else category.value,
    }
    if isinstance(error, ToolArgumentError):
        data["problems"] = [{"path": path, "message": text} for path, text in error.problems]
    return _result(data, is_error=True)


def from_processing(result: ProcessingResult, wrap: bool) -> types.CallToolResult:
    """The tool result of a processed request: its value, or why it failed.

    Args:
        result: The request's result.
        wrap: Put the value under ``"result"`` (a registry tool's plain value); else the value
            is the JSON object itself (a batch, a workflow run).
    """
    if result.status is ProcessingStatus.CANCELLED:
        return failure(result.error, result.category, status="cancelled")
    if not result.ok:
        return failure(result.error, result.category)
    value = jsonable(result.value)
    return success({"result": value} if wrap or not isinstance(value, dict) else value)


def batch_json(batch: BatchResult[Any]) -> dict[str, Any]:
    """The JSON of a ``run_tools`` batch: one entry per call in input order, and counts."""
    entries: list[dict[str, Any]] = []
    for index, outcome in enumerate(batch.outcomes):
        if outcome.status is OutcomeStatus.SUCCEEDED:
            entries.append({"index": index, "ok": True, "value": jsonable(outcome.value)})
            continue
        error = outcome.error
        entry: dict[str, Any] = {
            "index": index,
            "ok": False,
            "status": str(outcome.status),
            "error": error_text(error) if error is not None else str(outcome.status),
            "category": None if error is None else ErrorCategory.of(error).value,
        }
        if isinstance(error, ToolArgumentError):
            entry["problems"] = [{"path": p, "message": m} for p, m in error.problems]
        entries.append(entry)
    succeeded = sum(entry["ok"] for entry in entries)
    return {"results": entries, "succeeded": succeeded, "failed": len(entries) - succeeded}
