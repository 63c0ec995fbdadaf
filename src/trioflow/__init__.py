"""trioflow: structured-concurrency orchestration for trio and anyio.

Bounded batches, resource limits, retries, workflows with durable runs, resilience strategies
and request lifecycles, all scoped by nurseries and cancel scopes. Everything public is
re-exported here; the modules beside this file are private.
"""

from __future__ import annotations

import contextlib

from ._adaptive import AdaptiveConcurrency as AdaptiveConcurrency
from ._adaptive import AdaptiveStatistics as AdaptiveStatistics
from ._as_completed import as_completed as as_completed
from ._breaker import CircuitBreaker as CircuitBreaker
from ._breaker import CircuitBreakerStatistics as CircuitBreakerStatistics
from ._breaker import CircuitState as CircuitState
from ._config import HealthConfig as HealthConfig
from ._config import OrchestrationConfig as OrchestrationConfig
from ._config import RateLimitConfig as RateLimitConfig
from ._config import RateLimitsConfig as RateLimitsConfig
from ._config import RetryConfig as RetryConfig
from ._config import load_config as load_config
from ._context import Context as Context
from ._coordinator import Coordinator as Coordinator
from ._coordinator import CoordinatorStatistics as CoordinatorStatistics
from ._coordinator import open_coordinator as open_coordinator
from ._errors import CircuitOpenError as CircuitOpenError
from ._errors import ConfigError as ConfigError
from ._errors import InvalidTransition as InvalidTransition
from ._errors import ResourceExhausted as ResourceExhausted
from ._errors import StoreError as StoreError
from ._errors import ToolArgumentError as ToolArgumentError
from ._errors import TransitionInProgress as TransitionInProgress
from ._errors import TrioflowError as TrioflowError
from ._errors import UnknownKind as UnknownKind
from ._errors import UnknownTool as UnknownTool
from ._errors import UnstorableValue as UnstorableValue
from ._errors import WorkflowDefinitionError as WorkflowDefinitionError
from ._errors import WorkflowShapeChanged as WorkflowShapeChanged
from ._executor import map as map
from ._executor import run_batch as run_batch
from ._gather import PartialResults as PartialResults
from ._gather import gather_partial as gather_partial
from ._health import HealthMonitor as HealthMonitor
from ._health import HealthStatistics as HealthStatistics
from ._hedge import hedge as hedge
from ._lifecycle import StateChange as StateChange
from ._lifecycle import StateMachine as StateMachine
from ._lifecycle import StateMachineStatistics as StateMachineStatistics
from ._lifecycle import StateStatistics as StateStatistics
from ._limits import HealthSource as HealthSource
from ._limits import PoolStatistics as PoolStatistics
from ._limits import ResourceManager as ResourceManager
from ._limits import ResourceStatistics as ResourceStatistics
from ._outcomes import BatchResult as BatchResult
from ._outcomes import OperationError as OperationError
from ._outcomes import Outcome as Outcome
from ._outcomes import OutcomeStatus as OutcomeStatus
from ._outcomes import Progress as Progress
from ._pipeline import Pipeline as Pipeline
from ._pipeline import PipelineStatistics as PipelineStatistics
from ._pipeline import Stage as Stage
from ._pipeline import StageStatistics as StageStatistics
from ._policies import RetryPolicies as RetryPolicies
from ._policies import load_of as load_of
from ._ratelimit import KeyedRateLimiter as KeyedRateLimiter
from ._ratelimit import KeyedRateLimiterStatistics as KeyedRateLimiterStatistics
from ._ratelimit import TokenBucket as TokenBucket
from ._ratelimit import TokenBucketStatistics as TokenBucketStatistics
from ._request import REQUEST_TRANSITIONS as REQUEST_TRANSITIONS
from ._request import ErrorCategory as ErrorCategory
from ._request import ProcessingResult as ProcessingResult
from ._request import ProcessingStatus as ProcessingStatus
from ._request import Request as Request
from ._request import RequestState as RequestState
from ._resilient import resilient as resilient
from ._retry import RetryPolicy as RetryPolicy
from ._router import RequestKind as RequestKind
from ._router import Router as Router
from ._scheduler import run_workflow as run_workflow
from ._sqlite_store import SQLiteStore as SQLiteStore
from ._store import MemoryStore as MemoryStore
from ._store import RunRecord as RunRecord
from ._store import RunStatus as RunStatus
from ._store import StepRecord as StepRecord
from ._store import StoredValue as StoredValue
from ._store import WorkflowStore as WorkflowStore
from ._tools import Tool as Tool
from ._tools import ToolRegistry as ToolRegistry
from ._tools import run_tools as run_tools
from ._workers import in_process as in_process
from ._workers import in_thread as in_thread
from ._workflow import Step as Step
from ._workflow import StepStatus as StepStatus
from ._workflow import Workflow as Workflow
from ._workflow_result import StepResult as StepResult
from ._workflow_result import WorkflowProgress as WorkflowProgress
from ._workflow_result import WorkflowResult as WorkflowResult

__version__ = "0.1.0"

__all__ = (
    # errors
    "CircuitOpenError",
    "ConfigError",
    "InvalidTransition",
    "ResourceExhausted",
    "StoreError",
    "ToolArgumentError",
    "TransitionInProgress",
    "TrioflowError",
    "UnknownKind",
    "UnknownTool",
    "UnstorableValue",
    "WorkflowDefinitionError",
    "WorkflowShapeChanged",
    # limits and retry
    "HealthSource",
    "PoolStatistics",
    "ResourceManager",
    "ResourceStatistics",
    "RetryPolicy",
    # batches
    "BatchResult",
    "OperationError",
    "Outcome",
    "OutcomeStatus",
    "Progress",
    "as_completed",
    "in_process",
    "in_thread",
    "map",
    "run_batch",
    # workflows and stores
    "Context",
    "MemoryStore",
    "RunRecord",
    "RunStatus",
    "SQLiteStore",
    "Step",
    "StepRecord",
    "StepResult",
    "StepStatus",
    "StoredValue",
    "Workflow",
    "WorkflowProgress",
    "WorkflowResult",
    "WorkflowStore",
    "run_workflow",
    # resilience
    "AdaptiveConcurrency",
    "AdaptiveStatistics",
    "CircuitBreaker",
    "CircuitBreakerStatistics",
    "CircuitState",
    "HealthMonitor",
    "HealthStatistics",
    "hedge",
    "KeyedRateLimiter",
    "KeyedRateLimiterStatistics",
    "TokenBucket",
    "TokenBucketStatistics",
    "RetryPolicies",
    "load_of",
    "resilient",
    # request lifecycle
    "Coordinator",
    "CoordinatorStatistics",
    "open_coordinator",
    "ErrorCategory",
    "HealthConfig",
    "OrchestrationConfig",
    "PartialResults",
    "Pipeline",
    "PipelineStatistics",
    "ProcessingResult",
    "ProcessingStatus",
    "RateLimitConfig",
    "RateLimitsConfig",
    "REQUEST_TRANSITIONS",
    "Request",
    "RequestKind",
    "RequestState",
    "RetryConfig",
    "Router",
    "Stage",
    "StageStatistics",
    "StateChange",
    "StateMachine",
    "StateMachineStatistics",
    "StateStatistics",
    "Tool",
    "ToolRegistry",
    "gather_partial",
    "load_config",
    "run_tools",
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
