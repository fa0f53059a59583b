"""How `GatewayDispatcher` ends a wait: a reply taken off the socket, a
reply stored before it, and the lease watchdog that ends the waits of a
worker gone silent.

Real pieces: the gateway and its dispatcher over a real SQLite file, our
worker connected over a real socket, running functions that hold their
request until the test lets them go.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connect import Client, Context, Step, TriggerEvent
from connect.dispatch import StepReply, WorkerStoppedResponding
from connect.roles import StandaloneGateway
from connect.worker.connection import WorkerConnection
from protocol import connect_pb2 as pb
from protocol.payloads import STATUS_DONE
from tests.gateway.requests import discovery_request
from tests.gateway.stack import gateway_with_worker

pytestmark = pytest.mark.anyio

client = Client(app_id="paths")
STARTED: list[str] = []
RELEASE = asyncio.Event()


@client.create_function(fn_id="held", trigger=TriggerEvent(event="paths/held"))
async def held(ctx: Context, step: Step) -> Any:
    STARTED.append(ctx.run_id)
    await RELEASE.wait()
    return "from the worker"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[StandaloneGateway, WorkerConnection]]:
    global RELEASE
    RELEASE = asyncio.Event()
    STARTED.clear()
    async with gateway_with_worker(tmp_path / "gw.db", client, [held], "paths") as (gw, worker):
        try:
            yield gw, worker
        finally:
            RELEASE.set()


async def _started(count: int) -> None:
    async with asyncio.timeout(10):
        while len(STARTED) < count:
            await asyncio.sleep(0.005)


async def test_a_reply_stored_first_is_the_answer_and_the_workers_is_acknowledged(
    stack: tuple[StandaloneGateway, WorkerConnection],
) -> None:
    gw, worker = stack
    request = discovery_request("paths", "paths-held", "paths/held")
    task = asyncio.create_task(gw.dispatcher.dispatch(request))
    await _started(1)
    # Another process stored a reply for this request while our worker ran it.
    earlier = pb.SDKResponse(request_id=request.request_id, status=pb.DONE, body=b'"stored earlier"')
    assert await gw.store.put_reply(request.request_id, earlier.SerializeToString()) is True
    RELEASE.set()
    async with asyncio.timeout(10):
        reply: StepReply = await task
        while not STARTED or request.request_id in worker._ledger.replies:
            await asyncio.sleep(0.005)  # the worker's own reply is ACKed all the same
    assert (reply.status, json.loads(reply.body)) == (STATUS_DONE, "stored earlier")
    assert await gw.store.get_reply(request.request_id) == earlier.SerializeToString()


async def test_a_silent_workers_requests_end_each_at_its_own_deadline(
    stack: tuple[StandaloneGateway, WorkerConnection],
) -> None:
    gw, _ = stack
    gw.dispatcher.leases.duration = 0.6  # the worker extends every 30 s: these lapse
    first = discovery_request("paths", "paths-held", "paths/held")
    second = discovery_request("paths", "paths-held", "paths/held")
    t0 = time.monotonic()
    first_task = asyncio.create_task(gw.dispatcher.dispatch(first))
    await _started(1)
    await asyncio.sleep(0.4)
    t1 = time.monotonic()
    second_task = asyncio.create_task(gw.dispatcher.dispatch(second))
    await _started(2)
    async with asyncio.timeout(20):
        with pytest.raises(WorkerStoppedResponding):
            await first_task
        first_ended = time.monotonic()
        assert not second_task.done()  # its lease runs on: one timer, set for the first, did not end it
        with pytest.raises(WorkerStoppedResponding):
            await second_task
        second_ended = time.monotonic()
    # Neither wait ended before its lease ran out (a lease has no grace after it).
    assert first_ended - t0 >= 0.6
    assert second_ended - t1 >= 0.6
    assert gw.dispatcher.pending == 0
