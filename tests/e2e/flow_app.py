"""Functions with flow control written with our SDK (`connect.Throttle`,
`RateLimit`, `idempotency`, `Singleton` in both modes, `Debounce`, `Batch`),
served by a real worker process for `tests/e2e/test_sdk_flow_control.py`.

Each function returns what its test checks: when its step ran (Unix
seconds), or the events it was given (`ctx.event`, `ctx.events`).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

from connect import (
    Batch,
    Client,
    Context,
    Debounce,
    Priority,
    RateLimit,
    Singleton,
    Step,
    StepError,
    Throttle,
    TriggerEvent,
)

client = Client(app_id="sdk-flow")

TWO_SECONDS = datetime.timedelta(seconds=2)


@client.create_function(
    fn_id="throttled",
    trigger=TriggerEvent(event="flow/throttled"),
    throttle=Throttle(limit=1, period=TWO_SECONDS, burst=0),
)
async def throttled(ctx: Context, step: Step) -> float:
    return await step.run("at", time.time)


@client.create_function(
    fn_id="throttled-priority",
    trigger=TriggerEvent(event="flow/throttled-priority"),
    throttle=Throttle(limit=1, period=TWO_SECONDS, burst=0),
    priority=Priority(run="event.data.p"),
)
async def throttled_priority(ctx: Context, step: Step) -> float:
    return await step.run("at", time.time)


@client.create_function(
    fn_id="rated",
    trigger=TriggerEvent(event="flow/rated"),
    rate_limit=RateLimit(limit=2, period=datetime.timedelta(minutes=1), key="event.data.k"),
)
async def rated(ctx: Context, step: Step) -> int:
    return int(ctx.event.data["n"])


@client.create_function(
    fn_id="single",
    trigger=TriggerEvent(event="flow/single"),
    singleton=Singleton(key="event.data.k", mode="skip"),
)
async def single(ctx: Context, step: Step) -> int:
    seconds = float(ctx.event.data.get("sleep", 0))
    if seconds:
        await step.run("hold", asyncio.sleep, seconds)
    nap = int(ctx.event.data.get("nap", 0))
    if nap:  # Running all along, with no step on the worker
        await step.sleep("nap", datetime.timedelta(seconds=nap))
    return int(ctx.event.data["n"])


@client.create_function(
    fn_id="idempotent",
    trigger=TriggerEvent(event="flow/idempotent"),
    idempotency="event.data.order",
)
async def idempotent(ctx: Context, step: Step) -> str:
    return str(ctx.event.data["order"])


@client.create_function(
    fn_id="single-cancel",
    trigger=TriggerEvent(event="flow/single-cancel"),
    singleton=Singleton(mode="cancel"),
)
async def single_cancel(ctx: Context, step: Step) -> int:
    seconds = int(ctx.event.data.get("sleep", 0))
    if seconds:
        await step.sleep("nap", datetime.timedelta(seconds=seconds))
    return int(ctx.event.data["n"])


@client.create_function(fn_id="invoker", trigger=TriggerEvent(event="flow/invoke"), retries=0)
async def invoker(ctx: Context, step: Step) -> list[str]:
    """Invokes each `{"fn", "data"}` of `calls` in turn: "ran", or the error the invoke raised."""
    outcomes = []
    for i, call in enumerate(ctx.event.data["calls"]):
        try:
            await step.invoke_by_id(
                f"call-{i}", function_id=call["fn"], data=call["data"], timeout=datetime.timedelta(minutes=5)
            )
            outcomes.append("ran")
        except StepError as err:
            outcomes.append(f"{err.name}: {err.message}")
    return outcomes


def _seen(ctx: Context) -> dict[str, Any]:
    return {"event": ctx.event.data, "events": [e.data for e in ctx.events], "at": time.time()}


@client.create_function(
    fn_id="digest",
    trigger=TriggerEvent(event="flow/debounce"),
    debounce=Debounce(period=TWO_SECONDS, key="event.data.user"),
)
async def digest(ctx: Context, step: Step) -> dict[str, Any]:
    return await step.run("seen", _seen, ctx)


@client.create_function(
    fn_id="bulk",
    trigger=TriggerEvent(event="flow/batch"),
    batch_events=Batch(max_size=3, timeout=TWO_SECONDS, key="event.data.team"),
)
async def bulk(ctx: Context, step: Step) -> dict[str, Any]:
    return await step.run("seen", _seen, ctx)


@client.create_function(
    fn_id="debounced-throttled",
    trigger=TriggerEvent(event="flow/debounce-throttle"),
    debounce=Debounce(period=datetime.timedelta(seconds=1)),
    throttle=Throttle(limit=1, period=datetime.timedelta(seconds=4), burst=0),
)
async def debounced_throttled(ctx: Context, step: Step) -> dict[str, Any]:
    return await step.run("seen", _seen, ctx)


@client.create_function(
    fn_id="debounced-rated",
    trigger=TriggerEvent(event="flow/debounce-rate"),
    debounce=Debounce(period=TWO_SECONDS, key="event.data.user"),
    rate_limit=RateLimit(limit=1, period=datetime.timedelta(minutes=1), key="event.data.user"),
)
async def debounced_rated(ctx: Context, step: Step) -> dict[str, Any]:
    return await step.run("seen", _seen, ctx)


@client.create_function(
    fn_id="debounced-single",
    trigger=TriggerEvent(event="flow/debounce-single"),
    debounce=Debounce(period=datetime.timedelta(seconds=1)),
    singleton=Singleton(mode="skip"),
)
async def debounced_single(ctx: Context, step: Step) -> dict[str, Any]:
    seconds = float(ctx.event.data.get("sleep", 0))
    if seconds:
        await step.run("hold", asyncio.sleep, seconds)
    return await step.run("seen", _seen, ctx)


@client.create_function(
    fn_id="batched-throttled",
    trigger=TriggerEvent(event="flow/batch-throttle"),
    batch_events=Batch(max_size=2, timeout=datetime.timedelta(seconds=10)),
    throttle=Throttle(limit=1, period=datetime.timedelta(seconds=4), burst=0),
)
async def batched_throttled(ctx: Context, step: Step) -> dict[str, Any]:
    return await step.run("seen", _seen, ctx)
