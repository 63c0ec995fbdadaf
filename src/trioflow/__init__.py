"""trioflow: structured-concurrency orchestration for trio and anyio.

Bounded batches, resource limits, retries, workflows with durable runs, resilience strategies
and request lifecycles, all scoped by nurseries and cancel scopes. Everything public is
re-exported here, the request layer (coordinator,
pipelines, tools) in :mod:`trioflow.lifecycle`; the modules beside this file are private.
Each name's module is imported when the name is first used (:pep:`562`), so ``import
trioflow`` costs almost nothing and a short-lived process (the ``trioflow`` command, a worker)
pays only for what it uses.
"""

from __future__ import annotations  # noqa: I001 (_startup first, on purpose)

from . import _startup  # noqa: F401  # first: a quiet Ctrl-C while the command starts

import contextlib
import functools
import importlib
from typing import TYPE_CHECKING, Any

from ._deprecate import Alias as _Alias
from ._deprecate import module_getattr as _module_getattr

if TYPE_CHECKING:
    from . import lifecycle as lifecycle
    from ._batch._as_completed import as_completed as as_completed
    from ._batch._outcomes import BatchResult as BatchResult
    from ._batch._outcomes import OperationFailure as OperationFailure
    from ._batch._outcomes import Outcome as Outcome
    from ._batch._outcomes import OutcomeStatus as OutcomeStatus
    from ._batch._outcomes import Progress as Progress
    from ._batch._run import amap as amap
    from ._batch._run import run_batch as run_batch
    from ._batch._workers import in_process as in_process
    from ._batch._workers import in_thread as in_thread
    from ._errors import CircuitOpenError as CircuitOpenError
    from ._errors import ConfigError as ConfigError
    from ._errors import InvalidTransitionError as InvalidTransitionError
    from ._errors import PoolClosedError as PoolClosedError
    from ._errors import ResourceExhaustedError as ResourceExhaustedError
    from ._errors import RunLeasedError as RunLeasedError
    from ._errors import StoreError as StoreError
    from ._errors import ToolArgumentError as ToolArgumentError
    from ._errors import TransitionInProgressError as TransitionInProgressError
    from ._errors import TrioflowError as TrioflowError
    from ._errors import UnknownKindError as UnknownKindError
    from ._errors import UnknownToolError as UnknownToolError
    from ._errors import UnstorableValueError as UnstorableValueError
    from ._errors import ValueTooLargeError as ValueTooLargeError
    from ._errors import WorkflowDefinitionError as WorkflowDefinitionError
    from ._errors import WorkflowShapeChangedError as WorkflowShapeChangedError
    from ._limits import Capacity as Capacity
    from ._limits import HealthSource as HealthSource
    from ._limits import KeyedPoolStatistics as KeyedPoolStatistics
    from ._limits import LimitChanged as LimitChanged
    from ._limits import PoolStatistics as PoolStatistics
    from ._limits import ResourceManager as ResourceManager
    from ._limits import ResourceManagerEvent as ResourceManagerEvent
    from ._limits import ResourceManagerStatistics as ResourceManagerStatistics
    from ._limits import SharedCapacity as SharedCapacity
    from ._limits import SharedLimits as SharedLimits
    from ._limits import SharedRateLimiter as SharedRateLimiter
    from ._limits import Slot as Slot
    from ._limits import SlotReleased as SlotReleased
    from ._options import WorkOptions as WorkOptions
    from ._pool import ObjectPoolEvent as ObjectPoolEvent
    from ._pool import ObjectPoolStatistics as ObjectPoolStatistics
    from ._pool import Pool as Pool
    from ._resilience._adaptive import AdaptiveConcurrency as AdaptiveConcurrency
    from ._resilience._adaptive import (
        AdaptiveConcurrencyStatistics as AdaptiveConcurrencyStatistics,
    )
    from ._resilience._breaker import CircuitBreaker as CircuitBreaker
    from ._resilience._breaker import CircuitBreakerStatistics as CircuitBreakerStatistics
    from ._resilience._breaker import CircuitState as CircuitState
    from ._resilience._breaker import CircuitStateChanged as CircuitStateChanged
    from ._resilience._health import HealthChanged as HealthChanged
    from ._resilience._health import HealthMonitor as HealthMonitor
    from ._resilience._health import HealthMonitorStatistics as HealthMonitorStatistics
    from ._resilience._hedge import hedge as hedge
    from ._resilience._policies import RetryPolicies as RetryPolicies
    from ._resilience._policies import load_of as load_of
    from ._resilience._ratelimit import KeyedRateLimiter as KeyedRateLimiter
    from ._resilience._ratelimit import KeyedRateLimiterStatistics as KeyedRateLimiterStatistics
    from ._resilience._ratelimit import TokenBucket as TokenBucket
    from ._resilience._ratelimit import TokenBucketStatistics as TokenBucketStatistics
    from ._resilience._resilient import resilient as resilient
    from ._retry import RetryEvent as RetryEvent
    from ._retry import RetryPolicy as RetryPolicy
    from ._triggers._run_on import TriggerRun as TriggerRun
    from ._triggers._run_on import TriggerRunStatistics as TriggerRunStatistics
    from ._triggers._run_on import run_on as run_on
    from ._triggers._sources import cron as cron
    from ._triggers._sources import every as every
    from ._triggers._sources import file_changes as file_changes
    from ._workflow._context import Context as Context
    from ._workflow._graph import Step as Step
    from ._workflow._graph import Workflow as Workflow
    from ._workflow._lease import RunOwner as RunOwner
    from ._workflow._result import StepResult as StepResult
    from ._workflow._result import WorkflowProgress as WorkflowProgress
    from ._workflow._result import WorkflowResult as WorkflowResult
    from ._workflow._run import run_workflow as run_workflow
    from ._workflow._sqlite import SQLiteStore as SQLiteStore
    from ._workflow._step_status import StepStatus as StepStatus
    from ._workflow._store import MemoryStore as MemoryStore
    from ._workflow._store import RunRecord as RunRecord
    from ._workflow._store import RunStatus as RunStatus
    from ._workflow._store import StepRecord as StepRecord
    from ._workflow._store import StoredValue as StoredValue
    from ._workflow._store import WorkflowStore as WorkflowStore

