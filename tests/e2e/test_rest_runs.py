"""`GET /v1/runs` against a real `connect dev` and worker, on each store engine
(the `database_url` fixture: SQLite, then PostgreSQL)."""

from __future__ import annotations

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


def listed(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    """Every run the listing gives, page after page."""
    runs: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        resp = http.get("/v1/runs", params={**params, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        runs += body["data"]
        cursor = body["cursor"]
        if cursor is None:
            return runs
    raise AssertionError("the listing never ended")


def test_runs_are_listed_newest_first_filtered_and_paged(dev: DevServer, tmp_path: Path) -> None:
    worker = start_worker(dev, tmp_path)
    try:
        wait_for_log(worker, "worker state ACTIVE")
        ids = dev.send([{"name": "e2e/three", "data": {"n": i}} for i in range(3)])
        ids += dev.send([{"name": "e2e/fatal", "data": {}}])
        finished = dev.wait_runs(ids)
    finally:
        worker.stop()
    [failed] = [run for run in finished if run["status"] == "Failed"]
    newest_first = sorted(finished, key=lambda run: (run["run_started_at"], run["run_id"]), reverse=True)

    with httpx.Client(base_url=dev.url, timeout=30) as http:
        first = http.get("/v1/runs").json()
        assert first == {"data": newest_first, "cursor": None}
        assert all(run["run_started_at"].endswith("Z") for run in first["data"])
        # One run a page: the same runs in the same order, the last page says it is the last.
        assert listed(http, limit=1) == newest_first
        assert listed(http, status="failed") == [failed]
        assert listed(http, status="Completed") == [run for run in newest_first if run is not failed]
        assert listed(http, status="Cancelled") == []
        assert listed(http, function=failed["function_id"]) == [failed]
        assert listed(http, function="no-such-function") == []
        # From is inclusive and to exclusive, on the start.
        cut = newest_first[1]["run_started_at"]
        assert listed(http, **{"from": cut}) == [r for r in newest_first if r["run_started_at"] >= cut]
        assert listed(http, to=cut) == [r for r in newest_first if r["run_started_at"] < cut]
        assert listed(http, **{"from": "2000-01-01T00:00:00+00:00", "to": "2000-01-02T00:00:00"}) == []

        for params, message in [
            ({"status": "Sleeping"}, "status must be one of Running, Completed, Failed, Cancelled, Skipped"),
            ({"cursor": "not-a-cursor"}, "cursor is not one this API answered"),
            ({"from": "yesterday"}, "from must be an ISO-8601 time"),
            ({"to": "2026-13-01"}, "to must be an ISO-8601 time"),
            ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from must not be later than to"),
            ({"limit": "0"}, "limit must be from 1 to 500"),
            ({"limit": "501"}, "limit must be from 1 to 500"),
            ({"limit": "ten"}, "limit must be an integer"),
        ]:
            resp = http.get("/v1/runs", params=params)
            assert resp.status_code == 400, (params, resp.text)
            assert message in resp.json()["error"], (params, resp.text)


def test_a_run_is_rerun_with_a_copy_of_its_event(dev: DevServer, tmp_path: Path) -> None:
    worker = start_worker(dev, tmp_path)
    try:
        wait_for_log(worker, "worker state ACTIVE")
        [event_id] = dev.send([{"name": "e2e/three", "data": {"n": 5}}])
        [first] = dev.wait_runs([event_id])
        with httpx.Client(base_url=dev.url, timeout=30) as http:
            resp = http.post(f"/v1/runs/{first['run_id']}/rerun")
            assert resp.status_code == 200, resp.text
            rerun = resp.json()["data"]
            assert rerun["rerun_of"] == first["run_id"] and rerun["status"] == "Running"
            assert rerun["run_id"] != first["run_id"] and rerun["event_id"] != event_id
            [again] = dev.wait_runs([rerun["event_id"]])
            assert again["run_id"] == rerun["run_id"] and again["function_id"] == first["function_id"]
            assert (again["status"], again["output"]) == ("Completed", first["output"])
            copy = http.get(f"/v1/events/{rerun['event_id']}").json()["data"]
            assert (copy["name"], copy["data"]) == ("e2e/three", {"n": 5})
            # One run comes with its timeline.
            shown = http.get(f"/v1/runs/{again['run_id']}").json()["data"]
            assert shown["status"] == "Completed" and len(shown["steps"]) == 3
            assert shown["steps"] == http.get(f"/v1/runs/{again['run_id']}/steps").json()["data"]
            missing = http.post("/v1/runs/01JZZZZZZZZZZZZZZZZZZZZZZZ/rerun")
            assert missing.status_code == 404 and "not found" in missing.json()["error"]
    finally:
        worker.stop()
