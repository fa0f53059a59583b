"""Concurrency slots on both engines: granted within limits, waiters in order,
releases grant and announce, nothing exceeded by many callers on two stores;
the same through a run's saves (`save_run(slots=SlotChange(...))`)."""

from __future__ import annotations

import asyncio
import random

import pytest

from connect.store import (
    SLOTS_GRANTED,
    NewEvent,
    PendingRequest,
    RunOwnershipLost,
    SlotAcquire,
    SlotChange,
    SlotClaim,
    Store,
)
from connect.store.base import COMPLETED, RunRecord
from connect.store.start_gates import RateLimit, StartGate, Throttle
from tests.store.conftest import Engine
from tests.store.test_store_contract import event_record, run_record

pytestmark = pytest.mark.anyio


def claim(key: str, limit: int) -> list[SlotClaim]:
    return [SlotClaim(key, limit)]


async def test_granted_up_to_the_limit_then_waiting_in_order(store: Store) -> None:
    assert await store.acquire_slots("r1", "run1", claim("k", 2), 10)
    assert await store.acquire_slots("r2", "run2", claim("k", 2), 20)
    # Full: later requests wait, whatever their order.
    assert not await store.acquire_slots("r4", "run4", claim("k", 2), 40)
    assert not await store.acquire_slots("r3", "run3", claim("k", 2), 30)
    # Asking again is idempotent: a holder still holds, a waiter keeps its place.
    assert await store.acquire_slots("r1", "run1", claim("k", 2), 10)
    assert not await store.acquire_slots("r4", "run4", claim("k", 2), 40)
    # Another key is independent; no claims at all is always granted.
    assert await store.acquire_slots("x1", "runx", claim("other", 1), 50)
    assert await store.acquire_slots("free", "runf", [], 0)
    assert sorted(await store.slots_held("k")) == ["r1", "r2"]

    # A release grants the earliest waiter (by order, not by arrival).
    assert await store.release_slots(["r1"]) == ["r3"]
    assert sorted(await store.slots_held("k")) == ["r2", "r3"]
    assert await store.acquire_slots("r3", "run3", claim("k", 2), 30)  # learns it holds it
    # A newcomer ordered after a waiter waits even though... the key is full anyway.
    assert not await store.acquire_slots("r5", "run5", claim("k", 2), 5)
    # Ordered before r4: granted first.
    assert await store.release_slots(["r2", "r3"]) == ["r5", "r4"]
    assert await store.release_slots(["nobody"]) == []


async def test_a_newcomer_waits_behind_an_earlier_waiter_even_with_room(store: Store) -> None:
    # r2 waits on "a" because "b" is full; a later r3 wanting only "a" must not pass it at acquire.
    assert await store.acquire_slots("b1", "runb", claim("b", 1), 0)
    assert not await store.acquire_slots("r2", "run2", [SlotClaim("a", 2), SlotClaim("b", 1)], 10)
    assert not await store.acquire_slots("r3", "run3", claim("a", 2), 20)
    # An older newcomer goes ahead of both.
    assert await store.acquire_slots("r1", "run1", claim("a", 2), 5)
    # Freeing "b" grants r2 (both its keys), and then r3 fits "a" no more (limit 2).
    assert await store.release_slots(["b1"]) == ["r2"]
    assert sorted(await store.slots_held("a")) == ["r1", "r2"]
    assert await store.slots_held("b") == ["r2"]
    assert await store.release_slots(["r1"]) == ["r3"]


async def test_each_function_blocks_at_its_own_limit_on_a_shared_key(store: Store) -> None:
    assert await store.acquire_slots("a1", "runa1", claim("shared", 1), 1)
    # Function A (limit 1) waits; function B (limit 3) on the same key still fits.
    assert not await store.acquire_slots("a2", "runa2", claim("shared", 1), 2)
    assert not await store.acquire_slots("b1", "runb1", claim("shared", 3), 3)  # behind a2 in line
    assert await store.release_slots(["a1"]) == ["a2", "b1"]
    assert sorted(await store.slots_held("shared")) == ["a2", "b1"]


async def test_a_run_releases_everything_it_held_or_waited_for(store: Store) -> None:
    assert await store.acquire_slots("r1", "run1", claim("k", 2), 1)
    assert await store.acquire_slots("r2", "run1", claim("k", 2), 1)
    assert not await store.acquire_slots("r3", "run1", claim("k", 2), 1)
    assert not await store.acquire_slots("o1", "other", claim("k", 2), 2)
    assert not await store.acquire_slots("o2", "other", claim("k", 2), 2)
    # Keeping its current request: only the others go.
    assert await store.release_run_slots("run1", keep=["r2"]) == ["o1"]
    assert sorted(await store.slots_held("k")) == ["o1", "r2"]
    assert await store.release_run_slots("run1") == ["o2"]
    assert await store.release_run_slots("run1") == []


