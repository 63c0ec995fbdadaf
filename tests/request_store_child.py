"""A process that dies mid-request: ``python request_store_child.py KIND WHERE BACKEND``.

It opens a coordinator on a request store (``sqlite PATH`` or ``redis URL``), completes the
request ``done``, starts the requests ``hang0`` to ``hang2`` (whose ``process`` stage never
ends), prints ``ready`` once the store shows them in PROCESSING, and waits to be killed.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import coredis

from _lifecycle_stages import SEVEN_STAGES
from trioflow.lifecycle import (
    Pipeline,
    Request,
    RequestState,
    RequestStore,
    Router,
    SQLiteRequestStore,
    Stage,
    open_coordinator,
)
from trioflow.redis._requests import RedisRequestStore

HANGING = 3


@asynccontextmanager
async def open_store(kind: str, where: str) -> AsyncIterator[RequestStore]:
    if kind == "sqlite":
        async with SQLiteRequestStore(where) as store:
            yield store
    else:
        async with coredis.Redis.from_url(where, decode_responses=True) as client:
            yield RedisRequestStore(client)


async def main(kind: str, where: str) -> None:
    async def stage(request: Request) -> None:
        if request.payload == "hang" and request.state is RequestState.PROCESSING:
            await anyio.sleep_forever()

    pipeline = Pipeline([Stage(name, state, stage) for name, state in SEVEN_STAGES])
    async with (
        open_store(kind, where) as store,
        open_coordinator(router=Router(lambda r: "q", {"q": pipeline}), requests=store) as c,
        anyio.create_task_group() as tg,
    ):
        await c.process(Request("ok", id="done", user_id="dora"))
        for i in range(HANGING):
            tg.start_soon(c.process, Request("hang", id=f"hang{i}", user_id="dora"))
        while True:
            records = [await store.load(f"hang{i}") for i in range(HANGING)]
            if all(r is not None and r.state is RequestState.PROCESSING for r in records):
                break
            await anyio.sleep(0.01)
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], backend=sys.argv[3])
