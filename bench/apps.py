"""The functions our worker serves in the benchmarks (`connect worker bench.apps:client`).

- `one-step`: a single no-op step; gateway-only dispatch sends it discovery
  requests, so the SDK decodes the request, runs the step and reports it.
- `five-steps`: five no-op steps, the durable end-to-end workload; the request
  that completes the run reports the event's `k` on the UDP side channel
  (`bench.notify`).
- `five-steps-keyed`: the same, with `concurrency=[{limit: 1, key:
  event.data.key}]` (`bench.flow_control`, scenario A).
- `handover`: one step with `concurrency=[{limit: 1, key: event.data.key}]`;
  the step body reports its start and end on the worker's clock
  (`bench.flow_control`, scenario B)."""

from __future__ import annotations

import time
from typing import Any

from bench.notify import notify
from connect import Client, Concurrency, Context, Step, TriggerEvent

APP_ID = "bench-app"
ONE_STEP = "one-step"
FIVE_STEPS = "five-steps"
FIVE_EVENT = "bench/five"
FIVE_KEYED = "five-steps-keyed"
FIVE_KEYED_EVENT = "bench/five-keyed"
HANDOVER = "handover"
HANDOVER_EVENT = "bench/handover"
#: The concurrency limit per key of `five-steps-keyed` and `handover`.
KEY_LIMIT = 1

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


@client.create_function(
    fn_id=FIVE_KEYED,
    trigger=TriggerEvent(event=FIVE_KEYED_EVENT),
    concurrency=[Concurrency(limit=KEY_LIMIT, key="event.data.key")],
)
async def five_steps_keyed(ctx: Context, step: Step) -> Any:
    await step.run("s1", _noop)
    await step.run("s2", _noop)
    await step.run("s3", _noop)
    await step.run("s4", _noop)
    await step.run("s5", _noop)
    notify(ctx.event.data.get("k"))
    return None


def _timed(k: str) -> None:
    """Report `h <k> <start> <end>` (epoch seconds on this worker's clock)."""
    start = time.time()
    notify(f"h {k} {start:.6f} {time.time():.6f}")


@client.create_function(
    fn_id=HANDOVER,
    trigger=TriggerEvent(event=HANDOVER_EVENT),
    concurrency=[Concurrency(limit=KEY_LIMIT, key="event.data.key")],
)
async def handover(ctx: Context, step: Step) -> Any:
    await step.run("only", _timed, str(ctx.event.data.get("k")))
    return None
