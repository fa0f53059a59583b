"""Official TypeScript workers (SDK 4.x, unmodified) with their checkpointing, end to end.

With its defaults the TypeScript SDK runs a discovery request's steps one
after another, storing each through `POST /v1/checkpoint/{run_id}/async`,
and ends the request with `RunComplete`. Three workers of
`tests/e2e/ts/checkpoint_app.mjs` run against one real `connect dev`, one
app each: checkpointing on (the defaults), off, and two steps per
checkpoint; every event starts one run in each. The handler logs each time
it is entered, which is once per request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.compat import npm
from tests.e2e.harness import DevServer, Proc, complete_lines, wait_until

APP = Path(__file__).parent / "ts" / "checkpoint_app.mjs"
MODES = ("off", "on", "buffered")


class TsStack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.dev = DevServer(tmp).start()
        self.workers: list[Proc] = []

    def start_workers(self) -> None:
        script = npm.prepare_script(APP, self.tmp / "ts")
        for mode in MODES:
            env = npm.node_env()
            env.update(CONNECT_API_URL=self.dev.url, ENTRY_LOG=str(self.log_path), CHECKPOINT=mode)
            self.workers.append(Proc(["node", str(script)], env, self.tmp / f"ts-{mode}.log"))
        wait_until(
            lambda: self.dev.proc is not None and self.dev.proc.output().count("worker ready:") >= len(MODES),
            60,
            "three TypeScript workers connected",
        )

    @property
    def log_path(self) -> Path:
        return self.tmp / "entries.jsonl"

    def runs(self, name: str, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Send one event and wait for its three runs, by mode."""
        [event_id] = self.dev.send([{"name": name, "data": data}])
        runs = self.dev.wait_runs([event_id], count=len(MODES), timeout=60)
        by_mode = {run["function_id"].split("-")[2]: run for run in runs}
        return {mode: by_mode[mode] for mode in MODES}

    def lines(self, run_id: str, kind: str) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in complete_lines(self.log_path)]
        return [row for row in rows if row["run"] == run_id and row["kind"] == kind]

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.dev.stop()


@pytest.fixture(scope="module")
def ts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TsStack]:
    stack = TsStack(tmp_path_factory.mktemp("ts-checkpoints"))
    try:
        stack.start_workers()
        yield stack
    finally:
        stack.stop()


def test_checkpointing_runs_every_step_in_one_request_and_completes_with_run_complete(ts: TsStack) -> None:
    runs = ts.runs("ts/steps", {"count": 5})
    expected = {"values": [0, 10, 20, 30, 40]}
    for mode, run in runs.items():
        assert run["status"] == "Completed", (mode, run)
        assert run["output"] == expected, mode
        assert sorted(row["step"] for row in ts.lines(run["run_id"], "step")) == [0, 1, 2, 3, 4], mode
    # One request per step plus the last one without checkpoints; one request in all with them
    # (each step stored through the checkpoint API, the end reported as RunComplete).
    assert len(ts.lines(runs["off"]["run_id"], "enter")) == 6
    assert len(ts.lines(runs["on"]["run_id"], "enter")) == 1
    assert len(ts.lines(runs["buffered"]["run_id"], "enter")) == 1


def test_a_non_retriable_error_fails_the_run_at_once(ts: TsStack) -> None:
    runs = ts.runs("ts/refused", {})
    for mode, run in runs.items():
        assert run["status"] == "Failed", (mode, run)
        assert run["output"]["name"] == "NonRetriableError", mode
        assert run["output"]["message"] == "refused for good", mode
    # Not retried, although the function allows 3 retries.
    assert len(ts.lines(runs["on"]["run_id"], "enter")) == 1
    assert len(ts.lines(runs["off"]["run_id"], "enter")) == 2  # the step's request, then the failing one


def test_an_error_on_the_last_attempt_fails_the_run(ts: TsStack) -> None:
    runs = ts.runs("ts/last-attempt", {})
    for mode, run in runs.items():
        assert run["status"] == "Failed", (mode, run)
        assert run["output"]["message"] == "failed on attempt 1", mode
        attempts = [row["attempt"] for row in ts.lines(run["run_id"], "enter")]
        assert attempts == [0, 1], mode


def test_errors_the_platform_makes_reach_the_sdk_with_their_message(ts: TsStack) -> None:
    runs = ts.runs("ts/invoke-missing", {})
    for mode, run in runs.items():
        assert run["status"] == "Completed", (mode, run)
        caught = run["output"]["caught"]
        assert "nobody-nothing" in caught["message"], (mode, caught)
        assert caught["message"] != "Unknown error", mode


def test_a_cancelled_run_stops_at_the_next_step_with_checkpointing_on(ts: TsStack) -> None:
    [event_id] = ts.dev.send([{"name": "ts/slow", "data": {"count": 40}}])
    wait_until(lambda: len(ts.dev.runs(event_id)) == len(MODES), 30, "three runs started")
    run = next(r for r in ts.dev.runs(event_id) if r["function_id"] == "ts-cp-on-slow")
    wait_until(lambda: len(ts.lines(run["run_id"], "step")) >= 2, 30, "two steps ran")
    resp = httpx.post(f"{ts.dev.url}/v1/runs/{run['run_id']}/cancel", timeout=30)
    assert resp.status_code in (200, 202), resp.text
    wait_until(lambda: _ended(ts, event_id, run), 60, "the cancelled run to end")
    [ended] = [r for r in ts.dev.runs(event_id) if r["run_id"] == run["run_id"]]
    assert ended["status"] == "Cancelled"
    ran = len(ts.lines(run["run_id"], "step"))
    assert ran < 40
    # The other two runs take their 12 s; by then a step run after the cancel would show.
    others = ts.dev.wait_runs([event_id], count=len(MODES), timeout=90)
    assert sorted(r["status"] for r in others) == ["Cancelled", "Completed", "Completed"]
    assert len(ts.lines(run["run_id"], "step")) == ran


def _ended(ts: TsStack, event_id: str, run: dict[str, Any]) -> bool:
    return any(r["run_id"] == run["run_id"] and r["status"] != "Running" for r in ts.dev.runs(event_id))
