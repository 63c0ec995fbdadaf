"""trioflow: structured-concurrency orchestration for trio and anyio.

Bounded batches, resource limits, retries, workflows with durable runs, resilience strategies
and request lifecycles, all scoped by nurseries and cancel scopes. Everything public is
re-exported here; the modules beside this file are private.
"""

from __future__ import annotations

import contextlib

from ._batch._as_completed import as_completed as as_completed
from ._batch._outcomes import BatchResult as BatchResult
from ._batch._outcomes import OperationError as OperationError
from ._batch._outcomes import Outcome as Outcome
from ._batch._outcomes import OutcomeStatus as OutcomeStatus
from ._batch._outcomes import Progress as Progress
from ._batch._run import map as map
from ._batch._run import run_batch as run_batch
from ._batch._workers import in_process as in_process
from ._batch._workers import in_thread as in_thread
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
from ._lifecycle._config import HealthConfig as HealthConfig
from ._lifecycle._config import OrchestrationConfig as OrchestrationConfig
from ._lifecycle._config import RateLimitConfig as RateLimitConfig
from ._lifecycle._config import RateLimitsConfig as RateLimitsConfig
from ._lifecycle._config import RetryConfig as RetryConfig
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
from ._lifecycle._router import RequestKind as RequestKind
from ._lifecycle._router import Router as Router
from ._lifecycle._tools import Tool as Tool
from ._lifecycle._tools import ToolRegistry as ToolRegistry
from ._lifecycle._tools import run_tools as run_tools
from ._limits import HealthSource as HealthSource
from ._limits import PoolStatistics as PoolStatistics
from ._limits import ResourceManager as ResourceManager
from ._limits import ResourceStatistics as ResourceStatistics
from ._resilience._adaptive import AdaptiveConcurrency as AdaptiveConcurrency
from ._resilience._adaptive import AdaptiveStatistics as AdaptiveStatistics
from ._resilience._breaker import CircuitBreaker as CircuitBreaker
from ._resilience._breaker import CircuitBreakerStatistics as CircuitBreakerStatistics
from ._resilience._breaker import CircuitState as CircuitState
from ._resilience._health import HealthMonitor as HealthMonitor
from ._resilience._health import HealthStatistics as HealthStatistics
from ._resilience._hedge import hedge as hedge
from ._resilience._policies import RetryPolicies as RetryPolicies
from ._resilience._policies import load_of as load_of
from ._resilience._ratelimit import KeyedRateLimiter as KeyedRateLimiter
from ._resilience._ratelimit import KeyedRateLimiterStatistics as KeyedRateLimiterStatistics
from ._resilience._ratelimit import TokenBucket as TokenBucket
from ._resilience._ratelimit import TokenBucketStatistics as TokenBucketStatistics
from ._resilience._resilient import resilient as resilient
from ._retry import RetryPolicy as RetryPolicy
from ._workflow._context import Context as Context
from ._workflow._graph import Step as Step
from ._workflow._graph import StepStatus as StepStatus
from ._workflow._graph import Workflow as Workflow
from ._workflow._result import StepResult as StepResult
from ._workflow._result import WorkflowProgress as WorkflowProgress
from ._workflow._result import WorkflowResult as WorkflowResult
from ._workflow._scheduler import run_workflow as run_workflow
from ._workflow._sqlite import SQLiteStore as SQLiteStore
from ._workflow._store import MemoryStore as MemoryStore
from ._workflow._store import RunRecord as RunRecord
from ._workflow._store import RunStatus as RunStatus
from ._workflow._store import StepRecord as StepRecord
from ._workflow._store import StoredValue as StoredValue
from ._workflow._store import WorkflowStore as WorkflowStore

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
