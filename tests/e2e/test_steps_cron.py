"""Cron triggers: `* * * * *` (UTC and Europe/Paris) run exactly once per minute
tick, across a graceful restart just after a tick and a SIGKILL just before
one (that tick is run once when `connect dev` is back).

One `connect dev` serves a worker of each SDK at the same time (ours, the
official Python SDK, the official TypeScript SDK with checkpointing on and off),
so the two minutes this takes are spent once for all of them.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

from tests.e2e.harness import DevServer, Proc, complete_lines
from tests.e2e.test_steps_features import SDKS, start_sdk_worker

FUNCTIONS = {(sdk, fn) for sdk in SDKS for fn in ("every-minute", "every-minute-paris")}


def ticks(log: Path) -> collections.Counter[tuple[str, str, int]]:
    """(sdk, function, tick ms) -> how many runs began for it."""
    counter: collections.Counter[tuple[str, str, int]] = collections.Counter()
    for line in complete_lines(log):
        row = json.loads(line)
        if row["kind"] == "tick":
            assert row["name"] == "inngest/scheduled.timer"
            counter[(row["sdk"], row["fn"], row["ts"])] += 1
    return counter


def missing(log: Path, tick_ms: int) -> set[tuple[str, str]]:
    """The (sdk, function) pairs that have not run for the tick yet."""
    return FUNCTIONS - {(sdk, fn) for sdk, fn, ts in ticks(log) if ts == tick_ms}


def wait_tick(log: Path, tick_ms: int) -> None:
    deadline = time.monotonic() + 90
    while missing(log, tick_ms) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not missing(log, tick_ms), f"no run for the tick at {tick_ms} of {sorted(missing(log, tick_ms))}"


def next_minute(now: float) -> int:
    return (int(now) // 60 + 1) * 60_000


def test_cron_runs_once_per_tick_across_restarts(tmp_path: Path) -> None:
    log = tmp_path / "steps.jsonl"
    dev = DevServer(tmp_path).start()
    workers: list[Proc] = []
    try:
        for sdk in SDKS:
            # Each TypeScript variant gets app ids of its own: both share this `connect dev`.
            env = {"TS_APP_PREFIX": sdk} if sdk.startswith("ts") else {}
            workers.append(start_sdk_worker(dev, tmp_path, sdk, target="cron", concurrency=None, env=env))

        # Every worker is registered now; a tick before this one may have run for
        # those registered first (start-up can cross a minute), and counts only below.
        first = next_minute(time.time())
        wait_tick(log, first)

        # A graceful restart right after a tick: that tick must not run again.
        dev.stop()
        dev.start()

        # A hard kill just before the next tick, back just after it: the missed tick runs once.
        second = first + 60_000
        time.sleep(max(0.0, second / 1000 - 3 - time.time()))
        dev.kill()
        time.sleep(max(0.0, second / 1000 + 2 - time.time()))
        dev.start()
        wait_tick(log, second)
        time.sleep(2.0)  # let any duplicate show itself

        counts = ticks(log)
        assert {count for count in counts.values()} == {1}, counts
        seen = sorted({ts for _, _, ts in counts})
        assert [ts for ts in seen if ts >= first][:2] == [first, second], seen
        assert all(ts % 60_000 == 0 for ts in seen)
    finally:
        for worker in workers:
            worker.stop()
        dev.stop()
