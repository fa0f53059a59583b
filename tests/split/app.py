"""Functions the split-roles tests serve from real worker processes.

Every step body writes to files in SPLIT_LOG_DIR, one set per worker (named by
WORKER_NAME), so the tests count on the worker side what really ran:

- `started-<worker>.log`: `<run_id> <step> <unix time>` when a body begins;
- `steps-<worker>.log`: `<run_id> <step> <unix time>` when it ends (a body that
  ran twice has two lines across all these files).

`limited_client` serves one function whose body counts the bodies running at
once across every process that shares SPLIT_COUNTER (a file, under `flock`):
each begin appends `<count>` to `<SPLIT_COUNTER>.peaks`.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from pathlib import Path

from connect import Client, Context, Step, TriggerEvent

client = Client(app_id="split-app")
limited_client = Client(app_id="split-limited")


def _append(kind: str, line: str) -> None:
    directory = os.environ.get("SPLIT_LOG_DIR")
    if directory:
        name = os.environ.get("WORKER_NAME", str(os.getpid()))
        with open(Path(directory) / f"{kind}-{name}.log", "a") as f:
            f.write(line + "\n")


async def _body(ctx: Context, name: str, delay: float, value: int) -> int:
    _append("started", f"{ctx.run_id} {name} {time.time():.3f}")
    if delay:
        await asyncio.sleep(delay)
    _append("steps", f"{ctx.run_id} {name} {time.time():.3f}")
    return value


@client.create_function(fn_id="five-steps", trigger=TriggerEvent(event="split/five"))
async def five_steps(ctx: Context, step: Step) -> int:
    delay = float(ctx.event.data.get("delay", 0))
    total = 0
    for i in range(5):
        total += await step.run(f"s{i}", _body, ctx, f"s{i}", delay, i)
    return total


def _count(delta: int) -> int:
    """Add `delta` to the shared counter; return the new count."""
    path = Path(os.environ["SPLIT_COUNTER"])
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        count = int(f.read().strip() or 0) + delta
        f.seek(0)
        f.truncate()
        f.write(str(count))
        f.flush()
        if delta > 0:
            with open(f"{path}.peaks", "a") as peaks:
                peaks.write(f"{count}\n")
        return count


async def _limited_body(ctx: Context, delay: float) -> str:
    _append("started", f"{ctx.run_id} limited {time.time():.3f}")
    _count(+1)
    try:
        await asyncio.sleep(delay)
    finally:
        _count(-1)
    _append("steps", f"{ctx.run_id} limited {time.time():.3f}")
    return "ok"


@limited_client.create_function(fn_id="limited", trigger=TriggerEvent(event="split/limited"))
async def limited(ctx: Context, step: Step) -> str:
    return str(await step.run("limited", _limited_body, ctx, float(ctx.event.data.get("delay", 0.2))))
