"""Flow-control gates at run start, decided by the store: every test runs on
SQLite and on PostgreSQL (see `connect.store.start_gates`)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from connect.store import COMPLETED, EventRecord, NewEvent, PendingRequest, RunRecord, Store
from connect.store.base import RUN_CANCEL_REQUESTED, THROTTLE_TURN_GRANTED
from connect.store.start_gates import SKIPPED, Invoker, RateLimit, Singleton, StartGate, Throttle
from tests.store.conftest import Engine

pytestmark = pytest.mark.anyio

FN = "app-fn"


def gated(event_id: str, at_ms: int, gate: StartGate | None = None, **options: object) -> tuple[NewEvent, RunRecord]:
    """An event starting one run of FN at `at_ms`, with the gate given or built from `options`."""
    run_id = f"run-{event_id}"
    run = RunRecord(
        run_id=run_id,
        function_id=FN,
        app_name="app",
        event_id=event_id,
        started_at_ms=at_ms,
        requests=[PendingRequest(f"req-{event_id}")],
    )
    gate = gate or StartGate(run_id, FN, **options)  # type: ignore[arg-type]
    event = EventRecord(event_id, "app/x", at_ms, at_ms, b'{"name":"app/x"}')
    return NewEvent(event, [run], gates=[gate]), run


async def record(store: Store, event_id: str, at_ms: int, **options: object) -> RunRecord:
    new, run = gated(event_id, at_ms, **options)
    assert await store.record_events([new]) == [True]
    return run


async def test_throttle_queues_starts_one_period_apart(store: Store) -> None:
    throttle = Throttle("", limit=1, period_ms=2000)
    runs = [await record(store, f"e{i}", 1000, throttle=throttle) for i in range(3)]
    assert [r.requests[0].wake_at_ms for r in runs] == [0, 3000, 5000]
    assert all(r.status == "Running" for r in runs)
    stored = [await store.get_run(r.run_id) for r in runs]
    assert [r.requests[0].wake_at_ms for r in stored if r is not None] == [0, 3000, 5000]
    # Later, the key has had time to recover: a start at once again.
    assert (await record(store, "late", 20_000, throttle=throttle)).requests[0].wake_at_ms == 0


async def test_throttle_burst_and_keys(store: Store) -> None:
    # limit 2 per 6 s with burst 1: three at once, then one each 3 s.
    throttle = Throttle("a", limit=2, period_ms=6000, burst=1)
    runs = [await record(store, f"e{i}", 1000, throttle=throttle) for i in range(5)]
    assert [r.requests[0].wake_at_ms for r in runs] == [0, 0, 0, 4000, 7000]
    # Another key has a budget of its own.
    other = await record(store, "b", 1000, throttle=Throttle("b", limit=2, period_ms=6000, burst=1))
    assert other.requests[0].wake_at_ms == 0


async def test_rate_limit_skips_runs_over_the_limit_and_records_why(store: Store) -> None:
    limit = RateLimit("k", limit=2, period_ms=10_000)
    runs = [await record(store, f"e{i}", 1000 + i, rate_limit=limit) for i in range(5)]
    assert [r.status for r in runs] == ["Running", "Running", SKIPPED, SKIPPED, SKIPPED]
    for run in runs[2:]:
        assert await store.get_run(run.run_id) is None
        assert await store.runs_for_event(run.event_id) == []
        [skip] = await store.skipped_starts(run.event_id)
        assert (skip.run_id, skip.function_id, skip.event_id) == (run.run_id, FN, run.event_id)
        assert "rate limit 2 per 10s" in skip.reason and "'k'" in skip.reason
    assert await store.skipped_starts("e0") == []
    assert [r.run_id for r in await store.runs_for_event("e0")] == ["run-e0"]
    # A period later, runs are created again; another key was never limited.
    assert (await record(store, "later", 12_000, rate_limit=limit)).status == "Running"
    assert (await record(store, "other", 1005, rate_limit=RateLimit("j", 2, 10_000))).status == "Running"


async def test_idempotency_reason(store: Store) -> None:
    key = RateLimit("order-1", limit=1, period_ms=24 * 3600 * 1000, idempotency=True)
    assert (await record(store, "e1", 1000, rate_limit=key)).status == "Running"
    assert (await record(store, "e2", 1000 + 23 * 3600 * 1000, rate_limit=key)).status == SKIPPED
    [skip] = await store.skipped_starts("e2")
    assert skip.reason.startswith("idempotency")


async def test_singleton_skip_while_running_then_start_once_ended(store: Store) -> None:
    single = Singleton("k", "skip")
    first = await record(store, "e1", 1000, singleton=single)
    second = await record(store, "e2", 1001, singleton=single)
    assert (first.status, second.status) == ("Running", SKIPPED)
    [skip] = await store.skipped_starts("e2")
    assert "singleton" in skip.reason and first.run_id in skip.reason
    first.status, first.ended_at_ms, first.requests = COMPLETED, 1500, []
    await store.save_run(first, fence=0)
    third = await record(store, "e3", 2000, singleton=single)
    assert third.status == "Running"
    assert (await record(store, "e4", 2001, singleton=Singleton("other", "skip"))).status == "Running"


async def test_singleton_cancel_flags_the_running_run_and_starts_the_new_one(store: Store) -> None:
    cancelled: list[str] = []
    await store.listen(RUN_CANCEL_REQUESTED, cancelled.append)
    single = Singleton("", "cancel")
    first = await record(store, "e1", 1000, singleton=single)
    new, second = gated("e2", 1001, singleton=single)
    assert await store.record_events([new]) == [True]
    assert second.status == "Running"
    assert new.cancels == [first.run_id]
    stored = await store.get_run(first.run_id)
    assert stored is not None and stored.cancel_requested
    for _ in range(200):
        if cancelled:
            break
        await asyncio.sleep(0.01)
    assert cancelled == [first.run_id]
    # The new run holds the key now.
    third_new, _ = gated("e3", 1002, singleton=single)
    await store.record_events([third_new])
    assert third_new.cancels == [second.run_id]


async def test_a_duplicate_event_passes_no_gate(store: Store) -> None:
    limit = RateLimit("", limit=1, period_ms=10_000)
    assert (await record(store, "e1", 1000, rate_limit=limit)).status == "Running"
    again, _ = gated("e1", 1001, rate_limit=limit)
    assert await store.record_events([again]) == [False]
    assert await store.skipped_starts("e1") == []


async def test_concurrent_recorders_never_exceed_a_rate_limit(engine: Engine) -> None:
    # Three store objects (on PostgreSQL: three writer connections, as three API
    # processes would have) record 60 events at once, 20 each, one call per event.
    stores = [await engine.open() for _ in range(3 if engine.name == "postgres" else 1)]
    try:
        limit = RateLimit("shared", limit=7, period_ms=60_000)
        throttle = Throttle("shared", limit=1, period_ms=1000)
        calls = []
        news: list[NewEvent] = []
        for i in range(60):
            new, _ = gated(f"e{i}", 1000, rate_limit=limit, throttle=throttle)
            news.append(new)
            calls.append(stores[i % len(stores)].record_events([new]))
        assert await asyncio.gather(*calls) == [[True]] * 60
        started = sorted(r.run_id for n in news for r in n.runs if r.status != SKIPPED)
        assert len(started) == 7
        check = stores[0]
        stored = [r for n in news for r in await check.runs_for_event(n.event.id)]
        assert sorted(r.run_id for r in stored) == started
        skipped = [s for n in news for s in await check.skipped_starts(n.event.id)]
        assert len(skipped) == 53
        # The throttle saw the 7 in some order: each start one second after the one before.
        assert sorted(r.requests[0].wake_at_ms for r in stored) == [0, 2000, 3000, 4000, 5000, 6000, 7000]
    finally:
        for s in stores:
            await s.close()


async def test_reopened_store_keeps_the_throttle_state_and_the_queued_runs(engine: Engine) -> None:
    throttle = Throttle("", limit=1, period_ms=2000)
    store = await engine.open()
    try:
        queued = [await record(store, f"e{i}", 1000, throttle=throttle) for i in range(2)]
    finally:
        await store.close()
    store = await engine.open()
    try:
        again = await store.get_run(queued[1].run_id)
        assert again is not None and again.requests[0].wake_at_ms == 3000
        assert (await record(store, "e2", 1000, throttle=throttle)).requests[0].wake_at_ms == 5000
    finally:
        await store.close()


async def test_prune_history_drops_old_skips_and_spent_state(store: Store) -> None:
    limit = RateLimit("", limit=1, period_ms=1000)
    await record(store, "e1", 1000, rate_limit=limit)
    await record(store, "e2", 1000, rate_limit=limit)
    assert len(await store.skipped_starts("e2")) == 1
    await store.prune_history(before_ms=100_000, limit=100)
    assert await store.skipped_starts("e2") == []
    # The spent rate-limit state went with it: a run at 1000 again is allowed.
    assert (await record(store, "e3", 1000, rate_limit=limit)).status == "Running"


async def test_a_refused_invoked_run_ends_the_invoking_step_with_why(store: Store) -> None:
    parent = await record(store, "parent", 1000)
    limit = RateLimit("k", limit=1, period_ms=60_000)
    invoker = Invoker(parent.run_id, "step-1")
    ran, _ = gated("child-1", 1001, StartGate("run-child-1", FN, rate_limit=limit, invoked_by=invoker))
    assert await store.record_events([ran]) == [True]
    assert ran.memos == []  # a run that starts tells nobody
    new, child = gated("child-2", 1002, StartGate("run-child-2", FN, rate_limit=limit, invoked_by=invoker))
    assert await store.record_events([new]) == [True]
    assert child.status == SKIPPED
    [told] = new.memos
    assert (told.run_id, told.memo.step_hash) == (parent.run_id, "step-1")
    error = msgspec.json.decode(told.memo.result)["error"]
    assert error["name"] == "FunctionSkippedError"
    assert error["message"].startswith(f"the invoked function {FN!r} started no run: rate limit 1 per 60s: key 'k'")
    loaded = await store.load_run(parent.run_id)
    assert loaded is not None
    assert [(m.step_hash, m.result) for m in loaded.memos] == [("step-1", told.memo.result)]


async def test_prune_history_drops_singleton_keys_of_runs_no_longer_running(store: Store) -> None:
    ended = [await record(store, f"e{i}", 1000, singleton=Singleton(f"k{i}", "skip")) for i in range(3)]
    await record(store, "live", 1000, singleton=Singleton("live", "skip"))
    # A cutoff before everything: no history goes, and every key's run is Running.
    assert (await store.prune_history(before_ms=100, limit=100)).singletons == 0
    for run in ended:
        run.status, run.ended_at_ms, run.requests = COMPLETED, 1500, []
        await store.save_run(run, fence=0)
    # Whenever their runs ended: a key held by a run that ended is no key held.
    first = await store.prune_history(before_ms=100, limit=2)
    assert first.singletons == 2 and first.reached(2)
    assert (await store.prune_history(before_ms=100, limit=2)).singletons == 1
    assert (await store.prune_history(before_ms=100, limit=2)).singletons == 0
    # The Running run still holds its key; the others' keys start runs again.
    assert (await record(store, "live-2", 2000, singleton=Singleton("live", "skip"))).status == SKIPPED
    assert (await record(store, "k0-2", 2000, singleton=Singleton("k0", "skip"))).status == "Running"
    # A run history retention deletes takes its key with it in the same batch.
    again = await record(store, "k1-2", 2000, singleton=Singleton("k1", "skip"))
    again.status, again.ended_at_ms, again.requests = COMPLETED, 2500, []
    await store.save_run(again, fence=0)
    pruned = await store.prune_history(before_ms=100_000, limit=100)
    assert pruned.runs >= 1 and pruned.singletons == 1
    assert await store.get_run(again.run_id) is None


async def test_pruning_while_gates_hand_singleton_keys_over_never_frees_a_held_key(engine: Engine) -> None:
    # On PostgreSQL, the pruning store and the recording one are two connections,
    # as history retention and an API process are.
    recorder = await engine.open()
    pruner = await engine.open() if engine.name == "postgres" else recorder
    try:
        for i in range(30):
            single = Singleton(f"k{i}", "skip")
            old = await record(recorder, f"old-{i}", 1000, singleton=single)
            old.status, old.ended_at_ms, old.requests = COMPLETED, 1500, []
            await recorder.save_run(old, fence=0)
            # The key passes from the ended run to a new one while retention prunes.
            new, run = gated(f"new-{i}", 2000, singleton=single)
            stored, _ = await asyncio.gather(recorder.record_events([new]), pruner.prune_history(100, 100))
            assert stored == [True] and run.status == "Running"
            late = await record(recorder, f"late-{i}", 3000, singleton=single)
            assert late.status == SKIPPED, i
    finally:
        await recorder.close()
        if pruner is not recorder:
            await pruner.close()


async def test_throttled_runs_of_a_function_with_a_priority_take_turns_in_priority_order(engine: Engine) -> None:
    """Throttle 1 per 2 s: `a` starts at once, `b` and `c` (priority 0) get the
    turns at 3000 and 5000, `vip` (priority 600, recorded last) the turn at 7000.
    When `b`'s turn comes, `vip` is first in line: it takes it (told on
    THROTTLE_TURN_GRANTED), and `b` takes `vip`'s; and so on down the line."""
    store = await engine.open()
    try:
        granted: list[str] = []
        await store.listen(THROTTLE_TURN_GRANTED, granted.append)

        def ordered(order: int) -> Throttle:
            return Throttle("", limit=1, period_ms=2000, order=order)

        runs = {name: await record(store, name, 1000, throttle=ordered(1000)) for name in ("a", "b", "c")}
        runs["vip"] = await record(store, "vip", 1000, throttle=ordered(1000 - 600_000))
        assert [r.requests[0].wake_at_ms for r in runs.values()] == [0, 3000, 5000, 7000]
        assert await store.take_throttle_turn("run-a", 1000) is None  # never in line: keeps its own time
        assert await store.take_throttle_turn("run-c", 3000) == 5000  # not its turn yet
        assert await store.take_throttle_turn("run-b", 3000) == 7000  # its turn went to vip
        for _ in range(200):
            if granted:
                break
            await asyncio.sleep(0.01)
        assert granted == ["run-vip"]
        assert await store.take_throttle_turn("run-vip", 3001) == 0  # given b's turn: it starts
        assert await store.take_throttle_turn("run-vip", 3002) is None  # and left the line
        assert await store.take_throttle_turn("run-c", 5000) == 7000  # b is ahead of c: b starts at 5000
        assert await store.take_throttle_turn("run-b", 5001) == 0
        assert await store.take_throttle_turn("run-c", 7000) == 0
        # A run of the line that ended leaves it; its turn is not handed to anyone.
        late = [await record(store, f"late{i}", 20_000, throttle=ordered(20_000 + i)) for i in range(3)]
        assert [r.requests[0].wake_at_ms for r in late] == [0, 22_000, 24_000]
        late[1].status, late[1].ended_at_ms, late[1].requests = COMPLETED, 21_000, []
        await store.save_run(late[1], fence=0)
        assert await store.take_throttle_turn("run-late2", 24_000) == 0
    finally:
        await store.close()


