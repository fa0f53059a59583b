"""The store-backed port: an executor and a gateway that share only the store.

Real pieces: the gateway role on its own (`StandaloneGateway`) with its
request pump, an executor on a store object of its own (as another process
has), both over one real database, and our worker connected over a real
socket. On SQLite the two store objects hear nothing of each other's
notifications, so what moves a request there is the pump's and the port's
own looks at the queue (every 50 ms); on PostgreSQL those looks are a
minute apart, so only `LISTEN`/`NOTIFY` can move it in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connect import Client, Context, Step, TriggerEvent
from connect.dispatch import StepRequest
from connect.dispatch.queued import QueuedPort
from connect.executor import Executor
from connect.gateway.pump import RequestPump
from connect.roles import StandaloneGateway
from connect.store import PostgresStore, SqliteStore, Store
from connect.worker.connection import WorkerConnection, connect
from protocol.payloads import IncomingEvent
from tests.gateway.stack import start_gateway
from tests.postgres import PostgresServer

pytestmark = pytest.mark.anyio

SWEEP = {"sqlite": 0.05, "postgres": 60.0}
client = Client(app_id="queued")
CALLS: list[str] = []


@client.create_function(fn_id="three", trigger=TriggerEvent(event="queued/three"))
async def three(ctx: Context, step: Step) -> Any:
    a = await step.run("a", lambda: CALLS.append("a") or 1)
    b = await step.run("b", lambda: CALLS.append("b") or a + 1)
    return {"sum": a + b, "who": ctx.event.data["who"]}


@dataclass
class Split:
    gateway: StandaloneGateway
    pump: RequestPump
    store: Store
    executor: Executor

    async def connect_worker(self, instance_id: str) -> WorkerConnection:
        client.api_base_url = self.gateway.api_url
        return await connect([(client, [three])], instance_id=instance_id, handle_shutdown_signals=())

    async def finished(self, event_id: str) -> dict[str, Any]:
        async with asyncio.timeout(30):
            while True:
                runs = await self.executor.runs_for_event(event_id)
                if runs and runs[0]["status"] != "Running":
                    return runs[0]
                await asyncio.sleep(0.02)


@pytest.fixture(params=["sqlite", "postgres"])
async def split(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Split]:
    CALLS.clear()
    db = tmp_path / "shared.db"
    sweep = SWEEP[request.param]
    dsn: str | None = None
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        dsn = server.create_database()
    gateway = await start_gateway(db, database_url=dsn)
    pump = RequestPump(gateway.store, gateway.dispatcher, "gw-1", sweep_interval=sweep)
    pumping = asyncio.create_task(pump.run())
    # The app is registered through the gateway (a worker connects once) before the
    # executor starts and reads the registry.
    first = await Split(gateway, pump, None, None).connect_worker("first")  # type: ignore[arg-type]
    await first.close()
    store: Store = await (SqliteStore.open(db) if dsn is None else PostgresStore.open(dsn))
    executor = Executor(store, QueuedPort(store, sweep_interval=sweep), checkpoint_steps=False, executor_id="exec-1")
    await executor.start()
    try:
        yield Split(gateway, pump, store, executor)
    finally:
        await executor.stop()
        await store.close()
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        await gateway.close()


async def test_a_run_crosses_the_store_to_a_gateway_and_back(split: Split) -> None:
    worker = await split.connect_worker("w1")
    try:
        [event_id] = await split.executor.send_events([IncomingEvent(name="queued/three", data={"who": "ann"})])
        run = await split.finished(event_id)
    finally:
        await worker.close()
    assert run["status"] == "Completed" and run["output"] == {"sum": 3, "who": "ann"}
    assert CALLS == ["a", "b"]
    assert split.pump.in_flight == 0
    # Every request left the queue: answered, read, and dequeued.
    assert not await split.store.take_requests("anyone", ["queued-three"], 2**62, 2**62, 10)


async def test_a_request_offering_checkpoints_is_refused(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "alone.db")
    try:
        request = StepRequest("r1", "run1", "queued", "queued-three", "step", b"{}", offers_checkpoints=True)
        with pytest.raises(ValueError, match="checkpoint_steps=False"):
            await QueuedPort(store).dispatch(request)
        assert not await store.take_requests("gw", ["queued-three"], 0, 0, 10)  # nothing was queued
    finally:
        await store.close()


async def test_a_request_waits_in_the_queue_until_a_worker_connects(split: Split) -> None:
    [event_id] = await split.executor.send_events([IncomingEvent(name="queued/three", data={"who": "bo"})])

    async def queued() -> bool:
        held = await split.store.take_requests("probe", ["queued-three"], 0, 0, 10)
        return bool(held)  # taken with a hold already lapsed: left for any gateway

    async with asyncio.timeout(10):
        while not await queued():
            await asyncio.sleep(0.02)
    runs = await split.executor.runs_for_event(event_id)
    assert runs[0]["status"] == "Running" and CALLS == []

    worker = await split.connect_worker("w2")
    try:
        run = await split.finished(event_id)
    finally:
        await worker.close()
    assert run["output"] == {"sum": 3, "who": "bo"}
    assert CALLS == ["a", "b"]  # waiting for a worker spent no attempt and ran nothing twice
