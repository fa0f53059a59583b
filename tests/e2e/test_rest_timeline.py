"""`GET /v1/runs/{id}/steps` against a real `connect dev`: each step's name as
its author wrote it, kind, attempts, times, output or error; sleeps and waits
with their due time and how they ended. Our SDK on each store engine, and the
official Python SDK."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import DevServer, Proc, start_worker, wait_for_log


@pytest.fixture
def dev(tmp_path: Path, database_url: str | None) -> Iterator[DevServer]:
    server = DevServer(tmp_path, database_url=database_url).start()
    yield server
    server.stop()


def steps_of(dev: DevServer, run_id: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{dev.url}/v1/runs/{run_id}/steps", timeout=30)
    assert resp.status_code == 200, resp.text
    steps: list[dict[str, Any]] = resp.json()["data"]
    return steps


def at(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text)


def run_of(dev: DevServer, event_id: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        runs = dev.runs(event_id)
        if runs:
            run_id: str = runs[0]["run_id"]
            return run_id
        time.sleep(0.1)
    raise AssertionError(f"event {event_id} started no run")


def check_timelines(dev: DevServer, sdk: str) -> None:
    deadline = time.monotonic() + 120
    [sleep_event, compensate_event, wait_event] = dev.send(
        [
            {"name": "steps/sleep", "data": {"seconds": 1, "mode": "ms"}},
            {"name": "steps/compensate", "data": {}},
            {"name": "steps/wait", "data": {"id": "order-7", "timeout": 600}},
        ]
    )
    # The wait is listed while it waits, with the time it gives up.
    waiter = run_of(dev, wait_event, deadline)
    waiting: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not waiting:
        waiting = [s for s in steps_of(dev, waiter) if s["status"] == "Waiting"]
        time.sleep(0.1)
    [pending] = waiting
    assert (pending["name"], pending["kind"], pending["ended_at"]) == ("payment", "wait", None)
    assert 590 <= (at(pending["due_at"]) - at(pending["started_at"])).total_seconds() <= 610
    dev.send([{"name": "billing/paid", "data": {"id": "order-7"}}])
    runs = dev.wait_runs([sleep_event, compensate_event, wait_event])
    assert [r["status"] for r in runs] == ["Completed", "Completed", "Completed"]

    plan, nap, woke = steps_of(dev, runs[0]["run_id"])
    assert [(s["name"], s["kind"], s["status"]) for s in (plan, nap, woke)] == [
        ("plan", "run", "Completed"),
        ("nap", "sleep", "Completed"),
        ("woke", "run", "Completed"),
    ]
    assert plan["attempts"] == 1 and isinstance(plan["output"], float) and plan["error"] is None
    assert at(plan["started_at"]) <= at(plan["ended_at"]) <= at(nap["started_at"])
    # Timers may fire a millisecond or so before the due time (the event loop's clock granularity).
    assert nap["ended_by"] == "woke" and (at(nap["ended_at"]) - at(nap["due_at"])).total_seconds() >= -0.05
    assert 0.9 <= (at(nap["due_at"]) - at(nap["started_at"])).total_seconds() <= 1.5

    charge, refund = steps_of(dev, runs[1]["run_id"])
    assert (charge["name"], charge["status"], charge["attempts"]) == ("charge", "Failed", 2)
    assert "the card service is down" in charge["error"]["message"] and charge["output"] is None
    assert (refund["name"], refund["status"], refund["output"]) == ("refund", "Completed", "refunded")

    ready, payment, record = steps_of(dev, runs[2]["run_id"])
    assert [s["name"] for s in (ready, payment, record)] == ["ready", "payment", "record"]
    assert (payment["kind"], payment["ended_by"]) == ("wait", "event")
    assert payment["output"]["name"] == "billing/paid" and payment["output"]["data"] == {"id": "order-7"}

    check_checkpointed_and_cancelled(dev, sdk)

    missing = httpx.get(f"{dev.url}/v1/runs/01JZZZZZZZZZZZZZZZZZZZZZZZ/steps", timeout=30)
    assert missing.status_code == 404 and "not found" in missing.json()["error"]


def check_checkpointed_and_cancelled(dev: DevServer, sdk: str) -> None:
    """Steps a worker ran one after another in one request (our SDK's
    checkpoints) have their start and attempts; a send is its own kind where
    the SDK says so; a sleep the run's cancel cut short is listed, ended by it."""
    deadline = time.monotonic() + 120
    [emit_event, nap_event] = dev.send(
        [{"name": "steps/emit", "data": {"tag": "timeline"}}, {"name": "steps/sleep", "data": {"seconds": 600}}]
    )
    [emitted] = dev.wait_runs([emit_event])
    assert emitted["status"] == "Completed", emitted
    announce, after = steps_of(dev, emitted["run_id"])
    # The official Python SDK's step.send_event is a step.run on the wire: nothing tells them apart.
    assert (announce["name"], announce["kind"]) == ("announce", "send_event" if sdk == "ours" else "run")
    assert announce["output"] == emitted["output"]["ids"]
    assert (after["name"], after["kind"], after["output"]) == ("after", "run", "after sending")
    for step in (announce, after):
        assert step["attempts"] == 1, step
        assert at(step["started_at"]) <= at(step["ended_at"]), step
    assert at(announce["ended_at"]) <= at(after["started_at"])

    napper = run_of(dev, nap_event, deadline)
    while time.monotonic() < deadline and not [s for s in steps_of(dev, napper) if s["status"] == "Sleeping"]:
        time.sleep(0.1)
    resp = httpx.post(f"{dev.url}/v1/runs/{napper}/cancel", timeout=30)
    assert resp.status_code in (200, 202), resp.text
    [cancelled] = dev.wait_runs([nap_event])
    assert cancelled["status"] == "Cancelled", cancelled
    plan, nap = steps_of(dev, napper)
    assert (plan["name"], plan["status"]) == ("plan", "Completed")
    assert (nap["name"], nap["kind"], nap["status"], nap["ended_by"], nap["output"]) == (
        "nap",
        "sleep",
        "Cancelled",
        "cancelled",
        None,
    )
    assert at(nap["started_at"]) <= at(nap["ended_at"]) < at(nap["due_at"])


def test_our_sdk_timeline(dev: DevServer, tmp_path: Path) -> None:
    worker = start_worker(
        dev, tmp_path, target="tests.e2e.steps_app:apps", env={"STEPS_LOG": str(tmp_path / "steps.jsonl")}
    )
    try:
        wait_for_log(worker, "worker state ACTIVE", timeout=60)
        check_timelines(dev, "ours")
    finally:
        worker.stop()


def test_official_python_sdk_timeline(dev: DevServer, tmp_path: Path) -> None:
    env = dict(os.environ, CONNECT_API_URL=dev.url, WORKER_NAME="official", STEPS_LOG=str(tmp_path / "steps.jsonl"))
    worker = Proc([sys.executable, "tests/compat/official_steps_app.py", "main"], env, tmp_path / "official.log")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            functions = httpx.get(f"{dev.url}/v1/functions", timeout=30).json()["data"]
            if any(f.get("status") == "active" for f in functions):
                break
            time.sleep(0.2)
        check_timelines(dev, "official")
    finally:
        worker.stop()
