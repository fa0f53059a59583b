"""How the gateway records and counts a worker's close, over real sockets.

Raw protocol clients close the way the official SDKs do after SIGTERM
(WORKER_PAUSE, then a close that names no reason): a clean shutdown when
nothing sent on the connection is still leased to it, not otherwise.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from connect.roles import StandaloneGateway
from protocol import connect_pb2 as pb
from protocol import frames
from tests.gateway.requests import discovery_request
from tests.gateway.stack import start_gateway

pytestmark = pytest.mark.anyio
APP = "bye"


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[StandaloneGateway]:
    server = await start_gateway(tmp_path / "connect.db")
    try:
        yield server
    finally:
        await server.close()


async def open_worker(gw: StandaloneGateway, instance: str) -> ClientConnection:
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"{gw.api_url}/v0/connect/start", content=b"")
    started = pb.StartResponse()
    started.ParseFromString(resp.content)
    fn = {
        "id": f"{APP}-f",
        "triggers": [{"event": f"{APP}/f"}],
        "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "ws", "url": "wss://connect"}}},
    }
    msg = pb.WorkerConnectRequestData(
        connection_id=started.connection_id,
        instance_id=instance,
        auth_data=pb.AuthData(session_token=started.session_token, sync_token=started.sync_token),
        capabilities=b"{}",
    )
    msg.apps.add(app_name=APP, functions=json.dumps([fn]).encode())
    ws = await connect(started.gateway_endpoint, subprotocols=["v0.connect.inngest.com"])  # type: ignore[list-item]
    await ws.recv()  # GATEWAY_HELLO
    await ws.send(frames.encode(pb.WORKER_CONNECT, msg))
    kind, _ = frames.decode(await asyncio.wait_for(ws.recv(), 30))  # type: ignore[arg-type]
    assert kind == pb.GATEWAY_CONNECTION_READY
    return ws


async def take_request(ws: ClientConnection) -> pb.GatewayExecutorRequestData:
    """The next request sent to this worker, acknowledged."""
    while True:
        kind, payload = frames.decode(await asyncio.wait_for(ws.recv(), 30))  # type: ignore[arg-type]
        if kind == pb.GATEWAY_EXECUTOR_REQUEST:
            break
    request = frames.parse_payload(pb.GatewayExecutorRequestData, payload)
    await ws.send(frames.encode(pb.WORKER_REQUEST_ACK, pb.WorkerRequestAckData(request_id=request.request_id)))
    return request


async def closed_as(gw: StandaloneGateway, reason: str) -> None:
    with anyio.fail_after(30):
        while gw.server.disconnects[reason] == 0:
            await anyio.sleep(0.01)


async def test_pause_then_close_with_nothing_leased_is_a_clean_shutdown(gw: StandaloneGateway) -> None:
    ws = await open_worker(gw, "leaving")
    await ws.send(frames.encode(pb.WORKER_PAUSE))
    await ws.close()  # 1000, no reason: the official Python SDK's close
    await closed_as(gw, "WORKER_SHUTDOWN")
    assert gw.server.disconnects == {"WORKER_SHUTDOWN": 1}


async def test_a_close_without_a_pause_is_unexpected(gw: StandaloneGateway) -> None:
    ws = await open_worker(gw, "vanishing")
    await ws.close()
    await closed_as(gw, "UNEXPECTED")
    assert gw.server.disconnects == {"UNEXPECTED": 1}


async def test_pause_then_close_with_a_request_still_leased_is_unexpected(gw: StandaloneGateway) -> None:
    ws = await open_worker(gw, "abandoning")
    dispatch = asyncio.ensure_future(gw.dispatcher.dispatch(discovery_request(APP, f"{APP}-f", f"{APP}/f")))
    try:
        await take_request(ws)
        await ws.send(frames.encode(pb.WORKER_PAUSE))
        await ws.close()  # the request was never answered
        await closed_as(gw, "UNEXPECTED")
        assert gw.server.disconnects == {"UNEXPECTED": 1}
    finally:
        dispatch.cancel()
        await asyncio.gather(dispatch, return_exceptions=True)
