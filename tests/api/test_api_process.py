"""The API role on its own (`ApiProcess`): no executor and no gateway in it,
only the store.

Real pieces: the API process serving HTTP on a real socket, a gateway on its
own (`StandaloneGateway`) with its request pump and a registry entry, an
executor on the store-backed port (`QueuedPort`, no checkpoints), and our
worker connected over a real socket through the API's `/v0/connect/start`.
On PostgreSQL each of them has a store object of its own, as separate
processes have, and only `LISTEN`/`NOTIFY` carries news between them. On
SQLite (one process by design) they share one store object.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from connect import Client, Context, Step, TriggerEvent
from connect.api.stored_replies import CHECKPOINTS_NOT_OFFERED
from connect.dispatch.queued import QueuedPort
from connect.executor import Executor
from connect.gateway.pump import RequestPump
from connect.roles import PlatformSettings, StandaloneGateway
from connect.roles.api import ApiProcess, start_api_process
from connect.roles.registration import Registration
from connect.store import PostgresStore, SqliteStore, Store
from connect.store.base import (
    REPLY_STORED,
    ConnectionRecord,
    ProcessRecord,
)
from connect.worker.connection import WorkerConnection, connect
from protocol import connect_pb2 as pb
from protocol import ids
from tests.gateway.stack import start_gateway
from tests.postgres import PostgresServer

pytestmark = pytest.mark.anyio
T = TypeVar("T")

#: The pump's and the port's own looks at the queue: on PostgreSQL notifications must do the work.
SWEEP = {"sqlite": 0.05, "postgres": 60.0}
#: The longest any awaited state may take to appear.
DEADLINE = 30.0

client = Client(app_id="apiproc")
CALLS: list[str] = []


@client.create_function(fn_id="two", trigger=TriggerEvent(event="apiproc/two"))
async def two(ctx: Context, step: Step) -> Any:
    a = await step.run("a", lambda: CALLS.append("a") or 1)
    b = await step.run("b", lambda: CALLS.append("b") or a + 1)
    return {"sum": a + b, "who": ctx.event.data["who"]}


@client.create_function(fn_id="nap", trigger=TriggerEvent(event="apiproc/nap"))
async def nap(ctx: Context, step: Step) -> Any:
    await step.sleep("nap", datetime.timedelta(hours=1))
    return "woke"


async def until(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Wait for `probe` to return something other than None (or False)."""
    async with asyncio.timeout(DEADLINE):
        while True:
            value = await probe()
            if value is not None and value is not False:
                return value
            await asyncio.sleep(0.02)
    raise AssertionError(what)  # pragma: no cover


async def open_store(db: Path, dsn: str | None) -> Store:
    return await (SqliteStore.open(db) if dsn is None else PostgresStore.open(dsn))


@dataclass
class Engine:
    name: str
    db: Path
    dsn: str | None

    async def store(self, shared: Store) -> Store:
        """A store object of its own (PostgreSQL), or the one shared (SQLite)."""
        if self.dsn is None:
            return shared
        return await PostgresStore.open(self.dsn)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    dsn: str | None = None
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        dsn = server.create_database()
    return Engine(request.param, tmp_path / "shared.db", dsn)


def api_settings(**fields: Any) -> PlatformSettings:
    return PlatformSettings(
        **{"port": 0, "name": "test api", "roles": frozenset({"api"}), "process_id": "api-1", **fields}
    )


