"""The default store: one SQLite file.

The database runs in WAL mode with `synchronous=NORMAL`: a commit is durable
once it is in the WAL, which survives the process being killed (SIGKILL,
OOM), though not a power cut in the instant before the OS flushes it. That
trade is what lets thousands of steps per second through without an fsync
per commit. All statements run on the single writer thread of
`SqliteWriter`, which group-commits concurrent callers.

The schema is created on open and is idempotent; `schema_version` records the
layout so a later release can migrate it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Final

import msgspec

from connect.store.base import (
    AppRecord,
    EventRecord,
    LeaseRecord,
    NewEvent,
    RunRecord,
    StepMemo,
)
from connect.store.writer import SqliteWriter
from protocol.payloads import FunctionConfig

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS replies (
        request_id TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        stored_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS replies_by_age ON replies (stored_at_ms)",
    """CREATE TABLE IF NOT EXISTS leases (
        request_id TEXT PRIMARY KEY,
        lease_id TEXT NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        instance_id TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS apps (
        app_name TEXT PRIMARY KEY,
        app_version TEXT,
        functions BLOB NOT NULL,
        updated_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS events (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        ts INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL,
        body BLOB NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        function_id TEXT NOT NULL,
        app_name TEXT NOT NULL,
        event_id TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER,
        max_attempts INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        step_id TEXT NOT NULL,
        pending_request_id TEXT NOT NULL,
        disable_immediate_execution INTEGER NOT NULL,
        request_version INTEGER NOT NULL,
        planned BLOB NOT NULL,
        wake_at_ms INTEGER NOT NULL,
        sleep_step TEXT NOT NULL,
        output BLOB
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS runs_by_event ON runs (event_id)",
    "CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status)",
    # A rowid table on purpose: rowid order is the order memos were stored in.
    """CREATE TABLE IF NOT EXISTS steps (
        run_id TEXT NOT NULL,
        step_hash TEXT NOT NULL,
        result BLOB NOT NULL,
        UNIQUE (run_id, step_hash)
    )""",
)

_RUN_COLUMNS: Final = (
    "run_id, function_id, app_name, event_id, status, started_at_ms, ended_at_ms, max_attempts, attempt,"
    " step_id, pending_request_id, disable_immediate_execution, request_version, planned, wake_at_ms,"
    " sleep_step, output"
)
_INSERT_RUN: Final = f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 17)})"  # noqa: S608 - constant
_SELECT_RUNS: Final = f"SELECT {_RUN_COLUMNS} FROM runs"  # noqa: S608 - constant
# The immutable columns (ids, function, event, start) are left out so their
# indexes are not touched on every step.
_UPDATE_RUN: Final = (
    "UPDATE runs SET status = ?, ended_at_ms = ?, max_attempts = ?, attempt = ?, step_id = ?,"
    " pending_request_id = ?, disable_immediate_execution = ?, request_version = ?, planned = ?,"
    " wake_at_ms = ?, sleep_step = ?, output = ? WHERE run_id = ?"
)

_RunRow = tuple[str, str, str, str, str, int, int | None, int, int, str, str, int, int, bytes, int, str, bytes | None]

_encode = msgspec.json.Encoder().encode
_decode_planned = msgspec.json.Decoder(list[str]).decode
_decode_functions = msgspec.json.Decoder(list[FunctionConfig]).decode


def _now_ms() -> int:
    return int(time.time() * 1000)


def _run_row(run: RunRecord) -> _RunRow:
    return (
        run.run_id,
        run.function_id,
        run.app_name,
        run.event_id,
        run.status,
        run.started_at_ms,
        run.ended_at_ms,
        run.max_attempts,
        run.attempt,
        run.step_id,
        run.pending_request_id,
        int(run.disable_immediate_execution),
        run.request_version,
        _encode(run.planned),
        run.wake_at_ms,
        run.sleep_step,
        run.output,
    )


