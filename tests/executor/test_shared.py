"""Two executors over one PostgreSQL database, each a process of its own in all
but name: every piece has a store object (a connection pool and a listening
connection) of its own, as separate processes have.

Real pieces: a gateway on its own (`StandaloneGateway`) with its request pump,
our worker connected to it over a real socket, two `shared` executors over
`QueuedPort`s, and the API role's event sink (`StoredRuns`: runs owned by
nobody, then `RUNS_RELEASED`). The executors start before any
worker has registered the app, so every test also shows the registry being
followed. The test reads which executor owns a run straight from the database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from connect import Cancel, Client, Context, Step, TriggerCron, TriggerEvent
from connect.api.stored_runs import StoredRuns
from connect.dispatch.queued import QueuedPort
from connect.executor import Executor
from connect.executor.ownership import DEFAULT_OWNER_LEASE
from connect.executor.system_events import derived_id_at
from connect.gateway.pump import RequestPump
from connect.roles import StandaloneGateway
from connect.store import PostgresStore, Store
from connect.worker.connection import WorkerConnection, connect
from protocol.payloads import IncomingEvent
from tests.gateway.stack import start_gateway
from tests.postgres import PostgresServer

pytestmark = pytest.mark.anyio

DEADLINE = 30.0
client = Client(app_id="shared")
CALLS: list[str] = []


@client.create_function(fn_id="plain", trigger=TriggerEvent(event="shared/plain"))
async def plain(ctx: Context, step: Step) -> Any:
    return await step.run("one", lambda: CALLS.append(f"plain {ctx.run_id}") or ctx.event.data["n"])


@client.create_function(fn_id="waiter", trigger=TriggerEvent(event="shared/wait"))
async def waiter(ctx: Context, step: Step) -> Any:
    got = await step.wait_for_event("go", event="shared/go", if_exp="async.data.k == event.data.k", timeout=60_000)
    return None if got is None else got.data


@client.create_function(
    fn_id="sleeper",
    trigger=TriggerEvent(event="shared/sleep"),
    cancel=[Cancel(event="shared/stop", if_exp="async.data.k == event.data.k")],
)
async def sleeper(ctx: Context, step: Step) -> Any:
    await step.sleep("nap", 60_000)
    return "woke"


FUNCTIONS = [plain, waiter, sleeper]


@dataclass
class Shared:
    dsn: str
    gateway: StandaloneGateway
    api_store: Store
    api: StoredRuns
    executors: list[Executor] = field(default_factory=list)
    stores: list[Store] = field(default_factory=list)
    workers: list[WorkerConnection] = field(default_factory=list)

    async def add_executor(
        self, name: str, clock: Callable[[], float] = time.time, owner_lease: float = DEFAULT_OWNER_LEASE
    ) -> Executor:
        store = await PostgresStore.open(self.dsn)
        self.stores.append(store)
        executor = Executor(
            store,
            QueuedPort(store),
            checkpoint_steps=False,
            executor_id=name,
            shared=True,
            clock=clock,
            owner_lease=owner_lease,
        )
        await executor.start()
        self.executors.append(executor)
        return executor

    async def connect_worker(self, instance_id: str, served: Client = client, functions: Any = None) -> None:
        served.api_base_url = self.gateway.api_url
        worker = await connect([(served, functions or FUNCTIONS)], instance_id=instance_id, handle_shutdown_signals=())
        self.workers.append(worker)

    async def api_send(self, name: str, data: dict[str, Any]) -> str:
        [event_id] = await self.api_send_many([(name, data)])
        return event_id

    async def api_send_many(self, events: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """Events in through the API role's sink: the runs they start are owned
        by nobody until an executor claims them."""
        return await self.api.send_events([IncomingEvent(name=name, data=data) for name, data in events])

    async def only_run(self, event_id: str) -> dict[str, Any]:
        async with asyncio.timeout(DEADLINE):
            while True:
                runs = await self.executors[0].runs_for_event(event_id)
                if runs:
                    assert len(runs) == 1, runs
                    return runs[0]
                await asyncio.sleep(0.02)

    async def ended(self, event_id: str) -> dict[str, Any]:
        async with asyncio.timeout(DEADLINE):
            while True:
                run = await self.only_run(event_id)
                if run["status"] != "Running":
                    return run
                await asyncio.sleep(0.02)

    async def owners(self, event_ids: list[str]) -> dict[str, int]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                "SELECT owner, count(*) AS n FROM runs WHERE event_id = ANY($1::text[]) GROUP BY owner", event_ids
            )
        finally:
            await conn.close()
        return {row["owner"]: row["n"] for row in rows}

    async def parked(self, executor: Executor, watches: int) -> None:
        """Wait until `executor` has filed `watches` waits or cancel conditions."""
        async with asyncio.timeout(DEADLINE):
            while executor.paused_watches < watches:
                await asyncio.sleep(0.02)

    async def registered(self, function_id: str) -> None:
        """Wait until every executor knows `function_id` (from the stored registry)."""
        async with asyncio.timeout(DEADLINE):
            while not all(any(f.get("id") == function_id for f in e.registered_functions()) for e in self.executors):
                await asyncio.sleep(0.02)


@pytest.fixture
async def shared(postgres_server: PostgresServer, tmp_path: Path) -> AsyncIterator[Shared]:
    CALLS.clear()
    dsn = postgres_server.create_database()
    gateway = await start_gateway(tmp_path / "unused.db", database_url=dsn)
    pump = RequestPump(gateway.store, gateway.dispatcher, "gw-1")
    pumping = asyncio.create_task(pump.run())
    api_store = await PostgresStore.open(dsn)
    api = StoredRuns(api_store)
    await api.start()
    platform = Shared(dsn, gateway, api_store, api)
    try:
        await platform.add_executor("exec-a")
        await platform.add_executor("exec-b")
        yield platform
    finally:
        for worker in platform.workers:
            await worker.close()
        for executor in platform.executors:
            await executor.stop()
        for store in platform.stores:
            await store.close()
        await api.stop()
        await api_store.close()
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        await gateway.close()


async def test_an_app_registered_after_the_executors_started_is_followed(shared: Shared) -> None:
    assert all(not e.registered_functions() for e in shared.executors)
    await shared.connect_worker("w1")
    await shared.registered("shared-plain")
    # An event sent through either executor now starts the function.
    [event_id] = await shared.executors[1].send_events([IncomingEvent(name="shared/plain", data={"n": 7})])
    run = await shared.ended(event_id)
    assert run["status"] == "Completed" and run["output"] == 7


async def test_new_runs_spread_over_the_executors(shared: Shared) -> None:
    await shared.connect_worker("w1")
    await shared.registered("shared-plain")
    event_ids = await shared.api_send_many([("shared/plain", {"n": i}) for i in range(40)])
    for event_id in event_ids:
        assert (await shared.ended(event_id))["status"] == "Completed"
    owners = await shared.owners(event_ids)
    assert sum(owners.values()) == 40
    assert set(owners) == {"exec-a", "exec-b"}, owners  # both took a share, nobody else
    assert len(CALLS) == 40  # each step body ran once
    # An executor started now takes a share of the fresh work.
    await shared.add_executor("exec-c")
    later = await shared.api_send_many([("shared/plain", {"n": i}) for i in range(60)])
    for event_id in later:
        assert (await shared.ended(event_id))["status"] == "Completed"
    owners = await shared.owners(later)
    assert sum(owners.values()) == 60 and owners.get("exec-c", 0) > 0, owners
    assert len(CALLS) == 100


async def test_a_wait_resumes_on_an_event_recorded_elsewhere(shared: Shared) -> None:
    a, b = shared.executors
    await shared.connect_worker("w1")
    await shared.registered("shared-waiter")
    # Started through executor A: A owns the run and holds its wait.
    [first] = await a.send_events([IncomingEvent(name="shared/wait", data={"k": "one"})])
    [second] = await a.send_events([IncomingEvent(name="shared/wait", data={"k": "two"})])
    await shared.parked(a, 2)
    assert b.paused_watches == 0
    # Recorded by the other executor, then by the API: A resumes each.
    await b.send_events([IncomingEvent(name="shared/go", data={"k": "one", "via": "executor"})])
    run = await shared.ended(first)
    assert run["status"] == "Completed" and run["output"] == {"k": "one", "via": "executor"}
    await shared.api_send("shared/go", {"k": "two", "via": "api"})
    run = await shared.ended(second)
    assert run["status"] == "Completed" and run["output"] == {"k": "two", "via": "api"}


async def test_a_wait_taken_over_from_a_lost_executor_gets_the_event_sent_meanwhile(shared: Shared) -> None:
    await shared.connect_worker("w1")
    await shared.registered("shared-waiter")
    doomed = await shared.add_executor("exec-doomed", owner_lease=1.0)
    await shared.add_executor("exec-heir", owner_lease=1.0)
    [event_id] = await doomed.send_events([IncomingEvent(name="shared/wait", data={"k": "late"})])
    await shared.parked(doomed, 1)
    # It loses its database (as a process that dies): its heartbeat lapses in 1 s.
    await shared.stores[shared.executors.index(doomed)].close()
    # The event comes while nobody drives the run: no executor holds its wait now.
    await shared.api_send("shared/go", {"k": "late", "meanwhile": True})
    run = await shared.ended(event_id)
    assert run["status"] == "Completed" and run["output"] == {"k": "late", "meanwhile": True}
    assert (await shared.owners([event_id])).keys() - {"exec-doomed"}, "another executor finished it"


async def test_a_cancel_condition_fires_on_an_event_another_executor_recorded(shared: Shared) -> None:
    a, b = shared.executors
    await shared.connect_worker("w1")
    await shared.registered("shared-sleeper")
    [event_id] = await a.send_events([IncomingEvent(name="shared/sleep", data={"k": "x"})])
    await shared.parked(a, 1)  # its cancel condition is filed
    run = await shared.only_run(event_id)
    # The sleep is armed once the run is past its first request.
    async with asyncio.timeout(DEADLINE):
        while a.active_runs:
            await asyncio.sleep(0.02)
    await b.send_events([IncomingEvent(name="shared/stop", data={"k": "y"})])  # not this run's
    await b.send_events([IncomingEvent(name="shared/stop", data={"k": "x"})])
    run = await shared.ended(event_id)
    assert run["status"] == "Cancelled"


async def test_an_api_cancel_reaches_the_owner(shared: Shared) -> None:
    await shared.connect_worker("w1")
    await shared.registered("shared-sleeper")
    event_id = await shared.api_send("shared/sleep", {"k": "z"})
    run = await shared.only_run(event_id)
    async with asyncio.timeout(DEADLINE):
        while (await shared.owners([event_id])).keys() - {None} == set():
            await asyncio.sleep(0.02)
    # The API flags it in the store; the store tells the owner, which ends it
    # long before its 60 s sleep would.
    cancelled = await shared.api.cancel_run(run["run_id"])
    assert cancelled is not None and cancelled["status"] == "Cancelled"


cron_client = Client(app_id="ticks")
TICKS: list[str] = []


@cron_client.create_function(fn_id="every-minute", trigger=TriggerCron(cron="* * * * *"))
async def every_minute(ctx: Context, step: Step) -> Any:
    return await step.run("tick", lambda: TICKS.append(ctx.run_id) or "ticked")


async def test_two_executors_make_one_run_per_cron_tick(postgres_server: PostgresServer, tmp_path: Path) -> None:
    TICKS.clear()
    dsn = postgres_server.create_database()
    gateway = await start_gateway(tmp_path / "unused.db", database_url=dsn)
    pump = RequestPump(gateway.store, gateway.dispatcher, "gw-1")
    pumping = asyncio.create_task(pump.run())
    api_store = await PostgresStore.open(dsn)
    platform = Shared(dsn, gateway, api_store, StoredRuns(api_store))
    # Both executors' clocks read two seconds before the next minute, so a tick
    # comes soon; both arm it.
    now = time.time()
    tick_s = (int(now + 2) // 60 + 1) * 60
    offset = tick_s - 2 - now

    def clock() -> float:
        return time.time() + offset

    try:
        await platform.add_executor("exec-a", clock)
        await platform.add_executor("exec-b", clock)
        await platform.connect_worker("w1", cron_client, [every_minute])
        await platform.registered("ticks-every-minute")
        event_id = derived_id_at(tick_s * 1000, "cron", "ticks-every-minute * * * * *")
        run = await platform.ended(event_id)
        assert run["status"] == "Completed"
        # Both fired it; the tick's derived event id kept it to one run.
        assert len(await platform.executors[0].runs_for_event(event_id)) == 1
        assert TICKS == [run["run_id"]]
    finally:
        for worker in platform.workers:
            await worker.close()
        for executor in platform.executors:
            await executor.stop()
        for store in platform.stores:
            await store.close()
        await api_store.close()
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        await gateway.close()
