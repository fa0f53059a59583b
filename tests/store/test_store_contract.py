"""The store contract: every test runs unchanged on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from connect.store import (
    AppRecord,
    EventRecord,
    LeaseRecord,
    NewEvent,
    PendingRequest,
    QueuedRequest,
    RunMemo,
    RunRecord,
    StepMemo,
    Store,
    StoreClosed,
    Waiting,
)
from protocol.payloads import FunctionConfig, Runtime, StepConfig, Trigger
from tests.store.conftest import Engine

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def run_record(run_id: str, event_id: str = "e1", **kw: object) -> RunRecord:
    kw.setdefault("requests", [PendingRequest(f"req-{run_id}")])
    return RunRecord(
        run_id=run_id,
        function_id="app-fn",
        app_name="app",
        event_id=event_id,
        started_at_ms=1000,
        **kw,  # type: ignore[arg-type]
    )


def event_record(event_id: str, name: str = "app/x") -> EventRecord:
    return EventRecord(event_id, name, 5, 6, b'{"name":"%s"}' % name.encode())


async def test_concurrent_put_reply_first_wins_and_commits_are_grouped(engine: Engine) -> None:
    store = await engine.open()
    try:
        # 500 request ids, two writers each: 1,000 concurrent writes.
        calls = []
        for i in range(500):
            calls.append(store.put_reply(f"r{i}", b"first-%d" % i))
            calls.append(store.put_reply(f"r{i}", b"second-%d" % i))
        commits_before = store.commits
        results = await asyncio.gather(*calls)
        # Group commit: far fewer transactions than writes.
        assert store.commits - commits_before < 100
        assert sum(results) == 500
        for i in range(500):
            assert results[2 * i] is True and results[2 * i + 1] is False
            assert await store.get_reply(f"r{i}") == b"first-%d" % i
        assert await store.get_reply("missing") is None
    finally:
        await store.close()


async def test_one_commit_per_write_when_batching_is_off(engine: Engine) -> None:
    store = await engine.open(max_batch=1)
    try:
        before = store.commits
        await asyncio.gather(*(store.put_reply(f"r{i}", b"x") for i in range(50)))
        assert store.commits - before == 50
    finally:
        await store.close()


async def test_everything_survives_reopen(engine: Engine) -> None:
    store = await engine.open()
    fn = FunctionConfig(
        id="app-fn",
        name="fn",
        triggers=[Trigger(event="app/x")],
        steps={"step": StepConfig(id="step", name="step", runtime=Runtime(type="ws", url="wss://x"))},
    )
    await store.put_reply("r1", b"\x00\x01reply")
    await store.put_lease("r1", "lease-1", 123, "gw-1")
    await store.put_app(AppRecord("app", [fn], "v1", 77))
    assert await store.record_events([NewEvent(event_record("e1"), [run_record("run1")])]) == [True]
    run = run_record(
        "run1",
        requests=[PendingRequest("a", "p1", 2, 99), PendingRequest("b", "p2")],
        waiting=[Waiting(kind="wait", step="w", due_ms=5, event="x/y", expression="async.data.a == 1")],
        disable_immediate_execution=True,
    )
    await store.save_run(run, fence=0, memos=[StepMemo("h1", b'{"data":1}'), StepMemo("h0", b"null")])
    await store.close()

    store = await engine.open()
    try:
        assert await store.get_reply("r1") == b"\x00\x01reply"
        assert await store.get_lease("r1") == LeaseRecord("r1", "lease-1", 123, "gw-1")
        assert await store.list_apps() == [AppRecord("app", [fn], "v1", 77)]
        assert await store.get_event("e1") == event_record("e1")
        assert await store.get_run("run1") == run
        assert await store.runs_for_event("e1") == [run]
        assert await store.runs_with_status("Running") == [run]
        assert await store.get_memos("run1") == [StepMemo("h1", b'{"data":1}'), StepMemo("h0", b"null")]
    finally:
        await store.close()


async def test_schema_is_versioned_and_a_newer_one_is_refused(engine: Engine) -> None:
    store = await engine.open()
    await store.close()
    known = await engine.schema_version()
    assert known >= 1
    await engine.set_schema_version(known + 1)
    with pytest.raises(RuntimeError, match=f"newer release \\(schema {known + 1}, this one knows {known}\\)"):
        await engine.open()
    # Refused without touching it: the version is still the newer one.
    assert await engine.schema_version() == known + 1


async def test_leases_upsert_and_delete(engine: Engine) -> None:
    store = await engine.open()
    try:
        assert await store.get_lease("r") is None
        await store.put_lease("r", "l1", 1, "a")
        await store.put_lease("r", "l2", 2, "b")
        assert await store.get_lease("r") == LeaseRecord("r", "l2", 2, "b")
        await store.delete_lease("r")
        await store.delete_lease("r")
        assert await store.get_lease("r") is None
    finally:
        await store.close()


async def test_save_run_is_one_atomic_step(engine: Engine) -> None:
    store = await engine.open()
    try:
        await store.record_events([NewEvent(event_record("e1"), [run_record("run1")])])
        await store.put_reply("req-run1", b"reply")
        # Queued again by an executor that had not seen the reply yet.
        await store.queue_request(QueuedRequest("req-run1", "run1", "app", "app-fn", "step", b"{}", 1))
        run = run_record("run1")
        run.requests = [PendingRequest("req-2", "h2")]
        await store.save_run(run, fence=0, memos=[StepMemo("h1", b'{"data":"a"}')], consumed_request_id="req-run1")
        assert await store.get_reply("req-run1") is None
        # Consumed: out of the queue too, so no gateway forwards it again.
        assert await store.take_requests("gw", ["app-fn"], 1, 2, 10) == []
        assert (await store.get_run("run1")) == run
        # A memo already stored is kept: the first result wins.
        await store.save_run(run, fence=0, memos=[StepMemo("h1", b'{"data":"b"}')])
        assert await store.get_memos("run1") == [StepMemo("h1", b'{"data":"a"}')]
    finally:
        await store.close()


async def test_duplicate_event_ids_store_nothing_new(engine: Engine) -> None:
    store = await engine.open()
    try:
        first = NewEvent(event_record("e1"), [run_record("run1")])
        again = NewEvent(event_record("e1"), [run_record("run2")])
        assert await store.record_events([first, again]) == [True, False]
        assert [r.run_id for r in await store.runs_for_event("e1")] == ["run1"]
    finally:
        await store.close()


async def test_a_failing_operation_fails_alone(engine: Engine) -> None:
    store = await engine.open()
    try:
        await store.record_events([NewEvent(event_record("e1"), [run_record("run1")])])
        # run1 exists already: inserting it again under a new event violates the primary key.
        clash = store.record_events([NewEvent(event_record("e2"), [run_record("run1", "e2")])])
        others = [store.put_reply(f"r{i}", b"x") for i in range(100)]
        results = await asyncio.gather(clash, *others, return_exceptions=True)
        assert isinstance(results[0], engine.integrity_error)
        assert results[1:] == [True] * 100
        assert await store.get_event("e2") is None  # the failed operation left nothing behind
    finally:
        await store.close()


async def test_prune_replies(engine: Engine) -> None:
    store = await engine.open()
    try:
        await store.put_reply("old", b"x")
        assert await store.prune_replies(0) == 0
        assert await store.prune_replies(2**62) == 1
        assert await store.get_reply("old") is None
    finally:
        await store.close()


async def test_closed_store_refuses_work(engine: Engine) -> None:
    store = await engine.open()
    pending = store.put_reply("queued", b"x")
    task = asyncio.ensure_future(pending)
    await asyncio.sleep(0)
    await store.close()
    await store.close()  # idempotent
    assert await task is True  # queued before close: still committed
    with pytest.raises(StoreClosed):
        await store.put_reply("late", b"x")


async def test_acknowledged_writes_survive_sigkill(engine: Engine) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        import connect.store

        async def main():
            store = await {engine.open_source()}
            await asyncio.gather(*(store.put_reply(f"r{{i}}", b"data") for i in range(300)))
            print("stored", flush=True)
            while True:  # keep writing until killed
                await store.put_lease("busy", "l", int(time.time() * 1000), "x")

        asyncio.run(main())
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line.strip() == b"stored"
        await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = await engine.open()
    try:
        replies = await asyncio.gather(*(store.get_reply(f"r{i}") for i in range(300)))
        assert replies == [b"data"] * 300
        assert await store.get_lease("busy") is not None
    finally:
        await store.close()


async def test_load_run_reads_run_event_and_memos_at_once(engine: Engine) -> None:
    store = await engine.open()
    try:
        assert await store.load_run("nope") is None
        await store.record_events([NewEvent(event_record("e1"), [run_record("run1")])])
        await store.save_run(run_record("run1"), fence=0, memos=[StepMemo("h1", b"1")])
        loaded = await store.load_run("run1")
        assert loaded is not None
        assert loaded.run == run_record("run1")
        assert loaded.event == event_record("e1")
        assert loaded.memos == [StepMemo("h1", b"1")]
    finally:
        await store.close()


async def test_events_carry_their_memos_and_cancels_all_or_nothing(engine: Engine) -> None:
    store = await engine.open()
    try:
        await store.record_events([NewEvent(event_record("e1"), [run_record("run1"), run_record("run2")])])
        resume = NewEvent(
            event_record("e2", "app/paid"),
            [],
            memos=[RunMemo("run1", StepMemo("w", b'{"name":"app/paid"}'))],
            cancels=["run2"],
        )
        assert await store.record_events([resume]) == [True]
        assert await store.get_memos("run1") == [StepMemo("w", b'{"name":"app/paid"}')]
        run2 = await store.get_run("run2")
        assert run2 is not None and run2.cancel_requested
        # A duplicate of the event writes nothing of what it carries.
        again = NewEvent(event_record("e2", "app/paid"), [], memos=[RunMemo("run2", StepMemo("w", b"2"))])
        assert await store.record_events([again]) == [False]
        assert await store.get_memos("run2") == []
    finally:
        await store.close()


async def test_cancel_flag_is_not_overwritten_by_saves(engine: Engine) -> None:
    store = await engine.open()
    try:
        await store.record_events([NewEvent(event_record("e1"), [run_record("run1")])])
        assert await store.request_cancel("run1") is True
        await store.save_run(run_record("run1"), fence=0)  # a runner saving its (older) view
        run = await store.get_run("run1")
        assert run is not None and run.cancel_requested
        assert await store.request_cancel("nope") is False
        run.status = "Completed"
        await store.save_run(run, fence=0)
        assert await store.request_cancel("run1") is False  # only Running runs
    finally:
        await store.close()


async def test_put_memo_first_wins_and_save_run_can_record_events(engine: Engine) -> None:
    store = await engine.open()
    try:
        await store.record_events([NewEvent(event_record("e1"), [run_record("run1")])])
        assert await store.put_memo("run1", StepMemo("s", b"null")) is True
        assert await store.put_memo("run1", StepMemo("s", b"1")) is False
        child = NewEvent(event_record("e2", "inngest/function.invoked"), [run_record("child", "e2")])
        assert await store.save_run(run_record("run1"), fence=0, events=[child]) == [True]
        assert await store.save_run(run_record("run1"), fence=0, events=[child]) == [False]
        assert [r.run_id for r in await store.runs_for_event("e2")] == ["child"]
        assert await store.get_memos("run1") == [StepMemo("s", b"null")]
    finally:
        await store.close()


async def test_cron_ticks_are_recorded_with_their_run_once(engine: Engine) -> None:
    store = await engine.open()
    try:
        assert await store.cron_ticks() == {}
        tick = NewEvent(event_record("tick-1", "inngest/scheduled.timer"), [run_record("r1", "tick-1")])
        assert await store.record_tick("app-fn * * * * *", 60_000, tick) is True
        dup = NewEvent(event_record("tick-1", "inngest/scheduled.timer"), [run_record("r2", "tick-1")])
        assert await store.record_tick("app-fn * * * * *", 60_000, dup) is False
        assert await store.cron_ticks() == {"app-fn * * * * *": 60_000}
        # An older tick never moves the mark back.
        old = NewEvent(event_record("tick-0", "inngest/scheduled.timer"), [])
        await store.record_tick("app-fn * * * * *", 0, old)
        assert await store.cron_ticks() == {"app-fn * * * * *": 60_000}
        assert [r.run_id for r in await store.runs_for_event("tick-1")] == ["r1"]
    finally:
        await store.close()


async def test_writes_queued_together_apply_in_submission_order(store: Store) -> None:
    # Queued in one loop turn, so they share one batch: the last word on a lease wins,
    # and a read sees every write queued before it.
    writes = [
        store.put_lease("a", "l1", 1, "gw"),
        store.delete_lease("a"),
        store.put_lease("b", "l1", 1, "gw"),
        store.put_reply("b", b"done"),  # ends b's lease
        store.put_lease("c", "l1", 1, "gw"),
        store.put_lease("c", "l2", 2, "gw"),
        store.delete_lease("d"),
        store.put_lease("d", "l3", 3, "gw"),
    ]
    reads = [store.get_lease(k) for k in "abcd"]
    await asyncio.gather(*writes)
    c, d = LeaseRecord("c", "l2", 2, "gw"), LeaseRecord("d", "l3", 3, "gw")
    assert await asyncio.gather(*reads) == [None, None, c, d]
    assert await store.get_reply("b") == b"done"


async def test_events_and_saves_queued_together_apply_as_one_at_a_time(store: Store) -> None:
    # Queued in one loop turn, so they share one batch, where the PostgreSQL store
    # stores several callers' events in one statement: each caller still gets what
    # it would alone, a duplicate id is refused after its first, and what an event
    # cancels or resumes is what the events before it stored.
    finished = NewEvent(event_record("done-1", "inngest/function.finished"), [])
    invoked = NewEvent(event_record("inv-1", "inngest/function.invoked"), [run_record("child", "inv-1")])
    results = await asyncio.gather(
        store.record_events([NewEvent(event_record("e1"), [run_record("run1"), run_record("run2")])]),
        store.record_events([NewEvent(event_record("e1"), [run_record("run3")])]),
        store.record_events(
            [NewEvent(event_record("e2"), [], memos=[RunMemo("run2", StepMemo("w", b"1"))], cancels=["run1"])]
        ),
        store.save_run(run_record("run2"), fence=0, events=[finished]),
        store.save_run(run_record("run1"), fence=0, events=[finished]),
        store.save_run(run_record("run2"), fence=0, events=[invoked]),
        store.record_events([invoked, NewEvent(event_record("e3"), [])]),
    )
    assert results == [[True], [False], [True], [True], [False], [True], [False, True]]
    assert [r.run_id for r in await store.runs_for_event("e1")] == ["run1", "run2"]
    assert [r.run_id for r in await store.runs_for_event("inv-1")] == ["child"]
    run1 = await store.get_run("run1")
    assert run1 is not None and run1.cancel_requested
    assert await store.get_memos("run2") == [StepMemo("w", b"1")]
    for event_id in ("done-1", "e2", "e3"):
        assert await store.get_event(event_id) is not None
    assert await store.get_run("run3") is None