@dataclass
class Platform:
    engine: Engine
    api: ApiProcess
    http: httpx.AsyncClient
    gateway: StandaloneGateway
    pump: RequestPump
    executor: Executor
    stores: list[Store]

    async def connect_worker(self, instance_id: str) -> WorkerConnection:
        client.api_base_url = self.api.url
        return await connect([(client, [two, nap])], instance_id=instance_id, handle_shutdown_signals=())

    async def send(self, name: str, data: dict[str, Any], **fields: Any) -> str:
        resp = await self.http.post("/e/any-key", json={"name": name, "data": data, **fields})
        assert resp.status_code == 200, resp.text
        [event_id] = resp.json()["ids"]
        return str(event_id)

    async def runs(self, event_id: str) -> list[dict[str, Any]]:
        resp = await self.http.get(f"/v1/events/{event_id}/runs")
        assert resp.status_code == 200, resp.text
        return list(resp.json()["data"])

    async def ended(self, event_id: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            runs = await self.runs(event_id)
            return runs[0] if runs and runs[0]["status"] != "Running" else None

        return await until(probe, f"the run of event {event_id} ended")

    async def functions(self) -> set[str]:
        resp = await self.http.get("/v1/functions")
        return {fn["id"] for fn in resp.json()["data"]}


@pytest.fixture
async def platform(engine: Engine) -> AsyncIterator[Platform]:
    CALLS.clear()
    sweep = SWEEP[engine.name]
    gateway = await start_gateway(engine.db, database_url=engine.dsn)
    stores: list[Store] = []
    pump = RequestPump(gateway.store, gateway.dispatcher, "gw-1", sweep_interval=sweep)
    pumping = asyncio.create_task(pump.run())
    registered = Registration(
        gateway.store, "gw-1", "gateway", address=f"ws://127.0.0.1:{gateway.gateway_port}/v0/connect", ttl=15
    )
    await registered.start()
    exec_store = await engine.store(gateway.store)
    api_store = await engine.store(gateway.store)
    stores = [s for s in (exec_store, api_store) if s is not gateway.store]
    executor = Executor(
        exec_store,
        QueuedPort(exec_store, sweep_interval=sweep),
        checkpoint_steps=False,
        executor_id="exec-1",
        shared=True,
    )
    await executor.start()
    api = await start_api_process(api_settings(), api_store)
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=DEADLINE) as http:
            yield Platform(engine, api, http, gateway, pump, executor, [api_store, exec_store])
    finally:
        await api.stop()
        await executor.stop()
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        await registered.stop()
        await gateway.close()
        for store in stores:
            await store.close()


async def test_events_sent_to_the_api_run_on_an_executor_elsewhere(platform: Platform) -> None:
    worker = await platform.connect_worker("w1")
    try:
        # The worker's registration, stored by the gateway, reaches the API by notification.
        await until(lambda: _has(platform.functions(), "apiproc-two"), "the API learnt the app")
        event_id = await platform.send("apiproc/two", {"who": "ann"})
        run = await platform.ended(event_id)
    finally:
        await worker.close()
    assert run["status"] == "Completed" and run["output"] == {"sum": 3, "who": "ann"}
    assert CALLS == ["a", "b"]
    resp = await platform.http.get(f"/v1/runs/{run['run_id']}")
    assert resp.status_code == 200 and resp.json()["data"]["status"] == "Completed"
    resp = await platform.http.post(f"/v1/runs/{run['run_id']}/cancel")
    assert resp.status_code == 409 and "already ended: Completed" in resp.json()["error"]


async def test_an_event_sent_twice_is_stored_once_and_starts_one_run(platform: Platform) -> None:
    worker = await platform.connect_worker("w1")
    try:
        await until(lambda: _has(platform.functions(), "apiproc-two"), "the API learnt the app")
        event_id = ids.new_ulid()
        assert await platform.send("apiproc/two", {"who": "bo"}, id=event_id) == event_id
        assert await platform.send("apiproc/two", {"who": "bo"}, id=event_id) == event_id
        run = await platform.ended(event_id)
    finally:
        await worker.close()
    assert run["status"] == "Completed"
    assert len(await platform.runs(event_id)) == 1
    assert CALLS == ["a", "b"]


async def test_an_event_no_function_wants_is_stored_and_starts_nothing(platform: Platform) -> None:
    event_id = await platform.send("apiproc/nobody", {})
    assert await platform.runs(event_id) == []
    store = platform.stores[0]
    assert (await store.get_event(event_id)) is not None


async def test_a_run_is_cancelled_through_the_api(platform: Platform) -> None:
    worker = await platform.connect_worker("w1")
    try:
        await until(lambda: _has(platform.functions(), "apiproc-nap"), "the API learnt the app")
        event_id = await platform.send("apiproc/nap", {})
        store = platform.stores[0]

        async def sleeping() -> str | None:
            runs = await store.runs_for_event(event_id)
            return runs[0].run_id if runs and runs[0].waiting else None

        run_id = await until(sleeping, "the run went to sleep")
        resp = await platform.http.post(f"/v1/runs/{run_id}/cancel")
        assert resp.status_code in (200, 202), resp.text
        cancelled = await platform.ended(event_id)
        assert cancelled["status"] == "Cancelled"
        again = await platform.http.post(f"/v1/runs/{run_id}/cancel")
        assert again.status_code == 200 and again.json()["data"]["status"] == "Cancelled"  # as in one process
        missing = await platform.http.post(f"/v1/runs/{ids.new_ulid()}/cancel")
        assert missing.status_code == 404
    finally:
        await worker.close()


