"""Workflow files over MCP: real step processes, a real SQLite state file, the SDK's client.

``run_workflow`` runs a file as ``trioflow run`` does; a cancelled call stops its step
processes and leaves the run cancelled and resumable; ``get_run`` and ``list_runs`` read it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

import trioflow.mcp
from _helpers import alive
from mcp import Client
from trioflow.cli import _spec

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]

# A step: writes its pid, then ends at once when the go file exists, else waits a minute.
STEP = """\
import os, pathlib, sys, time
here = pathlib.Path(sys.argv[1])
(here / (sys.argv[2] + ".pid")).write_text(str(os.getpid()))
if not (here / "go").exists():
    time.sleep(60)
"""


def workflow(directory: Path) -> Path:
    (directory / "step.py").write_text(STEP, encoding="utf-8")
    python = json.dumps(sys.executable)
    here = json.dumps(str(directory))
    path = directory / "build.toml"
    path.write_text(
        f'[workflow]\nname = "build"\n'
        f'[steps.prepare]\nrun = [{python}, "-c", "print(\'ready\')"]\n'
        f'[steps.compile]\nrun = [{python}, "step.py", {here}, "compile"]\n'
        f'after = ["prepare"]\n',
        encoding="utf-8",
    )
    return path


def structured(result: types.CallToolResult) -> Any:
    assert result.structured_content is not None
    return result.structured_content


async def wait_for(path: Path) -> None:
    with anyio.fail_after(30):
        while not path.exists() or not path.read_text():
            await anyio.sleep(0.02)


async def test_a_workflow_runs_as_trioflow_run_does_with_progress_per_step(
    tmp_path: Path,
) -> None:
    (tmp_path / "go").touch()
    state = tmp_path / "state" / "runs.db"
    server = trioflow.mcp.create_server(workflows=[workflow(tmp_path)], store=state)
    messages: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append((progress, total, message))

    async with Client(server) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        result = await client.call_tool(
            "run_workflow", {"workflow": "build"}, progress_callback=on_progress
        )
        data = structured(result)
        shown = structured(await client.call_tool("get_run", {"run_id": data["run_id"]}))
        listed = structured(await client.call_tool("list_runs", {}))
        missing = await client.call_tool("get_run", {"run_id": "nope"})
        unknown = await client.call_tool("run_workflow", {"workflow": "other"})
    assert tools["run_workflow"].input_schema["properties"]["workflow"]["enum"] == ["build"]
    assert not result.is_error
    assert data["status"] == "succeeded"
    assert data["exit_status"] == 0
    assert data["resume_command"] is None
    assert [(s["name"], s["status"], s["attempts"]) for s in data["steps"]] == [
        ("prepare", "succeeded", 1),
        ("compile", "succeeded", 1),
    ]
    assert "\nready\n" in (state.parent / "logs" / data["run_id"] / "prepare.log").read_text()
    run_id = data["run_id"]
    first = messages[0][2]
    assert first is not None
    assert first.startswith(f"run {run_id} started")
    assert [m for _, _, m in messages[1:]] == ["prepare: succeeded", "compile: succeeded"]
    assert [(done, total) for done, total, _ in messages] == [(0, 2), (1, 2), (2, 2)]
    assert shown["status"] == "succeeded"
    assert [s["status"] for s in shown["steps"]] == ["succeeded", "succeeded"]
    assert listed["runs"][0]["run_id"] == run_id
    assert listed["runs"][0]["workflow"] == "build"
    assert listed["runs"][0]["status"] == "succeeded"
    assert missing.is_error
    assert structured(missing)["error"].startswith("UsageError: no run 'nope'")
    assert structured(missing)["category"] == "validation"
    assert unknown.is_error
    assert structured(unknown)["problems"][0]["path"] == "workflow"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_cancelled_run_stops_its_steps_and_can_be_resumed(
    tmp_path: Path, mode: str
) -> None:
    state = tmp_path / "state.db"
    server = trioflow.mcp.create_server(workflows=[workflow(tmp_path)], store=state)
    run_ids: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message is not None and message.startswith("run "):
            run_ids.append(message.split()[1])

    async with Client(server, mode=mode) as client:
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                await client.call_tool(
                    "run_workflow", {"workflow": "build"}, progress_callback=on_progress
                )

            tg.start_soon(call)
            await wait_for(tmp_path / "compile.pid")
            pid = int((tmp_path / "compile.pid").read_text())
            assert alive(pid)
            tg.cancel_scope.cancel()
        with anyio.fail_after(20):  # the server stops the step as Ctrl-C does
            while alive(pid):
                await anyio.sleep(0.05)
            while True:
                stored = structured(await client.call_tool("list_runs", {}))["runs"]
                if stored and stored[0]["status"] == "cancelled":
                    break
                await anyio.sleep(0.05)
        (run_id,) = run_ids
        assert stored[0]["run_id"] == run_id
        shown = structured(await client.call_tool("get_run", {"run_id": run_id}))
        assert [(s["name"], s["status"]) for s in shown["steps"]] == [
            ("prepare", "succeeded"),
            ("compile", "cancelled"),
        ]
        (tmp_path / "go").touch()
        resumed = structured(
            await client.call_tool("run_workflow", {"workflow": "build", "resume": run_id})
        )
    assert resumed["run_id"] == run_id
    assert resumed["status"] == "succeeded"
    assert [(s["name"], s["status"], s["restored"]) for s in resumed["steps"]] == [
        ("prepare", "succeeded", True),
        ("compile", "succeeded", False),
    ]


def test_a_bad_workflow_file_is_refused_before_the_server_exists(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[steps.a]\nrun = 5\n", encoding="utf-8")
    with pytest.raises(_spec.SpecError, match=r"bad\.toml"):
        trioflow.mcp.create_server(workflows=[bad])
    same = tmp_path / "b.toml"
    same.write_text('[workflow]\nname = "build"\n[steps.a]\nrun = ["true"]\n', encoding="utf-8")
    other = tmp_path / "c.toml"
    other.write_text('[workflow]\nname = "build"\n[steps.a]\nrun = ["true"]\n', encoding="utf-8")
    with pytest.raises(ValueError, match="two workflow files are named 'build'"):
        trioflow.mcp.create_server(workflows=[same, other])
    assert os.path.exists(same)
