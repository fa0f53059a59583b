"""Debounced and batched functions written with the official `inngest` Python SDK.

The same functions as `tests/compat/ts/held_app.mjs` (ids, events, outputs), so
`tests/compat/test_held_starts.py` runs its scenarios against both official SDKs.
Run as its own process with CONNECT_API_URL pointing at `connect dev`.
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
    app_id="official-held",
    is_production=False,
    api_base_url=URL,
    event_api_base_url=URL,
    logger=logging.getLogger("official-held"),
)


def _seen(ctx: inngest.Context) -> dict[str, Any]:
    return {"event": ctx.event.data, "events": [e.data for e in ctx.events]}


@client.create_function(
    fn_id="digest",
    trigger=inngest.TriggerEvent(event="held/debounce"),
    debounce=inngest.Debounce(
        period=datetime.timedelta(seconds=2), key="event.data.user", timeout=datetime.timedelta(seconds=10)
    ),
)
async def digest(ctx: inngest.Context) -> dict[str, Any]:
    return await ctx.step.run("seen", lambda: _seen(ctx))


@client.create_function(
    fn_id="bulk",
    trigger=inngest.TriggerEvent(event="held/batch"),
    batch_events=inngest.Batch(
        max_size=3, timeout=datetime.timedelta(seconds=2), key="event.data.team", if_exp="event.data.batch == true"
    ),
)
async def bulk(ctx: inngest.Context) -> dict[str, Any]:
    return await ctx.step.run("seen", lambda: _seen(ctx))


def _seen_at(ctx: inngest.Context) -> dict[str, Any]:
    return {**_seen(ctx), "at": time.time()}


# The same debounce and batch with the start gates Inngest applies around them.


@client.create_function(
    fn_id="digest-throttled",
    trigger=inngest.TriggerEvent(event="held/debounce-throttle"),
    debounce=inngest.Debounce(period=datetime.timedelta(seconds=1)),
    throttle=inngest.Throttle(limit=1, period=datetime.timedelta(seconds=4), burst=0),
)
async def digest_throttled(ctx: inngest.Context) -> dict[str, Any]:
    return await ctx.step.run("seen", lambda: _seen_at(ctx))


@client.create_function(
    fn_id="digest-rated",
    trigger=inngest.TriggerEvent(event="held/debounce-rate"),
    debounce=inngest.Debounce(period=datetime.timedelta(seconds=2), key="event.data.user"),
    rate_limit=inngest.RateLimit(limit=1, period=datetime.timedelta(minutes=1), key="event.data.user"),
)
async def digest_rated(ctx: inngest.Context) -> dict[str, Any]:
    return await ctx.step.run("seen", lambda: _seen_at(ctx))


@client.create_function(
    fn_id="digest-single",
    trigger=inngest.TriggerEvent(event="held/debounce-single"),
    debounce=inngest.Debounce(period=datetime.timedelta(seconds=1)),
    singleton=inngest.Singleton(mode="skip"),
)
async def digest_single(ctx: inngest.Context) -> dict[str, Any]:
    seconds = float(ctx.event.data.get("sleep", 0))
    if seconds:
        await ctx.step.run("hold", asyncio.sleep, seconds)
    return await ctx.step.run("seen", lambda: _seen_at(ctx))


@client.create_function(
    fn_id="bulk-throttled",
    trigger=inngest.TriggerEvent(event="held/batch-throttle"),
    batch_events=inngest.Batch(max_size=2, timeout=datetime.timedelta(seconds=10)),
    throttle=inngest.Throttle(limit=1, period=datetime.timedelta(seconds=4), burst=0),
)
async def bulk_throttled(ctx: inngest.Context) -> dict[str, Any]:
    return await ctx.step.run("seen", lambda: _seen_at(ctx))


async def main() -> None:
    logging.basicConfig(level=logging.INFO)
    functions = [digest, bulk, digest_throttled, digest_rated, digest_single, bulk_throttled]
    await connect([(client, functions)], instance_id=os.environ.get("WORKER_NAME", "official-held")).start()


if __name__ == "__main__":
    asyncio.run(main())
