"""An example app: a three-step function triggered by `demo/hello`.

Run it with `connect worker examples.hello:client`, then send an event:

    curl -s localhost:8288/e/dev -d '{"name": "demo/hello", "data": {"who": "world"}}'
"""

from __future__ import annotations

from typing import Any

from connect import Client, Context, Step, TriggerEvent

client = Client(app_id="hello-app")


@client.create_function(fn_id="greet", trigger=TriggerEvent(event="demo/hello"), retries=3)
async def greet(ctx: Context, step: Step) -> dict[str, Any]:
    who = await step.run("pick-name", lambda: str(ctx.event.data.get("who", "world")))
    greeting = await step.run("compose", lambda: f"hello {who}")
    shout = await step.run("shout", lambda: greeting.upper())
    return {"greeting": greeting, "shout": shout}
