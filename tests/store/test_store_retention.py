"""The history-retention part of the store contract, on SQLite and on PostgreSQL.

`prune_history` deletes ended runs with their steps, the events no remaining
run needs, stale replies and lapsed leases, in bounded batches, and never
anything a live run still needs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import asyncpg
import pytest

from connect.store import (
    CANCELLED,
    COMPLETED,
    FAILED,
    WAIT_EVENT,
    WAIT_INVOKE,
    WAIT_SLEEP,
    EventRecord,
    NewEvent,
    PendingRequest,
    PostgresStore,
    Pruned,
    RunMemo,
    RunRecord,
    StepMemo,
    Store,
    Waiting,
)
from connect.store.pg_schema import MIGRATIONS
from tests.postgres import PostgresServer
from tests.store.conftest import Engine

pytestmark = pytest.mark.anyio

#: The cutoff the tests prune with: ended before it is old, at or after it is recent.
CUTOFF = 10_000
OLD = 1_000
RECENT = 20_000


def event(event_id: str, received_at_ms: int, name: str = "app/x") -> EventRecord:
    return EventRecord(event_id, name, received_at_ms, received_at_ms, b'{"name":"%s"}' % name.encode())


def running(run_id: str, event_id: str, started_at_ms: int = OLD, **kw: object) -> RunRecord:
    kw.setdefault("requests", [PendingRequest(f"req-{run_id}")])
    return RunRecord(
        run_id=run_id,
        function_id="app-fn",
        app_name="app",
        event_id=event_id,
        started_at_ms=started_at_ms,
        **kw,  # type: ignore[arg-type]
    )


async def start(store: Store, run: RunRecord, received_at_ms: int = OLD) -> None:
    """Record the run's triggering event (received at `received_at_ms`) with the run."""
    await store.record_events([NewEvent(event(run.event_id, received_at_ms), [run])])


async def end(
    store: Store, run: RunRecord, ended_at_ms: int, status: str = COMPLETED, memos: int = 3
) -> list[EventRecord]:
    """End `run` at `ended_at_ms` after `memos` steps, emitting its `function.finished`
    (received when it ended), as the executor does; returns the emitted events."""
    for i in range(memos):
        await store.save_run(run, fence=0, memos=[StepMemo(f"h{i}", b'{"data":%d}' % i)])
    run.status = status
    run.ended_at_ms = ended_at_ms
    run.output = b"null"
    run.requests = []
    finished = event(f"{run.run_id}-finished", ended_at_ms, "inngest/function.finished")
    await store.save_run(run, fence=0, events=[NewEvent(finished, [])])
    return [finished]


async def prune_round(store: Store, before_ms: int, limit: int) -> list[Pruned]:
    """Batches until one says nothing is left, each going on from the last one's cursor."""
    batches = [await store.prune_history(before_ms, limit)]
    while batches[-1].reached(limit):
        batches.append(await store.prune_history(before_ms, limit, batches[-1].events_cursor))
    return batches


async def test_old_ended_runs_go_with_their_steps_and_events(store: Store) -> None:
    done, failed, cancelled = (running(r, f"e-{r}") for r in ("done", "failed", "cancelled"))
    emitted: list[EventRecord] = []
    for run, status in ((done, COMPLETED), (failed, FAILED), (cancelled, CANCELLED)):
        await start(store, run)
        emitted += await end(store, run, OLD + 1, status)
    orphan = event("orphan", OLD)  # started nothing
    await store.record_events([NewEvent(orphan, [])])

    pruned = await store.prune_history(CUTOFF, 500)

    assert pruned == Pruned(runs=3, steps=9, events=7, replies=0, leases=0)
    assert not pruned.reached(500)
    for run in (done, failed, cancelled):
        assert await store.get_run(run.run_id) is None
        assert await store.load_run(run.run_id) is None
        assert await store.get_memos(run.run_id) == []
        assert await store.get_event(run.event_id) is None
        assert await store.runs_for_event(run.event_id) == []
    for gone in [*emitted, orphan]:
        assert await store.get_event(gone.id) is None
    # Nothing is left to do.
    assert await store.prune_history(CUTOFF, 500) == Pruned()


