"""A worker cut off from the gateway mid-step.

The gateway drops its connection for not reading what it sends, but the step
it was running keeps its lease until the gateway would have closed the
connection as silent, so the reply the worker delivers when it is back
answers the step, which does not run again. The worker, for its part,
connects again as soon as it stops hearing the gateway, without waiting for
the old connection's close.

Real pieces: the gateway role over a real SQLite file, a raw protocol client
over a real socket with a small receive buffer (it stops reading, as a cut
link does), `/v0/connect/flush` over HTTP, and our worker behind a proxy that
silences its connection.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from connect import Client, Context, Step, TriggerEvent
from connect.dispatch import StepReply, StepRequest, WorkerStoppedResponding
from connect.roles import StandaloneGateway
from connect.worker.connection import connect as connect_worker
from protocol import codes, frames
from protocol import connect_pb2 as pb
from protocol.leases import EXTENSION_SLACK
from protocol.payloads import STATUS_DONE
from tests.e2e.proxy import BlockingProxy
from tests.gateway.requests import discovery_request
from tests.gateway.stack import start_gateway
from tests.gateway.test_disconnect_reasons import closed_as, take_request

pytestmark = pytest.mark.anyio
APP = "cut"
#: The gateway closes a silent connection after five missed heartbeats: 10 s here.
HEARTBEAT = 2.0
SILENT_LIMIT = 5 * HEARTBEAT


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[StandaloneGateway]:
    server = await start_gateway(
        tmp_path / "connect.db", heartbeat_interval=HEARTBEAT, lease_duration=60.0, extend_lease_interval=1.0
    )
    try:
        yield server
    finally:
        await server.close()


async def open_small_worker(gw: StandaloneGateway, instance: str) -> ClientConnection:
    """A raw worker whose socket reads little at a time (4 KiB receive
    buffer, one queued message): once it stops reading, the gateway's sends
    back up at once."""
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"{gw.api_url}/v0/connect/start", content=b"")
    started = pb.StartResponse.FromString(resp.content)
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
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.gateway_port))
    ws = await connect(
        started.gateway_endpoint,
        sock=sock,
        subprotocols=["v0.connect.inngest.com"],  # type: ignore[list-item]
        max_queue=1,
        max_size=None,
    )
    await ws.recv()  # GATEWAY_HELLO
    await ws.send(frames.encode(pb.WORKER_CONNECT, msg))
    kind, _ = frames.decode(await asyncio.wait_for(ws.recv(), 30))  # type: ignore[arg-type]
    assert kind == pb.GATEWAY_CONNECTION_READY
    return ws


def _request() -> StepRequest:
    return discovery_request(APP, f"{APP}-f", f"{APP}/f")


async def _cut_off_mid_step(
    gw: StandaloneGateway,
) -> tuple[asyncio.Future[StepReply], StepRequest, float, list[asyncio.Future[StepReply]]]:
    """A worker takes a step, heartbeats once, then is cut off (reads and
    sends nothing). Requests that pile up on its socket (260 KB each) get it
    dropped as a slow reader. Returns the step's dispatch, its request, when
    the worker last spoke, and the piled-up dispatches."""
    ws = await open_small_worker(gw, "cut-off")
    request = _request()
    held = asyncio.ensure_future(gw.dispatcher.dispatch(request))
    await take_request(ws)
    await ws.send(frames.encode(pb.WORKER_HEARTBEAT))
    last_spoke = time.time()
    pad = "z" * 260_000
    piled = [
        asyncio.ensure_future(gw.dispatcher.dispatch(discovery_request(APP, f"{APP}-f", f"{APP}/f", data={"pad": pad})))
        for _ in range(40)
    ]
    await closed_as(gw, codes.SLOW_READER)
    ws.transport.abort()  # the worker never hears of it: it is cut off
    return held, request, last_spoke, piled


async def _settle(futures: list[asyncio.Future[StepReply]]) -> None:
    for f in futures:
        f.cancel()
    await asyncio.gather(*futures, return_exceptions=True)


async def test_a_step_of_a_worker_dropped_for_not_reading_is_answered_by_its_late_reply(gw: StandaloneGateway) -> None:
    held, request, _, piled = await _cut_off_mid_step(gw)
    try:
        dropped_at = time.time()
        # Past the slack a closed connection's overdue extensions get: the step
        # must still be the cut-off worker's.
        await anyio.sleep(EXTENSION_SLACK + 1.0)
        assert not held.done(), f"the step was handed on {time.time() - dropped_at:.1f} s after the drop"
        # The link is back: the worker delivers its reply over HTTP.
        reply = pb.SDKResponse(request_id=request.request_id, status=pb.DONE, body=b'"from the cut-off worker"')
        async with httpx.AsyncClient() as http:
            resp = await http.post(f"{gw.api_url}/v0/connect/flush", content=reply.SerializeToString())
        assert resp.status_code == 200, resp.text
        with anyio.fail_after(10):
            answered = await held
        assert (answered.status, json.loads(answered.body)) == (STATUS_DONE, "from the cut-off worker")
    finally:
        await _settle([held, *piled])


async def test_a_dropped_workers_step_runs_elsewhere_once_it_would_have_been_silent_too_long(
    gw: StandaloneGateway,
) -> None:
    """The bound: no later than when the silent connection would have been
    closed (five heartbeats after the worker last spoke), plus the slack."""
    held, _, last_spoke, piled = await _cut_off_mid_step(gw)
    try:
        with anyio.fail_after(SILENT_LIMIT + EXTENSION_SLACK + 30):
            with pytest.raises(WorkerStoppedResponding):
                await held
        assert time.time() >= last_spoke + SILENT_LIMIT
    finally:
        await _settle([held, *piled])


sdk_client = Client(app_id="cut-sdk")


@sdk_client.create_function(fn_id="noop", trigger=TriggerEvent(event="cut-sdk/noop"))
async def noop(ctx: Context, step: Step) -> None:
    return None


async def test_a_worker_that_stops_hearing_its_gateway_connects_again_at_once(gw: StandaloneGateway) -> None:
    """The link goes silent (no reset, no FIN): after two unanswered
    heartbeats the worker connects again, while the gateway still holds the
    silent connection (it closes one after five); it does not first wait for
    the close handshake the silent gateway cannot answer."""
    proxy = BlockingProxy(gw.gateway_port)
    port = proxy.start()
    sdk_client.api_base_url = gw.api_url
    worker = await connect_worker(
        [(sdk_client, [noop])],
        instance_id="silenced",
        handle_shutdown_signals=(),
        gateway_url=f"ws://127.0.0.1:{port}/v0/connect",
    )
    try:

        def ids() -> set[str]:
            return {c.connection_id for c in gw.server.connections if c.instance_id == "silenced"}

        first = ids()
        assert len(first) == 1
        proxy.freeze()
        with anyio.fail_after(60):
            while not ids() - first:
                held_open = first <= ids()
                await anyio.sleep(0.05)
        assert held_open, "the worker connected again only after the gateway had closed the silent connection"
    finally:
        await worker.close()
        proxy.stop()
