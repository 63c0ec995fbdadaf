"""``trioflow run --state redis://...``: the runs of the command line kept in Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio

import trioflow.redis
from _redis_server import free_port

FLAKY = """
import sys
from pathlib import Path

name = sys.argv[1]
with open(f"{name}.runs", "a") as f:
    f.write("x")
if name == "test" and not Path("fixed").exists():
    sys.exit(1)
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioflow", "run", "wf.toml", "--json", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_run_kept_in_redis_resumes_from_there(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY)
    (tmp_path / "wf.toml").write_text(
        textwrap.dedent(
            """
            [steps.build]
            run = ["{python}", "flaky.py", "build"]

            [steps.test]
            run = ["{python}", "flaky.py", "test"]
            after = ["build"]
            """
        )
    )
    first = run("--state", redis_url, cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    data = json.loads(first.stdout)
    run_id = data["run_id"]
    assert data["resume_command"].endswith(f"--resume {run_id} --state {redis_url}")

    async def stored() -> Any:
        async with trioflow.redis.connect(redis_url) as redis:
            return await redis.store().load_run(run_id)

    record = anyio.run(stored)
    assert record is not None
    assert {n: str(s.status) for n, s in record.steps.items()} == {
        "build": "succeeded",
        "test": "failed",
    }
    (tmp_path / "fixed").touch()
    second = run("--state", redis_url, "--resume", run_id, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["status"] == "succeeded"
    assert (tmp_path / "build.runs").read_text() == "x"  # not run again
    assert (tmp_path / "test.runs").read_text() == "xx"
    assert str(anyio.run(stored).status) == "succeeded"


def test_a_redis_that_is_not_there_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "wf.toml").write_text('[steps.a]\nrun = ["true"]\n')
    done = run("--state", f"redis://127.0.0.1:{free_port()}/0", cwd=tmp_path)
    assert done.returncode == 2
    assert "cannot use the state 'redis://127.0.0.1:" in done.stderr
    assert "connection failed" in done.stderr
    assert "Traceback" not in done.stderr
