"""An official Python SDK worker whose functions use every flow-control option.

Run as its own process with CONNECT_API_URL pointing at `connect dev`. It
registers, as that SDK writes them: `every-option` (concurrency with two
limits, throttle, rate limit, debounce, idempotency, priority, singleton and
cancel), `batched` (batching with concurrency and throttle), `plain`, and three
functions the platform refuses: `batched-debounce` (batching may not be
combined with debounce), `batched-idempotent` (nor with idempotency) and
`throttle-8d` (a throttle period over 7 days).
The official SDK accepts all three when they are defined.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os

import inngest
from inngest.connect import connect

URL = os.environ["CONNECT_API_URL"]
S = datetime.timedelta(seconds=1)

client = inngest.Inngest(app_id="py-flow", is_production=False, api_base_url=URL, event_api_base_url=URL)


@client.create_function(
    fn_id="every-option",
    trigger=inngest.TriggerEvent(event="py-flow/every"),
    concurrency=[
        inngest.Concurrency(limit=5),
        inngest.Concurrency(limit=2, key="event.data.user", scope="env"),
    ],
    throttle=inngest.Throttle(limit=3, period=datetime.timedelta(minutes=1), key="event.data.user"),
    rate_limit=inngest.RateLimit(limit=10, period=datetime.timedelta(hours=1), key="event.data.user"),
    debounce=inngest.Debounce(period=5 * S, key="event.data.user", timeout=datetime.timedelta(minutes=1)),
    idempotency="event.data.order",
    priority=inngest.Priority(run="event.data.vip ? 60 : 0"),
    singleton=inngest.Singleton(mode="skip", key="event.data.user"),
    cancel=[inngest.Cancel(event="py-flow/stop", if_exp="async.data.user == event.data.user")],
)
async def every_option(ctx: inngest.Context) -> str:
    return "every"


@client.create_function(
    fn_id="batched",
    trigger=inngest.TriggerEvent(event="py-flow/batched"),
    batch_events=inngest.Batch(max_size=50, timeout=10 * S, key="event.data.tenant", if_exp="event.data.ok"),
    concurrency=[inngest.Concurrency(limit=1)],
    throttle=inngest.Throttle(limit=20, period=datetime.timedelta(minutes=1)),
)
async def batched(ctx: inngest.Context) -> int:
    return len(ctx.events)


@client.create_function(fn_id="plain", trigger=inngest.TriggerEvent(event="py-flow/plain"))
async def plain(ctx: inngest.Context) -> str:
    return "plain done"


@client.create_function(
    fn_id="batched-debounce",
    trigger=inngest.TriggerEvent(event="py-flow/bd"),
    batch_events=inngest.Batch(max_size=10, timeout=5 * S),
    debounce=inngest.Debounce(period=5 * S),
)
async def batched_debounce(ctx: inngest.Context) -> None:
    return None


@client.create_function(
    fn_id="batched-idempotent",
    trigger=inngest.TriggerEvent(event="py-flow/bi"),
    batch_events=inngest.Batch(max_size=10, timeout=5 * S),
    idempotency="event.data.order",
)
async def batched_idempotent(ctx: inngest.Context) -> None:
    return None


@client.create_function(
    fn_id="throttle-8d",
    trigger=inngest.TriggerEvent(event="py-flow/t8"),
    throttle=inngest.Throttle(limit=1, period=datetime.timedelta(days=8)),
)
async def throttle_8d(ctx: inngest.Context) -> None:
    return None


async def main() -> None:
    logging.basicConfig(level=logging.INFO)
    functions = [every_option, batched, plain, batched_debounce, batched_idempotent, throttle_8d]
    conn = connect([(client, functions)], instance_id="official-flow-worker", shutdown_signals=[])
    await conn.start()


if __name__ == "__main__":
    asyncio.run(main())
