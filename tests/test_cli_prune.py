"""``trioflow prune``: old runs and their logs go, a running run never; end to end in processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from test_cli import _env, in_parallel, json_out, trioflow, wait_for, write
from test_cli_logs import SLOW
from trioflow import RunRecord, RunStatus
from trioflow.cli._prune import parse_age, select_old

STATE = Path(".trioflow/state.db")


def _ids(directory: Path) -> list[str]:
    return [r["run_id"] for r in json_out(trioflow("runs", "--json", cwd=directory))]


def _age(directory: Path, run_id: str, days: float) -> None:
    """Make a run look as if it last ran ``days`` ago (its record and its steps' times)."""
    then = (datetime.now(UTC) - timedelta(days=days)).isoformat()
    with sqlite3.connect(directory / STATE) as db:
        db.execute(
            "UPDATE runs SET created_at = ?, updated_at = ? WHERE run_id = ?",
            (then, then, run_id),
        )
        db.execute(
            "UPDATE steps SET started_at = ?, finished_at = ? WHERE run_id = ?",
            (then, then, run_id),
        )
    db.close()


@pytest.mark.real_time
def test_prune_keeps_the_newest_runs_and_never_a_running_one(tmp_path: Path) -> None:
    write(tmp_path, '[steps.quick]\nshell = "echo quick"\n')
    for _ in range(3):
        assert trioflow("run", "wf.toml", cwd=tmp_path).returncode == 0
    finished = _ids(tmp_path)
    write(tmp_path, f"[steps.slow]\nshell = {json.dumps(SLOW)}\n", "slow.toml")
    running = subprocess.Popen(
        [sys.executable, "-m", "trioflow", "run", "slow.toml"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    try:
        wait_for(tmp_path / "slow.started")
        live = next(i for i in _ids(tmp_path) if i not in finished)
        for days, run_id in enumerate(finished, 10):
            _age(tmp_path, run_id, days)  # in the same order, 10 days ago and before
        _age(tmp_path, live, 20)  # and the running one looks oldest of all: still kept
        logs = tmp_path / ".trioflow" / "logs"
        assert sorted(p.name for p in logs.iterdir()) == sorted([*finished, live])

        dry = trioflow("prune", "--keep", "1", "--dry-run", cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        assert f"would remove run {finished[1]} ('wf', succeeded, " in dry.stdout
        assert f"would remove run {finished[2]} " in dry.stdout
        assert f"kept run {live} ('slow'): it is running (pid {running.pid} on " in dry.stdout
        assert dry.stdout.splitlines()[-1] == "would remove 2 runs and their logs; 2 left"
        assert len(_ids(tmp_path)) == 4  # nothing removed

        pruned = trioflow("prune", "--keep", "0", "--json", cwd=tmp_path)
        assert pruned.returncode == 0, pruned.stderr
        data = json_out(pruned)
        assert [r["run_id"] for r in data["removed"]] == finished
        assert [(r["run_id"], r["status"].split(" ")[0]) for r in data["running"]] == [
            (live, "running")
        ]
        assert (data["kept"], data["dry_run"], data["failures"]) == (1, False, [])
        assert _ids(tmp_path) == [live]
        assert [p.name for p in logs.iterdir()] == [live]  # the removed runs' logs went too
    finally:
        (tmp_path / "go").touch()
        if running.wait(timeout=30) is None:  # pragma: no cover - wait raises instead
            running.kill()
    # Ended, it can go.
    gone = trioflow("prune", "--keep", "0", cwd=tmp_path)
    assert gone.stdout.splitlines()[-1] == "removed 1 run and its logs; 0 left"
    assert _ids(tmp_path) == []


@pytest.mark.real_time
def test_prune_older_than_an_age(tmp_path: Path) -> None:
    write(tmp_path, '[steps.quick]\nshell = "echo quick"\n')
    for _ in range(3):
        assert trioflow("run", "wf.toml", cwd=tmp_path).returncode == 0
    newest, middle, oldest = _ids(tmp_path)
    _age(tmp_path, oldest, 8)
    _age(tmp_path, middle, 0.5)  # 12 hours ago
    week, hours, both = in_parallel(
        lambda: trioflow("prune", "--older-than", "7d", "--dry-run", "--json", cwd=tmp_path),
        lambda: trioflow("prune", "--older-than", "11h", "--dry-run", "--json", cwd=tmp_path),
        lambda: trioflow(
            "prune", "--older-than", "11h", "--keep", "2", "--dry-run", "--json", cwd=tmp_path
        ),
    )
    assert [r["run_id"] for r in json_out(week)["removed"]] == [oldest]
    assert [r["run_id"] for r in json_out(hours)["removed"]] == [middle, oldest]
    assert [r["run_id"] for r in json_out(both)["removed"]] == [oldest]
    done = trioflow("prune", "--older-than", "1w", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        done.stdout.splitlines()[0],
        "removed 1 run and its logs; 2 left",
    ]
    assert done.stdout.startswith(f"removed run {oldest} ('wf', succeeded, ")
    assert _ids(tmp_path) == [newest, middle]
    assert not (tmp_path / ".trioflow" / "logs" / oldest).exists()


@pytest.mark.real_time
def test_prune_usage_errors_and_an_empty_state(tmp_path: Path) -> None:
    nothing, negative, bad_age, empty = in_parallel(
        lambda: trioflow("prune", cwd=tmp_path),
        lambda: trioflow("prune", "--keep", "-1", cwd=tmp_path),
        lambda: trioflow("prune", "--older-than", "7 days", cwd=tmp_path),
        lambda: trioflow("prune", "--keep", "3", cwd=tmp_path),
    )
    assert nothing.returncode == 2
    assert "trioflow: error: prune needs --keep N or --older-than AGE (or both)" in nothing.stderr
    assert negative.returncode == 2
    assert "argument --keep: must be an integer >= 0, got '-1'" in negative.stderr
    assert bad_age.returncode == 2
    assert "must be an age such as 30m, 12h or 7d, got '7 days'" in bad_age.stderr
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout == "removed 0 runs and their logs; 0 left\n"
    assert not (tmp_path / ".trioflow").exists()  # prune created no state file


def test_ages() -> None:
    assert [parse_age(t) for t in ("45s", "30m", "12h", "7d", "2w", "1.5d", " 7D ")] == [
        45,
        1800,
        43200,
        604800,
        1209600,
        129600,
        604800,
    ]
    for bad in ("", "7", "d", "-1d", "7y", "1e3d", "inf", "99999999w"):
        with pytest.raises(ValueError, match="must be an age"):
            parse_age(bad)


_NOW = datetime(2026, 6, 1, tzinfo=UTC)


@given(
    st.lists(st.integers(min_value=0, max_value=100), max_size=8),
    st.none() | st.integers(min_value=0, max_value=10),
    st.none() | st.integers(min_value=0, max_value=120),
)
def test_a_run_goes_when_every_given_rule_selects_it(
    ages_in_days: list[int], keep: int | None, older_than_days: int | None
) -> None:
    records = [
        RunRecord(
            run_id=f"r{i}",
            workflow="w",
            status=RunStatus.SUCCEEDED,
            created_at=_NOW - timedelta(days=age),
            updated_at=_NOW - timedelta(days=age),
            fingerprint="f",
            shape={},
        )
        for i, age in enumerate(ages_in_days)
    ]
    older_than = None if older_than_days is None else older_than_days * 86400.0
    selected = select_old(records, keep=keep, older_than=older_than, now=_NOW)
    expected = [
        r
        for position, r in enumerate(records)
        if (keep is None or position >= keep)
        and (older_than is None or (_NOW - r.updated_at).total_seconds() > older_than)
    ]
    assert selected == expected


@pytest.mark.real_time
def test_prune_and_logs_with_the_runs_in_redis(tmp_path: Path, redis_url: str) -> None:
    write(tmp_path, '[steps.quick]\nshell = "echo quick"\n')
    for _ in range(2):
        done = trioflow("run", "wf.toml", "--state", redis_url, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    listed = json_out(
        trioflow("prune", "--keep", "9", "--dry-run", "--json", "--state", redis_url, cwd=tmp_path)
    )
    assert (listed["removed"], listed["kept"]) == ([], 2)
    logs = trioflow("logs", "latest", "quick", "--state", redis_url, cwd=tmp_path)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines()[1:] == ["quick", "--- exit status 0"]
    pruned = json_out(
        trioflow("prune", "--keep", "1", "--json", "--state", redis_url, cwd=tmp_path)
    )
    assert len(pruned["removed"]) == 1
    assert pruned["kept"] == 1
    old = pruned["removed"][0]["run_id"]
    left = sorted(p.name for p in (tmp_path / ".trioflow" / "logs").iterdir())
    assert old not in left
    assert len(left) == 1
    gone = trioflow("logs", old, "quick", "--state", redis_url, cwd=tmp_path)
    assert gone.returncode == 2
    assert f"no run {old!r} in the state {redis_url}" in gone.stderr
