"""A draining gateway closes each connection once nothing is in flight on it.

Official SDKs keep the old connection open after GATEWAY_CLOSING until a
new one is up elsewhere; with no other gateway to go to, waiting for them
would hold the drain for its whole timeout. Raw protocol clients over real
sockets stand in for such workers (they never close on their own).
"""

from __future__ import annotations

import asyncio

import anyio
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from connect.roles import StandaloneGateway
from protocol import codes, frames
from protocol import connect_pb2 as pb
from tests.gateway.requests import discovery_request
from tests.gateway.test_disconnect_reasons import APP, gw, open_worker, take_request  # noqa: F401 - the fixture

pytestmark = pytest.mark.anyio

#: Far longer than the test may take: a drain that waits for it fails the test.
LONG_DRAIN = 600.0


async def frames_until_closed(ws: ClientConnection) -> list[int]:
    kinds: list[int] = []
    with anyio.fail_after(60):
        try:
            while True:
                kind, _ = frames.decode(await ws.recv())  # type: ignore[arg-type]
                if kind != pb.GATEWAY_HEARTBEAT:
                    kinds.append(kind)
        except ConnectionClosed:
            return kinds


async def test_an_idle_connection_is_closed_as_soon_as_the_drain_begins(gw: StandaloneGateway) -> None:  # noqa: F811
    ws = await open_worker(gw, "idle")
    drain = asyncio.ensure_future(gw.server.drain(timeout=LONG_DRAIN))
    assert await frames_until_closed(ws) == [pb.GATEWAY_CLOSING]
    assert ws.close_code == codes.CloseCode.GOING_AWAY and ws.close_reason == codes.GATEWAY_CLOSING
    with anyio.fail_after(60):
        await drain


async def test_a_connection_is_closed_once_its_last_reply_is_stored_and_acknowledged(gw: StandaloneGateway) -> None:  # noqa: F811
    ws = await open_worker(gw, "busy")
    dispatch = asyncio.ensure_future(gw.dispatcher.dispatch(discovery_request(APP, f"{APP}-f", f"{APP}/f")))
    request = await take_request(ws)
    # A lease extension's answer shows the ACK before it was handled (an unACKed request goes elsewhere).
    extend = pb.WorkerRequestExtendLeaseData(request_id=request.request_id, lease_id=request.lease_id)
    await ws.send(frames.encode(pb.WORKER_REQUEST_EXTEND_LEASE, extend))
    while True:
        kind, _ = frames.decode(await asyncio.wait_for(ws.recv(), 30))  # type: ignore[arg-type]
        if kind == pb.WORKER_REQUEST_EXTEND_LEASE_ACK:
            break
    drain = asyncio.ensure_future(gw.server.drain(timeout=LONG_DRAIN))
    kind, _ = frames.decode(await asyncio.wait_for(ws.recv(), 30))  # type: ignore[arg-type]
    assert kind == pb.GATEWAY_CLOSING
    # The request is still leased to this worker: the connection stays open,
    # and still answers what comes on it after the drain began.
    await ws.send(frames.encode(pb.WORKER_REQUEST_EXTEND_LEASE, extend))
    while True:
        kind, _ = frames.decode(await asyncio.wait_for(ws.recv(), 30))  # type: ignore[arg-type]
        if kind == pb.WORKER_REQUEST_EXTEND_LEASE_ACK:
            break
    assert ws.close_code is None, (ws.close_code, ws.close_reason)
    assert not drain.done()
    reply = pb.SDKResponse(request_id=request.request_id, status=pb.DONE, body=b'"done"')
    await ws.send(frames.encode(pb.WORKER_REPLY, reply))
    kinds = await frames_until_closed(ws)
    assert kinds == [pb.WORKER_REPLY_ACK]  # the ACK leaves before the close
    assert ws.close_code == codes.CloseCode.GOING_AWAY
    with anyio.fail_after(60):
        await drain
        assert (await dispatch).body == b'"done"'
