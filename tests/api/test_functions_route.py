"""`GET /v1/functions`, `/v1/apps` and `/v1/workers` on a real `connect serve`:
keyed like the rest of `/v1`, listing every registered function, served or
refused, by app, and the connections that serve them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from connect.gateway.auth import hash_signing_key
from protocol import connect_pb2 as pb
from protocol import frames
from tests.e2e.harness import DevServer

SIGNING_KEY = "signkey-test-00112233445566778899aabbccddeeff"
BEARER = {"Authorization": f"Bearer {hash_signing_key(SIGNING_KEY)}"}


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(
        tmp_path_factory.mktemp("functions-route"),
        command="serve",
        extra=["--signing-key", SIGNING_KEY, "--event-key", "ek"],
        headers=BEARER,
        event_key="ek",
    ).start()
    yield server
    server.stop()


def config(fn_id: str, **options: object) -> dict[str, object]:
    return {
        "id": fn_id,
        "triggers": [{"cron": "0 3 * * *", "jitter": "1m"}],
        "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "ws", "url": "wss://connect"}}},
        **options,
    }


async def register(server: DevServer, while_connected: Callable[[], Awaitable[None]] | None = None) -> None:
    """Register the app `shop` over a real connection; `while_connected` runs before it closes."""
    resp = httpx.post(f"{server.url}/v0/connect/start", content=b"", headers=BEARER)
    assert resp.status_code == 200, resp.text
    started = pb.StartResponse()
    started.ParseFromString(resp.content)
    msg = pb.WorkerConnectRequestData(
        connection_id=started.connection_id,
        instance_id="route-test",
        auth_data=pb.AuthData(session_token=started.session_token, sync_token=started.sync_token),
        capabilities=b"{}",
        sdk_language="typescript",
        sdk_version="v4.24.0",
    )
    functions = [
        config("shop-nightly", name="Nightly", rateLimit={"limit": 1, "period": "24h", "key": "event.data.k"}),
        config("shop-broken", name="Broken", singleton={"mode": "queue"}),
    ]
    msg.apps.add(app_name="shop", functions=json.dumps(functions).encode())
    async with connect(started.gateway_endpoint, subprotocols=["v0.connect.inngest.com"]) as ws:  # type: ignore[list-item]
        await ws.recv()  # GATEWAY_HELLO
        await ws.send(frames.encode(pb.WORKER_CONNECT, msg))
        kind, _ = frames.decode(await asyncio.wait_for(ws.recv(), 30))  # type: ignore[arg-type]
        assert kind == pb.GATEWAY_CONNECTION_READY
        if while_connected is not None:
            await while_connected()


def test_functions_need_the_signing_key(serve: DevServer) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}):
        resp = httpx.get(f"{serve.url}/v1/functions", headers=headers, timeout=30)
        assert resp.status_code == 401
        assert resp.json() == {
            "status": 401,
            "error": "authentication failed: send Authorization: Bearer <signing key>",
        }


def test_functions_list_served_and_refused_ones(serve: DevServer) -> None:
    asyncio.run(register(serve))
    resp = httpx.get(f"{serve.url}/v1/functions", headers=BEARER, timeout=30)
    assert resp.status_code == 200
    broken, nightly = resp.json()["data"]
    reason = broken.pop("reason")
    assert reason.startswith("invalid config: ") and "`$.singleton.mode`" in reason
    assert broken == {
        "id": "shop-broken",
        "app": "shop",
        "name": "Broken",
        "triggers": [],
        "status": "refused",
        "not_honoured": {},
        "options": {},
    }
    assert nightly == {
        "id": "shop-nightly",
        "app": "shop",
        "name": "Nightly",
        "triggers": [{"cron": "0 3 * * *", "jitter": "1m"}],
        "status": "active",
        "reason": None,
        "not_honoured": {"triggers[0].jitter": "1m"},
        "options": {"rateLimit": {"limit": 1, "period": "24h", "key": "event.data.k"}},
    }
    apps = httpx.get(f"{serve.url}/v1/apps", headers=BEARER, timeout=30).json()["data"]
    assert [(a["name"], [f["id"] for f in a["functions"]]) for a in apps] == [("shop", ["shop-broken", "shop-nightly"])]
    assert apps[0]["functions"][1] == nightly | {"reason": None}


def test_workers_list_the_connections_while_they_last(serve: DevServer) -> None:
    seen: list[dict[str, Any]] = []

    async def look() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.get(f"{serve.url}/v1/workers", headers=BEARER)
            assert resp.status_code == 200, resp.text
            seen.extend(resp.json()["data"])

    before = time.time()
    asyncio.run(register(serve, look))
    [worker] = seen
    assert (worker["instance_id"], worker["apps"], worker["functions"]) == ("route-test", ["shop"], ["shop-nightly"])
    assert (worker["state"], worker["in_flight"], worker["capacity"]) == ("ready", 0, None)
    assert worker["connection_id"] and worker["gateway"]
    heard = datetime.fromisoformat(worker["last_heartbeat"]).timestamp()
    assert before - 1 <= heard <= time.time() + 1
    # Once closed, the connection is gone.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(f"{serve.url}/v1/workers", headers=BEARER, timeout=30).json()["data"] == []:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the closed connection is still listed")


def test_apps_and_workers_need_the_signing_key(serve: DevServer) -> None:
    for path in ("/v1/apps", "/v1/workers"):
        assert httpx.get(f"{serve.url}{path}", timeout=30).status_code == 401, path