# --- /v0/connect/start: gateways from the registry --------------------------------------------------


async def _start(http: httpx.AsyncClient, *exclude: str, instance: str | None = None) -> httpx.Response:
    body = pb.StartRequest(exclude_gateways=list(exclude)).SerializeToString()
    headers = {"x-connect-instance-id": instance} if instance else {}
    return await http.post("/v0/connect/start", content=body, headers=headers)


def _gateway(resp: httpx.Response) -> tuple[str, str]:
    assert resp.status_code == 200, resp.text
    answer = pb.StartResponse()
    answer.ParseFromString(resp.content)
    return answer.gateway_endpoint, answer.gateway_group


def _process(process_id: str, state: str = "ready", role: str = "gateway", ttl_ms: int = 60_000) -> ProcessRecord:
    now_ms = _now_ms()
    return ProcessRecord(process_id, role, f"ws://{process_id}.test:8289/v0/connect", state, now_ms + ttl_ms, now_ms)


def _now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
async def api_alone(engine: Engine) -> AsyncIterator[tuple[ApiProcess, httpx.AsyncClient, Store]]:
    """An API process and a store object of the test's own (another process's, on PostgreSQL)."""
    ours = await open_store(engine.db, engine.dsn)
    api_store = await engine.store(ours)
    api = await start_api_process(api_settings(max_connections_per_instance=2), api_store)
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=DEADLINE) as http:
            yield api, http, ours
    finally:
        await api.stop()
        if api_store is not ours:
            await api_store.close()
        await ours.close()


async def test_start_with_no_gateway_is_a_503_naming_the_cause(
    api_alone: tuple[ApiProcess, httpx.AsyncClient, Store],
) -> None:
    _, http, store = api_alone
    resp = await _start(http)
    assert resp.status_code == 503
    assert "no gateway is registered" in resp.json()["error"]
    await store.put_process(_process("gw-d", state="draining"))

    async def refused_as_draining() -> bool:
        resp = await _start(http)
        return resp.status_code == 503 and "draining" in resp.json()["error"]

    await until(refused_as_draining, "the draining gateway was seen")


async def test_start_hands_out_ready_gateways_spread_and_honours_exclusions(
    api_alone: tuple[ApiProcess, httpx.AsyncClient, Store],
) -> None:
    _, http, store = api_alone
    await store.put_process(_process("gw-a"))
    await store.put_process(_process("gw-b"))
    await store.put_process(_process("gw-c", state="draining"))
    await store.put_process(_process("api-9", role="api"))

    async def both_seen() -> bool:
        resp = await _start(http)
        return resp.status_code == 200 and len(await _groups(http, 2)) == 2

    await until(both_seen, "both gateways registered")
    # Spread: each worker goes to the gateway with the fewest so far (at most
    # one registry read falls in between and starts the count again).
    groups = [_gateway(await _start(http))[1] for _ in range(6)]
    assert 2 <= groups.count("gw-a") <= 4 and groups.count("gw-a") + groups.count("gw-b") == 6
    endpoint, group = _gateway(await _start(http, "gw-a"))
    assert (endpoint, group) == ("ws://gw-b.test:8289/v0/connect", "gw-b")
    # Every live gateway excluded: one of them is still better than none.
    _, group = _gateway(await _start(http, "gw-a", "gw-b"))
    assert group in ("gw-a", "gw-b")
    # A gateway that leaves is not handed out once the registry says so.
    await store.drop_process("gw-b", "gateway")

    async def only_a() -> bool:
        return await _groups(http, 4) == {"gw-a"}

    await until(only_a, "gw-b left")


