"""Functions with flow control at run start, written with the official `inngest` SDK:
throttle (with burst 0 and with the SDK's default burst 1), rate limit,
idempotency and singleton in both modes, and a function invoking one of them. The same ids, events and outputs as
`tests/compat/ts/flow_app.mjs`.

Run as its own process with CONNECT_API_URL pointing at `connect dev`:
`python tests/compat/official_flow_app.py`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from typing import Any

import inngest
from inngest.connect import connect

URL = os.environ["CONNECT_API_URL"]

client = inngest.Inngest(
    app_id="official-flow",
    is_production=False,
    api_base_url=URL,
    event_api_base_url=URL,
    logger=logging.getLogger("official-flow"),
)

TWO_SECONDS = datetime.timedelta(seconds=2)


@client.create_function(
    fn_id="throttled",
    trigger=inngest.TriggerEvent(event="flow/throttled"),
    throttle=inngest.Throttle(limit=1, period=TWO_SECONDS, burst=0),
)
async def throttled(ctx: inngest.Context) -> float:
    return time.time()  # no steps: the one execution is the start


@client.create_function(
    fn_id="throttled-priority",
    trigger=inngest.TriggerEvent(event="flow/throttled-priority"),
    throttle=inngest.Throttle(limit=1, period=TWO_SECONDS, burst=0),
    priority=inngest.Priority(run="event.data.p"),
)
async def throttled_priority(ctx: inngest.Context) -> float:
    return time.time()  # held back runs take the throttle's turns in priority order


@client.create_function(
    fn_id="throttled-burst",
    trigger=inngest.TriggerEvent(event="flow/throttled-burst"),
    throttle=inngest.Throttle(limit=1, period=TWO_SECONDS),
)
async def throttled_burst(ctx: inngest.Context) -> float:
    return time.time()


@client.create_function(
    fn_id="rated",
    trigger=inngest.TriggerEvent(event="flow/rated"),
    rate_limit=inngest.RateLimit(limit=2, period=datetime.timedelta(minutes=1), key="event.data.k"),
)
async def rated(ctx: inngest.Context) -> Any:
    return ctx.event.data.get("n")


@client.create_function(
    fn_id="idempotent",
    trigger=inngest.TriggerEvent(event="flow/idempotent"),
    idempotency="event.data.order",
)
async def idempotent(ctx: inngest.Context) -> Any:
    return ctx.event.data.get("order")


async def _nap(ctx: inngest.Context) -> Any:
    seconds = float(ctx.event.data.get("sleep", 0))
    if seconds:
        await ctx.step.sleep("nap", datetime.timedelta(seconds=seconds))
    return ctx.event.data.get("n")


@client.create_function(
    fn_id="single-skip",
    trigger=inngest.TriggerEvent(event="flow/single-skip"),
    singleton=inngest.Singleton(key="event.data.k", mode="skip"),
)
async def single_skip(ctx: inngest.Context) -> Any:
    return await _nap(ctx)


@client.create_function(
    fn_id="single-cancel",
    trigger=inngest.TriggerEvent(event="flow/single-cancel"),
    singleton=inngest.Singleton(mode="cancel"),
)
async def single_cancel(ctx: inngest.Context) -> Any:
    return await _nap(ctx)


@client.create_function(
    fn_id="invoker",
    trigger=inngest.TriggerEvent(event="flow/invoke"),
    retries=0,
)
async def invoker(ctx: inngest.Context) -> list[str]:
    """Invokes `idempotent` with the order of the event, twice: "ran", or the error the invoke raised."""
    outcomes = []
    for i in range(2):
        try:
            await ctx.step.invoke_by_id(
                f"call-{i}",
                function_id="idempotent",
                data={"order": ctx.event.data["order"]},
                timeout=datetime.timedelta(minutes=5),
            )
            outcomes.append("ran")
        except inngest.StepError as err:
            outcomes.append(f"{err.name}: {err.message}")
    return outcomes


async def main() -> None:
    logging.basicConfig(level=logging.INFO)
    functions = [throttled, throttled_priority, throttled_burst, rated, idempotent, single_skip, single_cancel, invoker]
    await connect([(client, functions)], instance_id=os.environ.get("WORKER_NAME", "official-flow")).start()


if __name__ == "__main__":
    asyncio.run(main())
