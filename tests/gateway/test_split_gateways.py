"""Two gateways sharing one database (`GatewayProcess`): the registry, a
drain that hands its work over, replies and lease extensions that reach the
other gateway, and `max_worker_concurrency` held across both.

Real pieces: both gateways with their request pumps over one real database
(a store object each on PostgreSQL, as separate processes have), our worker
connected over real sockets, requests queued in the store as an executor in
another process queues them. What the worker ran is counted on its side.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from connect import Client, Context, Step, TriggerEvent
from connect.roles.gateway import GatewayProcess
from connect.store import QueuedRequest, Store
from connect.worker.connection import WorkerConnection, connect
from tests.gateway.requests import discovery_request
from tests.gateway.split_stack import Pair, two_gateways
from tests.postgres import PostgresServer

pytestmark = pytest.mark.anyio

#: Generous: every wait below ends on observable state long before this.
DEADLINE = 30.0

client = Client(app_id="split")
#: Request ids each function body ran for (worker side).
RAN: collections.Counter[str] = collections.Counter()
RELEASE = asyncio.Event()
#: Bodies of "capped" running now, and the most at once.
RUNNING = [0, 0]
CAPPED_GO = asyncio.Event()


@client.create_function(fn_id="held", trigger=TriggerEvent(event="split/held"))
async def held(ctx: Context, step: Step) -> Any:
    RAN[ctx.event.data["key"]] += 1
    if ctx.event.data.get("hold"):
        await RELEASE.wait()
    return ctx.event.data["key"]


@client.create_function(fn_id="capped", trigger=TriggerEvent(event="split/capped"))
async def capped(ctx: Context, step: Step) -> Any:
    RAN[ctx.event.data["key"]] += 1
    RUNNING[0] += 1
    RUNNING[1] = max(RUNNING[1], RUNNING[0])
    try:
        await CAPPED_GO.wait()
        # Let the other gateway try to add one while this one still runs.
        for _ in range(20):
            await asyncio.sleep(0)
    finally:
        RUNNING[0] -= 1
    return ctx.event.data["key"]


@pytest.fixture(params=["sqlite", "postgres"])
def dsn(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    global RELEASE, CAPPED_GO
    RELEASE, CAPPED_GO = asyncio.Event(), asyncio.Event()
    RAN.clear()
    RUNNING[:] = [0, 0]


@pytest.fixture
async def pair(tmp_path: Path, dsn: str | None) -> AsyncIterator[Pair]:
    # Short leases: a lease extended only through the other gateway must outlive its first term.
    async with two_gateways(
        tmp_path / "shared.db", dsn, lease_duration=2.0, extend_lease_interval=0.4, process_ttl=3.0
    ) as pair:
        yield pair


def now_ms() -> int:
    return int(time.time() * 1000)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    async with asyncio.timeout(DEADLINE):
        while not await check():
            await asyncio.sleep(0.02)


async def worker(pair: Pair, instance_id: str, **options: Any) -> WorkerConnection:
    client.api_base_url = pair.desk.url
    return await connect([(client, [held, capped])], instance_id=instance_id, handle_shutdown_signals=(), **options)


async def queue(store: Store, slug: str, key: str, **data: Any) -> str:
    request = discovery_request("split", slug, f"split/{slug}", data={"key": key, **data})
    await store.queue_request(
        QueuedRequest(
            request.request_id,
            request.run_id,
            request.app_name,
            request.function_slug,
            request.step_id,
            request.payload,
            now_ms(),
        )
    )
    return request.request_id


async def answered(store: Store, request_ids: list[str]) -> bool:
    return all([await store.get_reply(rid) is not None for rid in request_ids])


async def test_each_gateway_registers_itself_and_its_ready_connections(pair: Pair) -> None:
    processes = await pair.store.list_processes("gateway", now_ms())
    assert {(p.process_id, p.address, p.state) for p in processes} == {
        ("gw-a", pair.a.url, "ready"),
        ("gw-b", pair.b.url, "ready"),
    }
    w = await worker(pair, "w1", max_worker_concurrency=3)

    async def connected() -> bool:
        return bool(await pair.store.list_connections(now_ms()))

    await eventually(connected, "the connection is registered")
    [row] = await pair.store.list_connections(now_ms())
    assert (row.gateway_id, row.instance_id, row.apps, row.functions, row.capacity, row.state) == (
        "gw-a",
        "w1",
        ["split"],
        ["split-capped", "split-held"],
        3,
        "ready",
    )
    assert row.expires_at_ms > now_ms()

    async def renewed() -> bool:  # every third of the TTL, before either row lapses
        rows = await pair.store.list_connections(now_ms())
        expiries = {p.process_id: p.expires_at_ms for p in await pair.store.list_processes("gateway", now_ms())}
        return (
            bool(rows)
            and rows[0].expires_at_ms > row.expires_at_ms
            and all(expiries.get(p.process_id, 0) > p.expires_at_ms for p in processes)
        )

    await eventually(renewed, "both rows are renewed")
    await w.close()

    async def gone() -> bool:
        return not await pair.store.list_connections(now_ms())

    await eventually(gone, "the connection is dropped")
    # Asked over HTTP (open mode), with nobody to hand it to: the whole gateway drains in place.
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"http://127.0.0.1:{pair.b.port}/v0/connect/drain")
        assert answer.status_code == 200

    async def b_draining() -> bool:
        states = {p.process_id: p.state for p in await pair.store.list_processes("gateway", now_ms())}
        return states == {"gw-a": "ready", "gw-b": "draining"}

    await eventually(b_draining, "B is recorded draining")
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"http://127.0.0.1:{pair.b.port}/ready")).status_code == 503
    await pair.b.close()
    assert [p.process_id for p in await pair.store.list_processes("gateway", now_ms())] == ["gw-a"]


async def test_a_drain_hands_back_what_was_not_forwarded_and_its_forwards_end_through_the_other(pair: Pair) -> None:
    w = await worker(pair, "w1")
    try:
        # One step runs on A's worker, held; its lease outlives its first term only by
        # extensions, which go through B once the worker moved there.
        first = await queue(pair.store, "split-held", "first", hold=True)
        await eventually(lambda: _ran("first"), "A forwards the held step")
        await eventually(lambda: _acked(pair.a), "the worker acknowledges it")

        async def leased() -> bool:  # written beside the forward, not before it
            return await pair.store.get_lease(first) is not None

        await eventually(leased, "A stores the lease")
        lease = await pair.store.get_lease(first)
        assert lease is not None
        first_term_ms = lease.expires_at_ms

        # A batch A takes: A stops taking as soon as it holds one it has not
        # sent to the worker yet (no lease), and hands that one back.
        async def stop_with_one_unsent() -> int:
            while not any(pair.a.dispatcher.leases.get(rid) is None for rid in pair.a.pump.forwarding):
                await asyncio.sleep(0)
            return pair.a.pump.stop_taking()

        stopping = asyncio.create_task(stop_with_one_unsent())
        batch = [await queue(pair.store, "split-held", f"r{i}") for i in range(20)]
        async with asyncio.timeout(DEADLINE):
            handed_back = await stopping
        assert handed_back >= 1

        pair.desk.send_to(pair.b)
        started = time.monotonic()
        draining = asyncio.create_task(pair.a.drain())

        async def extended_through_b() -> bool:
            row = await pair.store.get_lease(first)
            return row is not None and row.expires_at_ms > first_term_ms and time.time() * 1000 > first_term_ms

        await eventually(extended_through_b, "the worker extends the held lease through B past its first term")
        assert not draining.done() and RAN["first"] == 1  # A still waits for the held step: not lapsed
        # B extended it from the stored lease: A holds it in the queue, so B never dispatched it.
        assert pair.b.dispatcher.leases.get(first) is not None

        released = time.monotonic()
        RELEASE.set()
        async with asyncio.timeout(DEADLINE):
            await draining
        # The reply came through B; A heard it was stored and settled at once.
        assert time.monotonic() - released < 1.5
        assert time.monotonic() - started < pair.a.settings.drain_timeout
        await eventually(lambda: answered(pair.store, [first, *batch]), "every request is answered")
        assert pair.a.pump.in_flight == 0
        assert RAN == collections.Counter({"first": 1, **{f"r{i}": 1 for i in range(20)}})
    finally:
        RELEASE.set()
        await w.close()


async def test_a_gateway_stopped_past_its_drain_leaves_the_lease_and_the_next_waits_for_the_worker(
    tmp_path: Path, dsn: str | None
) -> None:
    async with two_gateways(
        tmp_path / "shared.db", dsn, lease_duration=2.0, extend_lease_interval=0.4, drain_timeout=0.5
    ) as pair:
        w = await worker(pair, "w1")
        try:
            rid = await queue(pair.store, "split-held", "outlived", hold=True)
            await eventually(lambda: _ran("outlived"), "A forwards it")
            await eventually(lambda: _acked(pair.a), "the worker acknowledges it")
            pair.desk.send_to(pair.b)
            await pair.a.drain()  # past its deadline: the step still runs
            await pair.a.close()  # hands it back to the queue, for B

            async def b_waits() -> bool:
                return pair.b.pump.in_flight == 1 and pair.b.dispatcher.leases.get(rid) is not None

            await eventually(b_waits, "B takes it and waits on the stored lease")
            # ...without sending it to the worker again.
            assert not any(rid in conn.session.unanswered_requests for conn in pair.b.server.connections)
            RELEASE.set()
            await eventually(lambda: answered(pair.store, [rid]), "the worker's reply answers it")
            assert RAN["outlived"] == 1
        finally:
            RELEASE.set()
            await w.close()


async def test_a_reply_on_b_for_a_request_a_holds_answers_a_at_once(pair: Pair) -> None:
    w = await worker(pair, "w1")
    try:
        rid = await queue(pair.store, "split-held", "moved", hold=True)
        await eventually(lambda: _ran("moved"), "A forwards it")
        # (A request not acknowledged yet when its gateway drains is sent elsewhere instead.)
        await eventually(lambda: _acked(pair.a), "the worker acknowledges it")
        pair.desk.send_to(pair.b)
        # Only A's server drains: its workers move to B, its pump waits on.
        moving = asyncio.create_task(pair.a.role.drain())
        await eventually(lambda: _connected(pair.b), "the worker is on B")
        assert pair.a.pump.in_flight == 1
        released = time.monotonic()
        RELEASE.set()

        async def answered_through_a() -> bool:
            return pair.a.pump.in_flight == 0 and await answered(pair.store, [rid])

        await eventually(answered_through_a, "A's forward is answered")
        assert time.monotonic() - released < 1.5  # not at the lease's end: promptly
        assert RAN["moved"] == 1
        assert await pair.store.get_reply(rid) is not None
        async with asyncio.timeout(DEADLINE):
            await moving  # the worker left A once its reply was through
    finally:
        RELEASE.set()
        await w.close()


async def test_max_worker_concurrency_holds_across_both_gateways(pair: Pair) -> None:
    # One instance, connected through both gateways (as during a handover): two sockets.
    on_a = await worker(pair, "capped-1", max_worker_concurrency=2)
    pair.desk.send_to(pair.b)
    on_b = await worker(pair, "capped-1", max_worker_concurrency=2)
    try:
        await eventually(lambda: _connected(pair.b), "the instance is on B too")
        keys = [f"c{i}" for i in range(30)]
        rids = [await queue(pair.store, "split-capped", key) for key in keys]
        await eventually(lambda: _running(2), "two run")

        async def full_on_both() -> bool:
            return not any(g.dispatcher.capacity.has_room("capped-1") for g in (pair.a, pair.b))

        # Each gateway has found the instance full, by its own count or the store's.
        await eventually(full_on_both, "neither gateway has room for a third")
        assert RUNNING[0] == 2
        CAPPED_GO.set()
        await eventually(lambda: answered(pair.store, rids), "every request is answered")
        assert RUNNING[1] == 2  # never more than the limit at once, counted where they ran
        assert RAN == collections.Counter(dict.fromkeys(keys, 1))
    finally:
        CAPPED_GO.set()
        await on_a.close()
        await on_b.close()


async def _ran(key: str) -> bool:
    return RAN[key] > 0


async def _running(count: int) -> bool:
    return RUNNING[0] >= count


async def _connected(gateway: GatewayProcess) -> bool:
    return bool(gateway.dispatcher.router.ready_connections())


async def _acked(gateway: GatewayProcess) -> bool:
    return all(conn.session.pending_acks == 0 for conn in gateway.server.connections)
