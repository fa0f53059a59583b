"""`connect send`, `runs`, `run`, `cancel` and `replay` against a real
`connect dev` (on each store engine) and a `connect serve` with keys, and the
`GET /v1/runs` and `GET /v1/events/{id}` routes they read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import ROOT, DevServer, Proc, start_worker, wait_for_log, wait_until

SIGNING_KEY = "signkey-test-0123456789abcdef0123456789abcdef"
EVENT_KEY = "ek-cli"


def connect(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    return subprocess.run(
        [sys.executable, "-m", "connect", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean | (env or {}),
        cwd=ROOT,
    )


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    out = connect(*args, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def dev(tmp_path: Path, database_url: str | None) -> Iterator[DevServer]:
    server = DevServer(tmp_path, database_url=database_url).start()
    yield server
    server.stop()


@pytest.fixture
def worker(dev: DevServer, tmp_path: Path) -> Iterator[Proc]:
    proc = start_worker(dev, tmp_path)
    wait_for_log(proc, "worker state ACTIVE")
    yield proc
    proc.stop()


def _run(dev: DevServer, run_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok("run", run_id, "--json", env={"CONNECT_API_URL": dev.url}))
    return data


def test_send_runs_run_replay_and_cancel(dev: DevServer, worker: Proc) -> None:
    env = {"CONNECT_API_URL": dev.url}
    event_id = ok("send", "e2e/three", "--data", '{"n": 4}', env=env).strip()
    (run,) = dev.wait_runs([event_id], timeout=60)
    assert run["status"] == "Completed"

    # `connect runs`: a table, newest first, filtered by status and function.
    table = ok("runs", env=env).splitlines()
    assert table[0].split() == ["RUN", "STATUS", "FUNCTION", "STARTED", "ENDED"]
    assert table[1].split()[:3] == [run["run_id"], "Completed", "e2e-app-three-steps"]
    assert ok("runs", "--status", "Running", env=env).splitlines()[1:] == []
    assert ok("runs", "--function", "e2e-app-fatal", env=env).splitlines()[1:] == []
    listed = json.loads(ok("runs", "--status", "Completed", "--function", "e2e-app-three-steps", "--json", env=env))
    assert [r["run_id"] for r in listed] == [run["run_id"]]

    # `connect run ID`: the run readably, with its output.
    shown = ok("run", run["run_id"], "--url", dev.url)
    assert f"run:      {run['run_id']}" in shown
    assert "status:   Completed" in shown
    assert f"event:    {event_id}" in shown
    assert f"output:   {json.dumps(run['output'])}" in shown and '"n": 4' in shown

    # `connect replay`: the same name and data as a new event, which starts a new run.
    again = ok("replay", event_id, env=env).strip()
    assert again != event_id
    (rerun,) = dev.wait_runs([again], timeout=60)
    assert (rerun["function_id"], rerun["output"]) == ("e2e-app-three-steps", run["output"])
    newest = json.loads(ok("runs", "--json", "--limit", "1", env=env))
    assert [r["run_id"] for r in newest] == [rerun["run_id"]]

    # `connect cancel`: a run in a long step stops once the step finishes.
    slow = ok("send", "e2e/slow", "--data", '{"seconds": 12}', env=env).strip()
    wait_until(lambda: bool(dev.runs(slow)), 30, "the slow run to start")
    (running,) = dev.runs(slow)
    cancelled = ok("cancel", running["run_id"], env=env)
    assert running["run_id"] in cancelled
    wait_until(lambda: _run(dev, running["run_id"])["status"] == "Cancelled", 60, "the run to be cancelled")
    assert "Cancelled" in ok("runs", "--status", "Cancelled", env=env)

    # Cancelling again is no error; a run that completed, or does not exist: one line, status 1.
    assert ok("cancel", running["run_id"], env=env).strip() == f"run {running['run_id']}: Cancelled"
    out = connect("cancel", run["run_id"], env=env)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"connect cancel: cannot cancel run {run['run_id']}: run {run['run_id']} already ended: Completed"
    )
    out = connect("run", "01NOSUCHRUN", env=env)
    assert (out.returncode, out.stderr.strip()) == (
        1,
        "connect run: GET /v1/runs/01NOSUCHRUN answered 404: run 01NOSUCHRUN not found",
    )


def test_the_listing_routes_refuse_bad_input(dev: DevServer) -> None:
    with httpx.Client(base_url=dev.url, timeout=30) as http:
        assert http.get("/v1/runs", params={"status": "Done"}).json()["error"].startswith("status must be one of")
        assert http.get("/v1/runs", params={"limit": "0"}).status_code == 400
        assert http.get("/v1/runs", params={"limit": "501"}).status_code == 400
        assert http.get("/v1/events/nope").status_code == 404
        (event_id,) = dev.send([{"name": "cli/stored", "data": {"k": [1, 2]}, "user": {"id": "u1"}}])
        event = http.get(f"/v1/events/{event_id}").json()["data"]
    assert (event["id"], event["name"], event["data"], event["user"]) == (
        event_id,
        "cli/stored",
        {"k": [1, 2]},
        {"id": "u1"},
    )


def test_a_server_that_cannot_be_reached_is_named_with_the_setting() -> None:
    out = connect("runs", env={"CONNECT_API_URL": "http://127.0.0.1:9"})
    assert out.returncode == 1
    assert out.stderr.startswith("connect runs: cannot reach the platform at http://127.0.0.1:9: ")
    assert out.stderr.strip().endswith("(set the URL with --url, or CONNECT_API_URL)")


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(
        tmp_path_factory.mktemp("serve"),
        command="serve",
        extra=["--signing-key", SIGNING_KEY, "--event-key", EVENT_KEY],
        headers={"Authorization": f"Bearer {SIGNING_KEY}"},
        event_key=EVENT_KEY,
    ).start()
    yield server
    server.stop()


def test_serve_takes_the_keys_and_refuses_wrong_ones(serve: DevServer) -> None:
    keys = {"CONNECT_API_URL": serve.url, "CONNECT_SIGNING_KEY": SIGNING_KEY, "CONNECT_EVENT_KEYS": EVENT_KEY}
    event_id = ok("send", "cli/keyed", env=keys).strip()
    event = httpx.get(f"{serve.url}/v1/events/{event_id}", headers=serve.headers, timeout=30).json()["data"]
    assert event["name"] == "cli/keyed"
    assert ok("runs", env=keys).splitlines()[0].startswith("RUN")
    assert ok("replay", event_id, "--event-key", EVENT_KEY, env=keys).strip() != event_id

    out = connect("runs", "--url", serve.url, "--signing-key", "signkey-test-" + "0" * 32)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"connect runs: {serve.url} refused the signing key (authentication failed: send Authorization: Bearer "
        "<signing key>): give the one the platform was started with (--signing-key, or CONNECT_SIGNING_KEY)"
    )
    out = connect("send", "cli/keyed", "--url", serve.url, "--event-key", "ek-wrong")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"connect send: {serve.url} refused the event key (Event key not found): give one the platform accepts "
        "(--event-key, or CONNECT_EVENT_KEY)"
    )
    # Without a key the routes are refused too (no key: the same message).
    out = connect("run", "01ANY", "--url", serve.url)
    assert out.returncode == 1 and "refused the signing key" in out.stderr
