"""The functions our worker serves in the benchmarks (`connect worker bench.apps:client`).

- `one-step`: a single no-op step; gateway-only dispatch sends it discovery
  requests, so the SDK decodes the request, runs the step and reports it.
- `five-steps`: five no-op steps, the durable end-to-end workload; the request
  that completes the run reports the event's `k` on the UDP side channel
  (`bench.notify`).
"""

from __future__ import annotations

from typing import Any

from bench.notify import notify
from connect import Client, Context, Step, TriggerEvent

APP_ID = "bench-app"
ONE_STEP = "one-step"
FIVE_STEPS = "five-steps"
FIVE_EVENT = "bench/five"

client = Client(app_id=APP_ID)


def _noop() -> None:
    return None


@client.create_function(fn_id=ONE_STEP, trigger=TriggerEvent(event="bench/one"))
async def one_step(ctx: Context, step: Step) -> Any:
    return await step.run("only", _noop)


@client.create_function(fn_id=FIVE_STEPS, trigger=TriggerEvent(event=FIVE_EVENT))
async def five_steps(ctx: Context, step: Step) -> Any:
    await step.run("s1", _noop)
    await step.run("s2", _noop)
    await step.run("s3", _noop)
    await step.run("s4", _noop)
    await step.run("s5", _noop)
    notify(ctx.event.data.get("k"))  # reached only by the request that completes the run
    return None
