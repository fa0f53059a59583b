"""The gateway role on its own (`StandaloneGateway`): what it serves, what it
refuses, and a start that cannot bind its API port."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from connect import Client, Context, Step, TriggerEvent
from connect.roles import ApiNotStarted, RunsElsewhere, start_standalone_gateway
from connect.roles.registration import Registration
from connect.store import DRAINING, ROLE_API, SqliteStore
from protocol import connect_pb2 as pb
from protocol import limits
from tests.gateway.stack import gateway_settings, gateway_with_worker, start_gateway

pytestmark = pytest.mark.anyio

client = Client(app_id="standalone")


@client.create_function(fn_id="one", trigger=TriggerEvent(event="standalone/one"))
async def one(ctx: Context, step: Step) -> Any:
    return 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/e/any-key"),
        ("GET", "/v1/runs/01JRUN"),
        ("POST", "/v1/runs/01JRUN/cancel"),
        ("GET", "/v1/events/01JEVENT/runs"),
        ("GET", "/v1/functions"),
    ],
)
async def test_events_and_run_queries_are_refused_with_the_reason(tmp_path: Path, method: str, path: str) -> None:
    gw = await start_gateway(tmp_path / "gw.db")
    try:
        async with httpx.AsyncClient(base_url=gw.api_url) as http:
            resp = await http.request(method, path, json=[{"name": "standalone/one", "data": {}}])
        assert resp.status_code == 503
        # No API process in this store's registry: the answer says so with an empty list.
        assert resp.json() == {"status": 503, "error": RunsElsewhere.REASON, "api_urls": []}
    finally:
        await gw.close()


async def test_refusals_name_the_api_processes_the_registry_lists(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path / "gw.db")
    ready = Registration(gw.store, "api-1", ROLE_API, address="http://api-1:8288", ttl=60)
    second = Registration(gw.store, "api-2", ROLE_API, address="http://api-2:8288", ttl=60)
    leaving = Registration(gw.store, "api-3", ROLE_API, address="http://api-3:8288", ttl=60)
    try:
        for registration in (ready, second, leaving):
            await registration.start()
        await leaving.set_state(DRAINING)
        async with httpx.AsyncClient(base_url=gw.api_url) as http:
            for path in ("/v1/runs", "/v1/apps", "/v1/events"):
                resp = await http.get(path)
                assert resp.status_code == 503
                # Ready ones only, oldest start first: a draining API process is on its way out.
                assert resp.json()["api_urls"] == ["http://api-1:8288", "http://api-2:8288"], path
            await second.stop()
            assert (await http.get("/v1/runs")).json()["api_urls"] == ["http://api-1:8288"]
            # The page itself is served; it points the user there (tests/dashboard).
            assert (await http.get("/")).status_code == 200
    finally:
        for registration in (ready, leaving):
            await registration.stop()
        await gw.close()


async def test_the_workers_of_a_gateway_on_its_own_are_listed(tmp_path: Path) -> None:
    async with gateway_with_worker(tmp_path / "gw.db", client, [one], "listed") as (gw, _worker):
        async with httpx.AsyncClient(base_url=gw.api_url) as http:
            deadline = time.monotonic() + 30
            while not (listed := (await http.get("/v1/workers")).json()["data"]):
                assert time.monotonic() < deadline, "the worker was never listed"
                await asyncio.sleep(0.05)
    assert [(w["instance_id"], w["apps"], w["state"]) for w in listed] == [("listed", ["standalone"], "ready")]


async def test_start_sends_workers_to_the_port_the_gateway_bound(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path / "gw.db")
    try:
        assert gw.gateway_port > 0 and gw.api_url != "http://127.0.0.1:0"
        async with httpx.AsyncClient(base_url=gw.api_url) as http:
            assert (await http.get("/health")).status_code == 200
            resp = await http.post("/v0/connect/start", content=b"")
        started = pb.StartResponse()
        started.ParseFromString(resp.content)
        assert started.gateway_endpoint == f"ws://127.0.0.1:{gw.gateway_port}{limits.CONNECT_PATH}"
    finally:
        await gw.close()


async def test_the_apps_workers_register_are_recorded_in_the_store(tmp_path: Path) -> None:
    async with gateway_with_worker(tmp_path / "gw.db", client, [one], "recorded") as (gw, _worker):
        deadline = time.monotonic() + 30
        while not (apps := await gw.store.list_apps()):
            assert time.monotonic() < deadline, "the worker's app was never recorded"
            await asyncio.sleep(0.01)
    assert [(app.app_name, [fn.id for fn in app.functions]) for app in apps] == [("standalone", ["standalone-one"])]
    # An executor started later on the same file reads it back.
    store = await SqliteStore.open(tmp_path / "gw.db")
    try:
        assert [app.app_name for app in await store.list_apps()] == ["standalone"]
    finally:
        await store.close()


async def test_ready_answers_503_once_the_gateway_drains(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path / "gw.db")
    try:
        async with httpx.AsyncClient(base_url=gw.api_url) as http:
            assert (await http.get("/ready")).status_code == 200
            await gw.server.drain(timeout=0)
            assert (await http.get("/ready")).status_code == 503
    finally:
        await gw.close()


async def test_a_taken_api_port_is_an_error_and_releases_the_gateway_port(tmp_path: Path) -> None:
    with socket.socket() as taken, socket.socket() as probe:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        probe.bind(("127.0.0.1", 0))
        gateway_port = probe.getsockname()[1]
        probe.close()
        settings = gateway_settings(tmp_path / "gw.db", port=taken.getsockname()[1], gateway_port=gateway_port)
        with pytest.raises(
            ApiNotStarted, match=f"the HTTP API port {settings.port} on 127.0.0.1 \\(--port\\) is already in use"
        ):
            await start_standalone_gateway(settings)
    # The gateway role that started first has let go of its port.
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", gateway_port))
