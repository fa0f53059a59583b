"""`POST /v1/cancellations` against a real `connect dev` and worker, on each store engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import DevServer, start_worker, wait_for_log


@pytest.fixture
def dev(tmp_path: Path, database_url: str | None) -> Iterator[DevServer]:
    server = DevServer(tmp_path, database_url=database_url).start()
    yield server
    server.stop()


def statuses(http: httpx.Client, event_ids: list[str]) -> list[str]:
    runs = [http.get(f"/v1/events/{event_id}/runs").json()["data"] for event_id in event_ids]
    return [r[0]["status"] if r else "" for r in runs]


def wait_statuses(http: httpx.Client, event_ids: list[str], wanted: list[str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if statuses(http, event_ids) == wanted:
            return [http.get(f"/v1/events/{e}/runs").json()["data"][0] for e in event_ids]
        time.sleep(0.1)
    raise AssertionError(f"statuses {statuses(http, event_ids)}, not {wanted}")


def test_runs_of_a_function_are_cancelled_by_time_and_condition(dev: DevServer, tmp_path: Path) -> None:
    worker = start_worker(
        dev, tmp_path, target="tests.e2e.steps_app:apps", env={"STEPS_LOG": str(tmp_path / "steps.jsonl")}
    )
    try:
        wait_for_log(worker, "worker state ACTIVE", timeout=60)
        sleeping = dev.send([{"name": "steps/sleep", "data": {"seconds": 600, "group": g}} for g in "aab"])
        with httpx.Client(base_url=dev.url, timeout=30) as http:
            runs = wait_statuses(http, sleeping, ["Running"] * 3)
            function_id = runs[0]["function_id"]
            for body, message in [
                ({}, "function_id"),
                ({"function_id": function_id, "if": "event.data.group =="}, "invalid CEL expression"),
                ({"function_id": function_id, "started_after": "soon"}, "started_after must be an ISO-8601 time"),
            ]:
                resp = http.post("/v1/cancellations", json=body)
                assert resp.status_code == 400 and message in resp.json()["error"], resp.text
            # A range that holds none of them cancels nothing.
            later = {"function_id": function_id, "started_after": "2100-01-01T00:00:00Z"}
            assert http.post("/v1/cancellations", json=later).json() == {"data": {"cancelled": 0}}
            group_a = {
                "function_id": function_id,
                "started_before": "2100-01-01T00:00:00Z",
                "if": "event.data.group == 'a'",
            }
            # A dry run counts the runs the same body would cancel, and cancels none.
            resp = http.post("/v1/cancellations", json={**group_a, "dry_run": True})
            assert resp.status_code == 200 and resp.json() == {"data": {"matching": 2}}, resp.text
            assert statuses(http, sleeping) == ["Running"] * 3
            resp = http.post("/v1/cancellations", json=group_a)
            assert resp.status_code == 200 and resp.json() == {"data": {"cancelled": 2}}, resp.text
            wait_statuses(http, sleeping, ["Cancelled", "Cancelled", "Running"])
            # Again: the cancelled runs are not Running any more.
            assert http.post("/v1/cancellations", json=group_a).json() == {"data": {"cancelled": 0}}
            assert http.post("/v1/cancellations", json={**group_a, "dry_run": True}).json() == {"data": {"matching": 0}}
            every = http.post("/v1/cancellations", json={"function_id": function_id, "app_id": "ignored"})
            assert every.json() == {"data": {"cancelled": 1}}
            wait_statuses(http, sleeping, ["Cancelled"] * 3)
    finally:
        worker.stop()