def _run_from_row(row: _RunRow) -> RunRecord:
    return RunRecord(
        run_id=row[0],
        function_id=row[1],
        app_name=row[2],
        event_id=row[3],
        status=row[4],
        started_at_ms=row[5],
        ended_at_ms=row[6],
        max_attempts=row[7],
        attempt=row[8],
        step_id=row[9],
        pending_request_id=row[10],
        disable_immediate_execution=bool(row[11]),
        request_version=row[12],
        planned=_decode_planned(row[13]),
        wake_at_ms=row[14],
        sleep_step=row[15],
        output=row[16],
    )


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA:
        conn.execute(statement)
    rows = conn.execute("SELECT version FROM schema_version").fetchall()
    if not rows:
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    elif rows[0][0] > SCHEMA_VERSION:
        conn.execute("ROLLBACK")
        raise RuntimeError(
            f"the database was written by a newer release (schema {rows[0][0]}, this one knows "
            f"{SCHEMA_VERSION}); upgrade, or point the store at another file"
        )
    conn.execute("COMMIT")


class SqliteStore:
    """`Store` on one SQLite file. Open with `await SqliteStore.open(path)`."""

    def __init__(self, writer: SqliteWriter) -> None:
        self._writer = writer

    @classmethod
    async def open(cls, path: str | Path, *, max_batch: int = 1024) -> SqliteStore:
        """Open (creating if needed) the database at `path`.

        `max_batch` caps how many operations share one commit; 1 turns group
        commit off (one commit per operation), which only benchmarks want.
        """
        writer = SqliteWriter(path, _setup, max_batch=max_batch)
        await writer.start()
        return cls(writer)

    @property
    def commits(self) -> int:
        """Transactions committed since open."""
        return self._writer.commits

    async def close(self) -> None:
        await self._writer.close()

    # --- gateway: replies and leases --------------------------------------------

    async def put_reply(self, request_id: str, data: bytes) -> bool:
        stored_at = _now_ms()

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO replies (request_id, data, stored_at_ms) VALUES (?, ?, ?)",
                (request_id, data, stored_at),
            )
            return cur.rowcount == 1

        return await self._writer.submit(op)

    async def get_reply(self, request_id: str) -> bytes | None:
        def op(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT data FROM replies WHERE request_id = ?", (request_id,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._writer.submit(op)

    async def prune_replies(self, stored_before_ms: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM replies WHERE stored_at_ms < ?", (stored_before_ms,)).rowcount

        return await self._writer.submit(op)

    async def put_lease(self, request_id: str, lease_id: str, expires_at_ms: int, instance_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO leases (request_id, lease_id, expires_at_ms, instance_id) VALUES (?, ?, ?, ?)",
                (request_id, lease_id, expires_at_ms, instance_id),
            )

        await self._writer.submit(op)

    async def get_lease(self, request_id: str) -> LeaseRecord | None:
        def op(conn: sqlite3.Connection) -> LeaseRecord | None:
            row = conn.execute(
                "SELECT lease_id, expires_at_ms, instance_id FROM leases WHERE request_id = ?",
                (request_id,),
            ).fetchone()
            if row is None:
                return None
            return LeaseRecord(request_id, row[0], row[1], row[2])

        return await self._writer.submit(op)

    async def delete_lease(self, request_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM leases WHERE request_id = ?", (request_id,))

        await self._writer.submit(op)

    # --- executor: apps ----------------------------------------------------------

    async def put_app(self, app: AppRecord) -> None:
        functions = _encode(app.functions)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO apps (app_name, app_version, functions, updated_at_ms) VALUES (?, ?, ?, ?)",
                (app.app_name, app.app_version, functions, app.updated_at_ms),
            )

        await self._writer.submit(op)

    async def list_apps(self) -> list[AppRecord]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, str | None, bytes, int]]:
            return conn.execute(
                "SELECT app_name, app_version, functions, updated_at_ms FROM apps ORDER BY app_name"
            ).fetchall()

        rows = await self._writer.submit(op)
        return [
            AppRecord(app_name=name, functions=_decode_functions(fns), app_version=version, updated_at_ms=at)
            for name, version, fns, at in rows
        ]

    # --- executor: events and runs ------------------------------------------------

    async def record_events(self, events: list[NewEvent]) -> list[bool]:
        rows = [
            (
                (e.event.id, e.event.name, e.event.ts, e.event.received_at_ms, e.event.body),
                [_run_row(r) for r in e.runs],
            )
            for e in events
        ]

        def op(conn: sqlite3.Connection) -> list[bool]:
            stored: list[bool] = []
            for event_row, run_rows in rows:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO events (id, name, ts, received_at_ms, body) VALUES (?, ?, ?, ?, ?)",
                    event_row,
                )
                is_new = cur.rowcount == 1
                if is_new and run_rows:
                    conn.executemany(_INSERT_RUN, run_rows)
                stored.append(is_new)
            return stored

        return await self._writer.submit(op)

    async def get_event(self, event_id: str) -> EventRecord | None:
        def op(conn: sqlite3.Connection) -> tuple[str, str, int, int, bytes] | None:
            row: tuple[str, str, int, int, bytes] | None = conn.execute(
                "SELECT id, name, ts, received_at_ms, body FROM events WHERE id = ?", (event_id,)
            ).fetchone()
            return row

        row = await self._writer.submit(op)
        if row is None:
            return None
        return EventRecord(id=row[0], name=row[1], ts=row[2], received_at_ms=row[3], body=bytes(row[4]))

    async def get_run(self, run_id: str) -> RunRecord | None:
        def op(conn: sqlite3.Connection) -> _RunRow | None:
            row: _RunRow | None = conn.execute(f"{_SELECT_RUNS} WHERE run_id = ?", (run_id,)).fetchone()
            return row

        row = await self._writer.submit(op)
        return None if row is None else _run_from_row(row)

    async def runs_for_event(self, event_id: str) -> list[RunRecord]:
        def op(conn: sqlite3.Connection) -> list[_RunRow]:
            return conn.execute(
                f"{_SELECT_RUNS} WHERE event_id = ? ORDER BY started_at_ms, run_id", (event_id,)
            ).fetchall()

        return [_run_from_row(r) for r in await self._writer.submit(op)]

    async def runs_with_status(self, status: str) -> list[RunRecord]:
        def op(conn: sqlite3.Connection) -> list[_RunRow]:
            return conn.execute(f"{_SELECT_RUNS} WHERE status = ? ORDER BY run_id", (status,)).fetchall()

        return [_run_from_row(r) for r in await self._writer.submit(op)]

    async def get_memos(self, run_id: str) -> list[StepMemo]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, bytes]]:
            return conn.execute(
                "SELECT step_hash, result FROM steps WHERE run_id = ? ORDER BY rowid", (run_id,)
            ).fetchall()

        return [StepMemo(h, bytes(r)) for h, r in await self._writer.submit(op)]

    async def save_run(
        self,
        run: RunRecord,
        *,
        memos: list[StepMemo] | None = None,
        consumed_request_id: str | None = None,
    ) -> None:
        row = _run_row(run)
        update = (row[4], *row[6:], run.run_id)  # every column but the immutable ones
        memo_rows = [(run.run_id, m.step_hash, m.result) for m in memos or ()]

        def op(conn: sqlite3.Connection) -> None:
            if memo_rows:
                conn.executemany("INSERT OR IGNORE INTO steps (run_id, step_hash, result) VALUES (?, ?, ?)", memo_rows)
            conn.execute(_UPDATE_RUN, update)
            if consumed_request_id:
                conn.execute("DELETE FROM replies WHERE request_id = ?", (consumed_request_id,))

        await self._writer.submit(op)
