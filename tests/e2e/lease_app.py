"""Functions for the lease tests: a step that holds until the test releases it.

The step body appends `<run_id> held <worker name>` to STARTED_LOG when it
begins and `<run_id> held <pid>` to STEP_LOG when it ends (the lines the
harness counts), and returns once the file named by RELEASE_FILE exists.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from connect import Client, Context, Step, TriggerEvent

client = Client(app_id="lease-app")


def _append(variable: str, line: str) -> None:
    path = os.environ.get(variable)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


async def _held(ctx: Context) -> str:
    _append("STARTED_LOG", f"{ctx.run_id} held {os.environ.get('WORKER_NAME', os.getpid())}")
    release = Path(os.environ["RELEASE_FILE"])
    while not release.exists():
        await asyncio.sleep(0.02)
    _append("STEP_LOG", f"{ctx.run_id} held {os.getpid()}")
    return "released"


@client.create_function(fn_id="held-once", trigger=TriggerEvent(event="lease/held-once"), retries=0)
async def held_once(ctx: Context, step: Step) -> str:
    return str(await step.run("held", _held, ctx))


@client.create_function(fn_id="held-retried", trigger=TriggerEvent(event="lease/held-retried"), retries=2)
async def held_retried(ctx: Context, step: Step) -> str:
    return str(await step.run("held", _held, ctx))