async def test_start_refuses_an_instance_at_its_connection_limit(
    api_alone: tuple[ApiProcess, httpx.AsyncClient, Store],
) -> None:
    _, http, store = api_alone
    await store.put_process(_process("gw-a"))
    now_ms = _now_ms()
    conns = [
        ConnectionRecord(
            ids.new_ulid(), "gw-a", "full", ["apiproc"], ["apiproc-two"], 2, 0, "ready", now_ms, now_ms + 60_000
        )
        for _ in range(2)
    ]
    await store.put_connections("gw-a", conns)
    # A change of the registry drops the cache; the connections are read with it.
    await store.put_process(_process("gw-b"))

    async def refused() -> str | None:
        resp = await _start(http, instance="full")
        return resp.json()["error"] if resp.status_code == 429 else None

    assert "reached max allowed connections (2)" in await until(refused, "the instance's connections were seen")
    _gateway(await _start(http, instance="other"))


async def _groups(http: httpx.AsyncClient, n: int) -> set[str]:
    groups: set[str] = set()
    for _ in range(n):
        resp = await _start(http)
        if resp.status_code == 200:
            groups.add(_gateway(resp)[1])
    return groups


# --- /v0/connect/flush and checkpoints ----------------------------------------------------------------


async def test_flush_stores_the_first_reply_and_announces_it(
    api_alone: tuple[ApiProcess, httpx.AsyncClient, Store],
) -> None:
    _, http, store = api_alone
    heard: list[str] = []
    await store.listen(REPLY_STORED, heard.append)
    request_id = ids.new_ulid()
    first = pb.SDKResponse(request_id=request_id, status=pb.SDKResponseStatus.DONE, body=b'"one"')
    resp = await http.post("/v0/connect/flush", content=first.SerializeToString())
    assert resp.status_code == 200, resp.text
    assert await store.get_reply(request_id) == first.SerializeToString()

    async def announced() -> bool:
        return request_id in heard

    await until(announced, "REPLY_STORED was heard")
    second = pb.SDKResponse(request_id=request_id, status=pb.SDKResponseStatus.DONE, body=b'"two"')
    resp = await http.post("/v0/connect/flush", content=second.SerializeToString())
    assert resp.status_code == 200
    assert await store.get_reply(request_id) == first.SerializeToString()  # first stored wins


async def test_a_checkpoint_is_refused_as_not_in_flight_with_the_reason(
    api_alone: tuple[ApiProcess, httpx.AsyncClient, Store],
) -> None:
    _, http, _ = api_alone
    run_id = ids.new_ulid()
    body = {
        "run_id": run_id,
        "fn_id": "app-fn",
        "qi_id": "q",
        "request_id": ids.new_ulid(),
        "steps": [{"op": "StepRun", "id": "a" * 40, "name": "a", "data": 1}],
        "ts": 0,
    }
    resp = await http.post(f"/v1/checkpoint/{run_id}/async", json=body)
    assert resp.status_code == 409
    assert resp.json()["error"] == CHECKPOINTS_NOT_OFFERED


# --- readiness and the registry -----------------------------------------------------------------------


async def test_the_process_is_ready_and_registered_while_started(engine: Engine) -> None:
    ours = await open_store(engine.db, engine.dsn)
    api_store = await engine.store(ours)
    api = await start_api_process(api_settings(process_ttl=3.0), api_store)
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=DEADLINE) as http:
            assert (await http.get("/ready")).status_code == 200
        [entry] = await ours.list_processes("api", _now_ms())
        assert (entry.process_id, entry.address, entry.state) == ("api-1", api.url, "ready")
        first_expiry = entry.expires_at_ms

        async def renewed() -> bool:
            [entry] = await ours.list_processes("api", _now_ms())
            return entry.expires_at_ms > first_expiry

        await until(renewed, "the heartbeat renewed the entry")  # every ttl/3 = 1 s
    finally:
        await api.stop()
    try:
        assert await ours.list_processes("api", _now_ms()) == []
    finally:
        if api_store is not ours:
            await api_store.close()
        await ours.close()


async def _has(functions: Awaitable[set[str]], fn_id: str) -> bool:
    return fn_id in await functions


