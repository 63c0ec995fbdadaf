"""The ``[shared]`` section of the coordinator's configuration: checked like every other one."""

from __future__ import annotations

import pathlib
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest

from trioflow import ConfigError
from trioflow.lifecycle import OrchestrationConfig, SharedConfig, load_config


def test_by_default_nothing_is_shared() -> None:
    shared = OrchestrationConfig().shared
    assert shared == SharedConfig()
    assert (shared.url, shared.name, shared.lease) == (None, "coordinator", 10.0)


def test_a_toml_section(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "orchestration.toml"
    path.write_text(
        "max_concurrency = 20\n"
        "[shared]\n"
        'url = "redis://cache:6379/2"\n'
        'name = "search-api"\n'
        'lease = "00:00:05"\n'
    )
    config = load_config(path)
    assert config.shared == SharedConfig(url="redis://cache:6379/2", name="search-api", lease=5.0)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://:secret@cache:6380/1", "unix:///tmp/r.sock?db=0"]
)
def test_every_redis_url_scheme_is_accepted(url: str) -> None:
    assert load_config({"shared": {"url": url}}).shared.url == url


def test_every_problem_of_the_section_is_listed_with_its_key() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            {"shared": {"url": "http://cache:6379", "name": " ", "lease": -1, "prefix": "x"}}
        )
    problems = dict(caught.value.problems)
    assert set(problems) == {"shared.url", "shared.name", "shared.lease", "shared.prefix"}
    assert "must be a redis://, rediss:// or unix:// URL" in problems["shared.url"]
    assert "got 'http://cache:6379'" in problems["shared.url"]
    assert problems["shared.name"].startswith("must be a non-empty string")
    assert problems["shared.lease"] == "must be a finite number > 0, got -1.0 (float)"
    assert problems["shared.prefix"] == "unknown key"


def test_a_section_that_is_not_a_table() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"shared": "redis://cache"})
    ((where, _),) = caught.value.problems
    assert where == "shared"


def test_the_constructor_refuses_what_the_loader_refuses() -> None:
    with pytest.raises(ConfigError, match="url: must be a redis://"):
        SharedConfig(url="cache:6379")
    with pytest.raises(ConfigError, match="lease: must be a finite number > 0"):
        SharedConfig(lease=float("nan"))
    with pytest.raises(ConfigError, match="name: must be a non-empty string"):
        SharedConfig(name=3)  # type: ignore[arg-type]


@hypothesis.given(
    url=st.one_of(st.none(), st.text(max_size=30), st.integers(), st.booleans()),
    name=st.one_of(st.text(max_size=10), st.integers()),
    lease=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.text(max_size=5)
    ),
)
def test_a_section_loads_exactly_when_every_key_is_valid(url: Any, name: Any, lease: Any) -> None:
    url_ok = url is None or (
        isinstance(url, str) and url.startswith(("redis://", "rediss://", "unix://"))
    )
    name_ok = isinstance(name, str) and bool(name) and name == name.strip()
    lease_ok = (
        not isinstance(lease, bool) and isinstance(lease, int | float) and 0 < lease < float("inf")
    )
    section = {"url": url, "name": name, "lease": lease}
    if url_ok and name_ok and lease_ok:
        assert load_config({"shared": section}).shared == SharedConfig(
            url=url, name=name, lease=float(lease)
        )
        return
    with pytest.raises(ConfigError) as caught:
        load_config({"shared": section})
    wrong = {where for where, _ in caught.value.problems}
    checks = (("url", url_ok), ("name", name_ok), ("lease", lease_ok))
    # Every bad key is reported, and only those (no string this short is an HH:MM:SS lease).
    assert wrong == {f"shared.{key}" for key, ok in checks if not ok}