__version__ = "0.1.0"

__all__ = (
    # errors
    "TrioflowError",
    "CircuitOpenError",
    "ConfigError",
    "InvalidTransitionError",
    "PoolClosedError",
    "ResourceExhaustedError",
    "RunLeasedError",
    "StoreError",
    "ToolArgumentError",
    "TransitionInProgressError",
    "UnknownKindError",
    "UnknownToolError",
    "UnstorableValueError",
    "ValueTooLargeError",
    "WorkflowDefinitionError",
    "WorkflowShapeChangedError",
    # limits and retry
    "ResourceManager",
    "ResourceManagerStatistics",
    "PoolStatistics",
    "KeyedPoolStatistics",
    "Slot",
    "SlotReleased",
    "LimitChanged",
    "ResourceManagerEvent",
    "Capacity",
    "HealthSource",
    "SharedLimits",
    "SharedCapacity",
    "SharedRateLimiter",
    "RetryPolicy",
    "RetryEvent",
    "WorkOptions",
    # pools of objects
    "Pool",
    "ObjectPoolStatistics",
    "ObjectPoolEvent",
    # batches
    "run_batch",
    "amap",
    "as_completed",
    "in_process",
    "in_thread",
    "BatchResult",
    "Outcome",
    "OutcomeStatus",
    "OperationFailure",
    "Progress",
    # workflows and stores
    "Workflow",
    "Step",
    "StepStatus",
    "Context",
    "run_workflow",
    "WorkflowResult",
    "StepResult",
    "WorkflowProgress",
    "WorkflowStore",
    "SQLiteStore",
    "MemoryStore",
    "RunOwner",
    "RunRecord",
    "RunStatus",
    "StepRecord",
    "StoredValue",
    # resilience
    "TokenBucket",
    "TokenBucketStatistics",
    "KeyedRateLimiter",
    "KeyedRateLimiterStatistics",
    "CircuitBreaker",
    "CircuitBreakerStatistics",
    "CircuitState",
    "CircuitStateChanged",
    "hedge",
    "HealthMonitor",
    "HealthMonitorStatistics",
    "HealthChanged",
    "AdaptiveConcurrency",
    "AdaptiveConcurrencyStatistics",
    "RetryPolicies",
    "load_of",
    "resilient",
    # event triggers
    "every",
    "cron",
    "file_changes",
    "run_on",
    "TriggerRun",
    "TriggerRunStatistics",
    # the request layer
    "lifecycle",
)