async def test_live_and_recent_history_is_kept(store: Store) -> None:
    # Running runs that started (and whose events arrived) long before the cutoff:
    # mid-step, sleeping, waiting for an event, waiting for an invoked run.
    mid_step = running("mid-step", "e-mid")
    sleeping = running("sleeping", "e-sleep", requests=[], waiting=[Waiting(WAIT_SLEEP, "nap", 10**12)])
    waiting = running(
        "waiting",
        "e-wait",
        requests=[],
        waiting=[Waiting(WAIT_EVENT, "w", 10**12, event="app/paid", expression="async.data.ok")],
    )
    invoking = running(
        "invoking", "e-invoke", requests=[], waiting=[Waiting(WAIT_INVOKE, "i", 10**12, correlation_id="c")]
    )
    live = [mid_step, sleeping, waiting, invoking]
    for run in live:
        await start(store, run)
        await store.save_run(run, fence=0, memos=[StepMemo("before", b'{"data":0}')])
    # A run that ended after the cutoff keeps its steps, its event and what it emitted.
    recent = running("recent", "e-recent")
    await start(store, recent)
    [recent_finished] = await end(store, recent, RECENT)
    # One event triggered two runs: the old one ended, the other still runs.
    shared_old, shared_live = running("shared-old", "e-shared"), running("shared-live", "e-shared")
    await store.record_events([NewEvent(event("e-shared", OLD), [shared_old, shared_live])])
    await end(store, shared_old, OLD + 1)
    # A cron tick whose run still runs.
    tick_run = running("tick-run", "tick-1")
    tick = NewEvent(event("tick-1", OLD, "inngest/scheduled.timer"), [tick_run])
    assert await store.record_tick("app-fn * * * * *", OLD, tick) is True
    # An event that arrived after the cutoff and started nothing (yet).
    fresh = event("fresh", RECENT)
    await store.record_events([NewEvent(fresh, [])])

    pruned = await store.prune_history(CUTOFF, 500)

    assert pruned.runs == 1  # shared-old, only
    assert await store.get_run("shared-old") is None
    assert await store.get_event("e-shared") == event("e-shared", OLD)
    for run in [*live, shared_live, tick_run]:
        loaded = await store.load_run(run.run_id)
        assert loaded is not None and loaded.run.status == "Running"
        assert loaded.event is not None and loaded.event.id == run.event_id
    for run in live:
        assert await store.get_memos(run.run_id) == [StepMemo("before", b'{"data":0}')]
    kept_recent = await store.load_run("recent")
    assert kept_recent is not None and kept_recent.event is not None
    assert len(kept_recent.memos) == 3
    assert await store.get_event(recent_finished.id) == recent_finished
    assert await store.get_event("fresh") == fresh
    # The tick stays remembered, so it is never run again.
    assert await store.cron_ticks() == {"app-fn * * * * *": OLD}
    assert await store.record_tick("app-fn * * * * *", OLD, tick) is False


async def test_a_run_resolved_by_an_event_keeps_the_event_in_its_memo(store: Store) -> None:
    waiting = running("waiting", "e-wait", requests=[], waiting=[Waiting(WAIT_EVENT, "w", 10**12, event="app/paid")])
    await start(store, waiting)
    paid = event("paid", OLD, "app/paid")
    await store.record_events([NewEvent(paid, [], memos=[RunMemo("waiting", StepMemo("w", paid.body))])])

    await store.prune_history(CUTOFF, 500)

    # The event row went (nothing refers to it), the memo the wait resolved with did not.
    assert await store.get_event("paid") is None
    assert await store.get_memos("waiting") == [StepMemo("w", paid.body)]
    assert await store.get_event("e-wait") is not None


