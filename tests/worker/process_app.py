"""A worker app that reports what the `connect worker` process it runs in is like.

`settings` returns the process's garbage-collector thresholds; `hang` holds
a thread for two minutes; with
`ATEXIT_REPORT` set, an `atexit` hook writes that file when the process exits
(as an error reporter or a tracing exporter would flush on exit).
"""

from __future__ import annotations

import atexit
import gc
import os
import time
from pathlib import Path

from connect import Client, Context, Step, TriggerEvent

client = Client(app_id="process-app")


@client.create_function(fn_id="settings", trigger=TriggerEvent(event="process/settings"))
async def settings(ctx: Context, step: Step) -> dict[str, list[int]]:
    return {"gc": list(gc.get_threshold())}


@client.create_function(fn_id="hang", trigger=TriggerEvent(event="process/hang"))
def hang(ctx: Context, step: Step) -> str:  # a plain def: runs in a thread, which no exit may wait for
    print("hang started", flush=True)
    time.sleep(120)
    return "woke"


def _report_exit(path: str) -> None:
    Path(path).write_text("atexit hooks ran\n")


if os.environ.get("ATEXIT_REPORT"):
    atexit.register(_report_exit, os.environ["ATEXIT_REPORT"])
