"""Cron triggers: `* * * * *` (UTC and Europe/Paris) run exactly once per minute
tick, across a graceful restart just after a tick and a SIGKILL just before
one (that tick is run once when `connect dev` is back).

One `connect dev` serves a worker of ours and an official-SDK worker at the
same time, so the two minutes this takes are spent once for both SDKs.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time
from pathlib import Path

from tests.e2e.harness import DevServer, Proc, complete_lines, start_worker, wait_for_log, wait_until

FUNCTIONS = {("ours", "every-minute"), ("ours", "every-minute-paris"), ("official", "every-minute"),
             ("official", "every-minute-paris")}  # fmt: skip


def ticks(log: Path) -> collections.Counter[tuple[str, str, int]]:
    """(sdk, function, tick ms) -> how many runs began for it."""
    counter: collections.Counter[tuple[str, str, int]] = collections.Counter()
    for line in complete_lines(log):
        row = json.loads(line)
        if row["kind"] == "tick":
            assert row["name"] == "inngest/scheduled.timer"
            counter[(row["sdk"], row["fn"], row["ts"])] += 1
    return counter


def ran(log: Path, tick_ms: int) -> bool:
    return {(sdk, fn) for sdk, fn, ts in ticks(log) if ts == tick_ms} == FUNCTIONS


def next_minute(now: float) -> int:
    return (int(now) // 60 + 1) * 60_000


def test_cron_runs_once_per_tick_across_restarts(tmp_path: Path) -> None:
    log = tmp_path / "steps.jsonl"
    dev = DevServer(tmp_path).start()
    env = {"STEPS_LOG": str(log)}
    ours = start_worker(dev, tmp_path, name="ours-cron", target="tests.e2e.steps_app:cron_apps", env=env)
    official = Proc(
        [sys.executable, "tests/compat/official_steps_app.py", "cron"],
        dict(os.environ, CONNECT_API_URL=dev.url, WORKER_NAME="official-cron", **env),
        tmp_path / "official-cron.log",
    )
    try:
        assert dev.proc is not None
        wait_for_log(ours, "worker state ACTIVE", timeout=60)
        wait_until(lambda: dev.proc is not None and dev.proc.output().count("worker ready") >= 2, 60, "both workers")

        first = next_minute(time.time())
        wait_until(lambda: ran(log, first), 90, f"every function to run for the tick at {first}")

        # A graceful restart right after a tick: that tick must not run again.
        dev.stop()
        dev.start()

        # A hard kill just before the next tick, back just after it: the missed tick runs once.
        second = first + 60_000
        time.sleep(max(0.0, second / 1000 - 3 - time.time()))
        dev.kill()
        time.sleep(max(0.0, second / 1000 + 2 - time.time()))
        dev.start()
        wait_until(lambda: ran(log, second), 90, f"every function to run for the tick at {second}")
        time.sleep(2.0)  # let any duplicate show itself

        counts = ticks(log)
        assert {count for count in counts.values()} == {1}, counts
        seen = sorted({ts for _, _, ts in counts})
        assert seen[:2] == [first, second], seen
        assert all(ts % 60_000 == 0 for ts in seen)
    finally:
        ours.stop()
        official.stop()
        dev.stop()
