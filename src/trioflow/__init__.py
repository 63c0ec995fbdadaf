"""trioflow: structured-concurrency orchestration for trio and anyio.

Bounded batches, resource limits, retries, workflows with durable runs, resilience strategies
and request lifecycles, all scoped by nurseries and cancel scopes. Everything public is
re-exported here; the modules beside this file are private.
"""

from __future__ import annotations

import contextlib

from ._errors import CircuitOpenError as CircuitOpenError
from ._errors import ConfigError as ConfigError
from ._errors import InvalidTransition as InvalidTransition
from ._errors import ResourceExhausted as ResourceExhausted
from ._errors import StoreError as StoreError
from ._errors import ToolArgumentError as ToolArgumentError
from ._errors import TrioflowError as TrioflowError
from ._errors import UnknownTool as UnknownTool
from ._errors import UnstorableValue as UnstorableValue
from ._errors import WorkflowDefinitionError as WorkflowDefinitionError
from ._errors import WorkflowShapeChanged as WorkflowShapeChanged

# --- section: limits+retry (imports) ---
# --- section: executor (imports) ---
# --- section: workflow (imports) ---
# --- section: resilience (imports) ---
# --- section: lifecycle (imports) ---

__version__ = "0.1.0"

__all__ = (
    # errors
    "CircuitOpenError",
    "ConfigError",
    "InvalidTransition",
    "ResourceExhausted",
    "StoreError",
    "ToolArgumentError",
    "TrioflowError",
    "UnknownTool",
    "UnstorableValue",
    "WorkflowDefinitionError",
    "WorkflowShapeChanged",
    # --- section: limits+retry (names) ---
    # --- section: executor (names) ---
    # --- section: workflow (names) ---
    # --- section: resilience (names) ---
    # --- section: lifecycle (names) ---
)


def _fix_module_names() -> None:
    # Public objects report their public path (trioflow.X), not the private module.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("trioflow._"):
            with contextlib.suppress(AttributeError, TypeError):
                obj.__module__ = "trioflow"


_fix_module_names()
del _fix_module_names
