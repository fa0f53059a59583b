"""The first request the gateway forwards in a loop turn leaves at once;
the others of that turn leave together, in writes of at most
`FORWARD_BATCH` frames (or `FORWARD_BATCH_BYTES`).

Real pieces: the gateway and its dispatcher over a real SQLite file, our
worker connected over a real socket; the gateway's writes are recorded as
the kinds of the frames each one carried.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connect import Client, Context, Step, TriggerEvent
from connect.gateway import connection
from connect.roles import StandaloneGateway
from protocol import connect_pb2 as pb
from protocol.payloads import STATUS_DONE
from tests.gateway.requests import discovery_request
from tests.gateway.stack import gateway_with_worker

pytestmark = pytest.mark.anyio

client = Client(app_id="batches")


@client.create_function(fn_id="echo", trigger=TriggerEvent(event="batches/echo"))
async def echo(ctx: Context, step: Step) -> Any:
    return len(ctx.event.data.get("pad", ""))


@pytest.fixture
def request_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many requests each write of the gateway carried (writes without one left out)."""
    seen: list[int] = []
    original = connection.Connection._send_now

    def recording(self: connection.Connection, frames: list[bytes]) -> bool:
        sent = original(self, frames)
        requests = sum(pb.ConnectMessage.FromString(f).kind == pb.GATEWAY_EXECUTOR_REQUEST for f in frames)
        if sent and requests:
            seen.append(requests)
        return sent

    monkeypatch.setattr(connection.Connection, "_send_now", recording)
    return seen


@pytest.fixture
async def stack(tmp_path: Path, request_writes: list[int]) -> AsyncIterator[StandaloneGateway]:
    async with gateway_with_worker(tmp_path / "gw.db", client, [echo], "batches") as (gw, _):
        yield gw


async def _dispatch_together(gw: StandaloneGateway, count: int, pad: str = "") -> None:
    requests = [discovery_request("batches", "batches-echo", "batches/echo", data={"pad": pad}) for _ in range(count)]
    async with asyncio.timeout(20):
        replies = await asyncio.gather(*(gw.dispatcher.dispatch(r) for r in requests))
    assert {(r.status, json.dumps(json.loads(r.body))) for r in replies} == {(STATUS_DONE, str(len(pad)))}


async def test_requests_of_one_turn_leave_in_batches(stack: StandaloneGateway, request_writes: list[int]) -> None:
    await _dispatch_together(stack, 40)  # all forwarded in one turn
    # The first at once, then 16 + 16 + the 7 left at the end of the turn.
    assert request_writes == [1, connection.FORWARD_BATCH, connection.FORWARD_BATCH, 7]


async def test_a_request_alone_leaves_at_once(
    stack: StandaloneGateway, request_writes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    written_inside: list[bool] = []
    original = connection.Connection.send_request

    async def watching(self: connection.Connection, request: pb.GatewayExecutorRequestData, now: float) -> None:
        before = len(request_writes)
        await original(self, request, now)
        written_inside.append(len(request_writes) > before)  # written before `send_request` returned

    monkeypatch.setattr(connection.Connection, "send_request", watching)
    for _ in range(3):
        await _dispatch_together(stack, 1)
    assert request_writes == [1, 1, 1]
    assert written_inside == [True, True, True]


async def test_big_requests_leave_in_batches_of_bounded_bytes(
    stack: StandaloneGateway, request_writes: list[int]
) -> None:
    pad = "x" * (connection.FORWARD_BATCH_BYTES // 4)
    await _dispatch_together(stack, 12, pad)
    assert sum(request_writes) == 12
    assert max(request_writes) <= 4  # each over a quarter of the bytes: never more than four in a write
