"""An unmodified official Python worker registers every flow-control option
against a real `connect dev`: valid configs are served and listed by
`GET /v1/functions`; invalid ones are refused with a reason naming the option,
while the app's other functions are served over the same connection."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import DevServer, Proc, wait_for_log, wait_until

WORKER = Path(__file__).parents[1] / "compat" / "official_flow_worker.py"

#: What the official SDK registers for the valid functions (durations as it writes them).
REGISTERED: dict[str, dict[str, Any]] = {
    "py-flow-every-option": {
        "concurrency": [{"limit": 5}, {"limit": 2, "key": "event.data.user", "scope": "env"}],
        "throttle": {"limit": 3, "period": "1m", "key": "event.data.user", "burst": 1},
        "rateLimit": {"limit": 10, "period": "1h", "key": "event.data.user"},
        "debounce": {"period": "5s", "key": "event.data.user", "timeout": "1m"},
        "idempotency": "event.data.order",
        "priority": {"run": "event.data.vip ? 60 : 0"},
        "singleton": {"mode": "skip", "key": "event.data.user"},
    },
    "py-flow-batched": {
        "batchEvents": {"maxSize": 50, "timeout": "10s", "key": "event.data.tenant", "if": "event.data.ok"},
        "concurrency": [{"limit": 1}],
        "throttle": {"limit": 20, "period": "1m", "burst": 1},
    },
    "py-flow-plain": {},
}
REFUSED = {
    "py-flow-batched-debounce": "invalid config: `batchEvents` cannot be combined with `debounce`",
    "py-flow-batched-idempotent": "invalid config: `batchEvents` cannot be combined with `idempotency`",
    "py-flow-throttle-8d": "invalid config: `throttle.period` must be from 1s to 7d, got '8d'",
}


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("official-flow")).start()
    yield server
    server.stop()


def listed(dev: DevServer) -> dict[str, dict[str, Any]]:
    resp = httpx.get(f"{dev.url}/v1/functions", timeout=30)
    assert resp.status_code == 200, resp.text
    return {f["id"]: f for f in resp.json()["data"] if f["app"] == "py-flow"}


def test_official_python_flow_control_is_served_or_refused_with_its_reason(dev: DevServer, tmp_path: Path) -> None:
    worker = Proc([sys.executable, str(WORKER)], {**os.environ, "CONNECT_API_URL": dev.url}, tmp_path / "worker.log")
    assert dev.proc is not None
    try:
        wait_until(lambda: len(listed(dev)) == 6, 90, "the official worker's six functions listed")
        functions = listed(dev)
        for fn_id in REGISTERED:
            fn = functions[fn_id]
            assert (fn["status"], fn["reason"]) == ("active", None), fn
            # Every flow-control option is honoured: none is listed as not honoured.
            assert fn["not_honoured"] == {}, fn
        assert "does not honour" not in dev.proc.output()
        for fn_id, reason in REFUSED.items():
            assert (functions[fn_id]["status"], functions[fn_id]["reason"]) == ("refused", reason)
            wait_for_log(dev.proc, f"app py-flow, function {fn_id}: refused, not served: {reason}", timeout=30)

        # The valid functions are served over the same connection; a refused one starts nothing
        # (events are taken in order: once the later event's run exists, the earlier one was handled).
        refused, plain = dev.send([{"name": "py-flow/t8"}, {"name": "py-flow/plain"}])
        [run] = dev.wait_runs([plain], timeout=90)
        assert (run["status"], run["output"]) == ("Completed", "plain done"), worker.output()[-3000:]
        assert dev.runs(refused) == []
    finally:
        worker.stop()
