"""A worker that cannot connect says which URL it tried and the variable that sets it."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.e2e.harness import DevServer, Proc, start_worker, wait_for_log


def test_an_unreachable_api_is_named_with_its_variable(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")} | {
        "CONNECT_API_URL": "http://127.0.0.1:9"
    }
    proc = Proc([sys.executable, "-m", "connect", "worker", "tests.e2e.apps:client"], env, tmp_path / "w.log")
    try:
        wait_for_log(proc, "connect attempt 1 failed")
        line = next(x for x in proc.output().splitlines() if "connect attempt 1 failed" in x)
    finally:
        assert proc.stop() == 0
    assert "WARNING" in line
    assert "cannot reach the API at http://127.0.0.1:9/v0/connect/start" in line
    assert "(set by the client's api_url, or CONNECT_API_URL)" in line
    # The start-up line says what the worker serves and where it looks for the platform.
    assert "worker serves app e2e-app: e2e-app-three-steps, " in proc.log_path.read_text()


def test_an_unreachable_gateway_is_named_with_its_variable(tmp_path: Path) -> None:
    dev = DevServer(tmp_path).start()
    try:
        proc = start_worker(dev, tmp_path, env={"CONNECT_GATEWAY_URL": "ws://127.0.0.1:9/v0/connect"})
        try:
            wait_for_log(proc, "connect attempt 1 failed")
            line = next(x for x in proc.output().splitlines() if "connect attempt 1 failed" in x)
        finally:
            assert proc.stop() == 0
    finally:
        dev.stop()
    assert "cannot reach the gateway at ws://127.0.0.1:9/v0/connect" in line
    assert "(set by gateway_url, or CONNECT_GATEWAY_URL)" in line
