"""The same benchmark functions written with the official `inngest` SDK, served by its worker.

Run as its own process (`python -m bench.official_app`) with CONNECT_API_URL
naming the platform's API. Mirrors `bench.apps`: `one-step` and
`five-steps` (event `bench/five`), the latter reporting the event's `k` on
the UDP side channel from the request that completes the run.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import inngest
from inngest.connect import connect

from bench.notify import notify

APP_ID = "bench-official"
ONE_STEP = "one-step"
FIVE_STEPS = "five-steps"
FIVE_EVENT = "bench/five"

_log = logging.getLogger("bench.official")
_URL = os.environ.get("CONNECT_API_URL", "http://127.0.0.1:8288")

client = inngest.Inngest(
    app_id=APP_ID,
    is_production=False,
    api_base_url=_URL,
    event_api_base_url=_URL,
    logger=_log,
)


def _noop() -> None:
    return None


@client.create_function(fn_id=ONE_STEP, trigger=inngest.TriggerEvent(event="bench/one"), retries=0)
async def one_step(ctx: inngest.Context) -> Any:
    return await ctx.step.run("only", _noop)


@client.create_function(fn_id=FIVE_STEPS, trigger=inngest.TriggerEvent(event=FIVE_EVENT), retries=0)
async def five_steps(ctx: inngest.Context) -> Any:
    await ctx.step.run("s1", _noop)
    await ctx.step.run("s2", _noop)
    await ctx.step.run("s3", _noop)
    await ctx.step.run("s4", _noop)
    await ctx.step.run("s5", _noop)
    notify(ctx.event.data.get("k"))  # reached only by the request that completes the run
    return None


async def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    conn = connect([(client, [one_step, five_steps])], instance_id=f"bench-official-{os.getpid()}", shutdown_signals=[])
    await conn.start()


if __name__ == "__main__":
    asyncio.run(main())  # as the SDK's own examples start a connect worker
