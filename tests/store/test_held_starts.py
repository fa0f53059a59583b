"""Debounces and batches in the store (both engines): what held events do to
the held start of their key, when it fires, once, and that it survives a reopen."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg
import msgspec
import pytest

from connect.store import (
    BATCH,
    DEBOUNCE,
    HELD_STARTS_CHANGED,
    NEW_RUN_FENCE,
    RUNNING,
    RUNS_RELEASED,
    EventRecord,
    Hold,
    NewEvent,
    PendingRequest,
    RunFilter,
    RunRecord,
    SlotClaim,
    StepInfo,
    StepMemo,
    Store,
)
from connect.store.base import RUN_CANCEL_REQUESTED
from connect.store.held_starts import MAX_BATCH_BYTES, HeldChange, hold_event
from connect.store.sqlite import SCHEMA_VERSION
from connect.store.start_gates import RUNNING as GATE_RUNNING
from connect.store.start_gates import SKIPPED, RateLimit, Singleton, StartGate, Throttle
from tests.store.conftest import Engine, PostgresEngine, SqliteEngine

pytestmark = pytest.mark.anyio

FN = "app-digest"


def event(event_id: str, received_ms: int, ts: int | None = None, **data: object) -> EventRecord:
    ts = received_ms if ts is None else ts
    body = msgspec.json.encode({"name": "app/x", "data": data, "id": event_id, "ts": ts, "user": {}})
    return EventRecord(event_id, "app/x", ts, received_ms, body)


def debounce(key: str = "", period_ms: int = 1000, timeout_ms: int | None = None) -> Hold:
    return Hold(DEBOUNCE, FN, "app", key, 3, period_ms=period_ms, timeout_ms=timeout_ms)


def batch(key: str = "", max_size: int = 3, timeout_ms: int = 5000) -> Hold:
    return Hold(BATCH, FN, "app", key, 3, timeout_ms=timeout_ms, max_size=max_size)


def gated_debounce(key: str = "", admit: RateLimit | None = None, **at_fire: object) -> Hold:
    """A debounce whose events pass `admit` before they are held, and whose run
    passes the gate of `at_fire` (throttle, singleton) when it fires."""
    return msgspec.structs.replace(
        debounce(key),
        admit=None if admit is None else StartGate("skip-" + key, FN, rate_limit=admit),
        gate=StartGate("", FN, **at_fire) if at_fire else None,  # type: ignore[arg-type]
    )


async def held(store: Store, record: EventRecord, *holds: Hold, owner: str | None = "ex") -> bool:
    [stored] = await store.record_events([NewEvent(record, [], owner=owner, holds=list(holds))])
    return stored


async def test_a_debounce_keeps_the_last_event_and_starts_once_period_passes(engine: Engine) -> None:
    store = await engine.open()
    try:
        dues: list[str] = []
        await store.listen(HELD_STARTS_CHANGED, dues.append)
        await held(store, event("e1", 1000), debounce())
        await held(store, event("e2", 1500), debounce())
        await held(store, event("e3", 1800), debounce())
        # An event older than the one kept (by `ts`) replaces nothing.
        await held(store, event("e0", 1900, ts=900), debounce())
        assert await store.runs_for_event("e3") == []
        assert await store.next_held_due() == 2800
        await _settle()
        assert "2800" in dues
        assert await store.start_held("ex", 2799, 10) == []
        [claim] = await store.start_held("ex", 2800, 10)
        assert claim.fence == NEW_RUN_FENCE
        [run] = await store.runs_for_event("e3")
        assert run.run_id == claim.run_id and run.status == RUNNING and run.function_id == FN
        loaded = await store.load_run(run.run_id)
        assert loaded is not None and loaded.event is not None and loaded.event.id == "e3"
        assert loaded.batch == []  # a debounce's run gets the one event
        assert await store.next_held_due() is None
        assert await store.start_held("ex", 10_000, 10) == []
    finally:
        await store.close()


async def test_a_debounce_timeout_caps_the_delay_and_keys_are_separate(engine: Engine) -> None:
    store = await engine.open()
    try:
        await held(store, event("a1", 0), debounce("a", period_ms=1000, timeout_ms=1500))
        await held(store, event("a2", 800), debounce("a", period_ms=1000, timeout_ms=1500))
        await held(store, event("b1", 900), debounce("b", period_ms=1000, timeout_ms=1500))
        # a: 800 + 1000 would be 1800, but the timeout caps it at 0 + 1500.
        assert await store.next_held_due() == 1500
        [first] = await store.start_held("ex", 1500, 10)
        assert [r.run_id for r in await store.runs_for_event("a2")] == [first.run_id]
        assert await store.next_held_due() == 1900
        [second] = await store.start_held("ex", 1900, 10)
        assert [r.run_id for r in await store.runs_for_event("b1")] == [second.run_id]
    finally:
        await store.close()


async def test_the_event_that_fills_a_batch_starts_its_run_with_every_event_in_order(engine: Engine) -> None:
    store = await engine.open()
    try:
        released: list[str] = []
        await store.listen(RUNS_RELEASED, released.append)
        await held(store, event("e1", 100, n=1), batch())
        await held(store, event("e2", 200, n=2), batch())
        assert await store.runs_for_event("e1") == []
        assert await store.next_held_due() == 5100  # opened at 100, 5 s timeout
        await held(store, event("e3", 300, n=3), batch())
        [run] = await store.runs_for_event("e1")  # the batch's first event is its trigger
        loaded = await store.load_run(run.run_id)
        assert loaded is not None
        assert [msgspec.json.decode(b)["data"]["n"] for b in loaded.batch] == [1, 2, 3]
        assert await store.next_held_due() is None
        await _settle()
        assert released  # nobody owns it yet: executors are told to claim it
        [claim] = await store.claim_runs("ex", 300, 10)
        assert claim.run_id == run.run_id
        # The next event opens a new batch.
        await held(store, event("e4", 400, n=4), batch())
        assert await store.next_held_due() == 5400
    finally:
        await store.close()


async def test_a_partial_batch_starts_once_its_timeout_passes_and_keys_batch_apart(engine: Engine) -> None:
    store = await engine.open()
    try:
        await held(store, event("a1", 100, n=1), batch("a"))
        await held(store, event("b1", 200, n=2), batch("b"))
        await held(store, event("a2", 300, n=3), batch("a"))
        assert await store.start_held("ex", 5099, 10) == []
        [a] = await store.start_held("ex", 5100, 10)
        loaded = await store.load_run(a.run_id)
        assert loaded is not None and loaded.run.event_id == "a1"
        assert [msgspec.json.decode(b)["data"]["n"] for b in loaded.batch] == [1, 3]
        [b] = await store.start_held("ex", 5200, 10)
        loaded = await store.load_run(b.run_id)
        assert loaded is not None and len(loaded.batch) == 1
    finally:
        await store.close()


async def test_a_duplicate_event_is_not_held_twice(engine: Engine) -> None:
    store = await engine.open()
    try:
        assert await held(store, event("e1", 100), batch(max_size=2))
        assert not await held(store, event("e1", 100), batch(max_size=2))
        assert await store.runs_for_event("e1") == []
    finally:
        await store.close()


async def test_each_held_event_says_what_became_of_it(engine: Engine) -> None:
    """Held (with when its start is due), started (with the run), or replaced
    by a later event of a debounce; per function that held it."""
    store = await engine.open()
    other = "app-batched"
    batched = Hold(BATCH, other, "app", "", 3, timeout_ms=5000, max_size=3)
    try:
        assert await store.event_holds("e1") == []
        await held(store, event("e1", 1000), debounce(), batched)
        await held(store, event("e2", 1500), debounce())
        await held(store, event("e0", 1600, ts=900), debounce())  # older than the one kept
        e1_batch, e1_debounce = await store.event_holds("e1")
        assert (e1_batch.function_id, e1_batch.kind, e1_batch.status, e1_batch.due_ms) == (other, BATCH, "held", 6000)
        assert (e1_debounce.function_id, e1_debounce.status, e1_debounce.at_ms) == (FN, "replaced", 1000)
        [e2] = await store.event_holds("e2")
        assert (e2.kind, e2.status, e2.due_ms, e2.run_id) == (DEBOUNCE, "held", 2500, None)
        assert [h.status for h in await store.event_holds("e0")] == ["replaced"]
        [claim] = await store.start_held("ex", 2500, 10)
        [e2] = await store.event_holds("e2")
        assert (e2.status, e2.run_id, e2.due_ms) == ("started", claim.run_id, None)
        assert [h.status for h in await store.event_holds("e1")] == ["held", "replaced"]
        # A batch: each event it held gets the run the event that fills it starts.
        await held(store, event("b2", 3000), batched)
        await held(store, event("b3", 3100), batched)
        [run] = await store.runs_for_event("e1")
        for event_id in ("e1", "b2", "b3"):
            started = [h for h in await store.event_holds(event_id) if h.function_id == other]
            assert [(h.status, h.run_id) for h in started] == [("started", run.run_id)], event_id
        # History retention takes them with the events.
        await store.prune_history(2000, 100)
        assert [h.function_id for h in await store.event_holds("e1")] == []
        assert [h.status for h in await store.event_holds("b2")] == ["started"]
    finally:
        await store.close()


async def test_held_starts_survive_a_reopen(engine: Engine) -> None:
    store = await engine.open()
    other = Hold(BATCH, "app-other", "app", "k", 3, timeout_ms=5000, max_size=3)
    await held(store, event("d1", 100), debounce("k"))
    await held(store, event("b1", 100, n=1), other)
    await held(store, event("b2", 150, n=2), other)
    await store.close()
    store = await engine.open()
    try:
        assert await store.next_held_due() == 1100
        claims = await store.start_held("ex", 10_000, 10)
        assert len(claims) == 2
        assert [r.event_id for r in await store.runs_for_event("d1")] == ["d1"]
        [run] = await store.runs_for_event("b1")
        loaded = await store.load_run(run.run_id)
        assert loaded is not None and len(loaded.batch) == 2
    finally:
        await store.close()


async def test_events_held_concurrently_fill_each_batch_exactly(engine: Engine) -> None:
    """Several store objects (separate connections on PostgreSQL, as several API
    processes would be) record 60 events for batches of 10 at once: 6 runs,
    each with 10 events, every event in exactly one."""
    stores = [await engine.open() for _ in range(3 if isinstance(engine, PostgresEngine) else 1)]
    try:

        async def send(i: int) -> None:
            await held(stores[i % len(stores)], event(f"e{i}", 1000 + i, n=i), batch(max_size=10), owner=None)

        await asyncio.gather(*(send(i) for i in range(60)))
        runs = await stores[0].claim_runs("ex", 2000, 100)
        assert len(runs) == 6
        seen: list[int] = []
        for claim in runs:
            loaded = await stores[0].load_run(claim.run_id)
            assert loaded is not None and len(loaded.batch) == 10
            seen.extend(msgspec.json.decode(b)["data"]["n"] for b in loaded.batch)
        assert sorted(seen) == list(range(60))
        assert await stores[0].next_held_due() is None
    finally:
        for s in stores:
            await s.close()


async def test_a_held_start_fires_once_whoever_fires_it(engine: Engine) -> None:
    stores = [await engine.open() for _ in range(3 if isinstance(engine, PostgresEngine) else 1)]
    try:
        for i in range(20):
            await held(stores[0], event(f"e{i}", 100), debounce(f"k{i}"))
        results = await asyncio.gather(*(s.start_held(f"ex{j}", 5000, 5) for j, s in enumerate(stores * 4)))
        fired = [claim.run_id for claims in results for claim in claims]
        # Whatever is left (a caller skipped a key another held) fires on a later look.
        fired += [c.run_id for c in await stores[0].start_held("ex", 5000, 100)]
        assert len(fired) == len(set(fired)) == 20
        for i in range(20):
            assert len(await stores[0].runs_for_event(f"e{i}")) == 1
    finally:
        for s in stores:
            await s.close()


async def _settle() -> None:
    """Let notifications committed a moment ago arrive (PostgreSQL delivers them asynchronously)."""
    for _ in range(50):
        await asyncio.sleep(0.01)


# --- the decisions themselves (pure) ----------------------------------------------------------


def test_hold_event_decisions() -> None:
    # A debounce: opened with its first event; pushed back by newer ones, capped by the timeout.
    rule = debounce(period_ms=1000, timeout_ms=2500)
    change = hold_event(None, rule, "e1", 10, 20, 0)
    state = change.keep
    assert state is not None and (state.due_ms, state.event_id) == (1000, "e1")
    assert change.add and not change.replace and change.fire is change.fire_before is None
    change = hold_event(state, rule, "e2", 20, 20, 900)
    state = change.keep
    assert state is not None and (state.due_ms, state.event_id, state.opened_ms, state.size) == (1900, "e2", 0, 1)
    assert change.add and change.replace and change.position == 0
    later = hold_event(state, rule, "e3", 30, 20, 2000).keep
    assert later is not None and later.due_ms == 2500  # 3000 capped at 0 + 2500
    # An older `ts` changes nothing.
    assert hold_event(state, rule, "old", 5, 20, 950) == HeldChange(keep=state, changed=False)
    # A batch: events added at positions 0, 1, ...; fires when full, or once its events reach MAX_BATCH_BYTES.
    two = batch(max_size=2, timeout_ms=100)
    change = hold_event(None, two, "b1", 1, 20, 0)
    assert change.keep is not None and change.keep.due_ms == 100 and (change.add, change.position) == (True, 0)
    full = hold_event(change.keep, two, "b2", 2, 20, 50)
    assert full.keep is None and full.add and full.position == 1
    assert full.fire is not None and (full.fire.event_id, full.fire.size, full.fire.size_bytes) == ("b1", 2, 40)
    big = hold_event(None, batch(max_size=100), "b3", 3, MAX_BATCH_BYTES, 0)
    assert big.keep is None and big.fire is not None
    # A held start of another kind (the function's options changed) fires as it stands, first.
    debounced = hold_event(None, rule, "d1", 1, 20, 0).keep
    switched = hold_event(debounced, two, "b4", 4, 20, 10)
    assert switched.fire_before is debounced
    assert switched.keep is not None and switched.keep.kind == BATCH and switched.position == 0


#: What each schema version added, as statements that take it away again.
_ADDED_BY: dict[int, tuple[str, ...]] = {
    7: ("DROP TABLE start_limits", "DROP TABLE singletons", "DROP TABLE skipped_starts"),
    8: ("DROP TABLE held_starts", "DROP TABLE held_events", "DROP TABLE run_events"),
    9: ("DROP TABLE slot_holds", "DROP TABLE slot_waits"),
    10: (
        "DROP INDEX runs_by_status_start",
        "DROP INDEX runs_by_start",
        "DROP INDEX runs_by_function_start",
        "DROP INDEX IF EXISTS skipped_starts_by_start",
        "CREATE INDEX runs_by_status ON runs (status)",
        "ALTER TABLE steps DROP COLUMN info",
        "DROP INDEX events_by_name",
    ),
    11: ("DROP TABLE event_holds",),
    12: ("ALTER TABLE held_starts DROP COLUMN gate", "DROP TABLE throttle_waits"),
}


@pytest.mark.parametrize("version", [6, 7, 8, 9, 10, 11])
async def test_an_older_database_gains_start_gates_held_starts_and_slots(engine: Engine, version: int) -> None:
    store = await engine.open()
    await store.close()
    drop = [  # newest first: a column goes before its table
        statement
        for added, statements in sorted(_ADDED_BY.items(), reverse=True)
        if added > version
        for statement in statements
    ]
    if isinstance(engine, PostgresEngine):
        pg = await asyncpg.connect(engine.dsn)
        try:
            for statement in drop:
                await pg.execute(statement)
        finally:
            await pg.close()
    else:
        assert isinstance(engine, SqliteEngine)
        with sqlite3.connect(engine.path) as conn:
            for statement in drop:
                conn.execute(statement)
        conn.close()
    await engine.set_schema_version(version)
    store = await engine.open()
    try:
        assert await engine.schema_version() == SCHEMA_VERSION == 12
        # The tables of schema 9: one slot of a key with limit 1, the second request waits.
        assert await store.acquire_slots("s1", "run-s1", [SlotClaim("k", 1)], 0)
        assert not await store.acquire_slots("s2", "run-s2", [SlotClaim("k", 1)], 0)
        await held(store, event("e1", 100), debounce())
        [claim] = await store.start_held("ex", 1100, 10)
        assert [r.run_id for r in await store.runs_for_event("e1")] == [claim.run_id]
        # And the table of schema 11: what became of the held event.
        assert [(h.status, h.run_id) for h in await store.event_holds("e1")] == [("started", claim.run_id)]
        # And the gate a held start keeps (schema 12): the debounced run is throttled.
        throttled = gated_debounce(throttle=Throttle("", limit=1, period_ms=60_000))
        await held(store, event("t1", 150), throttled)
        await held(store, event("t2", 150), msgspec.structs.replace(throttled, key="other"))
        first, second = await store.start_held("ex", 1200, 10)
        runs = [await store.get_run(c.run_id) for c in (first, second)]
        assert sorted(r.requests[0].wake_at_ms for r in runs if r is not None) == [0, 61_200]
        # And the tables of schema 7: a rate limit of 1 skips the second run, and says so.
        limit = RateLimit("k", limit=1, period_ms=60_000)
        for event_id in ("g1", "g2"):
            run = RunRecord(
                run_id=f"run-{event_id}",
                function_id=FN,
                app_name="app",
                event_id=event_id,
                started_at_ms=200,
                requests=[PendingRequest(f"req-{event_id}")],
            )
            gate = StartGate(run.run_id, FN, rate_limit=limit)
            assert await store.record_events([NewEvent(event(event_id, 200), [run], gates=[gate])]) == [True]
        assert len(await store.runs_for_event("g1")) == 1
        assert await store.runs_for_event("g2") == []
        [skip] = await store.skipped_starts("g2")
        assert skip.run_id == "run-g2"
        # And the indexes of schema 10: runs listed newest first, by status and function.
        listed = await store.list_runs(RunFilter(status="Running", function_id=FN))
        assert [r.run_id for r in listed][-2:] == [claim.run_id, "run-g1"]  # after the two started at 1200
        assert [s.run_id for s in await store.list_skipped(RunFilter(function_id=FN))] == ["run-g2"]
        # And each step's info, stored with its result.
        info = StepInfo(name="charge", attempts=2, started_ms=1, ended_ms=2)
        assert await store.put_memo("run-g1", StepMemo("h", b"null", info))
        assert await store.run_steps("run-g1") == [StepMemo("h", b"null", info)]
    finally:
        await store.close()


async def test_a_debounced_event_over_the_rate_limit_is_skipped_and_pushes_nothing_back(store: Store) -> None:
    limited = gated_debounce(admit=RateLimit("k", limit=1, period_ms=60_000))
    await held(store, event("e1", 0), limited)
    assert await store.next_held_due() == 1000
    # Over the limit: recorded as a skip, held nowhere, the debounce not pushed back.
    await held(
        store,
        event("e2", 500),
        msgspec.structs.replace(limited, admit=StartGate("s2", FN, rate_limit=RateLimit("k", 1, 60_000))),
    )
    [skip] = await store.skipped_starts("e2")
    assert skip.run_id == "s2" and "rate limit 1 per 60s" in skip.reason
    assert await store.next_held_due() == 1000
    [claim] = await store.start_held("ex", 1000, 10)
    assert [r.run_id for r in await store.runs_for_event("e1")] == [claim.run_id]  # the first event's run
    assert await store.runs_for_event("e2") == []


async def test_the_run_a_debounce_fires_passes_the_singleton(store: Store) -> None:
    cancelled: list[str] = []
    await store.listen(RUN_CANCEL_REQUESTED, cancelled.append)
    holder = RunRecord("holder", FN, "app", "h", 0, requests=[PendingRequest("req-h")])
    gate = StartGate("holder", FN, singleton=Singleton("k", "skip"))
    assert await store.record_events([NewEvent(event("h", 0), [holder], gates=[gate])]) == [True]
    # skip: the debounced run starts not while the key's run is Running, and the skip says why.
    await held(store, event("s1", 0), gated_debounce(singleton=Singleton("k", "skip")))
    assert await store.start_held("ex", 1000, 10) == []
    assert await store.runs_for_event("s1") == []
    [skip] = await store.skipped_starts("s1")
    assert "singleton" in skip.reason and "holder" in skip.reason
    assert await store.next_held_due() is None
    # cancel: the Running run is flagged for cancellation and the debounced run starts.
    await held(store, event("c1", 2000), gated_debounce(singleton=Singleton("k", "cancel")))
    [claim] = await store.start_held("ex", 3000, 10)
    assert [r.run_id for r in await store.runs_for_event("c1")] == [claim.run_id]
    stored = await store.get_run("holder")
    assert stored is not None and stored.cancel_requested
    for _ in range(200):
        if cancelled:
            break
        await asyncio.sleep(0.01)
    assert cancelled == ["holder"]


async def test_the_run_a_full_batch_starts_waits_for_its_throttle_turn(store: Store) -> None:
    throttled = msgspec.structs.replace(batch(max_size=2), gate=StartGate("", FN, throttle=Throttle("", 1, 10_000)))
    for i, at in enumerate((100, 200, 300, 400)):
        await held(store, event(f"b{i}", at), throttled)
    [first] = await store.runs_for_event("b0")
    [second] = await store.runs_for_event("b2")
    assert first.status == second.status == GATE_RUNNING
    assert first.requests[0].wake_at_ms == 0
    assert second.requests[0].wake_at_ms == 10_200  # one period after the first batch's start
    assert SKIPPED not in (first.status, second.status)
