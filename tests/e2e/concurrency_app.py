"""The concurrency test functions, written with our SDK.

The same functions as `tests/compat/official_concurrency_app.py` (same ids,
events and limits), so each scenario of `test_concurrency.py` runs against
both SDKs. Step bodies are counted on the worker side (`conc_counter`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from connect import Client, Concurrency, Context, Priority, Step, TriggerEvent
from tests.e2e import conc_counter

client = Client(app_id="conc")


async def _body(name: str, tag: str, seconds: float) -> str:
    conc_counter.enter(name, tag)
    try:
        await asyncio.sleep(seconds)
    finally:
        conc_counter.leave(name)
    return tag


@client.create_function(
    fn_id="per-key", trigger=TriggerEvent(event="conc/key"), concurrency=[Concurrency(limit=2, key="event.data.key")]
)
async def per_key(ctx: Context, step: Step) -> str:
    key = str(ctx.event.data["key"])
    return await step.run("work", _body, f"key-{key}", key, float(ctx.event.data.get("seconds", 0.05)))


@client.create_function(
    fn_id="one-at-a-time", trigger=TriggerEvent(event="conc/parallel"), concurrency=[Concurrency(limit=1)]
)
async def one_at_a_time(ctx: Context, step: Step) -> list[Any]:
    seconds = float(ctx.event.data.get("seconds", 0.3))
    calls = [
        (lambda i=i: step.run(f"branch-{i}", _body, "parallel", str(i), seconds))  # type: ignore[misc]
        for i in range(4)
    ]
    return list(await step.parallel(tuple(calls)))


@client.create_function(
    fn_id="shared-a",
    trigger=TriggerEvent(event="conc/shared-a"),
    concurrency=[Concurrency(limit=1, key="event.data.k", scope="env")],
)
async def shared_a(ctx: Context, step: Step) -> str:
    k = str(ctx.event.data["k"])
    return await step.run("work", _body, f"shared-{k}", "a", float(ctx.event.data.get("seconds", 0.2)))


@client.create_function(
    fn_id="shared-b",
    trigger=TriggerEvent(event="conc/shared-b"),
    concurrency=[Concurrency(limit=1, key="event.data.k", scope="env")],
)
async def shared_b(ctx: Context, step: Step) -> str:
    k = str(ctx.event.data["k"])
    return await step.run("work", _body, f"shared-{k}", "b", float(ctx.event.data.get("seconds", 0.2)))


@client.create_function(
    fn_id="ordered",
    trigger=TriggerEvent(event="conc/ordered"),
    concurrency=[Concurrency(limit=1)],
    priority=Priority(run="event.data.prio"),
)
async def ordered(ctx: Context, step: Step) -> str:
    n = str(ctx.event.data["n"])
    return await step.run("work", _body, "ordered", n, float(ctx.event.data.get("seconds", 0.2)))


@client.create_function(fn_id="durable", trigger=TriggerEvent(event="conc/durable"), concurrency=[Concurrency(limit=1)])
async def durable(ctx: Context, step: Step) -> str:
    n = str(ctx.event.data["n"])
    first = await step.run("one", _body, "durable", n, float(ctx.event.data.get("seconds", 0.3)))
    await step.run("two", _body, "durable", n, float(ctx.event.data.get("seconds", 0.3)))
    return first
