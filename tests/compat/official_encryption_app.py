"""The `mw-enc` app of `tests/e2e/middleware_app.py`, written with the official `inngest` SDK
and the official `inngest-encryption` middleware, with the same key.

Run as its own process: `python tests/compat/official_encryption_app.py` with
CONNECT_API_URL pointing at `connect dev` (and SEEN_LOG at a file).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import threading
from typing import Any

import inngest
from inngest.connect import connect
from inngest_encryption import EncryptionMiddleware

URL = os.environ["CONNECT_API_URL"]
KEY = "correct horse battery staple"
SDK = "official"

client = inngest.Inngest(
    app_id="mw-enc",
    is_production=False,
    api_base_url=URL,
    event_api_base_url=URL,
    logger=logging.getLogger("mw-enc"),
    middleware=[EncryptionMiddleware.factory(KEY)],
)

_lock = threading.Lock()


def _seen(ctx: inngest.Context, what: str, value: Any) -> None:
    path = os.environ.get("SEEN_LOG")
    if path:
        with _lock, open(path, "a") as f:
            f.write(json.dumps({"sdk": SDK, "run": ctx.run_id, "what": what, "value": value}) + "\n")


@client.create_function(fn_id="relay", trigger=inngest.TriggerEvent(event="enc/relay"))
async def relay(ctx: inngest.Context) -> dict[str, Any]:
    secret = ctx.event.data["encrypted"]["secret"]  # type: ignore[index,call-overload]

    def first() -> dict[str, Any]:
        _seen(ctx, "first", secret)
        return {"by": SDK, "secret": secret}

    got_first = await ctx.step.run("first", first)
    await ctx.step.wait_for_event(
        "go", event="enc/go", if_exp="async.data.run == event.data.run", timeout=datetime.timedelta(minutes=2)
    )

    def second() -> dict[str, Any]:
        _seen(ctx, "second", got_first)
        return {"by": SDK, "first": got_first, "secret": ctx.event.data["encrypted"]["secret"]}  # type: ignore[index,call-overload]

    got_second = await ctx.step.run("second", second)
    await ctx.step.send_event(
        "tell", inngest.Event(name="enc/told", data={"run": ctx.event.data["run"], "encrypted": {"secret": secret}})
    )
    return {"first": got_first, "second": got_second}


@client.create_function(fn_id="listener", trigger=inngest.TriggerEvent(event="enc/told"))
async def listener(ctx: inngest.Context) -> str:
    _seen(ctx, "told", ctx.event.data["encrypted"])
    return "heard"


async def main() -> None:
    logging.basicConfig(level=logging.INFO)
    await connect([(client, [relay, listener])], instance_id=os.environ.get("WORKER_NAME", "official-enc")).start()


if __name__ == "__main__":
    asyncio.run(main())
