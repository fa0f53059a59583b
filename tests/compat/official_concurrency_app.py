"""The concurrency test functions, written with the official `inngest` SDK.

The same functions as `tests/e2e/concurrency_app.py` (same ids, events and
limits). Run as its own process: `python -m tests.compat.official_concurrency_app`
with CONNECT_API_URL pointing at `connect dev` and CONC_DIR at a directory.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import inngest
from inngest.connect import connect

from tests.e2e import conc_counter

URL = os.environ["CONNECT_API_URL"]

client = inngest.Inngest(
    app_id="conc",
    is_production=False,
    api_base_url=URL,
    event_api_base_url=URL,
    logger=logging.getLogger("conc"),
)


async def _body(name: str, tag: str, seconds: float) -> str:
    conc_counter.enter(name, tag)
    try:
        await asyncio.sleep(seconds)
    finally:
        conc_counter.leave(name)
    return tag


@client.create_function(
    fn_id="per-key",
    trigger=inngest.TriggerEvent(event="conc/key"),
    concurrency=[inngest.Concurrency(limit=2, key="event.data.key")],
)
async def per_key(ctx: inngest.Context) -> str:
    key = str(ctx.event.data["key"])
    return await ctx.step.run("work", _body, f"key-{key}", key, float(ctx.event.data.get("seconds", 0.05)))


@client.create_function(
    fn_id="one-at-a-time",
    trigger=inngest.TriggerEvent(event="conc/parallel"),
    concurrency=[inngest.Concurrency(limit=1)],
)
async def one_at_a_time(ctx: inngest.Context) -> list[Any]:
    seconds = float(ctx.event.data.get("seconds", 0.3))
    return list(
        await ctx.group.parallel(
            tuple(lambda i=i: ctx.step.run(f"branch-{i}", _body, "parallel", str(i), seconds) for i in range(4))
        )
    )


def _shared(fn_id: str, tag: str) -> inngest.Function[Any]:
    @client.create_function(
        fn_id=fn_id,
        trigger=inngest.TriggerEvent(event=f"conc/{fn_id}"),
        concurrency=[inngest.Concurrency(limit=1, key="event.data.k", scope="env")],
    )
    async def shared(ctx: inngest.Context) -> str:
        k = str(ctx.event.data["k"])
        return await ctx.step.run("work", _body, f"shared-{k}", tag, float(ctx.event.data.get("seconds", 0.2)))

    return shared


shared_a = _shared("shared-a", "a")
shared_b = _shared("shared-b", "b")


@client.create_function(
    fn_id="ordered",
    trigger=inngest.TriggerEvent(event="conc/ordered"),
    concurrency=[inngest.Concurrency(limit=1)],
    priority=inngest.Priority(run="event.data.prio"),
)
async def ordered(ctx: inngest.Context) -> str:
    n = str(ctx.event.data["n"])
    return await ctx.step.run("work", _body, "ordered", n, float(ctx.event.data.get("seconds", 0.2)))


@client.create_function(
    fn_id="durable",
    trigger=inngest.TriggerEvent(event="conc/durable"),
    concurrency=[inngest.Concurrency(limit=1)],
)
async def durable(ctx: inngest.Context) -> str:
    n = str(ctx.event.data["n"])
    seconds = float(ctx.event.data.get("seconds", 0.3))
    first = await ctx.step.run("one", _body, "durable", n, seconds)
    await ctx.step.run("two", _body, "durable", n, seconds)
    return first


FUNCTIONS = [per_key, one_at_a_time, shared_a, shared_b, ordered, durable]


async def main() -> None:
    logging.basicConfig(level=logging.INFO)
    await connect([(client, FUNCTIONS)], instance_id=os.environ.get("WORKER_NAME", "official-conc")).start()


if __name__ == "__main__":
    asyncio.run(main())