async def test_each_batch_takes_at_most_limit_runs_and_examines_at_most_limit_other_events(store: Store) -> None:
    for i in range(7):
        run = running(f"r{i}", f"e{i}")
        await start(store, run)
        await end(store, run, OLD + i, memos=1)

    first = await store.prune_history(CUTOFF, 3)
    assert first.reached(3) and first.runs == 3
    # Oldest end first.
    assert [await store.get_run(f"r{i}") is None for i in range(7)] == [True] * 3 + [False] * 4
    batches = [first]
    while batches[-1].reached(3):
        batches.append(await store.prune_history(CUTOFF, 3, batches[-1].events_cursor))

    # Each batch: at most 3 runs with their 3 events, and 3 more events by age.
    assert all(b.runs <= 3 and b.events <= 6 for b in batches)
    assert [b.runs for b in batches[:3]] == [3, 3, 1] and all(b.runs == 0 for b in batches[3:])
    total = sum(batches, Pruned())
    assert (total.runs, total.steps, total.events, total.events_cursor) == (7, 7, 14, None)
    assert [await store.get_run(f"r{i}") for i in range(7)] == [None] * 7
    with pytest.raises(ValueError, match="at least 1"):
        await store.prune_history(CUTOFF, 0)


async def test_a_round_examines_each_old_event_a_live_run_needs_once(store: Store) -> None:
    # 12 live runs started by old events, then 5 old events that started nothing.
    for i in range(12):
        await start(store, running(f"live{i:02}", f"e-live{i:02}"))
    await store.record_events([NewEvent(event(f"orphan{i}", OLD + 1), []) for i in range(5)])

    batches = await prune_round(store, CUTOFF, 4)

    # 17 old events, 4 examined per batch: 5 batches, never the same live events again.
    assert len(batches) == 5
    assert [b.events for b in batches] == [0, 0, 0, 4, 1]
    assert batches[-1].events_cursor is None
    for i in range(5):
        assert await store.get_event(f"orphan{i}") is None
    for i in range(12):
        assert await store.get_event(f"e-live{i:02}") is not None


async def test_stale_replies_and_lapsed_leases_go_but_a_live_runs_reply_stays(store: Store) -> None:
    now_ms = int(time.time() * 1000)
    await store.put_reply("late-duplicate", b"x")
    await store.put_lease("lapsed", "l1", OLD, "gw")
    await store.put_lease("held", "l2", now_ms + 3_600_000, "gw")
    # A Running run that started before the reply was stored may still consume it.
    await start(store, running("live", "e-live", started_at_ms=now_ms - 60_000))

    pruned = await store.prune_history(now_ms + 3_600_000, 500)

    assert (pruned.replies, pruned.leases) == (0, 1)
    assert await store.get_reply("late-duplicate") == b"x"
    assert await store.get_lease("lapsed") is None
    assert await store.get_lease("held") is not None

    # Once every Running run started after it was stored, the reply is nobody's.
    live = running("live", "e-live", started_at_ms=now_ms - 60_000)
    await end(store, live, now_ms, memos=0)
    await start(store, running("later", "e-later", started_at_ms=now_ms + 60_000), received_at_ms=now_ms)
    pruned = await store.prune_history(now_ms + 3_600_000, 500)
    assert pruned.replies == 1
    assert await store.get_reply("late-duplicate") is None


async def test_nothing_ends_before_a_cutoff_older_than_everything(store: Store) -> None:
    run = running("done", "e1")
    await start(store, run)
    await end(store, run, OLD)
    await store.put_reply("r", b"x")
    await store.put_lease("l", "l", OLD, "gw")

    assert await store.prune_history(OLD, 500) == Pruned()
    assert await store.get_run("done") is not None
    assert await store.get_event("e1") is not None


