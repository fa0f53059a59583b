"""Poll windows on a real gateway and a real worker (`connect.polling`).

The gateway's loop polls while it awaits a worker's answer (after a request
or a checkpoint's answer leaves, until the last reply it awaits comes), never
for heartbeats; the worker's connection loop polls only while nothing runs
there (after its last reply, waiting for the next request, or while its
request waits for a checkpoint's answer), and stops the moment a request or
an answer comes, so user code has the CPU and the GIL to itself. Both learn
their window from how soon answers come.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connect import Client, Context, Step, TriggerEvent, polling
from connect.dispatch import CheckpointDecided, CheckpointOffered, Port
from connect.roles import StandaloneGateway
from connect.worker.connection import WorkerConnection, connect
from protocol.payloads import STATUS_DONE
from tests.gateway.requests import discovery_request
from tests.gateway.stack import start_gateway

pytestmark = pytest.mark.anyio

client = Client(app_id="polls")
release = threading.Event()
running = threading.Event()


@client.create_function(fn_id="answer", trigger=TriggerEvent(event="polls/x"))
async def answer(ctx: Context, step: Step) -> Any:
    return {"n": ctx.event.data["n"]}


@client.create_function(fn_id="two", trigger=TriggerEvent(event="polls/two"))
async def two(ctx: Context, step: Step) -> Any:
    a = await step.run("a", lambda: 1)
    b = await step.run("b", lambda: a + 1)
    return [a, b]


@client.create_function(fn_id="held", trigger=TriggerEvent(event="polls/held"))
def held(ctx: Context, step: Step) -> Any:  # a plain def: runs in a thread, may block
    running.set()
    assert release.wait(30)
    return "released"


@dataclass
class Stack:
    gw: StandaloneGateway
    worker: WorkerConnection

    @property
    def worker_window(self) -> polling.PollWindow:
        window = self.worker._poll
        assert window is not None
        return window

    async def warm(self) -> None:
        """A few steps back to back: both windows learn the gaps (ms, far below their most)."""
        for n in range(3):
            await self.gw.dispatcher.dispatch(discovery_request("polls", "polls-answer", "polls/x", data={"n": n}))
        assert self.worker_window.window > 0

    async def until(self, what: str, check: Any) -> None:
        for _ in range(1000):
            if check():
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    # Here the gateway and the worker share one process, so each loop's thread
    # waits for the GIL while the other runs and would step aside as on a
    # crowded machine (tests/test_polling.py covers that): judge no share here.
    monkeypatch.setattr(polling, "FAIR_SHARE", 0.0)
    gw = await start_gateway(tmp_path / "gw.db", poll_window=0.2)
    client.api_base_url = gw.api_url
    worker = await connect(
        [(client, [answer, held, two])], instance_id="polls", handle_shutdown_signals=(), poll_window=0.5
    )
    release.clear()
    running.clear()
    try:
        yield Stack(gw, worker)
    finally:
        release.set()
        await worker.close()
        await gw.close()


async def test_replies_arrive_with_both_windows_on(stack: Stack) -> None:
    window = stack.gw.server.poll_window
    assert window is not None and window.most == pytest.approx(0.2) and window.window == 0.0
    for n in range(20):
        reply = await stack.gw.dispatcher.dispatch(discovery_request("polls", "polls-answer", "polls/x", data={"n": n}))
        assert reply.status == STATUS_DONE and reply.body == b'{"n":%d}' % n
    assert all(conn.poll_window is window for conn in stack.gw.server.connections)
    assert window.window > 0 and window.opened >= 1 and window.turns > 0 and window.caught > 0
    assert stack.worker_window.window > 0 and stack.worker_window.caught > 0


async def test_the_gateway_stops_polling_as_the_last_awaited_reply_comes(stack: Stack) -> None:
    await stack.warm()
    window = stack.gw.server.poll_window
    assert window is not None
    opened = window.opened
    await stack.gw.dispatcher.dispatch(discovery_request("polls", "polls-answer", "polls/x", data={"n": 9}))
    assert window.opened > opened  # it polled for the reply
    assert window.closes_at == 0.0  # and stopped as it came, not left to run out
    await stack.until("the gateway's window to close", lambda: not window.polling)


async def test_heartbeats_never_open_a_window(tmp_path: Path) -> None:
    gw = await start_gateway(tmp_path / "hb.db", heartbeat_interval=1.0)  # the shortest the protocol says
    client.api_base_url = gw.api_url
    worker = await connect([(client, [answer])], instance_id="beats", handle_shutdown_signals=(), poll_window=0.5)
    try:
        window = gw.server.poll_window
        assert window is not None and window.most == polling.DEFAULT_WINDOW  # the default: on
        conn = next(iter(gw.server.connections))
        beats = {conn.session._last_heartbeat}
        async with asyncio.timeout(30):
            while len(beats) < 3:  # two heartbeats came (and were answered) since
                await asyncio.sleep(0.05)
                beats.add(conn.session._last_heartbeat)
        for w in (window, worker._poll):
            assert w is not None
            assert (w.opened, w.caught, w.grown, w.shrunk, w.window) == (0, 0, 0, 0, 0.0)
    finally:
        await worker.close()
        await gw.close()


async def test_the_worker_polls_after_its_last_reply_and_then_sleeps(stack: Stack) -> None:
    await stack.warm()
    await stack.gw.dispatcher.dispatch(discovery_request("polls", "polls-answer", "polls/x", data={"n": 1}))
    window = stack.worker_window
    assert window.polling  # touched as the reply left, before the gateway had it
    opened = window.opened
    await stack.until("the worker's window to close", lambda: not window.polling)
    turns = window.turns
    await asyncio.sleep(0.3)
    assert window.turns == turns and window.opened == opened  # asleep until the next reply


async def test_the_worker_stops_polling_while_user_code_runs(stack: Stack) -> None:
    await stack.warm()
    await stack.gw.dispatcher.dispatch(discovery_request("polls", "polls-answer", "polls/x", data={"n": 1}))
    window = stack.worker_window
    assert window.polling
    task = asyncio.ensure_future(stack.gw.dispatcher.dispatch(discovery_request("polls", "polls-held", "polls/held")))
    await stack.until("the held step to start", running.is_set)
    assert window.closes_at == 0.0  # closed as the request came, not left to run out
    await stack.until("the worker's window to close", lambda: not window.polling)
    turns = window.turns
    await asyncio.sleep(0.05)
    assert window.turns == turns and not window.polling  # well inside the 0.5 s it would have polled

    release.set()
    reply = await asyncio.wait_for(task, 30)
    assert reply.status == STATUS_DONE and reply.body == b'"released"'
    assert window.polling  # the reply left and nothing runs: waiting for the next request, awake


class GatedCheckpoints:
    """The executor's side of a request's checkpoints: each answer waits for its gate."""

    def __init__(self, count: int, port: Port) -> None:
        self.gates = [asyncio.Event() for _ in range(count)]
        self.arrived = [asyncio.Event() for _ in range(count)]
        self.calls = 0
        self.port = port

    async def checkpoint_offered(self, offer: CheckpointOffered) -> None:
        n = self.calls
        self.calls += 1
        self.arrived[n].set()
        await self.gates[n].wait()
        self.port.send(CheckpointDecided(offer.request_id, stored=True))


async def test_the_worker_polls_while_its_request_waits_for_a_checkpoints_answer(stack: Stack) -> None:
    await stack.warm()
    checkpoints = GatedCheckpoints(2, stack.gw.dispatcher)
    request = discovery_request("polls", "polls-two", "polls/two", offer_checkpoints=True, offers_checkpoints=True)
    task = asyncio.ensure_future(stack.gw.dispatcher.dispatch(request, checkpoints))
    window = stack.worker_window
    try:
        async with asyncio.timeout(10):
            await checkpoints.arrived[0].wait()
        assert window.polling  # step "a" is out and its handler waits: nothing runs here
        opened = window.opened

        checkpoints.gates[0].set()
        async with asyncio.timeout(10):
            await checkpoints.arrived[1].wait()
        assert window.polling
        assert window.opened == opened + 1  # closed when the answer came and step "b" ran, opened again after it
    finally:
        for gate in checkpoints.gates:  # never leave the request in flight: closing would wait for it
            gate.set()
    reply = await asyncio.wait_for(task, 10)
    assert reply.status == STATUS_DONE and reply.body == b"[1,2]"


async def test_bad_windows_are_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match=r"at most 1\.0 s"):
        await connect([(client, [answer])], instance_id="bad", handle_shutdown_signals=(), poll_window=2.0)
