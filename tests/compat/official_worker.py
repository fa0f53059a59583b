"""A worker built only with the official `inngest` package (pinned in pyproject).

Run as its own process: `python tests/compat/official_worker.py` with
CONNECT_API_URL pointing at `connect dev`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import inngest
from inngest.connect import connect

URL = os.environ["CONNECT_API_URL"]

client = inngest.Inngest(
    app_id="compat-app",
    is_production=False,
    api_base_url=URL,
    event_api_base_url=URL,
    logger=logging.getLogger("compat"),
)


@client.create_function(fn_id="two-steps", trigger=inngest.TriggerEvent(event="compat/two"), retries=2)
async def two_steps(ctx: inngest.Context) -> dict[str, Any]:
    first = await ctx.step.run("first", lambda: {"x": int(ctx.event.data.get("x", 0)) + 1})
    second = await ctx.step.run("second", lambda: first["x"] * 10)
    return {"first": first, "second": second, "via": "official-sdk"}


@client.create_function(fn_id="slow", trigger=inngest.TriggerEvent(event="compat/slow"))
async def slow(ctx: inngest.Context) -> str:
    async def body() -> str:
        logging.getLogger("compat").info("slow step started")
        await asyncio.sleep(float(ctx.event.data.get("seconds", 5)))
        if os.environ.get("STEP_LOG"):
            with open(os.environ["STEP_LOG"], "a") as f:
                f.write(f"{ctx.run_id} slow-step {os.getpid()}\n")
        return "slow done"

    return await ctx.step.run("slow-step", body)


async def main() -> None:
    logging.basicConfig(level=logging.INFO)
    signals = None if os.environ.get("OFFICIAL_SIGNALS") else []
    conn = connect([(client, [two_steps, slow])], instance_id="official-worker", shutdown_signals=signals)
    await conn.start()


if __name__ == "__main__":
    asyncio.run(main())
