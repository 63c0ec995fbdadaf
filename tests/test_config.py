from __future__ import annotations

import json
import pathlib
from typing import Any

import attrs
import pytest

from trioflow import ConfigError, RetryPolicy
from trioflow.lifecycle import (
    HealthConfig,
    OrchestrationConfig,
    RateLimitConfig,
    RateLimitsConfig,
    RetryConfig,
    load_config,
)

CONFIG_TOML = """
max_concurrency = 8
default_timeout = "00:05:00"
enable_metrics = true
per_user_limit = 4
max_queue_depth = 100
optional_stages = ["context", "tools"]

[retry]
attempts = 4
initial_delay = "00:00:01"
multiplier = 2.0

[pools]
llm = 2
tool = 4

[retry_policies.llm]
attempts = 2
initial_delay = 0.5
max_delay = "00:00:02.5"

[rate_limits]
when_limited = "fail"
per_user = { rate = 10, per = "00:01:00", burst = 5 }

[rate_limits.per_source.mcp]
rate = 20

[health]
enabled = true
when_unhealthy = "fail"
"""


def problems(source: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(source)
    return dict(info.value.problems)


def test_defaults() -> None:
    config = OrchestrationConfig()
    assert config.max_concurrency == 50
    assert config.per_user_limit == 10
    assert dict(config.pools) == {"llm": 5, "tool": 10, "context": 20}
    assert config.default_timeout == 30
    assert config.enable_metrics is True
    assert config.retry == RetryConfig(attempts=4, initial_delay=1.0, multiplier=2.0)
    assert set(config.retry_policies) == {"llm", "tool", "storage"}
    assert config.rate_limits == RateLimitsConfig()
    assert config.health == HealthConfig()
    assert load_config({}) == config
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.max_concurrency = 3  # type: ignore[misc]


def test_load_toml_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "orchestration.toml"
    path.write_text(CONFIG_TOML)
    config = load_config(path)
    assert config.max_concurrency == 8
    assert config.default_timeout == 300
    assert config.per_user_limit == 4
    assert config.optional_stages == ("context", "tools")
    assert config.retry.initial_delay == 1
    assert dict(config.pools) == {"llm": 2, "tool": 4}
    assert config.retry_policies["llm"].max_delay == 2.5
    assert config.retry_policies["llm"].attempts == 2
    assert "tool" not in config.retry_policies  # a given table replaces the default one
    limits = config.rate_limits
    assert limits.when_limited == "fail"
    assert limits.per_user == RateLimitConfig(rate=10, per=60, burst=5)
    assert limits.per_user.per_second == pytest.approx(1 / 6)
    assert limits.per_source["mcp"].capacity == 20
    assert config.health.enabled
    assert config.health.when_unhealthy == "fail"
    assert config.max_queue_depth == 100
    assert load_config(str(path)) == config


def test_load_json_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "orchestration.json"
    path.write_text(
        json.dumps(
            {
                "max_concurrency": 8,
                "default_timeout": None,
                "enable_metrics": False,
                "retry": {"attempts": 4, "initial_delay": "00:00:01", "multiplier": 2},
            }
        )
    )
    config = load_config(path)
    assert config.default_timeout is None
    assert config.enable_metrics is False
    assert config.retry.multiplier == 2.0
    assert load_config({"default_timeout": "none"}).default_timeout is None


def test_every_problem_is_listed_with_its_path() -> None:
    found = problems(
        {
            "max_concurrency": 0,
            "per_user_limt": 3,
            "default_timeout": "5 minutes",
            "enable_metrics": "yes",
            "retry": {"multiplier": 0.5, "attempts": 0, "initial_delay": "00:61:00"},
            "pools": {"llm": 0, "tool": "ten"},
            "retry_policies": {"default": {}, "llm": {"jitter": -1}},
            "rate_limits": {
                "per_user": {"rate": 0},
                "per_source": {"mcp": {"burst": 0, "rate": 1, "extra": 1}},
                "when_limited": "queue",
            },
            "health": {"max_cpu_percent": 150, "interval": 0},
            "optional_stages": "context",
        }
    )
    assert found == {
        "max_concurrency": "must be an int >= 1, got 0 (int)",
        "per_user_limt": "unknown key",
        "default_timeout": 'must be a duration (seconds or an "HH:MM:SS" string or "none"), '
        "got '5 minutes'",
        "enable_metrics": "expected bool, got 'yes'",
        "retry.multiplier": "must be a finite number >= 1, got 0.5 (float)",
        "retry.attempts": "must be an int >= 1, got 0 (int)",
        "retry.initial_delay": 'must be a duration (seconds or an "HH:MM:SS" string), '
        "got '00:61:00'",
        "pools.llm": "must be an int >= 1, got 0 (int)",
        "pools.tool": "expected int, got 'ten'",
        "retry_policies.default": "the name 'default' is reserved for the retry block",
        "retry_policies.llm.jitter": "must be a finite number >= 0, got -1.0 (float)",
        "rate_limits.per_user.rate": "must be a finite number > 0, got 0.0 (float)",
        "rate_limits.per_source.mcp.burst": "must be an int >= 1, got 0 (int)",
        "rate_limits.per_source.mcp.extra": "unknown key",
        "rate_limits.when_limited": "expected one of 'wait', 'fail', got 'queue'",
        "health.interval": "must be a finite number > 0, got 0.0 (float)",
        "health.max_cpu_percent": "must be a number in (0, 100], got 150.0 (float)",
        "optional_stages": "expected array, got 'context'",
    }


def test_a_table_given_something_else_is_a_problem_of_that_table() -> None:
    assert problems(
        {"health": [], "retry": 3, "rate_limits": {"per_source": {"cli": 5, "mcp": {"rate": 0}}}}
    ) == {
        "health": "expected a table, got []",
        "retry": "expected a table, got 3",
        "rate_limits.per_source.cli": "expected a table, got 5",
        "rate_limits.per_source.mcp.rate": "must be a finite number > 0, got 0.0 (float)",
    }


def test_cross_field_problems_and_the_message() -> None:
    found = problems(
        {"retry": {"initial_delay": 5, "max_delay": 1}, "health": {"max_cpu_percent": 101}}
    )
    assert found == {
        "retry.max_delay": "must be >= initial_delay (5), got 1",
        "health.max_cpu_percent": "must be a number in (0, 100], got 101.0 (float)",
    }
    with pytest.raises(ConfigError) as info:
        load_config({"retry": {"multiplier": 0.5}})
    assert str(info.value) == (
        "invalid configuration:\n  retry.multiplier: must be a finite number >= 1, got 0.5 (float)"
    )
    assert problems({"rate_limits": {"per_user": {}}}) == {
        "rate_limits.per_user.rate": "required field is missing"
    }


def test_building_in_code_is_validated_the_same_way() -> None:
    with pytest.raises(ConfigError) as info:
        OrchestrationConfig(max_concurrency=0, pools={"llm": 0, "": 1}, optional_stages=("a", ""))
    assert dict(info.value.problems) == {
        "max_concurrency": "must be an int >= 1, got 0 (int)",
        "pools.llm": "must be an int >= 1, got 0 (int)",
        "pools['']": "pool names must be non-empty strings, got ''",
        "optional_stages": "must be a list of non-empty strings, got ('a', '')",
    }
    with pytest.raises(ConfigError, match=r"multiplier: must be a finite number >= 1, got 0\.5"):
        RetryConfig(multiplier=0.5)
    with pytest.raises(ConfigError, match="retry: must be a RetryConfig"):
        OrchestrationConfig(retry={"attempts": 1})  # type: ignore[arg-type]


def test_file_problems(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("max_concurrency = = 3")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(bad)
    assert info.value.source == str(bad)
    wrong = tmp_path / "config.yaml"
    wrong.write_text("")
    with pytest.raises(ValueError, match=r"must be a \.toml or \.json file"):
        load_config(wrong)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"\$: expected a table of settings, got \[1, 2\]"):
        load_config(listed)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(TypeError, match="source must be a path"):
        load_config(42)  # type: ignore[arg-type]
    located = tmp_path / "located.toml"
    located.write_text("max_concurrency = 0")
    with pytest.raises(ConfigError, match=f"invalid configuration in {located}"):
        load_config(located)


def test_retry_policies_become_retry_policy_values() -> None:
    config = load_config(
        {"retry": {"attempts": 3, "initial_delay": 1, "multiplier": 3, "max_delay": 5}}
    )
    policies = config.retry_policy_map()
    assert policies["default"] == RetryPolicy(
        attempts=3, initial_delay=1, multiplier=3, max_delay=5
    )
    assert policies["default"].delays() == (1, 3)
    assert policies["tool"].delays() == (2,)
    assert policies["llm"].delays() == (1, 2)
    assert policies["storage"].attempts == 5


# --- configuration written for trioflow 0.1 ---------------------------------------------------
OLD_TOML = """
[retry]
max_retries = 3
backoff_multiplier = 3.0

[retry_policies.llm]
max_retries = 0
"""


def test_a_0_1_file_loads_with_a_warning_naming_each_new_key(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "orchestration.toml"
    path.write_text(OLD_TOML)
    with pytest.warns(DeprecationWarning, match="is deprecated since trioflow") as caught:
        config = load_config(path)
    messages = [str(w.message) for w in caught]
    assert messages == [
        "retry.max_retries is deprecated since trioflow 0.2; use retry.attempts "
        "(= max_retries + 1) instead",
        "retry.backoff_multiplier is deprecated since trioflow 0.2; use retry.multiplier instead",
        "retry_policies.llm.max_retries is deprecated since trioflow 0.2; use "
        "retry_policies.llm.attempts (= max_retries + 1) instead",
    ]
    assert all(w.filename == __file__ for w in caught)  # they point at the caller
    # max_retries counts retries after the first try; attempts counts every try.
    assert config.retry == RetryConfig(attempts=4, multiplier=3.0)
    assert config.retry_policies["llm"].attempts == 1
    assert config.retry_policy_map()["default"].delays() == (1, 3, 9)


def test_old_retry_names_in_code_warn_and_convert() -> None:
    with pytest.warns(DeprecationWarning, match="is deprecated since trioflow") as caught:
        old = RetryConfig(max_retries=2, backoff_multiplier=1.5)
    assert [str(w.message).split()[0] for w in caught] == ["max_retries", "backoff_multiplier"]
    assert [w.filename for w in caught] == [__file__, __file__]
    assert old == RetryConfig(attempts=3, multiplier=1.5)


def test_an_old_key_with_its_new_one_is_a_config_error() -> None:
    assert problems({"retry": {"max_retries": 2, "attempts": 3, "multiplier": 0.5}}) == {
        "retry.max_retries": "give attempts or max_retries (deprecated), not both",
        "retry.multiplier": "must be a finite number >= 1, got 0.5 (float)",
    }
    assert problems({"retry_policies": {"llm": {"backoff_multiplier": 2, "multiplier": 2}}}) == {
        "retry_policies.llm.backoff_multiplier": "give multiplier or backoff_multiplier "
        "(deprecated), not both"
    }
    with pytest.raises(ConfigError, match="give attempts or max_retries"):
        RetryConfig(attempts=3, max_retries=2)
    # An old key out of range is reported under the key the file used (no warning then).
    assert problems({"retry": {"max_retries": -1}}) == {
        "retry.max_retries": "must be an int >= 0, got -1 (int)"
    }


# --- numbers that pass their own check but overflow where the coordinator uses them ---------


def test_a_rate_per_pair_must_give_a_finite_positive_rate() -> None:
    over = (
        "rate / per must be a finite number > 0 (requests per second), got 1e+308 / 1e-308 = inf"
    )
    under = (
        "rate / per must be a finite number > 0 (requests per second), got 1e-308 / 1e+308 = 0.0"
    )
    assert problems(
        {
            "rate_limits": {
                "per_user": {"rate": 1e308, "per": 1e-308},
                "per_source": {"mcp": {"rate": 1e-308, "per": 1e308}, "cli": {"rate": 1e308}},
            }
        }
    ) == {"rate_limits.per_user": over, "rate_limits.per_source.mcp": under}
    with pytest.raises(ConfigError) as info:
        RateLimitConfig(rate=1e308, per=1e-308)
    assert info.value.problems == (("$", over),)
    # Large and small rates that stay in range are kept as they are.
    assert RateLimitConfig(rate=1e308, per=1).per_second == 1e308
    assert RateLimitConfig(rate=1e-300, per=1e5).per_second == 1e-305


def test_counts_must_fit_the_limiters_and_policies_that_use_them() -> None:
    huge = 10**400
    got = f"got {str(huge)[:57]}... (int)"
    bound = "must be an int in [1, 9223372036854775807]"
    assert problems(
        {
            "max_concurrency": huge,
            "per_user_limit": 2**63,
            "max_queue_depth": huge,
            "pools": {"llm": huge},
            "retry": {"attempts": huge},
            "retry_policies": {"llm": {"max_retries": huge}},
            "rate_limits": {"per_user": {"rate": 1, "burst": huge}},
        }
    ) == {
        "max_concurrency": f"{bound}, {got}",
        "per_user_limit": f"{bound}, got 9223372036854775808 (int)",
        "max_queue_depth": f"{bound}, {got}",
        "pools.llm": f"{bound}, {got}",
        "retry.attempts": f"{bound}, {got}",
        "retry_policies.llm.max_retries": f"must be an int in [0, 9223372036854775807], {got}",
        "rate_limits.per_user.burst": f"{bound}, {got}",
    }
    # The largest count is accepted.
    config = load_config({"max_concurrency": 2**63 - 1, "retry": {"attempts": 2**63 - 1}})
    assert config.max_concurrency == config.retry.attempts == 2**63 - 1


def test_huge_durations_that_stay_finite_are_accepted() -> None:
    config = load_config(
        {
            "default_timeout": 1e308,
            "metrics_interval": 1e308,
            "retry": {"initial_delay": 1e308, "max_delay": 1e308, "jitter": 1e308},
            "health": {"interval": 1e308},
        }
    )
    assert config.retry.policy().delays() == (1e308, 1e308, 1e308)
    assert config.default_timeout == 1e308
