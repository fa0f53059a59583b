"""Unmodified official workers against a real `connect dev`: what they register
and how they leave.

- TypeScript (npm `inngest`, pinned in `tests/compat/npm.py`): functions with
  `concurrency: 5`, `concurrency: {limit, key}`, `throttle` and `rateLimit`
  connect and run; each option not honoured yet (concurrency) is named in
  one warning and in `GET /v1/functions`, the honoured ones in neither.
- Both official SDKs, on SIGTERM mid-step, send WORKER_PAUSE, finish the step,
  and close without naming a reason: the gateway records a clean shutdown.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.compat import npm
from tests.e2e.harness import DevServer, Proc, wait_for_log

TS_WORKER = Path(__file__).parent / "ts" / "flow_control_worker.mjs"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("official-registrations")).start()
    yield server
    server.stop()


def disconnects(dev: DevServer, instance: str) -> list[str]:
    assert dev.proc is not None
    return re.findall(rf"worker disconnected: connection=\S+ instance={instance} reason=(\S+)", dev.proc.output())


def wait_disconnect(dev: DevServer, instance: str) -> str:
    assert dev.proc is not None
    wait_for_log(dev.proc, f"instance={instance} reason=", timeout=60)
    [reason] = disconnects(dev, instance)
    return reason


def leave_mid_step(dev: DevServer, worker: Proc, started: str, event: dict[str, Any]) -> str:
    """Send `event`, SIGTERM `worker` once its step has `started`, wait for it to exit; the event's id."""
    [event_id] = dev.send([event])
    wait_for_log(worker, started, timeout=60)
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0, worker.output()[-3000:]
    return event_id


def test_official_typescript_worker_with_flow_control_options(dev: DevServer, tmp_path: Path) -> None:
    script = npm.prepare_script(TS_WORKER, tmp_path / "ts")
    env = npm.node_env({**os.environ, "CONNECT_API_URL": dev.url})
    worker = Proc(["node", str(script)], env, tmp_path / "ts-worker.log")
    assert dev.proc is not None
    try:
        wait_for_log(dev.proc, "worker ready: connection=", timeout=90)
        events = [
            {"name": "ts-flow/number"},
            {"name": "ts-flow/key", "data": {"user": "ada"}},
            {"name": "ts-flow/throttled"},
            {"name": "ts-flow/rated", "data": {"user": "bob"}},
        ]
        runs = dev.wait_runs(dev.send(events), timeout=90)
        assert [(r["status"], r["output"]) for r in runs] == [
            ("Completed", {"fn": "number", "user": None}),
            ("Completed", {"fn": "key", "user": "ada"}),
            ("Completed", {"fn": "throttled", "user": None}),
            ("Completed", {"fn": "rated", "user": "bob"}),
        ], worker.output()[-3000:]

        log = dev.proc.output()
        # Concurrency, throttle and rate limit are honoured: nothing to warn of.
        for fn_id in ("ts-flow-conc-number", "ts-flow-conc-key", "ts-flow-throttled", "ts-flow-rated"):
            assert f"app ts-flow, function {fn_id}: registered options" not in log

        listed = {f["id"]: f for f in httpx.get(f"{dev.url}/v1/functions", timeout=30).json()["data"]}
        assert {fn_id: listed[fn_id]["not_honoured"] for fn_id in listed if fn_id.startswith("ts-flow-")} == {
            "ts-flow-conc-number": {},
            "ts-flow-conc-key": {},
            "ts-flow-throttled": {},
            "ts-flow-rated": {},
            "ts-flow-slow": {},
        }
        assert all(listed[fn_id]["status"] == "active" for fn_id in listed if fn_id.startswith("ts-flow-"))

        event_id = leave_mid_step(dev, worker, "slow started", {"name": "ts-flow/slow", "data": {"ms": 1500}})
        [run] = dev.wait_runs([event_id], timeout=60)
        assert (run["status"], run["output"]) == ("Completed", "slow done")
        assert wait_disconnect(dev, "ts-flow-worker") == "WORKER_SHUTDOWN", dev.proc.output()[-3000:]
    finally:
        worker.stop()


def test_official_python_worker_sigterm_mid_step_is_a_clean_shutdown(dev: DevServer, tmp_path: Path) -> None:
    env = {**os.environ, "CONNECT_API_URL": dev.url, "OFFICIAL_SIGNALS": "1"}
    worker = Proc([sys.executable, "tests/compat/official_worker.py"], env, tmp_path / "official.log")
    assert dev.proc is not None
    try:
        wait_for_log(dev.proc, "instance=official-worker", timeout=90)
        # The step finishes and its reply comes back on the connection before
        # it closes (the run then waits for a worker to go on past the step).
        leave_mid_step(dev, worker, "slow step started", {"name": "compat/slow", "data": {"seconds": 1.5}})
        assert wait_disconnect(dev, "official-worker") == "WORKER_SHUTDOWN", dev.proc.output()[-3000:]
    finally:
        worker.stop()
