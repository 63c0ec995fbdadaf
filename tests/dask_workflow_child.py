"""A child process for tests/test_dask_workflow.py (a driver the test kills); not a test module.

Usage::

    python dask_workflow_child.py STORE RUN_ID MARKERS ADDRESS BACKEND hang|finish

Runs (or resumes) a workflow whose steps ``prepare``, ``analyse`` and ``report`` run on the Dask
cluster at ADDRESS, each appending a line to ``MARKERS/<step>`` on the worker (so the number of
lines is the number of times it ran). Step ``wait``, between ``analyse`` and ``report``, runs
here: in ``hang`` mode it prints ``waiting`` and waits forever (the parent kills the process).
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

import _dask_tasks as tasks
from trioflow import Context, SQLiteStore, Workflow, run_workflow
from trioflow.dask import on_dask, open_cluster


def main(
    store_path: str, run_id: str, markers: Path, address: str, backend: str, mode: str
) -> int:
    async def run() -> int:
        async with open_cluster(address) as cluster, SQLiteStore(store_path) as store:
            wf = Workflow("on-dask")

            @wf.step("prepare")
            async def prepare(ctx: Context) -> str:
                return await on_dask(cluster, tasks.append_line, str(markers / "prepare"), "p")()

            @wf.step("analyse", after="prepare")
            async def analyse(ctx: Context) -> str:
                line = ctx.results["prepare"] + "-a"
                return await on_dask(cluster, tasks.append_line, str(markers / "analyse"), line)()

            @wf.step("wait", after="analyse")
            async def wait(ctx: Context) -> None:
                if mode == "hang":
                    print("waiting", flush=True)
                    await anyio.sleep_forever()

            @wf.step("report", after="wait")
            async def report(ctx: Context) -> str:
                line = ctx.results["analyse"] + "-r"
                return await on_dask(cluster, tasks.append_line, str(markers / "report"), line)()

            result = await run_workflow(wf, store=store, run_id=run_id)
        restored = sorted(name for name, r in result.steps.items() if r.restored)
        print(f"ok={result.ok} restored={','.join(restored)} report={result.values['report']}")
        return 0 if result.ok else 1

    return anyio.run(run, backend=backend)


if __name__ == "__main__":
    store, run_id, markers, address, backend, mode = sys.argv[1:]
    sys.exit(main(store, run_id, Path(markers), address, backend, mode))
