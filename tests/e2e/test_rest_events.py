"""`GET /v1/events`, `GET /v1/events/{id}` and `POST /v1/events/{id}/replay`
against a real `connect dev` and worker, on each store engine."""

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


def test_events_are_listed_shown_with_their_runs_and_replayed(dev: DevServer, tmp_path: Path) -> None:
    worker = start_worker(dev, tmp_path)
    try:
        wait_for_log(worker, "worker state ACTIVE")
        [first] = dev.send([{"name": "e2e/three", "data": {"n": 1}}])
        [unmatched] = dev.send([{"name": "e2e/nobody-listens", "data": {"why": "typo"}}])
        [second] = dev.send([{"name": "e2e/three", "data": {"n": 2}, "user": {"id": "u1"}}])
        dev.wait_runs([first, second])
        with httpx.Client(base_url=dev.url, timeout=30) as http:
            body = http.get("/v1/events").json()
            assert body["cursor"] is None
            # The platform's own events (each run's `inngest/function.finished`) are listed too.
            sent = [e for e in body["data"] if not e["name"].startswith("inngest/")]
            assert [e["id"] for e in sent] == [second, unmatched, first]
            assert {e["name"] for e in body["data"]} - {e["name"] for e in sent} == {"inngest/function.finished"}
            newest = sent[0]
            assert (newest["name"], newest["data"], newest["user"]) == ("e2e/three", {"n": 2}, {"id": "u1"})
            assert newest["received_at"].endswith("Z") and newest["ts"].endswith("Z")
            # A page at a time, and by name.
            listed: list[str] = []
            cursor = None
            for _ in range(10):
                page = http.get("/v1/events", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
                listed += [e["id"] for e in page["data"]]
                cursor = page["cursor"]
                if cursor is None:
                    break
            assert listed == [e["id"] for e in body["data"]]
            named = http.get("/v1/events", params={"name": "e2e/three", "limit": 1}).json()
            assert [e["id"] for e in named["data"]] == [second]
            rest = http.get("/v1/events", params={"name": "e2e/three", "cursor": named["cursor"]}).json()
            assert [e["id"] for e in rest["data"]] == [first] and rest["cursor"] is None

            # One event: its runs, or that it matched no function.
            shown = http.get(f"/v1/events/{first}").json()["data"]
            assert shown["matched"] is True and shown["data"] == {"n": 1}
            assert [r["status"] for r in shown["runs"]] == ["Completed"]
            missed = http.get(f"/v1/events/{unmatched}").json()["data"]
            assert (missed["matched"], missed["runs"], missed["name"]) == (False, [], "e2e/nobody-listens")
            assert http.get("/v1/events/01JZZZZZZZZZZZZZZZZZZZZZZZ").status_code == 404

            # A replay is a new event with the same name and data, and starts its own run.
            replayed = http.post(f"/v1/events/{first}/replay")
            assert replayed.status_code == 200, replayed.text
            new_id = replayed.json()["data"]["id"]
            assert new_id != first and replayed.json()["data"]["replay_of"] == first
            [run] = dev.wait_runs([new_id])
            assert run["status"] == "Completed" and run["event_id"] == new_id
            again: dict[str, Any] = http.get(f"/v1/events/{new_id}").json()["data"]
            assert (again["name"], again["data"], again["matched"]) == ("e2e/three", {"n": 1}, True)
            assert http.post("/v1/events/01JZZZZZZZZZZZZZZZZZZZZZZZ/replay").status_code == 404

            for params, message in [
                ({"cursor": "%%%"}, "cursor is not one this API answered"),
                ({"limit": "1000"}, "limit must be from 1 to 500"),
            ]:
                resp = http.get("/v1/events", params=params)
                assert resp.status_code == 400 and message in resp.json()["error"], resp.text
    finally:
        worker.stop()


def test_an_event_a_debounce_or_batch_holds_has_matched_and_shows_its_run_once_started(
    dev: DevServer, tmp_path: Path
) -> None:
    """Held: which function holds it, why, and until when; then the run it
    started (a batch's events each show the batch's run); a debounced event
    a later one replaced says so."""
    worker = start_worker(dev, tmp_path, target="tests.e2e.flow_app:client")
    try:
        wait_for_log(worker, "worker state ACTIVE")
        with httpx.Client(base_url=dev.url, timeout=30) as http:

            def shown(event_id: str) -> dict[str, Any]:
                detail: dict[str, Any] = http.get(f"/v1/events/{event_id}").json()["data"]
                return detail

            [replaced] = dev.send([{"name": "flow/debounce", "data": {"user": "ann", "n": 1}}])
            first = shown(replaced)
            assert first["matched"] is True and first["runs"] == []
            [hold] = first["held"]
            assert (hold["function_id"], hold["kind"], hold["key"], hold["status"]) == (
                "sdk-flow-digest",
                "debounce",
                "ann",
                "held",
            )
            assert hold["due_at"] > hold["held_at"] and hold["run_id"] is None
            [kept] = dev.send([{"name": "flow/debounce", "data": {"user": "ann", "n": 2}}])
            assert [h["status"] for h in shown(replaced)["held"]] == ["replaced"]
            assert [h["status"] for h in shown(kept)["held"]] == ["held"]
            [run] = dev.wait_runs([kept])
            assert run["status"] == "Completed" and run["output"]["event"] == {"user": "ann", "n": 2}
            done = shown(kept)
            assert [(h["status"], h["run_id"]) for h in done["held"]] == [("started", run["run_id"])]
            assert [r["run_id"] for r in done["runs"]] == [run["run_id"]] and done["matched"]
            gone = shown(replaced)
            assert (gone["matched"], gone["runs"], [h["status"] for h in gone["held"]]) == (True, [], ["replaced"])

            batch = dev.send([{"name": "flow/batch", "data": {"team": "red", "n": n}} for n in range(2)])
            for event_id in batch:
                [held] = shown(event_id)["held"]
                assert (held["kind"], held["key"], held["status"]) == ("batch", "red", "held"), held
            batch += dev.send([{"name": "flow/batch", "data": {"team": "red", "n": 2}}])
            [batch_run] = dev.wait_runs(batch[:1])
            assert [e["n"] for e in batch_run["output"]["events"]] == [0, 1, 2]
            for event_id in batch:
                detail = shown(event_id)
                assert [r["run_id"] for r in detail["runs"]] == [batch_run["run_id"]], event_id
                assert [(h["status"], h["run_id"]) for h in detail["held"]] == [("started", batch_run["run_id"])]
    finally:
        worker.stop()