async def test_two_api_processes_serve_the_same_runs(platform: Platform) -> None:
    """Any number behind a load balancer: an event sent to one starts a run the other shows."""
    other_store = await platform.engine.store(platform.stores[0])
    other = await start_api_process(api_settings(process_id="api-2"), other_store)
    worker = await platform.connect_worker("w1")
    try:
        async with httpx.AsyncClient(base_url=other.url, timeout=DEADLINE) as http:
            assert {p.process_id for p in await other_store.list_processes("api", _now_ms())} == {"api-1", "api-2"}
            await until(lambda: _has(platform.functions(), "apiproc-two"), "api-1 learnt the app")

            async def api_2_knows() -> bool:
                resp = await http.get("/v1/functions")
                return "apiproc-two" in {fn["id"] for fn in resp.json()["data"]}

            await until(api_2_knows, "api-2 learnt the app")
            resp = await http.post("/e/any-key", json={"name": "apiproc/two", "data": {"who": "cy"}})
            [event_id] = resp.json()["ids"]
            run = await platform.ended(event_id)  # read through api-1
            assert run["status"] == "Completed" and run["output"] == {"sum": 3, "who": "cy"}
    finally:
        await worker.close()
        await other.stop()
        if other_store is not platform.stores[0]:
            await other_store.close()


async def test_an_api_on_every_interface_registers_its_host_name(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "alone.db")
    try:
        assert ApiProcess(api_settings(host="0.0.0.0"), store).address == f"http://{socket.gethostname()}:0"
        assert ApiProcess(api_settings(host="::1"), store).address == "http://[::1]:0"
    finally:
        await store.close()


async def test_the_rest_api_of_an_api_process_reads_and_acts_through_the_store(platform: Platform) -> None:
    http = platform.http
    worker = await platform.connect_worker("w1")
    try:
        await until(lambda: _has(platform.functions(), "apiproc-nap"), "the API learnt the app")
        event_id = await platform.send("apiproc/two", {"who": "cy"})
        run = await platform.ended(event_id)
        listed = (await http.get("/v1/runs", params={"function": "apiproc-two", "status": "completed"})).json()
        assert [r["run_id"] for r in listed["data"]] == [run["run_id"]] and listed["cursor"] is None
        steps = (await http.get(f"/v1/runs/{run['run_id']}/steps")).json()["data"]
        assert [(s["name"], s["output"], s["attempts"]) for s in steps] == [("a", 1, 1), ("b", 2, 1)]
        shown = (await http.get(f"/v1/events/{event_id}")).json()["data"]
        assert shown["matched"] and [r["run_id"] for r in shown["runs"]] == [run["run_id"]]
        # A rerun and a replay each start a run that an executor elsewhere completes.
        rerun = (await http.post(f"/v1/runs/{run['run_id']}/rerun")).json()["data"]
        assert (await platform.ended(rerun["event_id"]))["run_id"] == rerun["run_id"]
        replayed = (await http.post(f"/v1/events/{event_id}/replay")).json()["data"]["id"]
        assert (await platform.ended(replayed))["output"] == {"sum": 3, "who": "cy"}
        apps = (await http.get("/v1/apps")).json()["data"]
        assert [(a["name"], [f["id"] for f in a["functions"]]) for a in apps] == [
            ("apiproc", ["apiproc-nap", "apiproc-two"])
        ]
        assert (await http.get("/v1/workers")).status_code == 200
        # Cancelling many: the store tells the executor holding the sleeping run.
        napping = await platform.send("apiproc/nap", {})
        store = platform.stores[0]

        async def sleeping() -> bool:
            runs = await store.runs_for_event(napping)
            return bool(runs and runs[0].waiting)

        await until(sleeping, "the run went to sleep")
        dry = await http.post("/v1/cancellations", json={"function_id": "apiproc-nap", "dry_run": True})
        assert dry.json() == {"data": {"matching": 1}}, dry.text
        resp = await http.post("/v1/cancellations", json={"function_id": "apiproc-nap"})
        assert resp.json() == {"data": {"cancelled": 1}}, resp.text
        assert (await platform.ended(napping))["status"] == "Cancelled"
        nap_steps = (await http.get(f"/v1/runs/{(await platform.runs(napping))[0]['run_id']}/steps")).json()["data"]
        # Cancelled while it slept: the sleep shows, ended by the cancel.
        assert [(s["name"], s["kind"], s["status"], s["ended_by"]) for s in nap_steps] == [
            ("nap", "sleep", "Cancelled", "cancelled")
        ]
    finally:
        await worker.close()