async def test_prune_history_drops_the_places_in_line_of_runs_that_ended(store: Store) -> None:
    ordered = Throttle("", limit=1, period_ms=60_000, order=0)
    await record(store, "held0", 1000, throttle=ordered)
    waiting = await record(store, "held1", 1000, throttle=ordered)
    assert await store.take_throttle_turn(waiting.run_id, 2000) == 61_000  # in line
    waiting.status, waiting.ended_at_ms, waiting.requests = COMPLETED, 2000, []
    await store.save_run(waiting, fence=0)  # cancelled while it waited, say
    await store.prune_history(before_ms=1500, limit=100)
    assert await store.take_throttle_turn(waiting.run_id, 2000) is None  # out of line


async def test_turns_asked_for_at_once_start_no_more_runs_than_turns_came(engine: Engine) -> None:
    """However many executors ask at once, the runs that start are as many as
    the turns that came, and they are the first in line."""
    store = await engine.open()
    try:
        # Turns at 3000, 5000, 7000, 9000 (after "r0", which starts at once); the later
        # a run was recorded, the higher its priority.
        await record(store, "r0", 1000, throttle=Throttle("", 1, 2000, order=0))
        for i in range(1, 5):
            await record(store, f"r{i}", 1000, throttle=Throttle("", 1, 2000, order=-i))
        everyone = [f"run-r{i}" for i in range(1, 5)]
        started: set[str] = set()
        for _ in range(3):  # each asks again, as one told of a grant would
            answers = await asyncio.gather(*(store.take_throttle_turn(r, 5000) for r in everyone))
            started |= {r for r, a in zip(everyone, answers, strict=True) if a == 0}
        assert started == {"run-r4", "run-r3"}  # two turns came (3000, 5000): the two first in line
    finally:
        await store.close()
