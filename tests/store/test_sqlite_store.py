from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
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
    RunMemo,
    RunRecord,
    SqliteStore,
    StepMemo,
    StoreClosed,
    Waiting,
)
from protocol.payloads import FunctionConfig, Runtime, StepConfig, Trigger

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


async def test_concurrent_put_reply_first_wins_and_commits_are_grouped(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
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


async def test_one_commit_per_write_when_batching_is_off(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db", max_batch=1)
    try:
        before = store.commits
        await asyncio.gather(*(store.put_reply(f"r{i}", b"x") for i in range(50)))
        assert store.commits - before == 50
    finally:
        await store.close()


async def test_everything_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
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
    await store.save_run(run, memos=[StepMemo("h1", b'{"data":1}'), StepMemo("h0", b"null")])
    await store.close()

    store = await SqliteStore.open(path)
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


async def test_schema_is_versioned_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(RuntimeError, match="newer release"):
        await SqliteStore.open(path)


async def test_leases_upsert_and_delete(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
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


async def test_save_run_is_one_atomic_step(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        await store.record_events([NewEvent(event_record("e1"), [run_record("run1")])])
        await store.put_reply("req-run1", b"reply")
        run = run_record("run1")
        run.requests = [PendingRequest("req-2", "h2")]
        await store.save_run(run, memos=[StepMemo("h1", b'{"data":"a"}')], consumed_request_id="req-run1")
        assert await store.get_reply("req-run1") is None
        assert (await store.get_run("run1")) == run
        # A memo already stored is kept: the first result wins.
        await store.save_run(run, memos=[StepMemo("h1", b'{"data":"b"}')])
        assert await store.get_memos("run1") == [StepMemo("h1", b'{"data":"a"}')]
    finally:
        await store.close()


async def test_duplicate_event_ids_store_nothing_new(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        first = NewEvent(event_record("e1"), [run_record("run1")])
        again = NewEvent(event_record("e1"), [run_record("run2")])
        assert await store.record_events([first, again]) == [True, False]
        assert [r.run_id for r in await store.runs_for_event("e1")] == ["run1"]
    finally:
        await store.close()


async def test_a_failing_operation_fails_alone(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        await store.record_events([NewEvent(event_record("e1"), [run_record("run1")])])
        # run1 exists already: inserting it again under a new event violates the primary key.
        clash = store.record_events([NewEvent(event_record("e2"), [run_record("run1", "e2")])])
        others = [store.put_reply(f"r{i}", b"x") for i in range(100)]
        results = await asyncio.gather(clash, *others, return_exceptions=True)
        assert isinstance(results[0], sqlite3.IntegrityError)
        assert results[1:] == [True] * 100
        assert await store.get_event("e2") is None  # the failed operation left nothing behind
    finally:
        await store.close()


async def test_prune_replies(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        await store.put_reply("old", b"x")
        assert await store.prune_replies(0) == 0
        assert await store.prune_replies(2**62) == 1
        assert await store.get_reply("old") is None
    finally:
        await store.close()


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    pending = store.put_reply("queued", b"x")
    task = asyncio.ensure_future(pending)
    await asyncio.sleep(0)
    await store.close()
    await store.close()  # idempotent
    assert await task is True  # queued before close: still committed
    with pytest.raises(StoreClosed):
        await store.put_reply("late", b"x")


async def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from connect.store import SqliteStore

        async def main():
            store = await SqliteStore.open({str(path)!r})
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
    store = await SqliteStore.open(path)
    try:
        replies = await asyncio.gather(*(store.get_reply(f"r{i}") for i in range(300)))
        assert replies == [b"data"] * 300
        assert await store.get_lease("busy") is not None
    finally:
        await store.close()


async def test_load_run_reads_run_event_and_memos_at_once(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        assert await store.load_run("nope") is None
        await store.record_events([NewEvent(event_record("e1"), [run_record("run1")])])
        await store.save_run(run_record("run1"), memos=[StepMemo("h1", b"1")])
        loaded = await store.load_run("run1")
        assert loaded is not None
        assert loaded.run == run_record("run1")
        assert loaded.event == event_record("e1")
        assert loaded.memos == [StepMemo("h1", b"1")]
    finally:
        await store.close()


async def test_events_carry_their_memos_and_cancels_all_or_nothing(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
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


async def test_cancel_flag_is_not_overwritten_by_saves(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        await store.record_events([NewEvent(event_record("e1"), [run_record("run1")])])
        assert await store.request_cancel("run1") is True
        await store.save_run(run_record("run1"))  # a runner saving its (older) view
        run = await store.get_run("run1")
        assert run is not None and run.cancel_requested
        assert await store.request_cancel("nope") is False
        run.status = "Completed"
        await store.save_run(run)
        assert await store.request_cancel("run1") is False  # only Running runs
    finally:
        await store.close()


async def test_put_memo_first_wins_and_save_run_can_record_events(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        await store.record_events([NewEvent(event_record("e1"), [run_record("run1")])])
        assert await store.put_memo("run1", StepMemo("s", b"null")) is True
        assert await store.put_memo("run1", StepMemo("s", b"1")) is False
        child = NewEvent(event_record("e2", "inngest/function.invoked"), [run_record("child", "e2")])
        assert await store.save_run(run_record("run1"), events=[child]) == [True]
        assert await store.save_run(run_record("run1"), events=[child]) == [False]
        assert [r.run_id for r in await store.runs_for_event("e2")] == ["child"]
        assert await store.get_memos("run1") == [StepMemo("s", b"null")]
    finally:
        await store.close()


async def test_cron_ticks_are_recorded_with_their_run_once(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
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


_SCHEMA_1 = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "INSERT INTO schema_version VALUES (1)",
    "CREATE TABLE replies (request_id TEXT PRIMARY KEY, data BLOB NOT NULL, stored_at_ms INTEGER NOT NULL)"
    " WITHOUT ROWID",
    "CREATE TABLE events (id TEXT PRIMARY KEY, name TEXT NOT NULL, ts INTEGER NOT NULL,"
    " received_at_ms INTEGER NOT NULL, body BLOB NOT NULL) WITHOUT ROWID",
    """CREATE TABLE runs (run_id TEXT PRIMARY KEY, function_id TEXT NOT NULL, app_name TEXT NOT NULL,
        event_id TEXT NOT NULL, status TEXT NOT NULL, started_at_ms INTEGER NOT NULL, ended_at_ms INTEGER,
        max_attempts INTEGER NOT NULL, attempt INTEGER NOT NULL, step_id TEXT NOT NULL,
        pending_request_id TEXT NOT NULL, disable_immediate_execution INTEGER NOT NULL,
        request_version INTEGER NOT NULL, planned BLOB NOT NULL, wake_at_ms INTEGER NOT NULL,
        sleep_step TEXT NOT NULL, output BLOB) WITHOUT ROWID""",
    "CREATE INDEX runs_by_event ON runs (event_id)",
    "CREATE INDEX runs_by_status ON runs (status)",
    "CREATE TABLE steps (run_id TEXT NOT NULL, step_hash TEXT NOT NULL, result BLOB NOT NULL,"
    " UNIQUE (run_id, step_hash))",
)


async def test_a_schema_1_database_is_migrated_and_its_runs_resume(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        for statement in _SCHEMA_1:
            conn.execute(statement)
        conn.execute("INSERT INTO events VALUES ('e1', 'app/x', 1, 2, ?)", (b'{"name":"app/x"}',))
        rows = [
            # sequential: one pending request retrying step h1 at attempt 2
            ("seq", "Running", 2, "h1", "req-seq", 0, 2, b"[]", 777, "", None),
            # sleeping on step nap until 5000; the pending discovery is sent after it
            ("nap", "Running", 0, "step", "req-nap", 0, 2, b"[]", 5000, "nap", None),
            # a group: p1 targeted now, p2 still planned
            ("grp", "Running", 0, "p1", "req-grp", 1, 2, b'["p2"]', 0, "", None),
            ("done", "Completed", 0, "step", "", 0, 2, b"[]", 0, "", b'{"ok":1}'),
        ]
        for run_id, status, attempt, step_id, pending, die, version, planned, wake, sleep, output in rows:
            conn.execute(
                "INSERT INTO runs VALUES (?, 'app-fn', 'app', 'e1', ?, 1000, NULL, 5, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, status, attempt, step_id, pending, die, version, planned, wake, sleep, output),
            )
        conn.execute("INSERT INTO steps VALUES ('seq', 'h0', ?)", (b'{"data":1}',))
    store = await SqliteStore.open(path)
    try:
        seq = await store.get_run("seq")
        assert seq is not None and seq.requests == [PendingRequest("req-seq", "h1", 2, 777)] and seq.waiting == []
        nap = await store.get_run("nap")
        assert nap is not None and nap.requests == [] and nap.waiting == [Waiting("sleep", "nap", 5000)]
        grp = await store.get_run("grp")
        assert grp is not None and grp.disable_immediate_execution
        assert (grp.requests[0].request_id, grp.requests[0].step_id) == ("req-grp", "p1")
        assert [r.step_id for r in grp.requests] == ["p1", "p2"]
        done = await store.get_run("done")
        assert done is not None and done.status == "Completed" and done.output == b'{"ok":1}' and done.requests == []
        assert [r.run_id for r in await store.runs_with_status("Running")] == ["grp", "nap", "seq"]
        assert await store.get_memos("seq") == [StepMemo("h0", b'{"data":1}')]
        assert await store.cron_ticks() == {}
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"runs_by_event", "runs_by_status"} <= indexes
    # Opening again is a no-op.
    store = await SqliteStore.open(path)
    await store.close()
