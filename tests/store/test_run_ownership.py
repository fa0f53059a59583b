"""Run ownership on both engines: one owner at a time, fenced writes, claims that never overlap."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg
import pytest

from connect.store import (
    NEW_RUN_FENCE,
    RUNS_RELEASED,
    Claim,
    EventRecord,
    NewEvent,
    PendingRequest,
    RunOwnershipLost,
    RunRecord,
    StepMemo,
    Store,
)
from tests.postgres import PostgresServer
from tests.store.conftest import Engine, PostgresEngine, SqliteEngine

pytestmark = pytest.mark.anyio

NOW = 1_000_000
TTL = 15_000


def run_record(run_id: str, **kw: object) -> RunRecord:
    kw.setdefault("requests", [PendingRequest(f"req-{run_id}")])
    return RunRecord(run_id=run_id, function_id="app-fn", app_name="app", event_id=f"e-{run_id}", started_at_ms=1, **kw)  # type: ignore[arg-type]


async def start_runs(store: Store, owner: str | None, *run_ids: str) -> None:
    events = [NewEvent(EventRecord(f"e-{r}", "app/x", 1, 1, b"{}"), [run_record(r)], owner=owner) for r in run_ids]
    assert await store.record_events(events) == [True] * len(run_ids)


async def test_a_new_run_is_owned_by_its_starter_and_a_stale_fence_writes_nothing(store: Store) -> None:
    await start_runs(store, "exec-a", "run1")
    await store.put_reply("req-run1", b"reply")
    moved = run_record("run1", requests=[PendingRequest("req-2", "s2")])
    with pytest.raises(RunOwnershipLost) as lost:
        await store.save_run(
            moved, fence=NEW_RUN_FENCE - 1, memos=[StepMemo("h1", b"1")], consumed_request_id="req-run1"
        )
    assert lost.value.run_id == "run1"
    # Nothing of the refused write landed: no memo, the reply is still there, the state is the old one.
    assert await store.get_memos("run1") == []
    assert await store.get_reply("req-run1") == b"reply"
    assert await store.get_run("run1") == run_record("run1")

    await store.save_run(moved, fence=NEW_RUN_FENCE, memos=[StepMemo("h1", b"1")], consumed_request_id="req-run1")
    assert await store.get_run("run1") == moved
    assert await store.get_memos("run1") == [StepMemo("h1", b"1")]
    assert await store.get_reply("req-run1") is None


async def test_a_live_owner_keeps_its_runs_and_a_lapsed_one_loses_them(store: Store) -> None:
    await store.heartbeat("exec-a", NOW + TTL)
    await start_runs(store, "exec-a", "run1", "run2")
    assert await store.claim_runs("exec-b", NOW, 100) == []
    assert await store.claim_runs("exec-b", NOW + TTL, 100) == []  # expiry is inclusive of its instant

    claims = await store.claim_runs("exec-b", NOW + TTL + 1, 100)
    assert claims == [Claim("run1", NEW_RUN_FENCE + 1), Claim("run2", NEW_RUN_FENCE + 1)]
    # The lapsed owner comes back: its writes are refused, the new owner's go through.
    with pytest.raises(RunOwnershipLost):
        await store.save_run(run_record("run1", max_attempts=9), fence=NEW_RUN_FENCE)
    await store.save_run(run_record("run1", max_attempts=7), fence=claims[0].fence)
    stored = await store.get_run("run1")
    assert stored is not None and stored.max_attempts == 7
    # A claimed run is not claimed again while its new owner is alive.
    await store.heartbeat("exec-b", NOW + 2 * TTL)
    assert await store.claim_runs("exec-c", NOW + TTL + 2, 100) == []


async def test_unowned_runs_are_claimed_at_once_and_ended_runs_never(store: Store) -> None:
    await start_runs(store, None, "run1", "run2", "run3")
    ended = run_record("run3", status="Completed", requests=[], output=b"1", ended_at_ms=5)
    await store.save_run(ended, fence=0)
    assert await store.claim_runs("exec-a", NOW, 1) == [Claim("run1", 1)]  # the limit holds
    assert await store.claim_runs("exec-a", NOW, 100) == [Claim("run2", 1)]


async def test_a_restarted_owner_releases_and_claims_its_runs_back(store: Store) -> None:
    await store.heartbeat("exec-a", NOW + TTL)
    await start_runs(store, "exec-a", "run1")
    # An owner's runs are not claimable while its heartbeat lasts, not even by itself.
    assert await store.claim_runs("exec-a", NOW, 100) == []
    # The same executor restarted: it releases what it held, then claims, with a new token.
    assert await store.release_runs("exec-a") == 1
    await store.heartbeat("exec-a", NOW + TTL)
    assert await store.claim_runs("exec-a", NOW, 100) == [Claim("run1", NEW_RUN_FENCE + 1)]
    with pytest.raises(RunOwnershipLost):  # what the previous incarnation still had in flight
        await store.save_run(run_record("run1"), fence=NEW_RUN_FENCE)


async def test_released_runs_are_claimable_at_once(store: Store) -> None:
    await store.heartbeat("exec-a", NOW + TTL)
    await start_runs(store, "exec-a", "run1", "run2")
    await store.save_run(run_record("run2", status="Failed", requests=[], output=b"{}", ended_at_ms=3), fence=1)
    assert await store.release_runs("exec-a") == 1  # only the Running one
    assert await store.claim_runs("exec-b", NOW, 100) == [Claim("run1", NEW_RUN_FENCE + 1)]
    assert await store.release_runs("nobody") == 0


async def test_a_stale_save_fails_alone_in_a_batch_of_saves(store: Store) -> None:
    await start_runs(store, "exec-a", *(f"run{i}" for i in range(20)))
    saves = [
        store.save_run(run_record(f"run{i}", max_attempts=2), fence=NEW_RUN_FENCE if i != 7 else 0) for i in range(20)
    ]
    results = await asyncio.gather(*saves, return_exceptions=True)
    assert [i for i, r in enumerate(results) if isinstance(r, RunOwnershipLost)] == [7]
    assert all(r == [] for i, r in enumerate(results) if i != 7)
    for i in range(20):
        run = await store.get_run(f"run{i}")
        assert run is not None and run.max_attempts == (5 if i == 7 else 2)


async def test_concurrent_claimers_never_get_the_same_run(engine: Engine) -> None:
    # Two store objects on one database stand for two executor processes.
    first, second = await engine.open(), await engine.open()
    try:
        await start_runs(first, None, *(f"run{i:03}" for i in range(300)))
        # Both alive: neither may take the other's runs, only unowned ones.
        await first.heartbeat("exec-a", NOW + TTL)
        await second.heartbeat("exec-b", NOW + TTL)

        async def claim_all(store: Store, owner: str) -> list[Claim]:
            got: list[Claim] = []
            while batch := await store.claim_runs(owner, NOW, 7):
                got.extend(batch)
            return got

        a, b = await asyncio.gather(claim_all(first, "exec-a"), claim_all(second, "exec-b"))
        assert {c.run_id for c in a}.isdisjoint({c.run_id for c in b})
        assert len(a) + len(b) == 300
        assert {c.fence for c in a + b} == {1}
    finally:
        await first.close()
        await second.close()


async def test_runs_from_before_ownership_are_migrated_unowned(engine: Engine) -> None:
    store = await engine.open()
    await start_runs(store, "exec-a", "run1")
    await store.close()
    await _downgrade_to_before_ownership(engine)

    store = await engine.open()
    try:
        assert await store.get_run("run1") == run_record("run1")
        assert await store.claim_runs("exec-b", NOW, 100) == [Claim("run1", 1)]
        await store.save_run(run_record("run1", max_attempts=3), fence=1)
    finally:
        await store.close()


async def _downgrade_to_before_ownership(engine: Engine) -> None:
    """Turn the database into the layout of the last release without ownership."""
    if isinstance(engine, SqliteEngine):
        with sqlite3.connect(engine.path) as conn:
            conn.execute("ALTER TABLE runs DROP COLUMN owner")
            conn.execute("ALTER TABLE runs DROP COLUMN fence")
            conn.execute("DROP TABLE owners")
            conn.execute("UPDATE schema_version SET version = 2")
        conn.close()
        return
    assert isinstance(engine, PostgresEngine)
    pg = await asyncpg.connect(engine.dsn)
    try:
        await pg.execute("ALTER TABLE runs DROP COLUMN owner, DROP COLUMN fence")
        await pg.execute("DROP TABLE owners")
        await pg.execute("DROP FUNCTION connect_fenced")
        # And what later schema versions added.
        await pg.execute("DROP INDEX IF EXISTS runs_by_end, running_runs_by_start, events_by_age")
        await pg.execute(
            "DROP TABLE IF EXISTS queued_requests, writer_marks, processes, connections,"
            " held_starts, held_events, run_events"
        )
        await pg.execute("DROP TABLE IF EXISTS slot_holds, slot_waits, throttle_waits")
        await pg.execute("DROP INDEX IF EXISTS leases_by_instance")
        await pg.execute("DROP TABLE IF EXISTS start_limits, singletons, skipped_starts")
        await pg.execute("DROP INDEX IF EXISTS runs_by_status_start, runs_by_start, runs_by_function_start")
        await pg.execute("DROP INDEX IF EXISTS events_by_name")
        await pg.execute("CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status)")
        await pg.execute("ALTER TABLE steps DROP COLUMN IF EXISTS info")
        await pg.execute("DROP TABLE IF EXISTS event_holds")
        await pg.execute("UPDATE schema_version SET version = 1")
    finally:
        await pg.close()


async def test_a_release_is_announced_to_listeners(store: Store) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    await store.listen(RUNS_RELEASED, heard.put_nowait)
    await start_runs(store, "exec-a", "run1")
    assert await store.release_runs("exec-b") == 0  # nothing released: nothing announced
    assert await store.release_runs("exec-a") == 1
    assert await asyncio.wait_for(heard.get(), 10) == "exec-a"
    # Announced once the release committed: the run is claimable by then.
    assert await store.claim_runs("exec-b", NOW, 10) == [Claim("run1", NEW_RUN_FENCE + 1)]
    assert heard.empty()


async def test_notifications_resume_after_a_postgres_restart(postgres_server: PostgresServer) -> None:
    store = await PostgresEngine(postgres_server.create_database()).open()
    try:
        heard: asyncio.Queue[str] = asyncio.Queue()
        await store.listen(RUNS_RELEASED, heard.put_nowait)
        await asyncio.to_thread(postgres_server.restart)
        # Back on a new connection: listeners are told something may have been missed.
        assert await asyncio.wait_for(heard.get(), 30) == ""
        await start_runs_retrying(store, "run1")
        assert await store.release_runs("exec-a") == 1
        assert await asyncio.wait_for(heard.get(), 10) == "exec-a"
    finally:
        await store.close()


async def start_runs_retrying(store: Store, run_id: str) -> None:
    """The pool may hand out a connection the restart closed; the next one works."""
    for _ in range(10):
        try:
            await start_runs(store, "exec-a", run_id)
            return
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await asyncio.sleep(0.2)
    await start_runs(store, "exec-a", run_id)


async def test_history_pruning_forgets_executors_gone_before_the_cutoff(engine: Engine) -> None:
    store = await engine.open()
    try:
        await store.heartbeat("gone", NOW - 1)
        await store.heartbeat("alive", NOW + TTL)
        await start_runs(store, "alive", "run1")
        await store.prune_history(NOW, 100)
        # "alive" still holds its run against other claimers.
        assert await store.claim_runs("other", NOW, 100) == []
    finally:
        await store.close()
    assert await _owners(engine) == ["alive"]


async def _owners(engine: Engine) -> list[str]:
    if isinstance(engine, SqliteEngine):
        with sqlite3.connect(engine.path) as conn:
            rows = conn.execute("SELECT owner FROM owners ORDER BY owner").fetchall()
        conn.close()
        return [r[0] for r in rows]
    assert isinstance(engine, PostgresEngine)
    pg = await asyncpg.connect(engine.dsn)
    try:
        return [r[0] for r in await pg.fetch("SELECT owner FROM owners ORDER BY owner")]
    finally:
        await pg.close()
