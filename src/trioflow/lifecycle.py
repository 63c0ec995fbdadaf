"""The request lifecycle: requests moved through stages by an explicit state machine.

The orchestration layer of a request-serving application (a tool server, an API): a
:class:`StateMachine` over :class:`RequestState`, :class:`Pipeline` stages with timeouts, pools
and retries, a :class:`Router` that classifies requests, a :class:`ToolRegistry` whose tools take
typed arguments, and a :class:`Coordinator` (``async with open_coordinator(...)``) that admits
requests within global, per-user and per-pool limits and rate limits. It is built on the core
in :mod:`trioflow` (limits, retry, batches, resilience); the way :mod:`trio.lowlevel` keeps
trio's lower layer apart, this namespace keeps the request layer apart from the core.
"""

from __future__ import annotations

import contextlib

from ._lifecycle._alerts import AdmissionRefused as AdmissionRefused
from ._lifecycle._alerts import Alert as Alert
from ._lifecycle._alerts import AlertCleared as AlertCleared
from ._lifecycle._alerts import CoordinatorEvent as CoordinatorEvent
from ._lifecycle._alerts import RequestFinished as RequestFinished
from ._lifecycle._config import AlertsConfig as AlertsConfig
from ._lifecycle._config import FailureRatioAlertConfig as FailureRatioAlertConfig
from ._lifecycle._config import HealthAlertConfig as HealthAlertConfig
from ._lifecycle._config import HealthConfig as HealthConfig
from ._lifecycle._config import OrchestrationConfig as OrchestrationConfig
from ._lifecycle._config import QueueDepthAlertConfig as QueueDepthAlertConfig
from ._lifecycle._config import RateLimitConfig as RateLimitConfig
from ._lifecycle._config import RateLimitsConfig as RateLimitsConfig
from ._lifecycle._config import RetryConfig as RetryConfig
from ._lifecycle._config import SharedConfig as SharedConfig
from ._lifecycle._config import load_config as load_config
from ._lifecycle._coordinator import Coordinator as Coordinator
from ._lifecycle._coordinator import CoordinatorStatistics as CoordinatorStatistics
from ._lifecycle._coordinator import open_coordinator as open_coordinator
from ._lifecycle._gather import PartialResults as PartialResults
from ._lifecycle._gather import gather_partial as gather_partial
from ._lifecycle._machine import StateChange as StateChange
from ._lifecycle._machine import StateMachine as StateMachine
from ._lifecycle._machine import StateMachineStatistics as StateMachineStatistics
from ._lifecycle._machine import StateStatistics as StateStatistics
from ._lifecycle._pipeline import Pipeline as Pipeline
from ._lifecycle._pipeline import PipelineStatistics as PipelineStatistics
from ._lifecycle._pipeline import Stage as Stage
from ._lifecycle._pipeline import StageStatistics as StageStatistics
from ._lifecycle._request import REQUEST_TRANSITIONS as REQUEST_TRANSITIONS
from ._lifecycle._request import ErrorCategory as ErrorCategory
from ._lifecycle._request import ProcessingResult as ProcessingResult
from ._lifecycle._request import ProcessingStatus as ProcessingStatus
from ._lifecycle._request import Request as Request
from ._lifecycle._request import RequestState as RequestState
from ._lifecycle._requests import MemoryRequestStore as MemoryRequestStore
from ._lifecycle._requests import RequestRecord as RequestRecord
from ._lifecycle._requests import RequestStore as RequestStore
from ._lifecycle._requests import SQLiteRequestStore as SQLiteRequestStore
from ._lifecycle._router import RequestKind as RequestKind
from ._lifecycle._router import Router as Router
from ._lifecycle._stream import RequestStream as RequestStream
from ._lifecycle._tools import Tool as Tool
from ._lifecycle._tools import ToolRegistry as ToolRegistry
from ._lifecycle._tools import run_tools as run_tools

__all__ = (
    # state machine
    "StateMachine",
    "StateChange",
    "StateMachineStatistics",
    "StateStatistics",
    # requests and results
    "Request",
    "RequestState",
    "REQUEST_TRANSITIONS",
    "ProcessingResult",
    "ProcessingStatus",
    "ErrorCategory",
    # pipelines and routing
    "Pipeline",
    "PipelineStatistics",
    "Stage",
    "StageStatistics",
    "Router",
    "RequestKind",
    "PartialResults",
    "gather_partial",
    "RequestStream",
    # tools
    "Tool",
    "ToolRegistry",
    "run_tools",
    # coordinator and configuration
    "Coordinator",
    "CoordinatorStatistics",
    "open_coordinator",
    "OrchestrationConfig",
    "HealthConfig",
    "RateLimitConfig",
    "RateLimitsConfig",
    "RetryConfig",
    "SharedConfig",
    "load_config",
    # request state, persisted
    "RequestRecord",
    "RequestStore",
    "MemoryRequestStore",
    "SQLiteRequestStore",
    # coordinator events and alerts
    "CoordinatorEvent",
    "RequestFinished",
    "AdmissionRefused",
    "Alert",
    "AlertCleared",
    "AlertsConfig",
    "QueueDepthAlertConfig",
    "FailureRatioAlertConfig",
    "HealthAlertConfig",
)


def _fix_module_names() -> None:
    # Public objects report their public path (trioflow.lifecycle.X), not the private module.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("trioflow._"):
            with contextlib.suppress(AttributeError, TypeError):
                obj.__module__ = "trioflow.lifecycle"


_fix_module_names()
del _fix_module_names
