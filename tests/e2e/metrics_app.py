"""Functions the metrics end-to-end test loads (served by `connect worker`)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from connect import Client, Context, NonRetriableError, Step, TriggerEvent

client = Client(app_id="metrics-app")

#: A metric of the user's own, in prometheus-client's global registry: the
#: worker's `/metrics` serves the worker's registry, never this one.
USER_COUNTER = Counter("user_app_things", "Something the user's code counts")


@client.create_function(fn_id="metered", trigger=TriggerEvent(event="metrics/three"), retries=0)
async def metered(ctx: Context, step: Step) -> dict[str, Any]:
    """Three steps; the third fails (for good) when the event asks it to."""
    USER_COUNTER.inc()
    a = await step.run("one", lambda: 1)
    b = await step.run("two", lambda: a + 1)

    def three() -> int:
        if ctx.event.data.get("fail"):
            raise NonRetriableError("asked to fail")
        return b + 1

    return {"sum": await step.run("three", three)}


@client.create_function(fn_id="sleepy", trigger=TriggerEvent(event="metrics/sleep"))
async def sleepy(ctx: Context, step: Step) -> str:
    await step.run("before", lambda: "ok")
    await step.sleep("long", 3_600_000)
    return "woke"
