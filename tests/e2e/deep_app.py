"""A function that carries its event's data through a step and out as its output,
so every decoder on the way (executor, worker, store, REST) meets its nesting."""

from __future__ import annotations

from typing import Any

from connect import Client, Context, Step, TriggerEvent

client = Client(app_id="e2e-deep")


@client.create_function(fn_id="echo-deep", trigger=TriggerEvent(event="e2e/deep"), retries=0)
async def echo_deep(ctx: Context, step: Step) -> Any:
    data = ctx.event.data
    return await step.run("echo", lambda: data)
