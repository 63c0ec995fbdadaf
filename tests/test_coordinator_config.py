"""Any configuration load_config accepts opens a coordinator that runs and closes cleanly.

The numbers are drawn from small sets around the edges (zero, tiny, huge, past the float range,
infinity, NaN), so that values which pass their own field's check but overflow once combined
(``rate / per``, ``initial_delay * multiplier ** n``, a sum of pool sizes) are found.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import anyio
import pytest
import structlog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from _lifecycle_stages import SEVEN_STAGES
from trioflow import ConfigError, ResourceExhaustedError
from trioflow.lifecycle import (
    OrchestrationConfig,
    Pipeline,
    Request,
    RequestKind,
    Router,
    Stage,
    load_config,
    open_coordinator,
)
from trioflow.testing import virtual_time_backends

EDGE_FLOATS = [5e-324, 1e-308, 1e-10, 0.5, 1.0, 3.0, 1e10, 1e300, 1e308, sys.float_info.max]
EDGE_INTS = [1, 2, 3, 2**53 + 1, sys.maxsize, sys.maxsize + 1, 10**308, 10**400]
BAD = [0, -1, math.inf, math.nan]

numbers = st.sampled_from([*EDGE_FLOATS, *EDGE_INTS, *BAD])
ints = st.sampled_from([*EDGE_INTS, 0, -1])
durations = st.one_of(numbers, st.sampled_from(["00:00:01.5", "99999999:00:00"]))
percents = st.sampled_from([5e-324, 1e-308, 0.5, 50, 100, 101, 1e308, math.nan])
modes = st.sampled_from(["wait", "fail"])


def block(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


retry = block(
    {
        "attempts": ints,
        "initial_delay": durations,
        "multiplier": numbers,
        "max_delay": durations,
        "jitter": durations,
    }
)
rate_limit = st.fixed_dictionaries(
    {"rate": numbers}, optional={"per": durations, "burst": st.one_of(st.none(), ints)}
)
configs = block(
    {
        "max_concurrency": ints,
        "per_user_limit": ints,
        "max_queue_depth": st.one_of(st.none(), ints),
        "default_timeout": st.one_of(st.none(), st.just("none"), durations),
        "enable_metrics": st.booleans(),
        "metrics_interval": durations,
        "pools": st.dictionaries(st.sampled_from(["llm", "tool", "context"]), ints, max_size=3),
        "retry": retry,
        "retry_policies": st.dictionaries(st.sampled_from(["llm", "tool"]), retry, max_size=2),
        "rate_limits": block(
            {
                "per_user": st.one_of(st.none(), rate_limit),
                "per_source": st.dictionaries(st.just("cli"), rate_limit, max_size=1),
                "when_limited": modes,
            }
        ),
        "health": block(
            {
                "enabled": st.booleans(),
                "when_unhealthy": modes,
                "interval": durations,
                "max_memory_percent": percents,
                "max_cpu_percent": percents,
            }
        ),
    }
)

# Virtual seconds a scenario may take; a background task sleeping less than this often would
# keep a virtual clock from ever getting there (it is not an error, only a busy task).
BOUND = 1000.0


EXPECTED = (ConnectionError, TimeoutError, ResourceExhaustedError)


class Flaky:
    """A stage failing once per request with a retried error, then succeeding."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    async def __call__(self, request: Request) -> str:
        if request.id not in self.seen:
            self.seen.add(request.id)
            raise ConnectionError("first try fails")
        return "ok"


async def scenario(config: OrchestrationConfig) -> None:
    pools = [name for name in ("llm", "tool") if name in config.pools]
    operation = "llm" if "llm" in config.retry_policies else "default"
    flaky = Flaky()

    async def fine(request: Request) -> None:
        await anyio.sleep(1)

    stages = [
        Stage(
            name,
            state,
            flaky if name == "process" else fine,
            pools=pools if name == "process" else (),
            operation=operation if name == "process" else "default",
        )
        for name, state in SEVEN_STAGES
    ]
    router = Router(
        lambda r: RequestKind.SIMPLE_QUERY, {RequestKind.SIMPLE_QUERY: Pipeline(stages)}
    )
    logger = structlog.wrap_logger(structlog.ReturnLogger())
    busy = (config.enable_metrics and config.metrics_interval < BOUND / 100) or (
        config.health.enabled and config.health.interval < BOUND / 100
    )
    async with open_coordinator(config, router=router, logger=logger) as coordinator:
        if busy:
            return
        requests = [
            Request(i, user_id=f"u{i % 2}", source="cli", priority=i % 3) for i in range(4)
        ]
        with anyio.move_on_after(BOUND):
            results = await coordinator.process_many(requests)
            assert len(results) == len(requests)
            for result in results:
                # The stage's own failure, the request timeout or a refusal at admission; no
                # error of trioflow's arithmetic (OverflowError, ValueError, ...).
                assert result.error is None or isinstance(result.error, EXPECTED), result.error
        coordinator.statistics()


@pytest.mark.parametrize("backend", range(2), ids=["trio", "asyncio"])
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=configs)
# The crashes found before the loader checked them (each opened, then raised in the task group):
@example(data={"rate_limits": {"per_user": {"rate": 1e308, "per": 1e-308}}})
@example(data={"rate_limits": {"per_source": {"cli": {"rate": 1e-308, "per": 1e308}}}})
@example(data={"rate_limits": {"per_user": {"rate": 1, "burst": 10**400}}})
@example(data={"retry_policies": {"llm": {"attempts": 10**400}}, "enable_metrics": False})
def test_an_accepted_configuration_opens_runs_and_closes(
    backend: int, data: dict[str, Any]
) -> None:
    try:
        config = load_config(data)
    except ConfigError:
        return
    name, options = virtual_time_backends()[backend]
    anyio.run(scenario, config, backend=name, backend_options=options)


async def _noop(request: Request) -> None:
    return None


@pytest.mark.anyio
async def test_a_rate_that_overflows_is_refused_before_the_coordinator_opens() -> None:
    pipeline = Pipeline([Stage(name, state, _noop) for name, state in SEVEN_STAGES])
    router = Router(lambda r: RequestKind.SIMPLE_QUERY, {RequestKind.SIMPLE_QUERY: pipeline})
    for limits in (
        {"per_user": {"rate": 1e308, "per": 1e-308}},
        {"per_source": {"mcp": {"rate": 1e-308, "per": 1e308}}},
        {"per_user": {"rate": 1, "burst": 10**400}},
    ):
        with pytest.raises(ConfigError, match=r"rate_limits\.per_"):
            async with open_coordinator({"rate_limits": limits}, router=router):
                pass


@pytest.mark.anyio
async def test_the_most_attempts_run_adapted_to_priority() -> None:
    # More attempts than a float holds overflowed when a request's priority adapted the policy;
    # the largest count accepted does not.
    def config(attempts: int) -> dict[str, Any]:
        policy = {"attempts": attempts, "initial_delay": 1, "max_delay": 1}
        return {"enable_metrics": False, "retry_policies": {"llm": policy}}

    with pytest.raises(ConfigError, match=r"retry_policies\.llm\.attempts: must be an int in"):
        load_config(config(10**400))
    await scenario(load_config(config(sys.maxsize)))
