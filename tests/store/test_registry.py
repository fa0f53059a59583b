"""What split roles share through the store, on both engines: the process and
connection registry, notifications, catching up on events, and leases bounded
per worker instance."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg
import pytest

from connect.store import (
    APPS_CHANGED,
    DRAINING,
    EVENTS_PAYLOAD_MAX,
    EVENTS_RECORDED,
    PROCESSES_CHANGED,
    READY,
    REGISTRY_KEEP_MS,
    REPLY_STORED,
    ROLE_API,
    ROLE_EXECUTOR,
    ROLE_GATEWAY,
    RUN_CANCEL_REQUESTED,
    AppRecord,
    ConnectionRecord,
    EventRecord,
    NewEvent,
    ProcessRecord,
    RunRecord,
    SlotClaim,
    Store,
    chunk_ids,
)
from connect.store.sqlite import SCHEMA_VERSION
from tests.postgres import PostgresServer
from tests.store.conftest import Engine, PostgresEngine, SqliteEngine

pytestmark = pytest.mark.anyio

NOW = 1_000_000
TTL = 15_000
#: How long a test waits for a notification that must come.
HEARD_WITHIN = 10.0
#: A time before every expiry: listing at it shows every entry still stored.
EVER = -(2**62)


def process(process_id: str, role: str = ROLE_GATEWAY, **kw: object) -> ProcessRecord:
    fields: dict[str, object] = {
        "address": f"ws://{process_id}/v0/connect" if role == ROLE_GATEWAY else "",
        "state": READY,
        "expires_at_ms": NOW + TTL,
        "started_at_ms": NOW - 5,
    }
    fields.update(kw)
    return ProcessRecord(process_id, role, **fields)  # type: ignore[arg-type]


def connection(connection_id: str, gateway_id: str, **kw: object) -> ConnectionRecord:
    fields: dict[str, object] = {
        "instance_id": f"inst-{connection_id}",
        "apps": ["app"],
        "functions": ["app-fn", "app-other"],
        "capacity": 4,
        "in_flight": 1,
        "state": READY,
        "last_heartbeat_ms": NOW,
        "expires_at_ms": NOW + TTL,
    }
    fields.update(kw)
    return ConnectionRecord(connection_id, gateway_id, **fields)  # type: ignore[arg-type]


def event(event_id: str, received_at_ms: int = NOW, *, runs: int = 0) -> NewEvent:
    started = [
        RunRecord(
            run_id=f"run-{event_id}-{i}", function_id="app-fn", app_name="app", event_id=event_id, started_at_ms=1
        )
        for i in range(runs)
    ]
    return NewEvent(EventRecord(event_id, "app/x", 1, received_at_ms, b'{"id":"%s"}' % event_id.encode()), started)


async def heard_on(store: Store, channel: str) -> asyncio.Queue[str]:
    heard: asyncio.Queue[str] = asyncio.Queue()
    await store.listen(channel, heard.put_nowait)
    return heard


async def next_heard(heard: asyncio.Queue[str]) -> str:
    return await asyncio.wait_for(heard.get(), HEARD_WITHIN)


# --- processes ------------------------------------------------------------------------


async def test_processes_are_listed_by_role_while_unexpired(store: Store) -> None:
    await store.put_process(process("gw-b", started_at_ms=NOW - 1))
    await store.put_process(process("gw-a", started_at_ms=NOW - 2))
    await store.put_process(process("api-1", ROLE_API, address="http://api-1:8288"))
    await store.put_process(process("ex-1", ROLE_EXECUTOR, expires_at_ms=NOW))  # expires at NOW: gone
    # One process may hold several roles, one entry each.
    await store.put_process(process("gw-a", ROLE_EXECUTOR, started_at_ms=NOW - 2))

    gateways = await store.list_processes(ROLE_GATEWAY, NOW)
    assert gateways == [process("gw-a", started_at_ms=NOW - 2), process("gw-b", started_at_ms=NOW - 1)]
    assert [p.process_id for p in await store.list_processes(ROLE_EXECUTOR, NOW)] == ["gw-a"]
    # Oldest start first.
    assert [(p.process_id, p.role) for p in await store.list_processes(None, NOW)] == [
        ("api-1", ROLE_API),
        ("gw-a", ROLE_EXECUTOR),
        ("gw-a", ROLE_GATEWAY),
        ("gw-b", ROLE_GATEWAY),
    ]
    # Still stored, only expired: an earlier clock sees it.
    assert [p.process_id for p in await store.list_processes(ROLE_EXECUTOR, NOW - 1)] == ["ex-1", "gw-a"]

    # A renewal replaces the entry; a drop removes it at once.
    await store.put_process(process("gw-b", state=DRAINING, expires_at_ms=NOW + 2 * TTL, started_at_ms=NOW - 1))
    assert (await store.list_processes(ROLE_GATEWAY, NOW + TTL))[0] == process(
        "gw-b", state=DRAINING, expires_at_ms=NOW + 2 * TTL, started_at_ms=NOW - 1
    )
    await store.drop_process("gw-b", ROLE_GATEWAY)
    assert [p.process_id for p in await store.list_processes(ROLE_GATEWAY, NOW)] == ["gw-a"]
    await store.drop_process("nobody", ROLE_GATEWAY)  # dropping what is not there is harmless


async def test_process_changes_are_announced_and_renewals_are_not(store: Store) -> None:
    heard = await heard_on(store, PROCESSES_CHANGED)
    await store.put_process(process("gw-a"))
    assert await next_heard(heard) == "gw-a"  # new
    await store.put_process(process("gw-a", expires_at_ms=NOW + 2 * TTL))  # a renewal: nothing to tell
    await store.put_process(process("gw-b"))
    assert await next_heard(heard) == "gw-b"
    await store.put_process(process("gw-a", state=DRAINING))
    assert await next_heard(heard) == "gw-a"  # its state changed
    await store.put_process(process("gw-a", state=DRAINING, started_at_ms=NOW))
    assert await next_heard(heard) == "gw-a"  # restarted under the same id
    await store.drop_process("gw-a", ROLE_GATEWAY)
    assert await next_heard(heard) == "gw-a"
    assert heard.empty()


async def test_long_expired_processes_are_deleted_by_the_next_registration(store: Store) -> None:
    await store.put_process(process("old", expires_at_ms=NOW + TTL - REGISTRY_KEEP_MS - 1))
    await store.put_process(process("recent", expires_at_ms=NOW + TTL - REGISTRY_KEEP_MS))
    await store.put_process(process("gw-a"))  # expires at NOW + TTL: deletes what expired before that - KEEP
    assert [p.process_id for p in await store.list_processes(None, EVER)] == ["gw-a", "recent"]
    await store.put_process(process("gw-a", expires_at_ms=NOW + TTL + 1))
    assert [p.process_id for p in await store.list_processes(None, EVER)] == ["gw-a"]


# --- connections ---------------------------------------------------------------------


async def test_a_gateway_replaces_its_own_connections_only(store: Store) -> None:
    await store.put_connections("gw-a", [connection("c1", "gw-a"), connection("c2", "gw-a", capacity=None)])
    await store.put_connections("gw-b", [connection("c1", "gw-b", instance_id="inst-c1")])
    assert await store.list_connections(NOW) == [
        connection("c1", "gw-a"),
        connection("c2", "gw-a", capacity=None),
        connection("c1", "gw-b", instance_id="inst-c1"),
    ]

    await store.put_connections("gw-a", [connection("c3", "gw-a", state=DRAINING, in_flight=0, functions=[])])
    assert await store.list_connections(NOW) == [
        connection("c3", "gw-a", state=DRAINING, in_flight=0, functions=[]),
        connection("c1", "gw-b", instance_id="inst-c1"),
    ]
    await store.put_connections("gw-a", [])
    assert [c.gateway_id for c in await store.list_connections(NOW)] == ["gw-b"]


async def test_expired_connections_are_invisible_then_deleted(store: Store) -> None:
    await store.put_connections("gw-dead", [connection("c1", "gw-dead", expires_at_ms=NOW)])
    assert await store.list_connections(NOW) == []
    assert len(await store.list_connections(NOW - 1)) == 1
    # Another gateway's report deletes what expired REGISTRY_KEEP_MS before its own entries' expiry.
    await store.put_connections("gw-a", [connection("c2", "gw-a", expires_at_ms=NOW + REGISTRY_KEEP_MS)])
    assert [c.connection_id for c in await store.list_connections(EVER)] == ["c2", "c1"]
    await store.put_connections("gw-a", [connection("c2", "gw-a", expires_at_ms=NOW + REGISTRY_KEEP_MS + 1)])
    assert [c.connection_id for c in await store.list_connections(EVER)] == ["c2"]


# --- leases bounded per instance ---------------------------------------------------------


async def test_an_instance_holds_at_most_limit_unexpired_leases(store: Store) -> None:
    assert await store.put_lease_within("r1", "l1", NOW + TTL, "inst", 2, NOW)
    assert await store.put_lease_within("r2", "l2", NOW + TTL, "inst", 2, NOW)
    assert not await store.put_lease_within("r3", "l3", NOW + TTL, "inst", 2, NOW)
    assert await store.get_lease("r3") is None
    # Another instance has slots of its own.
    assert await store.put_lease_within("r3", "l3", NOW + TTL, "other", 2, NOW)
    # A request already leased to the instance is extended even at the limit.
    assert await store.put_lease_within("r1", "l1b", NOW + 2 * TTL, "inst", 2, NOW)
    lease = await store.get_lease("r1")
    assert lease is not None and (lease.lease_id, lease.expires_at_ms) == ("l1b", NOW + 2 * TTL)
    # A request leased to another instance is not: it would be one more here.
    assert not await store.put_lease_within("r3", "l3", NOW + TTL, "inst", 2, NOW)
    # A lease that ended (its reply stored) or expired frees its slot.
    assert await store.put_reply("r2", b"done")
    assert await store.put_lease_within("r4", "l4", NOW + TTL, "inst", 2, NOW)
    assert not await store.put_lease_within("r5", "l5", NOW + TTL, "inst", 2, NOW)
    assert await store.put_lease_within("r5", "l5", NOW + 3 * TTL, "inst", 2, NOW + TTL)  # r4 expired by then


async def test_concurrent_leases_of_one_instance_stop_at_its_limit(store: Store) -> None:
    results = await asyncio.gather(
        *(store.put_lease_within(f"r{i}", f"l{i}", NOW + TTL, "inst", 3, NOW) for i in range(40))
    )
    assert sum(results) == 3
    leased = [i for i in range(40) if await store.get_lease(f"r{i}") is not None]
    assert leased == [i for i, won in enumerate(results) if won]


async def test_leases_of_one_instance_stop_at_its_limit_across_processes(postgres_server: PostgresServer) -> None:
    # Two store objects on one database stand for two gateway processes; each
    # round is a fresh instance whose slots both race for.
    dsn = postgres_server.create_database()
    first, second = await PostgresEngine(dsn).open(), await PostgresEngine(dsn).open()
    try:
        for round_ in range(10):
            instance, limit = f"inst-{round_}", 1 + round_ % 3
            calls = [
                store.put_lease_within(f"r{round_}-{side}-{i}", "l", NOW + TTL, instance, limit, NOW)
                for i in range(15)
                for side, store in (("a", first), ("b", second))
            ]
            assert sum(await asyncio.gather(*calls)) == limit
    finally:
        await first.close()
        await second.close()


# --- notifications ------------------------------------------------------------------------


async def test_notify_reaches_this_store_s_own_listeners(store: Store) -> None:
    heard = await heard_on(store, REPLY_STORED)
    await store.notify(REPLY_STORED, "req-1")
    assert await next_heard(heard) == "req-1"


async def test_notify_reaches_every_process_on_postgres(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.create_database()
    sender, receiver = await PostgresEngine(dsn).open(), await PostgresEngine(dsn).open()
    try:
        heard = await heard_on(receiver, REPLY_STORED)
        heard_at_sender = await heard_on(sender, REPLY_STORED)
        await sender.notify(REPLY_STORED, "req-1")
        assert await next_heard(heard) == "req-1"
        assert await next_heard(heard_at_sender) == "req-1"
    finally:
        await sender.close()
        await receiver.close()


async def test_channels_listened_on_at_once_are_all_heard(store: Store) -> None:
    """Listens made together, while the listening connection is still being
    opened, each start before they return (none is left out)."""
    channels = [REPLY_STORED, APPS_CHANGED, RUN_CANCEL_REQUESTED, PROCESSES_CHANGED, EVENTS_RECORDED]
    channels += [f"connect_test_{i}" for i in range(40)]

    async def later(i: int, channel: str) -> asyncio.Queue[str]:
        await asyncio.sleep(i / 4000)  # spread over the time the first one takes to connect
        return await heard_on(store, channel)

    queues = await asyncio.gather(*(later(i, channel) for i, channel in enumerate(channels)))
    for channel in channels:
        await store.notify(channel, f"on {channel}")
    for channel, heard in zip(channels, queues, strict=True):
        assert await next_heard(heard) == f"on {channel}"


async def test_apps_and_cancellations_are_announced(store: Store) -> None:
    apps = await heard_on(store, APPS_CHANGED)
    cancels = await heard_on(store, RUN_CANCEL_REQUESTED)
    await store.put_app(AppRecord("app", []))
    assert await next_heard(apps) == "app"
    await store.record_events([event("e1", runs=1)])
    assert not await store.request_cancel("no-such-run")
    assert await store.request_cancel("run-e1-0")
    assert await next_heard(cancels) == "run-e1-0"
    assert cancels.empty()


async def test_new_events_are_announced_and_duplicates_are_not(store: Store) -> None:
    heard = await heard_on(store, EVENTS_RECORDED)
    assert await store.record_events([event("e1"), event("e2", runs=1), event("e1")]) == [True, True, False]
    assert await next_heard(heard) == "e1,e2"
    assert await store.record_events([event("e1"), event("e3")]) == [False, True]
    assert await next_heard(heard) == "e3"
    assert await store.record_events([event("e1")]) == [False]
    assert await store.record_tick("cron-key", NOW, event("tick-1", runs=1))
    assert await next_heard(heard) == "tick-1"
    assert not await store.record_tick("cron-key", NOW, event("tick-1", runs=1))
    assert await store.record_events([event("e4")]) == [True]
    assert await next_heard(heard) == "e4"  # nothing came for the duplicates before it


async def test_many_new_events_are_announced_in_payloads_under_the_limit(store: Store) -> None:
    heard = await heard_on(store, EVENTS_RECORDED)
    ids = [f"01JEVENT{i:018}" for i in range(1000)]  # 26 bytes each: 27,000 bytes joined
    assert all(await store.record_events([event(i) for i in ids]))
    got: list[str] = []
    while len(got) < len(ids):
        payload = await next_heard(heard)
        assert len(payload.encode()) <= EVENTS_PAYLOAD_MAX
        got.extend(payload.split(","))
    assert got == ids


def test_chunk_ids_keeps_each_payload_within_the_limit() -> None:
    assert chunk_ids([]) == []
    assert chunk_ids(["a", "b", "c"], 3) == ["a,b", "c"]
    assert chunk_ids(["aaaa", "b"], 3) == ["aaaa", "b"]  # too long alone: a payload of its own
    assert chunk_ids(["ab", "cd"], 5) == ["ab,cd"]


# --- catching up on events --------------------------------------------------------------


async def test_events_are_read_by_id_and_since_a_time(store: Store) -> None:
    await store.record_events([event("e3", NOW + 1), event("e1", NOW), event("e2", NOW), event("e0", NOW - 1)])
    found = await store.get_events(["e2", "missing", "e0", "e2"])
    assert [e.id for e in found] == ["e2", "e0"]
    assert found[0] == EventRecord("e2", "app/x", 1, NOW, b'{"id":"e2"}')
    assert await store.get_events([]) == []

    assert [e.id for e in await store.events_since(NOW - 1, 10)] == ["e1", "e2", "e3"]
    assert [e.id for e in await store.events_since(NOW - 1, 2)] == ["e1", "e2"]
    assert [e.id for e in await store.events_since(NOW, 10)] == ["e3"]
    assert await store.events_since(NOW + 1, 10) == []


# --- migration ------------------------------------------------------------------------------


async def test_a_schema_5_database_gains_the_registry(engine: Engine) -> None:
    store = await engine.open()
    await store.put_lease("r1", "l1", NOW + TTL, "inst")
    await store.close()
    await _downgrade_to_schema_5(engine)

    store = await engine.open()
    try:
        assert await engine.schema_version() == SCHEMA_VERSION
        assert not await store.put_lease_within("r2", "l2", NOW + TTL, "inst", 1, NOW)
        assert await store.acquire_slots("r1", "run1", [SlotClaim("k", 1)], 0)
        await store.put_process(process("gw-a"))
        await store.put_connections("gw-a", [connection("c1", "gw-a")])
        assert len(await store.list_processes(None, NOW)) == len(await store.list_connections(NOW)) == 1
    finally:
        await store.close()


async def _downgrade_to_schema_5(engine: Engine) -> None:
    drop = (
        # Schema 12's (the runs of a throttle's line; `held_starts.gate` goes with its table).
        "DROP TABLE throttle_waits",
        # Schema 11's (what became of held events).
        "DROP TABLE event_holds",
        # Schema 10's (run listings, events by name, each step's info).
        "DROP INDEX runs_by_status_start",
        "DROP INDEX runs_by_start",
        "DROP INDEX runs_by_function_start",
        "DROP INDEX IF EXISTS skipped_starts_by_start",
        "DROP INDEX events_by_name",
        "CREATE INDEX runs_by_status ON runs (status)",
        "ALTER TABLE steps DROP COLUMN info",
        "DROP TABLE processes",
        "DROP TABLE connections",
        "DROP INDEX leases_by_instance",
        # Schema 7's (flow control at run start).
        "DROP TABLE start_limits",
        "DROP TABLE singletons",
        "DROP TABLE skipped_starts",
        # Schema 8's (debounces and batches).
        "DROP TABLE held_starts",
        "DROP TABLE run_events",
        "DROP TABLE held_events",
        # Schema 9's (concurrency slots).
        "DROP TABLE slot_holds",
        "DROP TABLE slot_waits",
    )
    if isinstance(engine, SqliteEngine):
        with sqlite3.connect(engine.path) as conn:
            for statement in drop:
                conn.execute(statement)
        conn.close()
    else:
        assert isinstance(engine, PostgresEngine)
        pg = await asyncpg.connect(engine.dsn)
        try:
            for statement in drop:
                await pg.execute(statement)
        finally:
            await pg.close()
    await engine.set_schema_version(5)
