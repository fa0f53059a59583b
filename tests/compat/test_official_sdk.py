"""The unmodified official `inngest` Python SDK as a worker of `connect dev`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.e2e.harness import DevServer, Proc, wait_for_log


def test_official_worker_runs_two_steps_end_to_end(tmp_path: Path) -> None:
    dev = DevServer(tmp_path).start()
    env = dict(os.environ, CONNECT_API_URL=dev.url)
    worker = Proc([sys.executable, "tests/compat/official_worker.py"], env, tmp_path / "official.log")
    try:
        assert dev.proc is not None
        wait_for_log(dev.proc, "worker ready: connection=", timeout=60)
        ids = dev.send([{"name": "compat/two", "data": {"x": i}} for i in range(5)])
        runs = dev.wait_runs(ids, timeout=90)
        for i, run in enumerate(runs):
            assert run["status"] == "Completed", (run, worker.output()[-2000:])
            assert run["output"] == {"first": {"x": i + 1}, "second": (i + 1) * 10, "via": "official-sdk"}
    finally:
        worker.stop()
        dev.stop()