async def test_slots_of_runs_that_ended_are_reclaimed(store: Store) -> None:
    run = run_record("run1")
    await store.record_events([NewEvent(event_record("e1"), [run])])
    assert await store.acquire_slots("r1", "run1", claim("k", 1), 1)
    # The run ends without releasing (its process stopped in between).
    run.status = COMPLETED
    run.ended_at_ms = 2000
    await store.save_run(run, fence=0)
    assert await store.acquire_slots("r2", "run2", claim("k", 1), 2)
    assert await store.slots_held("k") == ["r2"]


async def test_a_slot_taken_back_from_an_ended_run_goes_to_the_first_in_line(store: Store) -> None:
    """A newcomer that finds the key full of an ended run's slot (its release
    not yet made) takes it back for the waiter ahead of it, which is told:
    the release that follows finds nothing left to hand over."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    await store.listen(SLOTS_GRANTED, heard.put_nowait)
    run = run_record("run1")
    await store.record_events([NewEvent(event_record("e1"), [run])])
    assert await store.acquire_slots("r1", "run1", claim("k", 1), 1)
    assert not await store.acquire_slots("r2", "run2", claim("k", 1), 2)
    run.status = COMPLETED
    run.ended_at_ms = 2000
    await store.save_run(run, fence=0)
    assert not await store.acquire_slots("r3", "run3", claim("k", 1), 3)
    assert await asyncio.wait_for(heard.get(), 10) == "r2"
    assert await store.slots_held("k") == ["r2"]
    assert await store.release_run_slots("run1") == []
    assert await store.acquire_slots("r2", "run2", claim("k", 1), 2)


async def test_grants_are_announced(store: Store) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    await store.listen(SLOTS_GRANTED, heard.put_nowait)
    assert await store.acquire_slots("r1", "run1", claim("k", 1), 1)
    assert not await store.acquire_slots("r2", "run2", claim("k", 1), 2)
    assert await store.release_slots(["r1"]) == ["r2"]
    assert await asyncio.wait_for(heard.get(), 10) == "r2"
    assert not await store.acquire_slots("r3", "run3", claim("k", 1), 3)
    assert await store.release_run_slots("run2") == ["r3"]
    assert await asyncio.wait_for(heard.get(), 10) == "r3"


async def test_a_restart_keeps_holders_and_waiters_in_place(engine: Engine) -> None:
    store = await engine.open()
    try:
        assert await store.acquire_slots("r1", "run1", claim("k", 1), 1)
        assert not await store.acquire_slots("r3", "run3", claim("k", 1), 3)
        assert not await store.acquire_slots("r2", "run2", claim("k", 1), 2)
    finally:
        await store.close()
    store = await engine.open()
    try:
        assert await store.slots_held("k") == ["r1"]
        assert await store.release_slots(["r1"]) == ["r2"]
    finally:
        await store.close()


async def test_many_callers_on_two_stores_never_exceed_a_limit(engine: Engine) -> None:
    """120 requests over 3 keys of limit 2, on two store objects (two writers,
    two connections) at once: no key ever has more than 2 holders, and all are served."""
    stores = [await engine.open(), await engine.open()]
    limit, keys = 2, ["k0", "k1", "k2"]
    granted: dict[str, asyncio.Event] = {}
    running: dict[str, set[str]] = {k: set() for k in keys}
    most = {k: 0 for k in keys}

    def heard(payload: str) -> None:
        for rid in payload.split(","):
            if rid in granted:
                granted[rid].set()

    try:
        for s in stores:
            await s.listen(SLOTS_GRANTED, heard)

        async def one(i: int) -> None:
            store = stores[i % 2]
            rid, key = f"r{i:03d}", keys[i % len(keys)]
            granted[rid] = asyncio.Event()
            claims = [SlotClaim(key, limit)]
            while not await store.acquire_slots(rid, f"run{i}", claims, i):
                # A grant by the other store object is not heard on SQLite: ask again soon.
                try:
                    await asyncio.wait_for(granted[rid].wait(), 0.2)
                except TimeoutError:
                    pass
            running[key].add(rid)
            most[key] = max(most[key], len(running[key]))
            assert len(await store.slots_held(key)) <= limit
            await asyncio.sleep(random.uniform(0, 0.01))
            running[key].discard(rid)
            await stores[(i + 1) % 2].release_slots([rid])

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(120))), 120)
        assert most == {k: limit for k in keys}
        for key in keys:
            assert await stores[0].slots_held(key) == []
    finally:
        for s in stores:
            await s.close()


# --- slots changed by a run's saves -------------------------------------------------------


async def started(store: Store, run_id: str, request_id: str) -> RunRecord:
    run = run_record(run_id, f"e-{run_id}", requests=[PendingRequest(request_id)])
    await store.record_events([NewEvent(event_record(f"e-{run_id}"), [run])])
    return run


def next_request(run: RunRecord, request_id: str) -> None:
    run.requests = [PendingRequest(request_id)]


async def test_a_save_hands_a_steps_slot_to_the_next_step_of_its_run(store: Store) -> None:
    run = await started(store, "run1", "a1")
    assert await store.acquire_slots("a1", "run1", claim("k", 1), 10)
    next_request(run, "a2")
    change = SlotChange(release=["a1"], acquire=[SlotAcquire("a2", claim("k", 1), 10)])
    await store.save_run(run, fence=0, consumed_request_id="a1", slots=change)
    assert change.held == ["a2"]
    assert await store.slots_held("k") == ["a2"]
    # Asking again, as a dispatch does, finds it held; someone else waits.
    assert await store.acquire_slots("a2", "run1", claim("k", 1), 10)
    assert not await store.acquire_slots("b1", "run2", claim("k", 1), 20)


async def test_a_save_gives_the_freed_slot_to_a_waiter_ordered_before_its_next_step(store: Store) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    await store.listen(SLOTS_GRANTED, heard.put_nowait)
    run = await started(store, "run2", "a1")
    assert await store.acquire_slots("a1", "run2", claim("k", 1), 20)
    # An older run (ordered 10) waits for the key.
    assert not await store.acquire_slots("old", "run1", claim("k", 1), 10)
    next_request(run, "a2")
    change = SlotChange(release=["a1"], acquire=[SlotAcquire("a2", claim("k", 1), 20)])
    await store.save_run(run, fence=0, slots=change)
    assert change.held == []
    assert await store.slots_held("k") == ["old"]
    assert await asyncio.wait_for(heard.get(), 10) == "old"
    # The next step waits in line, and is granted when the older run's step ends.
    assert await store.release_slots(["old"]) == ["a2"]
    assert await store.acquire_slots("a2", "run2", claim("k", 1), 20)


async def test_a_save_keeps_a_younger_waiter_behind_the_next_step_of_an_older_run(store: Store) -> None:
    run = await started(store, "run1", "a1")
    assert await store.acquire_slots("a1", "run1", claim("k", 1), 10)
    assert not await store.acquire_slots("young", "run9", claim("k", 1), 90)
    next_request(run, "a2")
    change = SlotChange(release=["a1"], acquire=[SlotAcquire("a2", claim("k", 1), 10)])
    await store.save_run(run, fence=0, slots=change)
    assert change.held == ["a2"]
    assert await store.slots_held("k") == ["a2"]
    assert await store.release_slots(["a2"]) == ["young"]


async def test_a_save_never_hands_on_a_slot_over_a_lowered_limit(store: Store) -> None:
    """Two steps hold a key when the function's limit drops to 1 (it was
    registered again): the next step waits until the key has room under 1."""
    run = await started(store, "run1", "a1")
    assert await store.acquire_slots("a1", "run1", claim("k", 2), 10)
    assert await store.acquire_slots("x1", "run2", claim("k", 2), 20)
    next_request(run, "a2")
    change = SlotChange(release=["a1"], acquire=[SlotAcquire("a2", claim("k", 1), 10)])
    await store.save_run(run, fence=0, slots=change)
    assert change.held == []
    assert await store.slots_held("k") == ["x1"]
    assert await store.release_slots(["x1"]) == ["a2"]


async def test_a_save_changes_slots_of_several_keys_and_requests(store: Store) -> None:
    run = await started(store, "run1", "a1")
    both = [SlotClaim("a", 1), SlotClaim("b", 2)]
    assert await store.acquire_slots("a1", "run1", both, 10)
    assert await store.acquire_slots("x1", "run2", claim("b", 2), 20)
    # A parallel group of two steps: the first takes "a", the second waits for it.
    run.requests = [PendingRequest("s1"), PendingRequest("s2")]
    change = SlotChange(release=["a1"], acquire=[SlotAcquire("s1", both, 10), SlotAcquire("s2", both, 10)])
    await store.save_run(run, fence=0, slots=change)
    assert change.held == ["s1"]
    assert await store.slots_held("a") == ["s1"]
    assert await store.slots_held("b") == ["s1", "x1"]
    assert await store.release_slots(["s1"]) == ["s2"]
    # No claims at all: held.
    nothing = SlotChange(acquire=[SlotAcquire("free", [], 0)])
    await store.save_run(run, fence=0, slots=nothing)
    assert nothing.held == ["free"]


async def test_a_save_that_ends_a_run_frees_every_slot_and_wait_of_it(store: Store) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    await store.listen(SLOTS_GRANTED, heard.put_nowait)
    run = await started(store, "run1", "a1")
    assert await store.acquire_slots("a1", "run1", claim("k", 1), 10)
    assert not await store.acquire_slots("a2", "run1", claim("k", 1), 10)
    assert not await store.acquire_slots("o1", "run2", claim("k", 1), 20)
    run.status = COMPLETED
    run.ended_at_ms = 2000
    run.requests = []
    await store.save_run(run, fence=0, consumed_request_id="a1", slots=SlotChange(release_run=True))
    assert await store.slots_held("k") == ["o1"]
    assert await asyncio.wait_for(heard.get(), 10) == "o1"
    assert await store.release_run_slots("run1") == []


async def test_a_refused_save_changes_no_slot(store: Store) -> None:
    run = await started(store, "run1", "a1")
    assert await store.acquire_slots("a1", "run1", claim("k", 1), 10)
    next_request(run, "a2")
    change = SlotChange(release=["a1"], acquire=[SlotAcquire("a2", claim("k", 1), 10)])
    with pytest.raises(RunOwnershipLost):
        await store.save_run(run, fence=7, slots=change)
    assert await store.slots_held("k") == ["a1"]
    assert not await store.acquire_slots("a2", "run1", claim("k", 1), 10)


async def test_acquires_and_saves_made_at_once_keep_limits_and_order(store: Store) -> None:
    """Many acquires and slot-changing saves submitted together (one batch on
    PostgreSQL): each key keeps its limit, and the waiters come out in order."""
    runs = [await started(store, f"run{i:02d}", f"first{i:02d}") for i in range(20)]
    firsts = await asyncio.gather(
        *(store.acquire_slots(f"first{i:02d}", f"run{i:02d}", claim(f"k{i % 2}", 3), i) for i in range(20))
    )
    # Each key: its three oldest hold, the rest wait.
    assert [i for i, held in enumerate(firsts) if held] == [0, 1, 2, 3, 4, 5]
    changes = []
    for i, run in enumerate(runs[:6]):
        next_request(run, f"next{i:02d}")
        changes.append(
            SlotChange(release=[f"first{i:02d}"], acquire=[SlotAcquire(f"next{i:02d}", claim(f"k{i % 2}", 3), i)])
        )
    await asyncio.gather(*(store.save_run(run, fence=0, slots=c) for run, c in zip(runs, changes, strict=False)))
    # The older runs' next steps keep their slots ahead of the younger runs' first.
    assert [c.held for c in changes] == [[f"next{i:02d}"] for i in range(6)]
    for key in ("k0", "k1"):
        assert len(await store.slots_held(key)) == 3
    ended = []
    for run in runs[:6]:
        run.status = COMPLETED
        run.ended_at_ms = 2000
        run.requests = []
        ended.append(store.save_run(run, fence=0, slots=SlotChange(release_run=True)))
    await asyncio.gather(*ended)
    assert sorted(await store.slots_held("k0")) == ["first06", "first08", "first10"]
    assert sorted(await store.slots_held("k1")) == ["first07", "first09", "first11"]


async def test_slot_changing_saves_on_two_stores_never_exceed_a_limit(engine: Engine) -> None:
    """60 runs of three steps over 2 keys of limit 2, each step's slot handed
    on by the save that creates the next (or waited for), on two store
    objects at once: no key ever has more than 2 holders, and all finish."""
    stores = [await engine.open(), await engine.open()]
    limit, keys = 2, ["k0", "k1"]
    granted: dict[str, asyncio.Event] = {}
    running: dict[str, set[str]] = {k: set() for k in keys}
    most = {k: 0 for k in keys}

    def heard(payload: str) -> None:
        for rid in payload.split(","):
            if rid in granted:
                granted[rid].set()

    try:
        for s in stores:
            await s.listen(SLOTS_GRANTED, heard)

        async def hold(store: Store, rid: str, run_id: str, claims: list[SlotClaim], order: int) -> None:
            granted.setdefault(rid, asyncio.Event())
            while not await store.acquire_slots(rid, run_id, claims, order):
                try:
                    await asyncio.wait_for(granted[rid].wait(), 0.2)
                except TimeoutError:
                    pass

        async def one(i: int) -> None:
            store = stores[i % 2]
            key = keys[i % len(keys)]
            claims = [SlotClaim(key, limit)]
            run = await started(store, f"run{i:02d}", f"r{i:02d}-0")
            await hold(store, f"r{i:02d}-0", run.run_id, claims, i)
            for step in range(3):
                rid = f"r{i:02d}-{step}"
                running[key].add(rid)
                most[key] = max(most[key], len(running[key]))
                assert len(await store.slots_held(key)) <= limit
                await asyncio.sleep(random.uniform(0, 0.01))
                running[key].discard(rid)
                if step == 2:
                    run.status = COMPLETED
                    run.ended_at_ms = 2000
                    run.requests = []
                    await store.save_run(run, fence=0, slots=SlotChange(release_run=True))
                    return
                nxt = f"r{i:02d}-{step + 1}"
                granted[nxt] = asyncio.Event()
                next_request(run, nxt)
                change = SlotChange(release=[rid], acquire=[SlotAcquire(nxt, claims, i)])
                await store.save_run(run, fence=0, slots=change)
                if change.held != [nxt]:
                    await hold(store, nxt, run.run_id, claims, i)

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(60))), 120)
        assert most == {k: limit for k in keys}
        for key in keys:
            assert await stores[0].slots_held(key) == []
    finally:
        for s in stores:
            await s.close()


# --- slots taken by runs as their event is recorded ------------------------------------


def starting(event_id: str, key: str, limit: int, order: int, **gate: object) -> NewEvent:
    """An event starting one run whose first request claims a slot of `key`."""
    run = run_record(f"run-{event_id}", event_id, requests=[PendingRequest(f"req-{event_id}")])
    gates = [StartGate(run.run_id, "app-fn", **gate)] if gate else []  # type: ignore[arg-type]
    slots = [(run.run_id, SlotAcquire(f"req-{event_id}", claim(key, limit), order))]
    return NewEvent(event_record(event_id), [run], gates=gates, slots=slots)


async def test_runs_take_their_first_slots_as_their_event_is_recorded(store: Store) -> None:
    events = [starting(f"e{i}", "k", 2, 1000 + i) for i in range(3)]
    assert await store.record_events(events) == [True, True, True]
    assert [e.held for e in events] == [["req-e0"], ["req-e1"], []]
    assert await store.slots_held("k") == ["req-e0", "req-e1"]
    # The third waits in line: asking again keeps it there; a release grants it.
    assert not await store.acquire_slots("req-e2", "run-e2", claim("k", 2), 1002)
    assert await store.release_slots(["req-e0"]) == ["req-e2"]
    # A duplicate event starts nothing and takes nothing.
    again = starting("e0", "k", 2, 1000)
    assert await store.record_events([again]) == [False]
    assert again.held == []
    assert sorted(await store.slots_held("k")) == ["req-e1", "req-e2"]


async def test_a_run_its_gate_skips_or_delays_takes_no_slot(store: Store) -> None:
    rate = RateLimit("", limit=1, period_ms=60_000)
    first, skipped = starting("r1", "k", 5, 1000, rate_limit=rate), starting("r2", "k", 5, 1000, rate_limit=rate)
    throttle = Throttle("", limit=1, period_ms=60_000)
    now, later = starting("t1", "k", 5, 1000, throttle=throttle), starting("t2", "k", 5, 1000, throttle=throttle)
    assert await store.record_events([first, skipped, now, later]) == [True] * 4
    assert [e.held for e in (first, skipped, now, later)] == [["req-r1"], [], ["req-t1"], []]
    assert await store.slots_held("k") == ["req-r1", "req-t1"]
    # The throttled run asks when its turn comes, and fits then.
    assert await store.acquire_slots("req-t2", "run-t2", claim("k", 5), 1000)


async def test_runs_started_by_a_saves_events_take_their_slots_in_it(store: Store) -> None:
    run = await started(store, "parent", "p1")
    assert await store.acquire_slots("other", "run-x", claim("k", 1), 1)
    run.status = COMPLETED
    run.ended_at_ms = 2000
    run.requests = []
    child = starting("child", "k", 1, 3000)
    free = starting("free", "f", 1, 3000)
    await store.save_run(run, fence=0, events=[child, free], slots=SlotChange(release_run=True))
    assert (child.held, free.held) == ([], ["req-free"])
    assert await store.release_slots(["other"]) == ["req-child"]
