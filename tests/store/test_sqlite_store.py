"""What only the SQLite store has: its file, WAL mode and the migration from schema 1."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from connect.store import PendingRequest, SqliteStore, StepMemo, Waiting
from connect.store.sqlite import SCHEMA_VERSION

pytestmark = pytest.mark.anyio


async def test_the_file_is_in_wal_mode_with_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await SqliteStore.open(path)
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


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
        # Schema 3 (history retention) takes an end not recorded to be the start.
        assert done.ended_at_ms == 1000 and seq.ended_at_ms is None
        assert [r.run_id for r in await store.runs_with_status("Running")] == ["grp", "nap", "seq"]
        assert await store.get_memos("seq") == [StepMemo("h0", b'{"data":1}')]
        assert await store.cron_ticks() == {}
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"runs_by_event", "runs_by_status_start", "runs_by_start", "runs_by_function_start"} <= indexes
        assert {"runs_by_end", "running_runs_by_start", "events_by_age"} <= indexes
        assert "runs_by_status" not in indexes
    # Opening again is a no-op.
    store = await SqliteStore.open(path)
    await store.close()


async def test_a_schema_3_database_gets_the_retention_indexes_and_run_ends(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    store = await SqliteStore.open(path)
    await store.close()
    # Back to the layout of schema 3: no retention indexes, and a run that ended with no end recorded.
    with sqlite3.connect(path) as conn:
        for index in ("runs_by_end", "running_runs_by_start", "events_by_age"):
            conn.execute(f"DROP INDEX {index}")
        conn.execute("UPDATE schema_version SET version = 3")
        conn.execute("INSERT INTO events VALUES ('e1', 'app/x', 1, 2, '{}')")
        for run_id, status in (("done", "Failed"), ("live", "Running")):
            conn.execute(
                "INSERT INTO runs (run_id, function_id, app_name, event_id, status, started_at_ms, max_attempts,"
                " requests, waiting, disable_immediate_execution, request_version)"
                " VALUES (?, 'app-fn', 'app', 'e1', ?, 1000, 5, '[]', '[]', 0, 0)",
                (run_id, status),
            )
    conn.close()
    store = await SqliteStore.open(path)
    try:
        done, live = await store.get_run("done"), await store.get_run("live")
        assert done is not None and done.ended_at_ms == 1000
        assert live is not None and live.ended_at_ms is None
        assert (await store.prune_history(2000, 10)).runs == 1
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"runs_by_end", "running_runs_by_start", "events_by_age"} <= indexes
    conn.close()
