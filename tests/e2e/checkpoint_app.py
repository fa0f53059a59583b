"""The step checkpoint end-to-end tests' function (served by `connect worker`).

Every step body appends JSON lines to the file named by CHECKPOINT_LOG:
`start` when it begins and `end` when it returns, with the request id and
attempt its context shows; the handler appends `invoked` each time a request
runs it. The event's data steers one step (its number in `step`):
`gate` makes it wait until that file exists, `fail_once` makes it fail
(once: it creates that file first).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

from connect import Client, Context, Step, TriggerEvent

client = Client(app_id="checkpoint-app")

_lock = threading.Lock()


def log(kind: str, ctx: Context, step: int = 0) -> None:
    path = os.environ.get("CHECKPOINT_LOG")
    if path:
        row = {
            "kind": kind,
            "run": ctx.run_id,
            "step": step,
            "request": ctx.request_id,
            "attempt": ctx.attempt,
            "worker": os.environ.get("WORKER_NAME", ""),
        }
        with _lock, open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


async def _body(ctx: Context, n: int) -> int:
    log("start", ctx, n)
    data = ctx.event.data
    if data.get("step") == n:
        if "gate" in data:
            while not Path(data["gate"]).exists():
                await asyncio.sleep(0.05)
        if "fail_once" in data and not Path(data["fail_once"]).exists():
            Path(data["fail_once"]).touch()
            raise RuntimeError(f"step {n} fails on its first attempt")
    log("end", ctx, n)
    return n * n


@client.create_function(fn_id="five", trigger=TriggerEvent(event="ckpt/five"), retries=2)
async def five(ctx: Context, step: Step) -> dict[str, Any]:
    log("invoked", ctx)
    squares = [await step.run(f"s{n}", _body, ctx, n) for n in range(1, 6)]
    return {"squares": squares}
