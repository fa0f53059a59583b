"""`POST /v1/checkpoint/...` against a real `connect dev`: the answers an
official TypeScript worker acts on (see `connect/api/checkpoints.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from connect.api import checkpoints
from protocol import ids
from tests.e2e.harness import DevServer


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("checkpoint-api")).start()
    yield server
    server.stop()


def _body(run: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "run_id": run,
        "fn_id": "app-fn",
        "qi_id": "q",
        "request_id": ids.new_ulid(),
        "steps": [{"op": "StepRun", "id": "a" * 40, "name": "a", "data": 1}],
        "ts": 0,
    }
    body.update(overrides)
    return body


def test_a_checkpoint_for_a_request_not_in_flight_is_a_stale_dispatch(dev: DevServer) -> None:
    run_id = ids.new_ulid()
    resp = httpx.post(f"{dev.url}/v1/checkpoint/{run_id}/async", json=_body(run_id))
    assert resp.status_code == 409
    assert "stale dispatch" in resp.json()["error"]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"steps": [{"op": "Sleep", "id": "b" * 40, "opts": {"duration": "1s"}}]}, "cannot checkpoint opcode Sleep"),
        ({"steps": []}, "no steps"),
        ({"request_id": "", "qi_id": ""}, "names no request"),
        ({"run_id": "another"}, "names run 'another'"),
        ({"steps": "nope"}, "not a checkpoint"),
    ],
)
def test_what_is_not_a_checkpoint_of_step_results_is_a_400(
    dev: DevServer, overrides: dict[str, Any], reason: str
) -> None:
    run_id = ids.new_ulid()
    resp = httpx.post(f"{dev.url}/v1/checkpoint/{run_id}/async", json=_body(run_id, **overrides))
    assert resp.status_code == 400
    assert reason in resp.json()["error"]


def test_an_unreadable_body_is_a_400(dev: DevServer) -> None:
    resp = httpx.post(f"{dev.url}/v1/checkpoint/{ids.new_ulid()}/async", content=b"{not json")
    assert resp.status_code == 400


def test_synchronous_checkpoints_say_why_they_are_not_served(dev: DevServer) -> None:
    for path in ("/v1/checkpoint", f"/v1/checkpoint/{ids.new_ulid()}/steps"):
        resp = httpx.post(f"{dev.url}{path}", json={"steps": []})
        assert resp.status_code == 501
        assert resp.json()["error"] == checkpoints.SYNC_UNSUPPORTED


def test_parse_takes_the_request_id_from_qi_id_when_request_id_is_missing() -> None:
    body = httpx.Request("POST", "/", json=_body("R", request_id="", qi_id="Q")).read()
    request_id, ops = checkpoints.parse("R", body)
    assert request_id == "Q"
    assert b'"op":"StepRun"' in ops
