"""Functions the dashboard's browser tests run from a real worker process."""

from __future__ import annotations

import datetime
from typing import Any

from connect import Client, Context, Debounce, Event, Step, TriggerEvent

client = Client(app_id="dash-app")


@client.create_function(fn_id="greet", trigger=TriggerEvent(event="dash/greet"))
async def greet(ctx: Context, step: Step) -> dict[str, Any]:
    who = await step.run("look up the user", lambda: str(ctx.event.data.get("who", "world")))
    text = await step.run("write the greeting", lambda: f"hello {who}")
    return {"greeting": text}


@client.create_function(fn_id="nap", trigger=TriggerEvent(event="dash/nap"))
async def nap(ctx: Context, step: Step) -> str:
    await step.send_event("tell the team", Event(name="dash/napping", data={}))
    await step.sleep("nap for an hour", datetime.timedelta(hours=1))
    return "rested"


@client.create_function(
    fn_id="digest",
    trigger=TriggerEvent(event="dash/digest"),
    debounce=Debounce(period=datetime.timedelta(seconds=3)),
)
async def digest(ctx: Context, step: Step) -> dict[str, Any]:
    return await step.run("summarise", lambda: dict(ctx.event.data))
