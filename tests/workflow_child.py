"""A child process for the durable-run tests (tests/test_store_crash.py); not a test module.

Usage::

    python workflow_child.py crash STORE RUN_ID MARKERS BACKEND hang|finish
    python workflow_child.py many STORE RUN_ID STEPS BACKEND
    python workflow_child.py lease STORE RUN_ID MARKERS BACKEND

``STORE`` is the path of an SQLite file, or a Redis URL (``redis://127.0.0.1:PORT/0``).

``crash``: a workflow whose every step appends a line to ``MARKERS/<step>`` (so the number of
lines is the number of times it ran). In ``hang`` mode step ``c`` prints ``started c`` and waits
forever (the parent kills the process); in ``finish`` mode it returns and the run finishes.

``many``: opens the store, prints ``ready``, waits for a line on stdin, then runs a fan-out of
``STEPS`` steps that each write their record, and prints the result.

``lease``: runs (or resumes) a one-step workflow whose step appends a line to
``MARKERS/<pid>``, prints ``started <pid>`` and waits for a line on stdin. A process refused
the run's lease prints ``leased <pid> <host> <message>`` and exits 3.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from _redis_server import store_at
from trioflow import Context, RunLeasedError, Workflow, run_workflow


def crash(store_path: str, run_id: str, markers: Path, backend: str, mode: str) -> int:
    def step(name: str) -> Callable[[Context], Awaitable[str]]:
        async def fn(ctx: Context) -> str:
            with open(markers / name, "a") as f:
                f.write(f"{ctx.run_id}:{ctx.step}\n")
                f.flush()
                os.fsync(f.fileno())
            if name == "c" and mode == "hang":
                print("started c", flush=True)
                await anyio.sleep_forever()
            ctx.set(f"did-{name}", True)
            return f"value-{name}"

        return fn

    wf = Workflow("crash")
    wf.step("a", step("a"))
    wf.step("b", step("b"), after="a")
    wf.step("p1", step("p1"), after="a")
    wf.step("p2", step("p2"), after="a")
    wf.step("c", step("c"), after=["b", "p1", "p2"])
    wf.step("d", step("d"), after="c")
    wf.step("e", step("e"), after="d")

    async def main() -> int:
        async with store_at(store_path) as store:
            result = await run_workflow(wf, store=store, run_id=run_id)
        restored = sorted(name for name, r in result.steps.items() if r.restored)
        state = sorted(result.context.state)
        print(f"ok={result.ok} restored={','.join(restored)} state={','.join(state)}")
        print(f"e={result.values.get('e')}", flush=True)
        return 0 if result.ok else 1

    return anyio.run(main, backend=backend)


def many(store_path: str, run_id: str, steps: int, backend: str) -> int:
    async def instant(ctx: Context) -> int:
        return len(str(ctx.step))

    wf = Workflow("many")
    wf.step("root", instant)
    for i in range(steps):
        wf.step(f"s{i}", instant, after="root")

    async def main() -> int:
        async with store_at(store_path) as store:
            await store.list_runs()  # opens the file (and creates the schema) first
            print("ready", flush=True)
            await anyio.to_thread.run_sync(sys.stdin.readline)
            result = await run_workflow(wf, store=store, run_id=run_id)
        print(f"ok={result.ok}", flush=True)
        return 0 if result.ok else 1

    return anyio.run(main, backend=backend)


def lease(store_path: str, run_id: str, markers: Path, backend: str) -> int:
    async def wait(ctx: Context) -> str:
        with open(markers / str(os.getpid()), "a") as f:
            f.write(f"{ctx.run_id}:{ctx.step}\n")
        print(f"started {os.getpid()}", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        return "done"

    wf = Workflow("lease").step("wait", wait)

    async def main() -> int:
        async with store_at(store_path) as store:
            try:
                result = await run_workflow(wf, store=store, run_id=run_id)
            except RunLeasedError as exc:
                print(f"leased {exc.owner.pid} {exc.owner.host} {exc}", flush=True)
                return 3
        print(f"ok={result.ok}", flush=True)
        return 0 if result.ok else 1

    return anyio.run(main, backend=backend)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "lease":
        sys.exit(lease(args[0], args[1], Path(args[2]), args[3]))
    if command == "crash":
        sys.exit(crash(args[0], args[1], Path(args[2]), args[3], args[4]))
    sys.exit(many(args[0], args[1], int(args[2]), args[3]))
