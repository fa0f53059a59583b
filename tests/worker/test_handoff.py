"""Requests and replies crossing between the machinery thread and the caller's loop.

No sockets: a second loop on its own thread stands in for the machinery, and
requests are queued on it the way `_read` queues them.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from connect import Client, Context, Step, TriggerEvent
from connect.worker.bridge import Handoff
from connect.worker.connection import WorkerConnection, WorkerOptions
from protocol import connect_pb2 as pb
from protocol import limits

pytestmark = pytest.mark.anyio

client = Client(app_id="app")


@client.create_function(fn_id="echo", trigger=TriggerEvent(event="t/echo"))
async def echo(ctx: Context, step: Step) -> Any:
    return ctx.event.data["v"]


@client.create_function(fn_id="big", trigger=TriggerEvent(event="t/big"))
def big(ctx: Context, step: Step) -> Any:  # a plain def runs in a thread pool
    return "x" * (limits.MAX_STEP_OUTPUT_BYTES + 1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Machinery:
    """An event loop on its own thread, like the connection's."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, fn: Callable[[], None]) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(5)

    def stop(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture
def machinery() -> Iterator[Machinery]:
    m = Machinery()
    yield m
    m.stop()


def request(rid: str, fn: str = "echo", app: str = "app", v: int = 0) -> pb.GatewayExecutorRequestData:
    evt = {"name": f"t/{fn}", "data": {"v": v}, "id": f"e-{rid}", "ts": 1767225600000, "user": {}}
    ctx = {"run_id": f"run-{rid}", "attempt": 0, "stack": {"stack": [], "current": 0}, "fn_id": fn, "step_id": "step"}
    payload = {"event": evt, "events": [evt], "steps": {}, "ctx": ctx, "use_api": False, "version": 2}
    return pb.GatewayExecutorRequestData(
        request_id=rid,
        app_name=app,
        function_slug=f"app-{fn}",
        step_id="step",
        run_id=f"run-{rid}",
        lease_id=f"lease-{rid}",
        request_payload=json.dumps(payload).encode(),
    )


def connection(main: asyncio.AbstractEventLoop, machinery: Machinery) -> WorkerConnection:
    conn = WorkerConnection([(client, [echo, big])], WorkerOptions(instance_id="t", max_worker_concurrency=None))
    conn._requests.loop = main
    conn._replies.loop = machinery.loop
    return conn


def queue(conn: WorkerConnection, reqs: list[pb.GatewayExecutorRequestData]) -> Callable[[], None]:
    """What `_read` does for one batch of received requests (on the machinery)."""

    def run() -> None:
        for req in reqs:
            conn._ledger.accept(req, time.time(), 10.0)
            conn._requests.items.append(req)
            conn._hand_over_requests()

    return run


def count_calls(handoff: Handoff[Any]) -> list[int]:
    """Count the wake-ups that drain `handoff`."""
    calls = [0]
    inner = handoff.drain

    def counted() -> None:
        calls[0] += 1
        inner()

    handoff.drain = counted
    return calls


async def replies_of(conn: WorkerConnection, n: int) -> dict[str, pb.SDKResponse]:
    with anyio.fail_after(10):
        while len(conn._ledger.replies) < n:
            await anyio.sleep(0.005)
    out = {}
    for rid, pending in list(conn._ledger.replies.items()):
        resp = pb.SDKResponse()
        resp.ParseFromString(pending.response)
        out[rid] = resp
    return out


async def test_a_burst_crosses_with_one_wake_up_and_every_reply_comes_back(machinery: Machinery) -> None:
    conn = connection(asyncio.get_running_loop(), machinery)
    starts = count_calls(conn._requests)
    deliveries = count_calls(conn._replies)
    reqs = [request(f"r{i}", v=i) for i in range(50)]
    machinery.call(queue(conn, reqs))  # the caller's loop is blocked here: one wake-up for all 50
    # Keep the machinery busy until every reply is handed back, so the first
    # reply's wake-up is still pending when the other 49 arrive.
    busy = threading.Event()
    machinery.loop.call_soon_threadsafe(busy.wait, 10)
    with anyio.fail_after(10):
        while len(conn._replies.items) < len(reqs):
            await anyio.sleep(0.005)
    busy.set()

    replies = await replies_of(conn, len(reqs))
    assert starts[0] == 1
    assert deliveries[0] == 1
    assert set(replies) == {r.request_id for r in reqs}
    for i, req in enumerate(reqs):
        resp = replies[req.request_id]
        assert resp.status == pb.DONE and json.loads(resp.body) == i
        assert resp.run_id == req.run_id
    assert not conn._ledger.in_flight  # completed on the machinery
    assert not conn._requests.items and not conn._replies.items


async def test_crash_and_oversized_output_become_error_replies(machinery: Machinery) -> None:
    conn = connection(asyncio.get_running_loop(), machinery)
    crash = request("crash", app="gone")  # not an app of this worker: `execute` raises
    oversized = request("big", fn="big")
    machinery.call(queue(conn, [crash, oversized]))

    replies = await replies_of(conn, 2)
    assert replies["crash"].status == pb.ERROR
    assert json.loads(replies["crash"].body) == {"code": "unknown", "message": "internal error: KeyError"}
    assert replies["big"].status == pb.ERROR and replies["big"].no_retry
    assert json.loads(replies["big"].body)["code"] == "output_too_large"


async def test_replies_after_the_machinery_ended_are_dropped_quietly(machinery: Machinery) -> None:
    conn = connection(asyncio.get_running_loop(), machinery)
    machinery.stop()
    assert not conn._to_machinery("r1", b"raw", None)
    conn._replies.pending = True  # a wake-up was scheduled but the loop ended before running it
    assert not conn._to_machinery("r2", b"raw", None)
    assert not conn._replies.items and not conn._replies.pending


async def test_requests_for_a_closed_caller_loop_leave_the_ledger(machinery: Machinery) -> None:
    closed = asyncio.new_event_loop()
    closed.close()
    conn = connection(closed, machinery)
    machinery.call(queue(conn, [request("r1"), request("r2")]))
    assert not conn._ledger.in_flight  # their leases lapse and they run elsewhere
    assert not conn._requests.items and not conn._requests.pending
