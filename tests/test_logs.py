"""`--log-format json` / `CONNECT_LOG_FORMAT`: every line a JSON object with
the run, function, step and connection fields; every run's end logged once."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from connect import logs
from tests.e2e.harness import DevServer, start_worker, wait_for_log, wait_until


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every complete line, parsed (a line that is not JSON fails the test)."""
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def test_json_lines_carry_the_fields_and_every_run_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECT_LOG_FORMAT", "json")
    dev = DevServer(tmp_path).start()
    try:
        assert dev.proc is not None
        worker = start_worker(dev, tmp_path, instance_id="json-worker")
        try:
            wait_for_log(worker, "worker state ACTIVE")
            ok, fatal = dev.send([{"name": "e2e/three", "data": {"n": 1}}, {"name": "e2e/fatal", "data": {}}])
            runs = {run["status"]: run for run in dev.wait_runs([ok, fatal], timeout=60)}
            assert set(runs) == {"Completed", "Failed"}
            wait_until(lambda: dev.proc is not None and dev.proc.output().count("ended:") >= 2, 30, "run ends")
        finally:
            assert worker.stop() == 0
        served = _json_lines(worker.log_path.read_text())
        wait_until(lambda: "worker disconnected" in dev.proc.output(), 30, "the disconnect line")
        platform = _json_lines(dev.proc.output())
    finally:
        dev.stop()
    for line in platform + served:
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert line["time"].endswith("+00:00")
    ready = next(line for line in platform if " ready: " in line["message"])
    assert ready["level"] == "info"
    assert ready["api_url"] == dev.url
    assert ready["gateway_url"] == f"ws://127.0.0.1:{dev.gateway_port}/v0/connect"
    assert ready["store"] == f"db={tmp_path / 'connect.db'}"
    # Each run's end: once, at info, with its status, function and run id.
    ends = [line for line in platform if "run_id" in line and "ended:" in line["message"]]
    assert sorted((e["run_id"], e["function"], e["status"], e["level"]) for e in ends) == sorted(
        (run["run_id"], run["function_id"], run["status"], "info") for run in runs.values()
    )
    connected = [line for line in platform if line["message"].startswith("worker ready")]
    assert connected and connected[0]["instance_id"] == "json-worker" and connected[0]["connection_id"]
    closed = [line for line in platform if line["message"].startswith("worker disconnected")]
    assert closed and closed[0]["connection_id"] == connected[0]["connection_id"]
    # The worker says which app and functions it serves, and where the platform is.
    serves = next(line for line in served if line["message"].startswith("worker serves app"))
    assert serves["app"] == "e2e-app"
    assert "e2e-app-three-steps" in serves["functions"]
    assert serves["api_url"] == f"{dev.url}/v0/connect/start"
    assert any(line.get("connection_id") and line["message"].startswith("worker connected") for line in served)


def test_text_lines_are_unchanged_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONNECT_LOG_FORMAT", raising=False)
    dev = DevServer(tmp_path).start()
    try:
        assert dev.proc is not None
        wait_for_log(dev.proc, " ready: ")
        text = dev.proc.output()
    finally:
        dev.stop()
    line = next(x for x in text.splitlines() if " ready: " in x)
    # TIME LEVEL LOGGER: MESSAGE, and no tuning detail at info.
    assert " INFO connect.dev: connect dev ready: api=" in line
    assert "poll window" not in text


def test_the_json_formatter_keeps_known_fields_and_tracebacks() -> None:
    record = logging.LogRecord("connect.x", logging.WARNING, __file__, 1, "run %s lost", ("r1",), None)
    record.run_id, record.step, record.unrelated = "r1", "s1", "dropped"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["message"] == "run r1 lost" and line["level"] == "warning" and line["logger"] == "connect.x"
    assert (line["run_id"], line["step"]) == ("r1", "s1")
    assert "unrelated" not in line
    assert "ValueError: boom" in line["exc_info"]
