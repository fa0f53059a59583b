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
    RunRecord,
    SqliteStore,
    StepMemo,
    StoreClosed,
)
from protocol.payloads import FunctionConfig, Runtime, StepConfig, Trigger

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def run_record(run_id: str, event_id: str = "e1", **kw: object) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        function_id="app-fn",
        app_name="app",
        event_id=event_id,
        started_at_ms=1000,
        pending_request_id=f"req-{run_id}",
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
    run = run_record("run1", attempt=2, planned=["p1", "p2"], disable_immediate_execution=True)
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
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
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
        run = run_record("run1", step_id="h2")
        run.pending_request_id = "req-2"
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
