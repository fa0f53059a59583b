"""The concurrency test functions, written with our SDK.

The same functions as `tests/compat/official_concurrency_app.py` (same ids,
events and limits), so each scenario of `test_concurrency.py` runs against
both SDKs. Step bodies are counted on the worker side (`conc_counter`).

Our SDK's `create_function` takes no `concurrency` or `priority` yet: the
limits are put into the registered config, in their wire form, by
`_limited` (the form the official Python SDK registers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from connect import Client, Context, Step, TriggerEvent
from connect.sdk.function import Function
from protocol.payloads import ConcurrencyLimit, FunctionConfig, PriorityConfig
from tests.e2e import conc_counter

client = Client(app_id="conc")


def _limited(limits: list[ConcurrencyLimit], priority: str | None = None) -> Callable[[Function], Function]:
    def wrap(fn: Function) -> Function:
        plain = fn.config

        def config(app_id: str) -> FunctionConfig:
            registered = plain(app_id)
            registered.concurrency = limits
            registered.priority = None if priority is None else PriorityConfig(run=priority)
            return registered

        fn.config = config  # type: ignore[method-assign]
        return fn

    return wrap


async def _body(name: str, tag: str, seconds: float) -> str:
    conc_counter.enter(name, tag)
    try:
        await asyncio.sleep(seconds)
    finally:
        conc_counter.leave(name)
    return tag


@_limited([ConcurrencyLimit(limit=2, key="event.data.key")])
@client.create_function(fn_id="per-key", trigger=TriggerEvent(event="conc/key"))
async def per_key(ctx: Context, step: Step) -> str:
    key = str(ctx.event.data["key"])
    return await step.run("work", _body, f"key-{key}", key, float(ctx.event.data.get("seconds", 0.05)))


@_limited([ConcurrencyLimit(limit=1)])
@client.create_function(fn_id="one-at-a-time", trigger=TriggerEvent(event="conc/parallel"))
async def one_at_a_time(ctx: Context, step: Step) -> list[Any]:
    seconds = float(ctx.event.data.get("seconds", 0.3))
    calls = [
        (lambda i=i: step.run(f"branch-{i}", _body, "parallel", str(i), seconds))  # type: ignore[misc]
        for i in range(4)
    ]
    return list(await step.parallel(tuple(calls)))


@_limited([ConcurrencyLimit(limit=1, key="event.data.k", scope="env")])
@client.create_function(fn_id="shared-a", trigger=TriggerEvent(event="conc/shared-a"))
async def shared_a(ctx: Context, step: Step) -> str:
    k = str(ctx.event.data["k"])
    return await step.run("work", _body, f"shared-{k}", "a", float(ctx.event.data.get("seconds", 0.2)))


@_limited([ConcurrencyLimit(limit=1, key="event.data.k", scope="env")])
@client.create_function(fn_id="shared-b", trigger=TriggerEvent(event="conc/shared-b"))
async def shared_b(ctx: Context, step: Step) -> str:
    k = str(ctx.event.data["k"])
    return await step.run("work", _body, f"shared-{k}", "b", float(ctx.event.data.get("seconds", 0.2)))


@_limited([ConcurrencyLimit(limit=1)], priority="event.data.prio")
@client.create_function(fn_id="ordered", trigger=TriggerEvent(event="conc/ordered"))
async def ordered(ctx: Context, step: Step) -> str:
    n = str(ctx.event.data["n"])
    return await step.run("work", _body, "ordered", n, float(ctx.event.data.get("seconds", 0.2)))


@_limited([ConcurrencyLimit(limit=1)])
@client.create_function(fn_id="durable", trigger=TriggerEvent(event="conc/durable"))
async def durable(ctx: Context, step: Step) -> str:
    n = str(ctx.event.data["n"])
    first = await step.run("one", _body, "durable", n, float(ctx.event.data.get("seconds", 0.3)))
    await step.run("two", _body, "durable", n, float(ctx.event.data.get("seconds", 0.3)))
    return first
