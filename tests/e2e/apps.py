"""Functions the end-to-end tests serve from real worker processes.

Every step body appends one line `<run_id> <step> <pid>` to the file named by
STEP_LOG, so tests can count how often each step really ran, and measures
how many requests this process runs at once (IN_FLIGHT_LOG).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from connect import Client, Context, NonRetriableError, Step, TriggerEvent

client = Client(app_id="e2e-app")

_lock = threading.Lock()
_in_flight = 0


def _log_step(ctx: Context, step: str) -> None:
    path = os.environ.get("STEP_LOG")
    if path:
        with _lock, open(path, "a") as f:
            f.write(f"{ctx.run_id} {step} {os.getpid()}\n")


def _log_start(ctx: Context, step: str) -> None:
    path = os.environ.get("STARTED_LOG")
    if path:
        with _lock, open(path, "a") as f:
            f.write(f"{ctx.run_id} {step} {os.environ.get('WORKER_NAME', os.getpid())}\n")


async def _tracked(ctx: Context, name: str, seconds: float, value: Any) -> Any:
    global _in_flight
    _log_start(ctx, name)
    with _lock:
        _in_flight += 1
        peak_path = os.environ.get("IN_FLIGHT_LOG")
        if peak_path:
            with open(peak_path, "a") as f:
                f.write(f"{os.environ.get('WORKER_NAME', os.getpid())} {_in_flight}\n")
    try:
        await asyncio.sleep(seconds)
        _log_step(ctx, name)
        return value
    finally:
        with _lock:
            _in_flight -= 1


@client.create_function(fn_id="three-steps", trigger=TriggerEvent(event="e2e/three"))
async def three_steps(ctx: Context, step: Step) -> dict[str, Any]:
    delay = float(ctx.event.data.get("delay", 0))
    n = int(ctx.event.data.get("n", 0))
    a = await step.run("one", _tracked, ctx, "one", delay, n + 1)
    b = await step.run("two", _tracked, ctx, "two", delay, a * 2)
    c = await step.run("three", _tracked, ctx, "three", delay, b + 3)
    return {"n": n, "result": c}


@client.create_function(fn_id="flaky", trigger=TriggerEvent(event="e2e/flaky"), retries=4)
async def flaky(ctx: Context, step: Step) -> dict[str, Any]:
    def attempt() -> str:
        _log_step(ctx, f"flaky-attempt-{ctx.attempt}")
        if ctx.attempt < 2:
            raise RuntimeError(f"transient failure on attempt {ctx.attempt}")
        return "finally"

    value = await step.run("unstable", attempt)
    return {"value": value, "attempt": ctx.attempt}


@client.create_function(fn_id="fatal", trigger=TriggerEvent(event="e2e/fatal"), retries=4)
async def fatal(ctx: Context, step: Step) -> None:
    await step.run("before", lambda: "ok")
    raise NonRetriableError("the card was declined")


@client.create_function(fn_id="sync-handler", trigger=TriggerEvent(event="e2e/sync"))
def sync_handler(ctx: Context, step: Any) -> str:
    first = step.run("a", lambda: "sync")
    return f"{first}-done"


@client.create_function(fn_id="wildcard", trigger=TriggerEvent(event="e2e-wild/*"))
async def wildcard(ctx: Context, step: Step) -> str:
    return await step.run("echo", lambda: ctx.event.name)


@client.create_function(fn_id="five-steps", trigger=TriggerEvent(event="e2e/five"))
async def five_steps(ctx: Context, step: Step) -> int:
    delay = float(ctx.event.data.get("delay", 0))
    total = 0
    for i in range(5):
        total += await step.run(f"s{i}", _tracked, ctx, f"s{i}", delay, i)
    return total


@client.create_function(fn_id="slow", trigger=TriggerEvent(event="e2e/slow"))
async def slow(ctx: Context, step: Step) -> str:
    seconds = float(ctx.event.data.get("seconds", 5))
    return str(await step.run("slow-step", _tracked, ctx, "slow-step", seconds, "slow done"))


@client.create_function(fn_id="blocker", trigger=TriggerEvent(event="e2e/block"))
async def blocker(ctx: Context, step: Step) -> str:
    seconds = float(ctx.event.data.get("seconds", 120))
    spin = ctx.event.data.get("mode") == "spin"

    def block_the_loop() -> str:
        # A plain callable run by step.run on the event loop: nothing else on
        # this loop runs until it returns. "spin" also keeps the GIL busy.
        _log_start(ctx, "block")
        end = time.monotonic() + seconds
        if spin:
            x = 0
            while time.monotonic() < end:
                x += 1
        else:
            time.sleep(seconds)
        _log_step(ctx, "block")
        return f"blocked {seconds:.0f}s"

    return await step.run("block", block_the_loop)


@client.create_function(fn_id="huge", trigger=TriggerEvent(event="e2e/huge"), retries=0)
async def huge(ctx: Context, step: Step) -> int:
    size = int(ctx.event.data.get("bytes", 0))
    blob = await step.run("make-blob", lambda: "x" * size)
    return len(blob)
