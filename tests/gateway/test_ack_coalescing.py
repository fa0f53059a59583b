"""Our worker holds a new request's WORKER_REQUEST_ACK back for up to
`ACK_COALESCE_WINDOW`, so a short step's ACK and reply leave in one write;
a longer step's ACK still leaves on time, ahead of its reply.

Real pieces: the gateway and its dispatcher over a real SQLite file, our
worker connected over a real socket; the worker's writes are recorded as
the kinds of the frames each one carried.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from connect import Client, Context, Step, TriggerEvent
from connect.dispatch import StepRequest
from connect.roles import StandaloneGateway
from connect.worker import link
from connect.worker.connection import WorkerConnection
from protocol import connect_pb2 as pb
from protocol import limits
from protocol.payloads import (
    STATUS_DONE,
)
from tests.gateway.requests import discovery_request
from tests.gateway.stack import gateway_with_worker

pytestmark = pytest.mark.anyio

client = Client(app_id="acks")
RELEASE = asyncio.Event()  # a new one per test (`stack`): an Event keeps the loop it was first awaited on


@client.create_function(fn_id="quick", trigger=TriggerEvent(event="acks/quick"))
async def quick(ctx: Context, step: Step) -> Any:
    return "quick"


@client.create_function(fn_id="slow", trigger=TriggerEvent(event="acks/slow"))
async def slow(ctx: Context, step: Step) -> Any:
    await RELEASE.wait()
    return "slow"


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The kinds of the frames of every write our worker makes."""
    seen: list[list[int]] = []
    original = link.WorkerWebSocket.send_frames_now

    def recording(self: link.WorkerWebSocket, frames: Sequence[bytes]) -> None:
        seen.append([pb.ConnectMessage.FromString(f).kind for f in frames])
        original(self, frames)

    monkeypatch.setattr(link.WorkerWebSocket, "send_frames_now", recording)
    return seen


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[StandaloneGateway, WorkerConnection]]:
    global RELEASE
    RELEASE = asyncio.Event()
    async with gateway_with_worker(tmp_path / "gw.db", client, [quick, slow], "acks") as (gw, worker):
        try:
            yield gw, worker
        finally:
            RELEASE.set()


async def timer_passes(worker: WorkerConnection, count: int) -> None:
    """Wake the worker's timers (heartbeats, leases, flushes; on their own
    loop, at least once a second) and wait until they went round `count`
    whole times: each clear of the wake-up means a pass reached its wait."""
    tick, loop = worker._tick, worker._loop
    assert tick is not None and loop is not None

    async def go_round() -> None:
        for _ in range(count + 1):
            tick.set()
            while tick.is_set():
                await asyncio.sleep(0.001)

    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(go_round(), loop))


def kinds(writes: list[list[int]]) -> list[int]:
    return [kind for write in writes for kind in write]


def request(fn: str) -> StepRequest:
    return discovery_request("acks", f"acks-{fn}", f"acks/{fn}")


async def test_a_quick_steps_ack_and_reply_leave_in_one_write(
    stack: tuple[StandaloneGateway, WorkerConnection], writes: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, _ = stack
    monkeypatch.setattr(limits, "ACK_COALESCE_WINDOW", 30.0)  # however slow this machine is
    writes.clear()
    async with asyncio.timeout(10):
        reply = await gw.dispatcher.dispatch(request("quick"))
    assert reply.status == STATUS_DONE
    assert [pb.WORKER_REQUEST_ACK, pb.WORKER_REPLY] in writes, writes


async def test_a_long_steps_ack_leaves_within_the_window(
    stack: tuple[StandaloneGateway, WorkerConnection], writes: list[list[int]]
) -> None:
    gw, _ = stack
    writes.clear()
    req = request("slow")
    task = asyncio.create_task(gw.dispatcher.dispatch(req))
    async with asyncio.timeout(10):
        while pb.WORKER_REQUEST_ACK not in kinds(writes):
            await asyncio.sleep(0.01)
    assert not task.done() and pb.WORKER_REPLY not in kinds(writes)
    RELEASE.set()
    async with asyncio.timeout(10):
        assert (await task).status == STATUS_DONE
    sent = kinds(writes)
    assert sent.index(pb.WORKER_REQUEST_ACK) < sent.index(pb.WORKER_REPLY)


async def test_a_held_ack_waits_through_the_workers_timer_ticks(
    stack: tuple[StandaloneGateway, WorkerConnection], writes: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's housekeeping wakes at least once a second and flushes
    what its connections queued; ACKs held for their replies are not that."""
    gw, worker = stack
    monkeypatch.setattr(limits, "ACK_COALESCE_WINDOW", 30.0)
    writes.clear()
    task = asyncio.create_task(gw.dispatcher.dispatch(request("slow")))
    async with asyncio.timeout(10):
        while not worker.in_flight:
            await asyncio.sleep(0.01)
        await timer_passes(worker, 2)
    assert writes == []
    RELEASE.set()
    async with asyncio.timeout(10):
        assert (await task).status == STATUS_DONE
    assert writes[0] == [pb.WORKER_REQUEST_ACK, pb.WORKER_REPLY], writes