# Where each public name lives: a module is imported when one of its names is first used
# (the `trioflow` command starts without importing what it does not run). The block above says
# the same to type checkers and IDEs; a test checks that the two agree.
_HOMES: dict[str, tuple[str, ...]] = {
    "._batch._as_completed": ("as_completed",),
    "._batch._outcomes": (
        "BatchResult",
        "OperationFailure",
        "Outcome",
        "OutcomeStatus",
        "Progress",
    ),
    "._batch._run": ("amap", "run_batch"),
    "._batch._workers": ("in_process", "in_thread"),
    "._errors": (
        "CircuitOpenError",
        "ConfigError",
        "InvalidTransitionError",
        "PoolClosedError",
        "ResourceExhaustedError",
        "RunLeasedError",
        "StoreError",
        "ToolArgumentError",
        "TransitionInProgressError",
        "TrioflowError",
        "UnknownKindError",
        "UnknownToolError",
        "UnstorableValueError",
        "ValueTooLargeError",
        "WorkflowDefinitionError",
        "WorkflowShapeChangedError",
    ),
    "._limits": (
        "Capacity",
        "HealthSource",
        "KeyedPoolStatistics",
        "PoolStatistics",
        "ResourceManager",
        "ResourceManagerStatistics",
        "Slot",
        "LimitChanged",
        "ResourceManagerEvent",
        "SlotReleased",
        "SharedCapacity",
        "SharedLimits",
        "SharedRateLimiter",
    ),
    "._options": ("WorkOptions",),
    "._pool": ("ObjectPoolEvent", "ObjectPoolStatistics", "Pool"),
    "._resilience._adaptive": ("AdaptiveConcurrency", "AdaptiveConcurrencyStatistics"),
    "._resilience._breaker": (
        "CircuitBreaker",
        "CircuitBreakerStatistics",
        "CircuitState",
        "CircuitStateChanged",
    ),
    "._resilience._health": ("HealthChanged", "HealthMonitor", "HealthMonitorStatistics"),
    "._resilience._hedge": ("hedge",),
    "._resilience._policies": ("RetryPolicies", "load_of"),
    "._resilience._ratelimit": (
        "KeyedRateLimiter",
        "KeyedRateLimiterStatistics",
        "TokenBucket",
        "TokenBucketStatistics",
    ),
    "._resilience._resilient": ("resilient",),
    "._retry": ("RetryEvent", "RetryPolicy"),
    "._triggers._run_on": ("TriggerRun", "TriggerRunStatistics", "run_on"),
    "._triggers._sources": ("cron", "every", "file_changes"),
    "._workflow._context": ("Context",),
    "._workflow._graph": ("Step", "Workflow"),
    "._workflow._lease": ("RunOwner",),
    "._workflow._step_status": ("StepStatus",),
    "._workflow._result": ("StepResult", "WorkflowProgress", "WorkflowResult"),
    "._workflow._run": ("run_workflow",),
    "._workflow._sqlite": ("SQLiteStore",),
    "._workflow._store": (
        "MemoryStore",
        "RunRecord",
        "RunStatus",
        "StepRecord",
        "StoredValue",
        "WorkflowStore",
    ),
}


def _load(name: str) -> Any:
    """Import the module where ``name`` lives, bind its public names here, and return one."""
    home = _HOME_OF[name]
    module = importlib.import_module(home, __name__)
    for public in _HOMES[home]:
        obj = getattr(module, public)
        # Public objects report their public path (trioflow.X), not the private module.
        if getattr(obj, "__module__", "").startswith("trioflow._"):
            with contextlib.suppress(AttributeError, TypeError):
                obj.__module__ = "trioflow"
        globals()[public] = obj  # bound: later uses do not come back here
    return globals()[name]


_HOME_OF = {name: home for home, names in _HOMES.items() for name in names}


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _renamed(new: str) -> _Alias:
    return _Alias(f"trioflow.{new}", lambda: _load(new))


def _moved(name: str) -> _Alias:
    return _Alias(f"trioflow.lifecycle.{name}", lambda: getattr(_import_lifecycle(), name))


def _import_lifecycle() -> Any:
    # Imported on first use: an application of batches and workflows does not pay for it.
    return importlib.import_module("trioflow.lifecycle")


# The names trioflow 0.1 exported at the top level that live in trioflow.lifecycle now
# (tests check that this is trioflow.lifecycle.__all__).
_MOVED = (
    "StateMachine",
    "StateChange",
    "StateMachineStatistics",
    "StateStatistics",
    "Request",
    "RequestState",
    "REQUEST_TRANSITIONS",
    "ProcessingResult",
    "ProcessingStatus",
    "ErrorCategory",
    "Pipeline",
    "PipelineStatistics",
    "Stage",
    "StageStatistics",
    "Router",
    "RequestKind",
    "PartialResults",
    "gather_partial",
    "Tool",
    "ToolRegistry",
    "run_tools",
    "Coordinator",
    "CoordinatorStatistics",
    "open_coordinator",
    "OrchestrationConfig",
    "HealthConfig",
    "RateLimitConfig",
    "RateLimitsConfig",
    "RetryConfig",
    "load_config",
)


# Names of trioflow 0.1 that still work, with a DeprecationWarning naming the replacement.
_DEPRECATED: dict[str, _Alias] = {
    "AdaptiveStatistics": _renamed("AdaptiveConcurrencyStatistics"),
    "HealthStatistics": _renamed("HealthMonitorStatistics"),
    "InvalidTransition": _renamed("InvalidTransitionError"),
    "OperationError": _renamed("OperationFailure"),
    "ResourceExhausted": _renamed("ResourceExhaustedError"),
    "ResourceStatistics": _renamed("ResourceManagerStatistics"),
    "TransitionInProgress": _renamed("TransitionInProgressError"),
    "UnknownKind": _renamed("UnknownKindError"),
    "UnknownTool": _renamed("UnknownToolError"),
    "UnstorableValue": _renamed("UnstorableValueError"),
    "WorkflowShapeChanged": _renamed("WorkflowShapeChangedError"),
    "map": _renamed("amap"),
    **{name: _moved(name) for name in _MOVED},
}

# trioflow.lifecycle and every public name are imported on first use; the import binds them,
# so this runs once for each.
__getattr__ = _module_getattr(
    __name__,
    _DEPRECATED,
    lazy={
        "lifecycle": _import_lifecycle,
        **{name: functools.partial(_load, name) for name in _HOME_OF},
    },
)