async def test_two_stores_pruning_at_once_share_the_work(engine: Engine) -> None:
    store = await engine.open()
    other = await engine.open()
    try:
        runs = [running(f"r{i:04}", f"e{i:04}", requests=[]) for i in range(400)]
        await store.record_events([NewEvent(event(r.event_id, OLD), [r]) for r in runs])
        for r in runs:
            r.status, r.ended_at_ms = COMPLETED, OLD
        await asyncio.gather(*(store.save_run(r, fence=0) for r in runs))

        async def prune_all(s: Store) -> Pruned:
            total = Pruned()
            while True:
                pruned = await s.prune_history(CUTOFF, 25, total.events_cursor)
                total += pruned
                if not pruned.reached(25):
                    return total
                await asyncio.sleep(0)

        first, second = await asyncio.gather(prune_all(store), prune_all(other))
        assert first.runs + second.runs == 400
        assert first.events + second.events == 400
        assert await store.runs_with_status(COMPLETED) == []
    finally:
        await other.close()
        await store.close()


async def test_a_postgres_database_from_before_retention_is_migrated(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.create_database()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in MIGRATIONS[0]:
            await conn.execute(statement)
        await conn.execute("INSERT INTO schema_version VALUES (1)")
        await conn.execute("INSERT INTO events VALUES ('e1', 'app/x', 1, $1, '{}')", OLD)
        # An ended run with no end recorded, and a Running one.
        for run_id, status in (("done", COMPLETED), ("live", "Running")):
            await conn.execute(
                "INSERT INTO runs (run_id, function_id, app_name, event_id, status, started_at_ms, max_attempts,"
                " requests, waiting, disable_immediate_execution, request_version)"
                " VALUES ($1, 'app-fn', 'app', 'e1', $2, $3, 5, '[]', '[]', FALSE, 0)",
                run_id,
                status,
                OLD,
            )
    finally:
        await conn.close()
    store = await PostgresStore.open(dsn)
    try:
        done = await store.get_run("done")
        assert done is not None and done.ended_at_ms == OLD
        live = await store.get_run("live")
        assert live is not None and live.ended_at_ms is None
        assert (await store.prune_history(CUTOFF, 500)).runs == 1
        assert await store.get_run("live") is not None and await store.get_event("e1") is not None
    finally:
        await store.close()


async def test_pruning_while_runs_step_and_end_deletes_only_what_ended(store: Store) -> None:
    # Everything that ends is at once older than the cutoff, and every prune
    # runs at the same time as steps of the runs still going (in one commit
    # on SQLite, in concurrent transactions on PostgreSQL).
    runs = [running(f"r{i:03}", f"e{i:03}") for i in range(200)]
    await store.record_events([NewEvent(event(r.event_id, OLD), [r]) for r in runs])
    ending, going = runs[::2], runs[1::2]

    def steps(of: list[RunRecord], j: int) -> list[Awaitable[object]]:
        return [store.save_run(r, fence=0, memos=[StepMemo(f"h{j}", b"1")]) for r in of]

    await asyncio.gather(*steps(runs, 0), store.prune_history(CUTOFF, 7))
    await asyncio.gather(
        *(end(store, r, OLD, memos=0) for r in ending), *steps(going, 1), store.prune_history(CUTOFF, 7)
    )
    during: list[Pruned] = []
    for j in (2, 3):
        [*_, pruned] = await asyncio.gather(*steps(going, j), store.prune_history(CUTOFF, 7))
        during.append(pruned)
    assert all(p.runs == 7 for p in during)
    await prune_round(store, CUTOFF, 50)

    for run in ending:
        assert await store.get_run(run.run_id) is None
        assert await store.get_memos(run.run_id) == []
        assert await store.get_event(run.event_id) is None
    for run in going:
        loaded = await store.load_run(run.run_id)
        assert loaded is not None and loaded.run.status == "Running" and loaded.event is not None
        assert [m.step_hash for m in loaded.memos] == ["h0", "h1", "h2", "h3"]
