"""The default store: one SQLite file.

The database runs in WAL mode with `synchronous=NORMAL`: a commit is durable
once it is in the WAL, which survives the process being killed (SIGKILL,
OOM), though not a power cut in the instant before the OS flushes it. That
trade is what lets thousands of steps per second through without an fsync
per commit. All statements run through `SqliteWriter`, on the event loop
that opened the store, which group-commits concurrent callers; its own
thread moves the WAL into the database file.

The schema is created on open and is idempotent; `schema_version` records the
layout. Opening a file written by an older release migrates it in place
(in one transaction, so a failed migration leaves the file as it was);
one written by a newer release is refused.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

import msgspec

from connect.store import run_listing, sqlite_slots
from connect.store.base import (
    ANSWERED,
    APPS_CHANGED,
    EVENTS_RECORDED,
    HELD_STARTS_CHANGED,
    LAPSED,
    NEW_RUN_FENCE,
    PROCESSES_CHANGED,
    REGISTRY_KEEP_MS,
    REQUEST_ANSWERED,
    REQUEST_QUEUED,
    REQUEST_SETTLED,
    RETURNED,
    RUN_CANCEL_REQUESTED,
    RUNNING,
    RUNS_RELEASED,
    SLOTS_GRANTED,
    THROTTLE_TURN_GRANTED,
    WAIT_SLEEP,
    AppRecord,
    Claim,
    ConnectionRecord,
    EventHold,
    EventRecord,
    EventsCursor,
    HeldStart,
    Hold,
    LeaseRecord,
    LoadedRun,
    NewEvent,
    PendingRequest,
    ProcessRecord,
    Pruned,
    QueuedRequest,
    RequestQueueStats,
    RunFilter,
    RunOwnershipLost,
    RunRecord,
    SlotChange,
    SlotClaim,
    StepInfo,
    StepMemo,
    TakenRequest,
    Waiting,
    answer_entries,
    chunk_ids,
    starting_slots,
)
from connect.store.held_starts import HeldNotes, event_ids, hold_event, hold_of, run_events, started_run
from connect.store.start_gates import (
    RATE_LIMIT,
    THROTTLE,
    Decision,
    SkippedStart,
    StartGate,
    ThrottleWait,
    Turn,
    apply_to_run,
    decide,
    decode_gate,
    report_skip,
    take_turn,
)
from connect.store.start_gates import apply as apply_decision
from connect.store.writer import SqliteWriter
from protocol.ids import new_ulid
from protocol.payloads import Event, FunctionConfig

SCHEMA_VERSION: Final = 12

_TABLES: Final = (
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
    # A rowid table on purpose: rowid order is the order memos were stored in.
    """CREATE TABLE IF NOT EXISTS steps (
        run_id TEXT NOT NULL,
        step_hash TEXT NOT NULL,
        result BLOB NOT NULL,
        info BLOB,
        UNIQUE (run_id, step_hash)
    )""",
    """CREATE TABLE IF NOT EXISTS cron_ticks (
        schedule TEXT PRIMARY KEY,
        tick_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # Step requests queued for any gateway (schema 5), while executor and gateways
    # are separate processes; `holder` is the gateway forwarding one, until `held_until_ms`.
    """CREATE TABLE IF NOT EXISTS queued_requests (
        request_id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        app_name TEXT NOT NULL,
        function_slug TEXT NOT NULL,
        step_id TEXT NOT NULL,
        payload BLOB NOT NULL,
        queued_at_ms INTEGER NOT NULL,
        holder TEXT,
        held_until_ms INTEGER NOT NULL DEFAULT 0,
        lapsed INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS queued_requests_by_function ON queued_requests (function_slug, queued_at_ms)",
    # Executors that own runs, and until when their last heartbeat keeps them alive.
    """CREATE TABLE IF NOT EXISTS owners (
        owner TEXT PRIMARY KEY,
        expires_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # The process registry (schema 6): processes of a split deployment and the worker
    # connections each gateway holds, each entry live until `expires_at_ms`.
    """CREATE TABLE IF NOT EXISTS processes (
        process_id TEXT NOT NULL,
        role TEXT NOT NULL,
        address TEXT NOT NULL,
        state TEXT NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        started_at_ms INTEGER NOT NULL,
        PRIMARY KEY (process_id, role)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS processes_by_expiry ON processes (expires_at_ms)",
    """CREATE TABLE IF NOT EXISTS connections (
        connection_id TEXT NOT NULL,
        gateway_id TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        apps BLOB NOT NULL,
        functions BLOB NOT NULL,
        capacity INTEGER,
        in_flight INTEGER NOT NULL,
        state TEXT NOT NULL,
        last_heartbeat_ms INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        PRIMARY KEY (gateway_id, connection_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS connections_by_expiry ON connections (expires_at_ms)",
    # An instance's leases, counted by `put_lease_within`.
    "CREATE INDEX IF NOT EXISTS leases_by_instance ON leases (instance_id, expires_at_ms)",
    # Flow control at run start (schema 7, see `start_gates`): the theoretical arrival
    # time of each throttle and rate-limit key, the run holding each singleton key,
    # and the runs gates refused.
    """CREATE TABLE IF NOT EXISTS start_limits (
        function_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        tat_ms INTEGER NOT NULL,
        PRIMARY KEY (function_id, kind, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS start_limits_by_tat ON start_limits (tat_ms)",
    """CREATE TABLE IF NOT EXISTS singletons (
        function_id TEXT NOT NULL,
        key TEXT NOT NULL,
        run_id TEXT NOT NULL,
        PRIMARY KEY (function_id, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS skipped_starts (
        run_id TEXT PRIMARY KEY,
        function_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS skipped_starts_by_event ON skipped_starts (event_id)",
    "CREATE INDEX IF NOT EXISTS skipped_starts_by_age ON skipped_starts (at_ms)",
    # Debounces and batches waiting to start their run (schema 8), one per
    # (function, key), the events each holds, and the events of the runs
    # batches started (see `connect.store.held_starts`).
    """CREATE TABLE IF NOT EXISTS held_starts (
        function_id TEXT NOT NULL,
        key TEXT NOT NULL,
        kind TEXT NOT NULL,
        app_name TEXT NOT NULL,
        max_attempts INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        last_ts INTEGER NOT NULL,
        opened_ms INTEGER NOT NULL,
        due_ms INTEGER NOT NULL,
        size INTEGER NOT NULL,
        size_bytes INTEGER NOT NULL,
        gate BLOB,
        PRIMARY KEY (function_id, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS held_starts_by_due ON held_starts (due_ms)",
    """CREATE TABLE IF NOT EXISTS held_events (
        function_id TEXT NOT NULL,
        key TEXT NOT NULL,
        position INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (function_id, key, position)
    ) WITHOUT ROWID""",
    # What became of each event a debounce or batch held (schema 11): the run
    # its held start fired, once it did (see `connect.store.held_starts`).
    """CREATE TABLE IF NOT EXISTS event_holds (
        event_id TEXT NOT NULL,
        function_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        run_id TEXT,
        PRIMARY KEY (event_id, function_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS event_holds_by_age ON event_holds (at_ms)",
    """CREATE TABLE IF NOT EXISTS run_events (
        run_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (run_id, position)
    ) WITHOUT ROWID""",
    # Concurrency slots held and waited for (schema 9).
    *sqlite_slots.TABLES,
    # Runs a throttle holds back, of functions with a priority (schema 11, see
    # `Store.take_throttle_turn`): each with its turn and its place in its key's line.
    """CREATE TABLE IF NOT EXISTS throttle_waits (
        run_id TEXT PRIMARY KEY,
        function_id TEXT NOT NULL,
        key TEXT NOT NULL,
        ord INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        turn_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS throttle_waits_in_line ON throttle_waits (function_id, key, ord, seq, run_id)",
)

_RUNS_TABLE: Final = """CREATE TABLE {name} (
    run_id TEXT PRIMARY KEY,
    function_id TEXT NOT NULL,
    app_name TEXT NOT NULL,
    event_id TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER,
    max_attempts INTEGER NOT NULL,
    requests BLOB NOT NULL,
    waiting BLOB NOT NULL,
    disable_immediate_execution INTEGER NOT NULL,
    request_version INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    output BLOB,
    owner TEXT,
    fence INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID"""

_RUNS_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS runs_by_event ON runs (event_id)",
    # Run listings newest first (schema 10), filtered by status, by function or
    # by neither: each is a walk down one index. The status index replaces the
    # one on status alone (same writes: at a run's insert and at its end).
    "DROP INDEX IF EXISTS runs_by_status",
    "CREATE INDEX IF NOT EXISTS runs_by_status_start ON runs (status, started_at_ms, run_id)",
    "CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at_ms, run_id)",
    "CREATE INDEX IF NOT EXISTS runs_by_function_start ON runs (function_id, started_at_ms, run_id)",
)

# History retention (schema 3): finding ended runs by age and the oldest
# Running run stays an index lookup however large the history. Both runs
# indexes are partial, so a Running run's step (which writes neither status
# nor end) never touches them.
_RETENTION_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS runs_by_end ON runs (ended_at_ms) WHERE ended_at_ms IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS running_runs_by_start ON runs (started_at_ms) WHERE status = 'Running'",
    "CREATE INDEX IF NOT EXISTS events_by_age ON events (received_at_ms, id)",
    # Events of one name newest first (schema 10).
    "CREATE INDEX IF NOT EXISTS events_by_name ON events (name, received_at_ms, id)",
)

_RUN_COLUMNS: Final = (
    "run_id, function_id, app_name, event_id, status, started_at_ms, ended_at_ms, max_attempts, requests,"
    " waiting, disable_immediate_execution, request_version, cancel_requested, output"
)
_INSERT_RUN: Final = f"INSERT INTO runs ({_RUN_COLUMNS}, owner, fence) VALUES ({', '.join('?' * 16)})"  # noqa: S608 - constant
_SELECT_RUNS: Final = f"SELECT {_RUN_COLUMNS} FROM runs"  # noqa: S608 - constant
_SELECT_EVENTS: Final = "SELECT id, name, ts, received_at_ms, body FROM events"
_SELECT_SKIPPED: Final = "SELECT run_id, function_id, event_id, reason, at_ms FROM skipped_starts"
# The immutable columns (ids, function, event, start) are left out so their
# indexes are not touched on every step, and so is `cancel_requested`, which
# only `request_cancel` writes.
_UPDATE_RUN: Final = (
    "UPDATE runs SET status = ?, ended_at_ms = ?, max_attempts = ?, requests = ?, waiting = ?,"
    " disable_immediate_execution = ?, request_version = ?, output = ? WHERE run_id = ? AND fence = ?"
)
# A run still Running has no end and no output yet, and its status does not
# change: leaving those three out spares the status index on every step
# (7.2 -> 4.9 µs per statement measured against 100,000 runs).
_UPDATE_RUNNING: Final = (
    "UPDATE runs SET max_attempts = ?, requests = ?, waiting = ?,"
    " disable_immediate_execution = ?, request_version = ? WHERE run_id = ? AND fence = ?"
)
_INSERT_MEMO: Final = "INSERT OR IGNORE INTO steps (run_id, step_hash, result, info) VALUES (?, ?, ?, ?)"
_INSERT_EVENT: Final = "INSERT OR IGNORE INTO events (id, name, ts, received_at_ms, body) VALUES (?, ?, ?, ?, ?)"
_FLAG_CANCEL: Final = "UPDATE runs SET cancel_requested = 1 WHERE run_id = ? AND status = 'Running'"

_RunRow = tuple[str, str, str, str, str, int, int | None, int, bytes, bytes, int, int, int, bytes | None]
_EventRow = tuple[str, str, int, int, bytes]
_NewRunRow = tuple[
    str, str, str, str, str, int, int | None, int, bytes, bytes, int, int, int, bytes | None, str | None, int
]
_EventRows = tuple[
    _EventRow,
    list[_NewRunRow],
    list[tuple[str, str, bytes, bytes | None]],
    list[tuple[str]],
    NewEvent,
    dict[str, StartGate],
    list[Hold],
]

_SELECT_TAT: Final = "SELECT tat_ms FROM start_limits WHERE function_id = ? AND kind = ? AND key = ?"
_SET_TAT: Final = (
    "INSERT INTO start_limits (function_id, kind, key, tat_ms) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (function_id, kind, key) DO UPDATE SET tat_ms = excluded.tat_ms"
)
_SINGLETON_RUNNING: Final = (
    "SELECT s.run_id FROM singletons s JOIN runs r ON r.run_id = s.run_id"
    " WHERE s.function_id = ? AND s.key = ? AND r.status = 'Running'"
)
_HOLD_SINGLETON: Final = (
    "INSERT INTO singletons (function_id, key, run_id) VALUES (?, ?, ?)"
    " ON CONFLICT (function_id, key) DO UPDATE SET run_id = excluded.run_id"
)
_INSERT_SKIP: Final = (
    "INSERT OR IGNORE INTO skipped_starts (run_id, function_id, event_id, reason, at_ms) VALUES (?, ?, ?, ?, ?)"
)

_encode = msgspec.json.Encoder().encode
_decode_requests = msgspec.json.Decoder(list[PendingRequest]).decode
_decode_waiting = msgspec.json.Decoder(list[Waiting]).decode
_decode_functions = msgspec.json.Decoder(list[FunctionConfig]).decode
_decode_strings = msgspec.json.Decoder(list[str]).decode
_EMPTY_LIST: Final = b"[]"


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
        _encode(run.requests) if run.requests else _EMPTY_LIST,
        _encode(run.waiting) if run.waiting else _EMPTY_LIST,
        int(run.disable_immediate_execution),
        run.request_version,
        int(run.cancel_requested),
        run.output,
    )


_encode_info = msgspec.json.Encoder().encode
_decode_info = msgspec.json.Decoder(StepInfo).decode


def _info(memo: StepMemo) -> bytes | None:
    return None if memo.info is None else _encode_info(memo.info)


def _read_info(raw: bytes | None) -> StepInfo | None:
    return None if raw is None else _decode_info(raw)


def _qmark(_n: int) -> str:
    return "?"


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
        requests=_decode_requests(row[8]) if row[8] != _EMPTY_LIST else [],
        waiting=_decode_waiting(row[9]) if row[9] != _EMPTY_LIST else [],
        disable_immediate_execution=bool(row[10]),
        request_version=row[11],
        cancel_requested=bool(row[12]),
        output=row[13],
    )


def _event_rows(event: NewEvent) -> _EventRows:
    e = event.event
    owner, fence = event.owner, NEW_RUN_FENCE if event.owner is not None else 0
    gates = {g.run_id: g for g in event.gates}
    return (
        (e.id, e.name, e.ts, e.received_at_ms, e.body),
        [(*_run_row(r), owner, fence) for r in event.runs if r.run_id not in gates],
        [(m.run_id, m.memo.step_hash, m.memo.result, _info(m.memo)) for m in event.memos],
        [(run_id,) for run_id in event.cancels],
        event,
        gates,
        event.holds,
    )


def _insert_events(
    conn: sqlite3.Connection,
    rows: list[_EventRows],
    cancelled: list[str] | None = None,
    notes: HeldNotes | None = None,
    granted: list[str] | None = None,
) -> list[bool]:
    """Store the events and what they cause; the runs singletons cancelled are
    added to `cancelled` (for the caller to announce once committed), `notes`
    collects what held events did, and `granted` the waiters granted slots
    taken back by the events' acquires (to be announced)."""
    stored: list[bool] = []
    for event_row, run_rows, memo_rows, cancel_rows, new, gates, holds in rows:
        is_new = conn.execute(_INSERT_EVENT, event_row).rowcount == 1
        if is_new:
            if run_rows:
                conn.executemany(_INSERT_RUN, run_rows)
            if gates:
                _pass_gates(conn, new, gates, cancelled)
            if memo_rows:
                conn.executemany(_INSERT_MEMO, memo_rows)
            if cancel_rows:
                conn.executemany(_FLAG_CANCEL, cancel_rows)
            if holds:
                _hold(conn, event_row, new, HeldNotes() if notes is None else notes, cancelled)
            if new.slots:
                new.held.clear()  # applied again after a failed batch: this attempt's
                for run_id, item in starting_slots(new):
                    held, others = sqlite_slots.acquire(conn, item.request_id, run_id, item.claims, item.order)
                    if held:
                        new.held.append(item.request_id)
                    if granted is not None:
                        granted.extend(others)
        stored.append(is_new)
    return stored


def _pass_gates(
    conn: sqlite3.Connection, new: NewEvent, gates: dict[str, StartGate], cancelled: list[str] | None
) -> None:
    """Decide each gated run of `new` and store it, or its skip (see `NewEvent.gates`).
    The writer's transaction makes each read-decide-write atomic."""
    fence = NEW_RUN_FENCE if new.owner is not None else 0
    for run in new.runs:
        gate = gates.get(run.run_id)
        if gate is None:
            continue
        decision = _decide(conn, gate, run.started_at_ms)
        skip = apply_decision(new, run, decision)
        told = new.tell_invoker(gate, skip)
        if skip is not None:
            _insert_skip(conn, skip)
            if told is not None:  # the event's other memos were listed before its gates
                conn.execute(_INSERT_MEMO, (told.run_id, told.memo.step_hash, told.memo.result, _info(told.memo)))
            continue
        conn.execute(_INSERT_RUN, (*_run_row(run), new.owner, fence))
        _keep_decision(conn, gate, run.run_id, decision, cancelled)


def _decide(conn: sqlite3.Connection, gate: StartGate, now_ms: int) -> Decision:
    """`gate`'s decision at `now_ms`, on the state it reads."""
    fn = gate.function_id
    running = rate_tat = throttle_tat = None
    if gate.singleton is not None:
        row = conn.execute(_SINGLETON_RUNNING, (fn, gate.singleton.key)).fetchone()
        running = None if row is None else row[0]
    if gate.rate_limit is not None:
        row = conn.execute(_SELECT_TAT, (fn, RATE_LIMIT, gate.rate_limit.key)).fetchone()
        rate_tat = None if row is None else row[0]
    if gate.throttle is not None:
        row = conn.execute(_SELECT_TAT, (fn, THROTTLE, gate.throttle.key)).fetchone()
        throttle_tat = None if row is None else row[0]
    return decide(gate, now_ms, running=running, rate_tat=rate_tat, throttle_tat=throttle_tat)


_JOIN_LINE: Final = (
    "INSERT OR REPLACE INTO throttle_waits (run_id, function_id, key, ord, seq, turn_ms) VALUES (?, ?, ?, ?, ?, ?)"
)


def _take_turn(conn: sqlite3.Connection, run_id: str, now_ms: int) -> Turn | None:
    """`Store.take_throttle_turn`, in the writer's transaction."""
    row = conn.execute(
        "SELECT function_id, key, ord, seq, turn_ms FROM throttle_waits WHERE run_id = ?", (run_id,)
    ).fetchone()
    if row is None:
        return None
    fn, key, order, seq, turn_ms = row
    me = ThrottleWait(run_id, order, seq, turn_ms)
    if turn_ms <= now_ms:
        # Runs of the line that ended (cancelled while they waited) leave it.
        conn.execute(
            "DELETE FROM throttle_waits WHERE function_id = ? AND key = ? AND NOT EXISTS"
            " (SELECT 1 FROM runs r WHERE r.run_id = throttle_waits.run_id AND r.status = 'Running')",
            (fn, key),
        )
    line = (fn, key)
    (due,) = conn.execute(
        "SELECT count(*) FROM throttle_waits WHERE function_id = ? AND key = ? AND turn_ms <= ?", (*line, now_ms)
    ).fetchone()
    ahead_of = "function_id = ? AND key = ? AND (ord, seq, run_id) < (?, ?, ?)"
    (ahead,) = conn.execute(
        f"SELECT count(*) FROM throttle_waits WHERE {ahead_of}",  # noqa: S608 - constant
        (*line, order, seq, run_id),
    ).fetchone()
    found = conn.execute(
        f"SELECT run_id, ord, seq, turn_ms FROM throttle_waits WHERE {ahead_of} AND turn_ms > ?"  # noqa: S608 - constant
        " ORDER BY ord, seq, run_id LIMIT 1",
        (*line, order, seq, run_id, now_ms),
    ).fetchone()
    turn = take_turn(me, now_ms, due=due, ahead=ahead, later=None if found is None else ThrottleWait(*found))
    if turn.wait_ms == 0:
        conn.execute("DELETE FROM throttle_waits WHERE run_id = ?", (run_id,))
    elif turn.granted is not None:
        conn.execute("UPDATE throttle_waits SET turn_ms = ? WHERE run_id = ?", (me.turn_ms, turn.granted))
        conn.execute("UPDATE throttle_waits SET turn_ms = ? WHERE run_id = ?", (turn.wait_ms, run_id))
    return turn


def _insert_skip(conn: sqlite3.Connection, skip: SkippedStart) -> None:
    conn.execute(_INSERT_SKIP, (skip.run_id, skip.function_id, skip.event_id, skip.reason, skip.at_ms))
    report_skip(skip)


def _keep_decision(
    conn: sqlite3.Connection, gate: StartGate, run_id: str, decision: Decision, cancelled: list[str] | None
) -> None:
    """Write back the state a decision that let run `run_id` start changed."""
    fn = gate.function_id
    if gate.rate_limit is not None and decision.rate_tat is not None:
        conn.execute(_SET_TAT, (fn, RATE_LIMIT, gate.rate_limit.key, decision.rate_tat))
    if gate.throttle is not None and decision.throttle_tat is not None:
        conn.execute(_SET_TAT, (fn, THROTTLE, gate.throttle.key, decision.throttle_tat))
        if gate.throttle.order is not None and decision.wake_at_ms:
            turn = decision.wake_at_ms  # also its place among runs of equal order: the order they came
            conn.execute(_JOIN_LINE, (run_id, fn, gate.throttle.key, gate.throttle.order, turn, turn))
    if gate.singleton is not None:
        conn.execute(_HOLD_SINGLETON, (fn, gate.singleton.key, run_id))
    if decision.cancel is not None and conn.execute(_FLAG_CANCEL, (decision.cancel,)).rowcount == 1:
        if cancelled is not None:
            cancelled.append(decision.cancel)


# --- debounces and batches -----------------------------------------------------------

_HELD_COLUMNS: Final = (
    "kind, function_id, key, app_name, max_attempts, event_id, last_ts, opened_ms, due_ms, size, size_bytes, gate"
)
_SELECT_HELD: Final = f"SELECT {_HELD_COLUMNS} FROM held_starts"  # noqa: S608 - constant
_PUT_HELD: Final = f"INSERT OR REPLACE INTO held_starts ({_HELD_COLUMNS}) VALUES ({', '.join('?' * 12)})"  # noqa: S608 - constant
_DELETE_HELD: Final = "DELETE FROM held_starts WHERE function_id = ? AND key = ?"
_HeldRow = tuple[str, str, str, str, int, str, int, int, int, int, int, bytes | None]
_decode_event = msgspec.json.Decoder(Event).decode


def _held_row(held: HeldStart) -> _HeldRow:
    return (
        held.kind,
        held.function_id,
        held.key,
        held.app_name,
        held.max_attempts,
        held.event_id,
        held.last_ts,
        held.opened_ms,
        held.due_ms,
        held.size,
        held.size_bytes,
        held.gate,
    )


#: An event held by a function (`event_holds`); a duplicate of a stored event is never held again.
_PUT_EVENT_HOLD: Final = (
    "INSERT OR IGNORE INTO event_holds (event_id, function_id, kind, key, at_ms) VALUES (?, ?, ?, ?, ?)"
)


def _hold(
    conn: sqlite3.Connection,
    event_row: _EventRow,
    new: NewEvent,
    notes: HeldNotes,
    cancelled: list[str] | None = None,
) -> None:
    """Apply one new event to the held start of each function it is held for
    (once it passed what it must to be held, `Hold.admit`: the refused are
    reported in `new.refused_holds`)."""
    event_id, _, ts, now_ms, body = event_row
    new.refused_holds.clear()  # applied again after a failed batch: this attempt's
    for hold in new.holds:
        if hold.admit is not None:
            decision = _decide(conn, hold.admit, now_ms)
            if decision.skip is not None:
                _insert_skip(conn, SkippedStart(hold.admit.run_id, hold.function_id, event_id, decision.skip, now_ms))
                new.refused_holds.append(hold.admit.run_id)
                continue
            _keep_decision(conn, hold.admit, hold.admit.run_id, decision, cancelled)
        where = (hold.function_id, hold.key)
        conn.execute(_PUT_EVENT_HOLD, (event_id, hold.function_id, hold.kind, hold.key, now_ms))
        row: _HeldRow | None = conn.execute(f"{_SELECT_HELD} WHERE function_id = ? AND key = ?", where).fetchone()
        stored = None if row is None else HeldStart(*row)
        change = hold_event(stored, hold, event_id, ts, len(body), now_ms)
        if change.fire_before is not None:
            _start_held_run(conn, change.fire_before, None, 0, now_ms, cancelled)
            notes.started = True
        if change.add:
            if change.replace:
                conn.execute("DELETE FROM held_events WHERE function_id = ? AND key = ?", where)
            conn.execute(
                "INSERT INTO held_events (function_id, key, position, body) VALUES (?, ?, ?, ?)",
                (*where, change.position, body),
            )
        if change.fire is not None:
            _start_held_run(conn, change.fire, None, 0, now_ms, cancelled)
            notes.started = True
        if change.keep is None:
            if stored is not None:
                conn.execute(_DELETE_HELD, where)
        elif change.changed:
            conn.execute(_PUT_HELD, _held_row(change.keep))
            notes.wrote(change.keep.due_ms)


def _start_held_run(
    conn: sqlite3.Connection,
    held: HeldStart,
    owner: str | None,
    fence: int,
    now_ms: int,
    cancelled: list[str] | None = None,
) -> str | None:
    """Create the run `held` fires, with its batch, and take its events out of
    the held ones (the caller deletes or replaces its state row); returns its
    id, or None when its gate refused it (recorded as a skip)."""
    where = (held.function_id, held.key)
    bodies = [
        bytes(b)
        for (b,) in conn.execute(
            "SELECT body FROM held_events WHERE function_id = ? AND key = ? ORDER BY position", where
        ).fetchall()
    ]
    conn.execute("DELETE FROM held_events WHERE function_id = ? AND key = ?", where)
    if bodies:
        # The trigger's row goes back in should history retention have pruned it while held.
        trigger = _decode_event(bodies[0])
        conn.execute(_INSERT_EVENT, (trigger.id, trigger.name, trigger.ts, now_ms, bodies[0]))
    run = started_run(held, new_ulid(), new_ulid(), now_ms)
    # The held events' rows name the run they went to (or its skip record).
    conn.executemany(
        "UPDATE event_holds SET run_id = ? WHERE event_id = ? AND function_id = ?",
        [(run.run_id, event_id, held.function_id) for event_id in event_ids(bodies)],
    )
    gate = None if held.gate is None else decode_gate(held.gate, run.run_id)
    decision = None
    if gate is not None:
        decision = _decide(conn, gate, now_ms)
        skip = apply_to_run(run, decision, [])
        if skip is not None:
            _insert_skip(conn, skip)
            return None
    conn.execute(_INSERT_RUN, (*_run_row(run), owner, fence))
    if gate is not None and decision is not None:
        _keep_decision(conn, gate, run.run_id, decision, cancelled)
    batch = run_events(held, bodies)
    if batch:
        conn.executemany(
            "INSERT INTO run_events (run_id, position, body) VALUES (?, ?, ?)",
            [(run.run_id, i, b) for i, b in enumerate(batch)],
        )
    return run.run_id


# --- schema setup and migrations --------------------------------------------------


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _TABLES:
            conn.execute(statement)
        rows = conn.execute("SELECT version FROM schema_version").fetchall()
        has_runs = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone()
        version = rows[0][0] if rows else (1 if has_runs else SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database was written by a newer release (schema {version}, this one knows "
                f"{SCHEMA_VERSION}); upgrade, or point the store at another file"
            )
        if not has_runs:
            conn.execute(_RUNS_TABLE.format(name="runs"))
        elif version < 2:
            _migrate_1_to_2(conn)  # builds the current layout of the runs table
        elif version < 3:
            _migrate_2_to_3(conn)
        for statement in _RUNS_INDEXES:
            conn.execute(statement)
        if version < 10 and "info" not in {column[1] for column in conn.execute("PRAGMA table_info(steps)")}:
            # Schema 10: what the timeline shows of each step, stored with its result.
            conn.execute("ALTER TABLE steps ADD COLUMN info BLOB")
        if version < 12 and "gate" not in {column[1] for column in conn.execute("PRAGMA table_info(held_starts)")}:
            # Schema 11: the gate (throttle, singleton) the run a held start fires passes.
            conn.execute("ALTER TABLE held_starts ADD COLUMN gate BLOB")
        if has_runs and version < 4:
            _backfill_ended_at(conn)
        for statement in _RETENTION_INDEXES:
            conn.execute(statement)
        if not rows:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif version != SCHEMA_VERSION:
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Schema 1 kept one pending request per run (plus a list of planned step
    ids run one after another, and one sleeping step); schema 2 keeps a list
    of pending requests and a list of waiting steps. The runs table is
    rebuilt, the way SQLite recommends for column changes, and every run's
    state is carried over: a Running run resumes where it stood."""
    conn.execute(_RUNS_TABLE.format(name="runs_v2"))
    old = conn.execute(
        "SELECT run_id, function_id, app_name, event_id, status, started_at_ms, ended_at_ms, max_attempts,"
        " attempt, step_id, pending_request_id, disable_immediate_execution, request_version, planned,"
        " wake_at_ms, sleep_step, output FROM runs"
    )
    new_rows: list[_RunRow] = []
    for row in old:
        (run_id, fn, app, event_id, status, started, ended, max_attempts) = row[:8]
        attempt, step_id, pending, die, version, planned, wake_at, sleep_step, output = row[8:]
        requests: list[PendingRequest] = []
        waiting: list[Waiting] = []
        if status == RUNNING:
            if sleep_step:
                # The pending request was the discovery to send after the sleep.
                waiting.append(Waiting(kind=WAIT_SLEEP, step=sleep_step, due_ms=wake_at))
            elif pending:
                requests.append(PendingRequest(pending, step_id, attempt, wake_at))
            for step in msgspec.json.decode(planned, type=list[str]):
                if step != step_id:
                    requests.append(PendingRequest(new_ulid(), step))
        run = RunRecord(
            run_id=run_id,
            function_id=fn,
            app_name=app,
            event_id=event_id,
            started_at_ms=started,
            status=status,
            max_attempts=max_attempts,
            requests=requests,
            waiting=waiting,
            disable_immediate_execution=bool(die),
            request_version=version,
            output=output,
            ended_at_ms=ended,
        )
        new_rows.append(_run_row(run))
    conn.executemany(
        f"INSERT INTO runs_v2 ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 14)})",  # noqa: S608 - constant
        new_rows,
    )
    conn.execute("DROP TABLE runs")
    conn.execute("ALTER TABLE runs_v2 RENAME TO runs")


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    """Schema 3 gives each run an owner and a fencing token. Runs carried over
    are owned by nobody (token 0): the first executor to start claims them."""
    conn.execute("ALTER TABLE runs ADD COLUMN owner TEXT")
    conn.execute("ALTER TABLE runs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0")


def _backfill_ended_at(conn: sqlite3.Connection) -> None:
    """Schema 4 (history retention) finds ended runs by `ended_at_ms`; a run
    that ended without one recorded is taken to have ended when it started."""
    conn.execute("UPDATE runs SET ended_at_ms = started_at_ms WHERE status <> 'Running' AND ended_at_ms IS NULL")


#: Before every event: where a round's scan of old events starts.
_FIRST_EVENT: Final = (-(2**63), "")
_DELETE_FREED_EVENT: Final = (
    "DELETE FROM events WHERE id = ? AND received_at_ms < ?"
    " AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.event_id = events.id)"
)


#: An event's holds with the held start of each (function, key) now: one statement, one snapshot.
_SELECT_EVENT_HOLDS: Final = (
    "SELECT h.function_id, h.kind, h.key, h.at_ms, h.run_id, s.kind, s.event_id, s.due_ms FROM event_holds h"
    " LEFT JOIN held_starts s ON s.function_id = h.function_id AND s.key = h.key"
    " WHERE h.event_id = ? ORDER BY h.function_id"
)
_PRUNE_SINGLETONS: Final = (
    "DELETE FROM singletons WHERE (function_id, key) IN (SELECT s.function_id, s.key FROM singletons s"
    " LEFT JOIN runs r ON r.run_id = s.run_id WHERE r.run_id IS NULL OR r.status <> 'Running' LIMIT ?)"
)


def _prune_history(conn: sqlite3.Connection, before_ms: int, limit: int, events_after: EventsCursor | None) -> Pruned:
    runs: list[tuple[str, str]] = conn.execute(
        "SELECT run_id, event_id FROM runs WHERE ended_at_ms < ? AND status <> 'Running' ORDER BY ended_at_ms LIMIT ?",
        (before_ms, limit),
    ).fetchall()
    steps = events = 0
    if runs:
        run_ids = [(run_id,) for run_id, _ in runs]
        steps = conn.executemany("DELETE FROM steps WHERE run_id = ?", run_ids).rowcount
        conn.executemany("DELETE FROM run_events WHERE run_id = ?", run_ids)
        conn.executemany("DELETE FROM runs WHERE run_id = ?", run_ids)
        # Their events, unless a run the same event started remains.
        freed = sorted({event_id for _, event_id in runs})
        events = conn.executemany(_DELETE_FREED_EVENT, [(event_id, before_ms) for event_id in freed]).rowcount
    # The other old events (emitted, or that started nothing), in age order
    # from where the previous batch stopped: one that a live run still needs
    # is examined once a round, not once a batch.
    after_ms, after_id = events_after or _FIRST_EVENT
    scanned: list[tuple[int, str, int]] = conn.execute(
        "SELECT received_at_ms, id, EXISTS (SELECT 1 FROM runs WHERE runs.event_id = events.id) FROM events"
        " WHERE received_at_ms < ? AND (received_at_ms, id) > (?, ?) ORDER BY received_at_ms, id LIMIT ?",
        (before_ms, after_ms, after_id, limit),
    ).fetchall()
    unneeded = [(event_id,) for _, event_id, referenced in scanned if not referenced]
    if unneeded:
        events += conn.executemany("DELETE FROM events WHERE id = ?", unneeded).rowcount
    cursor = (scanned[-1][0], scanned[-1][1]) if len(scanned) == limit else None
    # A request is created after its run started: a reply stored before the
    # oldest Running run started can be no live run's.
    (oldest_running,) = conn.execute(
        "SELECT min(started_at_ms) FROM runs INDEXED BY running_runs_by_start WHERE status = 'Running'"
    ).fetchone()
    replies_before = before_ms if oldest_running is None else min(before_ms, oldest_running)
    replies = conn.execute(
        "DELETE FROM replies WHERE request_id IN"
        " (SELECT request_id FROM replies WHERE stored_at_ms < ? ORDER BY stored_at_ms LIMIT ?)",
        (replies_before, limit),
    ).rowcount
    leases = conn.execute(
        "DELETE FROM leases WHERE request_id IN (SELECT request_id FROM leases WHERE expires_at_ms < ? LIMIT ?)",
        (before_ms, limit),
    ).rowcount
    # Heartbeats of executors gone since before the cutoff (they own nothing any
    # more: their runs are claimable since their heartbeat lapsed).
    conn.execute(
        "DELETE FROM owners WHERE owner IN (SELECT owner FROM owners WHERE expires_at_ms < ? LIMIT ?)",
        (before_ms, limit),
    )
    # Flow-control history: skips, and GCRA state in the past (the same as none).
    conn.execute(
        "DELETE FROM skipped_starts WHERE run_id IN (SELECT run_id FROM skipped_starts WHERE at_ms < ? LIMIT ?)",
        (before_ms, limit),
    )
    conn.execute(
        "DELETE FROM event_holds WHERE (event_id, function_id) IN"
        " (SELECT event_id, function_id FROM event_holds WHERE at_ms < ? LIMIT ?)",
        (before_ms, limit),
    )
    conn.execute(
        "DELETE FROM start_limits WHERE (function_id, kind, key) IN"
        " (SELECT function_id, kind, key FROM start_limits WHERE tat_ms < ? LIMIT ?)",
        (before_ms, limit),
    )
    # Singleton keys whose run is no longer Running (or gone): the same as no holder.
    singletons = conn.execute(_PRUNE_SINGLETONS, (limit,)).rowcount
    # Runs of a throttle's line that ended while they waited (cancelled).
    conn.execute(
        "DELETE FROM throttle_waits WHERE run_id IN (SELECT w.run_id FROM throttle_waits w"
        " LEFT JOIN runs r ON r.run_id = w.run_id WHERE r.run_id IS NULL OR r.status <> 'Running' LIMIT ?)",
        (limit,),
    )
    return Pruned(
        runs=len(runs),
        steps=steps,
        events=events,
        replies=replies,
        leases=leases,
        events_cursor=cursor,
        singletons=singletons,
    )


class SqliteStore:
    """`Store` on one SQLite file. Open with `await SqliteStore.open(path)`."""

    def __init__(self, writer: SqliteWriter) -> None:
        self._writer = writer
        self._listeners: dict[str, list[Callable[[str], None]]] = {}

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

    def put_reply(self, request_id: str, data: bytes) -> Awaitable[bool]:
        stored_at = _now_ms()
        dequeued = False

        def op(conn: sqlite3.Connection) -> bool:
            nonlocal dequeued
            cur = conn.execute(
                "INSERT OR IGNORE INTO replies (request_id, data, stored_at_ms) VALUES (?, ?, ?)",
                (request_id, data, stored_at),
            )
            conn.execute("DELETE FROM leases WHERE request_id = ?", (request_id,))
            dequeued = conn.execute("DELETE FROM queued_requests WHERE request_id = ?", (request_id,)).rowcount == 1
            return cur.rowcount == 1

        def committed(future: asyncio.Future[bool]) -> None:
            if not dequeued or future.cancelled() or future.exception() is not None:
                return
            answers, _ = answer_entries([(request_id, data)] if future.result() else [])
            if answers:
                self._notify(REQUEST_ANSWERED, answers[0])
            else:
                self._notify(REQUEST_SETTLED, request_id)

        future = self._writer.submit_nowait(op)
        future.add_done_callback(committed)
        return future

    async def get_reply(self, request_id: str) -> bytes | None:
        def op(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT data FROM replies WHERE request_id = ?", (request_id,)).fetchone()
            return None if row is None else bytes(row[0])

        return await self._writer.submit(op)

    async def prune_replies(self, stored_before_ms: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM replies WHERE stored_at_ms < ?", (stored_before_ms,)).rowcount

        return await self._writer.submit(op)

    def put_lease(self, request_id: str, lease_id: str, expires_at_ms: int, instance_id: str) -> Awaitable[None]:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO leases (request_id, lease_id, expires_at_ms, instance_id) VALUES (?, ?, ?, ?)",
                (request_id, lease_id, expires_at_ms, instance_id),
            )

        return self._writer.submit_nowait(op)

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

    def delete_lease(self, request_id: str) -> Awaitable[None]:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM leases WHERE request_id = ?", (request_id,))

        return self._writer.submit_nowait(op)

    # --- executor: apps ----------------------------------------------------------

    async def put_app(self, app: AppRecord) -> None:
        functions = _encode(app.functions)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO apps (app_name, app_version, functions, updated_at_ms) VALUES (?, ?, ?, ?)",
                (app.app_name, app.app_version, functions, app.updated_at_ms),
            )

        await self._writer.submit(op)
        self._notify(APPS_CHANGED, app.app_name)

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
        rows = [_event_rows(e) for e in events]
        cancelled: list[str] = []
        notes = HeldNotes()

        granted: list[str] = []

        def op(conn: sqlite3.Connection) -> list[bool]:
            cancelled.clear()  # applied again after a failed batch: report that attempt's
            granted.clear()
            return _insert_events(conn, rows, cancelled, notes, granted)

        stored = await self._writer.submit(op)
        self._announce_grants(granted)
        self._notify_events([e.event.id for e, is_new in zip(events, stored, strict=True) if is_new])
        for run_id in cancelled:
            self._notify(RUN_CANCEL_REQUESTED, run_id)
        self._notify_held(notes)
        return stored

    async def event_holds(self, event_id: str) -> list[EventHold]:
        def op(conn: sqlite3.Connection) -> list[EventHold]:
            rows = conn.execute(_SELECT_EVENT_HOLDS, (event_id,)).fetchall()
            return [hold_of(event_id, row[:5], None if row[5] is None else row[5:]) for row in rows]

        return await self._writer.submit(op)

    async def skipped_starts(self, event_id: str) -> list[SkippedStart]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, str, str, str, int]]:
            return conn.execute(
                "SELECT run_id, function_id, event_id, reason, at_ms FROM skipped_starts WHERE event_id = ?"
                " ORDER BY at_ms, run_id",
                (event_id,),
            ).fetchall()

        return [SkippedStart(*row) for row in await self._writer.submit(op)]

    async def get_events(self, event_ids: Sequence[str]) -> list[EventRecord]:
        ids = list(dict.fromkeys(event_ids))

        def op(conn: sqlite3.Connection) -> list[_EventRow]:
            found: list[_EventRow] = []
            for event_id in ids:
                row: _EventRow | None = conn.execute(
                    "SELECT id, name, ts, received_at_ms, body FROM events WHERE id = ?", (event_id,)
                ).fetchone()
                if row is not None:
                    found.append(row)
            return found

        return [_event_from_row(r) for r in await self._writer.submit(op)]

    async def events_since(self, received_after_ms: int, limit: int) -> list[EventRecord]:
        def op(conn: sqlite3.Connection) -> list[_EventRow]:
            return conn.execute(
                "SELECT id, name, ts, received_at_ms, body FROM events WHERE received_at_ms > ?"
                " ORDER BY received_at_ms, id LIMIT ?",
                (received_after_ms, limit),
            ).fetchall()

        return [_event_from_row(r) for r in await self._writer.submit(op)]

    async def get_event(self, event_id: str) -> EventRecord | None:
        def op(conn: sqlite3.Connection) -> _EventRow | None:
            row: _EventRow | None = conn.execute(
                "SELECT id, name, ts, received_at_ms, body FROM events WHERE id = ?", (event_id,)
            ).fetchone()
            return row

        row = await self._writer.submit(op)
        return None if row is None else _event_from_row(row)

    async def list_events(self, name: str | None, older_than: tuple[int, str] | None, limit: int) -> list[EventRecord]:
        conditions: list[str] = []
        params: list[object] = []
        if name is not None:
            conditions.append("name = ?")
            params.append(name)
        if older_than is not None:
            conditions.append("(received_at_ms, id) < (?, ?)")
            params += older_than
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = f"{_SELECT_EVENTS}{where} ORDER BY received_at_ms DESC, id DESC LIMIT ?"
        params.append(max(0, limit))

        def op(conn: sqlite3.Connection) -> list[_EventRow]:
            return conn.execute(sql, params).fetchall()

        return [_event_from_row(r) for r in await self._writer.submit(op)]

    async def get_run(self, run_id: str) -> RunRecord | None:
        def op(conn: sqlite3.Connection) -> _RunRow | None:
            row: _RunRow | None = conn.execute(f"{_SELECT_RUNS} WHERE run_id = ?", (run_id,)).fetchone()
            return row

        row = await self._writer.submit(op)
        return None if row is None else _run_from_row(row)

    async def load_run(self, run_id: str) -> LoadedRun | None:
        def op(
            conn: sqlite3.Connection,
        ) -> tuple[_RunRow, _EventRow | None, list[tuple[str, bytes]], list[tuple[bytes]]] | None:
            row: _RunRow | None = conn.execute(f"{_SELECT_RUNS} WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            event: _EventRow | None = conn.execute(
                "SELECT id, name, ts, received_at_ms, body FROM events WHERE id = ?", (row[3],)
            ).fetchone()
            memos = conn.execute(
                "SELECT step_hash, result FROM steps WHERE run_id = ? ORDER BY rowid", (run_id,)
            ).fetchall()
            batch = conn.execute("SELECT body FROM run_events WHERE run_id = ? ORDER BY position", (run_id,)).fetchall()
            return row, event, memos, batch

        found = await self._writer.submit(op)
        if found is None:
            return None
        row, event, memos, batch = found
        return LoadedRun(
            run=_run_from_row(row),
            event=None if event is None else _event_from_row(event),
            memos=[StepMemo(h, bytes(r)) for h, r in memos],
            batch=[bytes(b) for (b,) in batch],
        )

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

    async def list_runs(self, query: RunFilter) -> list[RunRecord]:
        tail, params = run_listing.listing(query, start="started_at_ms", placeholder=_qmark)
        sql = _SELECT_RUNS + tail

        def op(conn: sqlite3.Connection) -> list[_RunRow]:
            return conn.execute(sql, params).fetchall()

        return [_run_from_row(r) for r in await self._writer.submit(op)]

    async def list_skipped(self, query: RunFilter) -> list[SkippedStart]:
        tail, params = run_listing.listing(query, start="at_ms", placeholder=_qmark, with_status=False)
        sql = _SELECT_SKIPPED + tail

        def op(conn: sqlite3.Connection) -> list[tuple[str, str, str, str, int]]:
            return conn.execute(sql, params).fetchall()

        return [SkippedStart(*row) for row in await self._writer.submit(op)]

    async def run_steps(self, run_id: str) -> list[StepMemo]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, bytes, bytes | None]]:
            return conn.execute(
                "SELECT step_hash, result, info FROM steps WHERE run_id = ? ORDER BY rowid", (run_id,)
            ).fetchall()

        return [StepMemo(h, bytes(r), _read_info(i)) for h, r, i in await self._writer.submit(op)]

    async def get_memos(self, run_id: str) -> list[StepMemo]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, bytes]]:
            return conn.execute(
                "SELECT step_hash, result FROM steps WHERE run_id = ? ORDER BY rowid", (run_id,)
            ).fetchall()

        return [StepMemo(h, bytes(r)) for h, r in await self._writer.submit(op)]

    async def put_memo(self, run_id: str, memo: StepMemo) -> bool:
        row = (run_id, memo.step_hash, memo.result, _info(memo))

        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(_INSERT_MEMO, row).rowcount == 1

        return await self._writer.submit(op)

    async def request_cancel(self, run_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(_FLAG_CANCEL, (run_id,)).rowcount == 1

        flagged = await self._writer.submit(op)
        if flagged:
            self._notify(RUN_CANCEL_REQUESTED, run_id)
        return flagged

    async def save_run(
        self,
        run: RunRecord,
        *,
        fence: int,
        memos: list[StepMemo] | None = None,
        consumed_request_id: str | None = None,
        events: list[NewEvent] | None = None,
        slots: SlotChange | None = None,
    ) -> list[bool]:
        row = _run_row(run)
        # max_attempts, requests, waiting, disable_immediate_execution, request_version
        progress = (row[7], row[8], row[9], row[10], row[11])
        statement, update = (
            (_UPDATE_RUNNING, (*progress, run.run_id, fence))
            if run.status == RUNNING
            else (_UPDATE_RUN, (row[4], row[6], *progress, row[13], run.run_id, fence))
        )
        memo_rows = [(run.run_id, m.step_hash, m.result, _info(m)) for m in memos or ()]
        event_rows = [_event_rows(e) for e in events or ()]
        notes = HeldNotes() if any(e.holds for e in events or ()) else None

        def op(conn: sqlite3.Connection) -> list[bool]:
            # The fenced update first: a refused save raises before anything else is
            # written, and the writer rolls back what its batch holds.
            if conn.execute(statement, update).rowcount != 1:
                raise RunOwnershipLost(run.run_id)
            if memo_rows:
                conn.executemany(_INSERT_MEMO, memo_rows)
            if consumed_request_id:
                # The request is answered for good: its reply row, lease and queued
                # request (queued again while its reply was on its way), if any, are done with.
                conn.execute("DELETE FROM replies WHERE request_id = ?", (consumed_request_id,))
                conn.execute("DELETE FROM leases WHERE request_id = ?", (consumed_request_id,))
                conn.execute("DELETE FROM queued_requests WHERE request_id = ?", (consumed_request_id,))
            cancelled.clear()
            granted.clear()
            if slots is not None:
                # (held, granted), as the attempt that commits leaves them.
                slots.held, granted[:] = sqlite_slots.change(conn, run.run_id, slots)
            return _insert_events(conn, event_rows, cancelled, notes, granted) if event_rows else []

        cancelled: list[str] = []
        granted: list[str] = []
        stored = await self._writer.submit(op)
        for run_id in cancelled:
            self._notify(RUN_CANCEL_REQUESTED, run_id)
        if notes is not None:
            self._notify_held(notes)
        if granted:
            self._announce_grants(granted)
        return stored

    # --- executor: run ownership -------------------------------------------------------

    async def heartbeat(self, owner: str, expires_at_ms: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO owners (owner, expires_at_ms) VALUES (?, ?)"
                " ON CONFLICT (owner) DO UPDATE SET expires_at_ms = excluded.expires_at_ms",
                (owner, expires_at_ms),
            )

        await self._writer.submit(op)

    async def claim_runs(self, owner: str, now_ms: int, limit: int) -> list[Claim]:
        # One writer serializes every claim, so selecting and raising the tokens in
        # one transaction is enough for two claimers never to get the same run.
        def op(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            return conn.execute(
                "UPDATE runs SET owner = ?1, fence = fence + 1 WHERE run_id IN ("
                " SELECT run_id FROM runs WHERE status = 'Running' AND (owner IS NULL"
                " OR (owner != ?1 AND NOT EXISTS"
                " (SELECT 1 FROM owners o WHERE o.owner = runs.owner AND o.expires_at_ms >= ?2)))"
                " ORDER BY run_id LIMIT ?3) RETURNING run_id, fence",
                (owner, now_ms, limit),
            ).fetchall()

        rows = await self._writer.submit(op)
        return [Claim(run_id, fence) for run_id, fence in sorted(rows)]

    async def release_runs(self, owner: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            released = conn.execute(
                "UPDATE runs SET owner = NULL WHERE owner = ? AND status = 'Running'", (owner,)
            ).rowcount
            conn.execute("DELETE FROM owners WHERE owner = ?", (owner,))
            return released

        released = await self._writer.submit(op)
        if released:
            self._notify(RUNS_RELEASED, owner)
        return released

    # --- queued requests -----------------------------------------------------------------

    async def queue_request(self, request: QueuedRequest) -> None:
        r = request
        # held_until_ms -1: queued fresh and never taken (see `QueuedRequest.fresh`).
        row = (
            r.request_id,
            r.run_id,
            r.app_name,
            r.function_slug,
            r.step_id,
            r.payload,
            r.queued_at_ms,
            -1 if r.fresh else 0,
        )

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO queued_requests (request_id, run_id, app_name, function_slug, step_id, payload,"
                " queued_at_ms, held_until_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO UPDATE SET"
                " holder = CASE WHEN lapsed THEN NULL ELSE holder END, lapsed = 0,"
                " held_until_ms = MAX(held_until_ms, 0)",
                row,
            )

        await self._writer.submit(op)
        self._notify(REQUEST_QUEUED, request.function_slug)

    async def take_requests(
        self, gateway: str, function_slugs: Sequence[str], now_ms: int, hold_until_ms: int, limit: int
    ) -> list[QueuedRequest]:
        slugs = list(function_slugs)
        if not slugs:
            return []

        def op(conn: sqlite3.Connection) -> list[tuple[str, str, str, str, str, bytes, int, bool]]:
            due = conn.execute(
                "SELECT request_id, held_until_ms < 0 FROM queued_requests WHERE function_slug IN"  # noqa: S608 - placeholders only
                f" ({', '.join('?' * len(slugs))}) AND NOT lapsed AND (holder IS NULL OR held_until_ms < ?)"
                " ORDER BY queued_at_ms, request_id LIMIT ?",
                (*slugs, now_ms, limit),
            ).fetchall()
            fresh = {rid for rid, never_held in due if never_held}
            rows = conn.execute(
                "UPDATE queued_requests SET holder = ?, held_until_ms = ? WHERE request_id IN"  # noqa: S608 - placeholders only
                f" ({', '.join('?' * len(due))})"
                " RETURNING request_id, run_id, app_name, function_slug, step_id, payload, queued_at_ms",
                (gateway, hold_until_ms, *(rid for rid, _ in due)),
            ).fetchall()
            return [(*r, r[0] in fresh) for r in rows]

        rows = await self._writer.submit(op)
        return sorted((QueuedRequest(*r[:5], bytes(r[5]), r[6], r[7]) for r in rows), key=_queue_order)

    async def request_queue_stats(self, now_ms: int, limit: int) -> RequestQueueStats:
        def op(conn: sqlite3.Connection) -> tuple[int, int, int, int | None]:
            row: tuple[int, int, int, int | None] = conn.execute(_QUEUE_STATS, (now_ms, limit)).fetchone()
            return row

        waiting, held, lapsed, oldest = await self._writer.submit(op)
        return RequestQueueStats(waiting, held, lapsed, oldest, waiting + held + lapsed >= limit)

    async def hold_requests(self, gateway: str, request_ids: Sequence[str], hold_until_ms: int) -> None:
        rows = [(hold_until_ms, rid, gateway) for rid in request_ids]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE queued_requests SET held_until_ms = ? WHERE request_id = ? AND holder = ?", rows)

        await self._writer.submit(op)

    async def settle_request(self, request_id: str, gateway: str, outcome: str) -> bool:
        statement = _SETTLE.get(outcome)
        if statement is None:
            raise ValueError(f"a request is settled as {ANSWERED}, {RETURNED} or {LAPSED}, not {outcome!r}")

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(statement, (request_id, gateway)).fetchone()
            return None if row is None else str(row[0])

        slug = await self._writer.submit(op)
        if slug is None:
            return False
        self._notify(*((REQUEST_QUEUED, slug) if outcome == RETURNED else (REQUEST_SETTLED, request_id)))
        return True

    async def request_lapsed(self, request_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT lapsed FROM queued_requests WHERE request_id = ?", (request_id,)).fetchone()
            return row is not None and bool(row[0])

        return await self._writer.submit(op)

    async def taken_request(self, request_id: str, gateway: str, now_ms: int) -> TakenRequest:
        def op(conn: sqlite3.Connection) -> TakenRequest:
            reply = conn.execute("SELECT data FROM replies WHERE request_id = ?", (request_id,)).fetchone()
            held = conn.execute(
                "SELECT 1 FROM queued_requests WHERE request_id = ? AND holder = ?", (request_id, gateway)
            ).fetchone()
            leased = conn.execute(
                "SELECT 1 FROM leases WHERE request_id = ? AND expires_at_ms > ?", (request_id, now_ms)
            ).fetchone()
            return TakenRequest(None if reply is None else bytes(reply[0]), held is not None, leased is not None)

        return await self._writer.submit(op)

    async def dequeue_request(self, request_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM queued_requests WHERE request_id = ?", (request_id,))

        await self._writer.submit(op)

    # --- notifications -------------------------------------------------------------------

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        self._listeners.setdefault(channel, []).append(callback)

    async def notify(self, channel: str, payload: str) -> None:
        self._notify(channel, payload)

    def _notify(self, channel: str, payload: str) -> None:
        loop = asyncio.get_running_loop()
        for callback in self._listeners.get(channel, ()):
            loop.call_soon(callback, payload)

    def _notify_held(self, notes: HeldNotes) -> None:
        if notes.due_ms is not None:
            self._notify(HELD_STARTS_CHANGED, str(notes.due_ms))
        if notes.started:
            self._notify(RUNS_RELEASED, "")

    def _notify_events(self, event_ids: list[str]) -> None:
        if EVENTS_RECORDED in self._listeners:
            for payload in chunk_ids(event_ids):
                self._notify(EVENTS_RECORDED, payload)

    # --- the process registry ---------------------------------------------------------------

    async def put_process(self, record: ProcessRecord) -> None:
        r = record

        def op(conn: sqlite3.Connection) -> bool:
            before = conn.execute(
                "SELECT state, started_at_ms FROM processes WHERE process_id = ? AND role = ?", (r.process_id, r.role)
            ).fetchone()
            conn.execute("DELETE FROM processes WHERE expires_at_ms < ?", (r.expires_at_ms - REGISTRY_KEEP_MS,))
            conn.execute(
                "INSERT OR REPLACE INTO processes (process_id, role, address, state, expires_at_ms, started_at_ms)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (r.process_id, r.role, r.address, r.state, r.expires_at_ms, r.started_at_ms),
            )
            return before is None or tuple(before) != (r.state, r.started_at_ms)

        if await self._writer.submit(op):
            self._notify(PROCESSES_CHANGED, r.process_id)

    async def list_processes(self, role: str | None, now_ms: int) -> list[ProcessRecord]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, str, str, str, int, int]]:
            return conn.execute(
                "SELECT process_id, role, address, state, expires_at_ms, started_at_ms FROM processes"
                " WHERE (?1 IS NULL OR role = ?1) AND expires_at_ms > ?2 ORDER BY started_at_ms, process_id, role",
                (role, now_ms),
            ).fetchall()

        return [ProcessRecord(*row) for row in await self._writer.submit(op)]

    async def drop_process(self, process_id: str, role: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM processes WHERE process_id = ? AND role = ?", (process_id, role))

        await self._writer.submit(op)
        self._notify(PROCESSES_CHANGED, process_id)

    async def put_connections(self, gateway_id: str, records: list[ConnectionRecord]) -> None:
        rows = [
            (
                c.connection_id,
                gateway_id,
                c.instance_id,
                _encode(c.apps),
                _encode(c.functions),
                c.capacity,
                c.in_flight,
                c.state,
                c.last_heartbeat_ms,
                c.expires_at_ms,
            )
            for c in records
        ]
        stale_before = max((c.expires_at_ms for c in records), default=None)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM connections WHERE gateway_id = ?", (gateway_id,))
            if stale_before is not None:
                conn.execute("DELETE FROM connections WHERE expires_at_ms < ?", (stale_before - REGISTRY_KEEP_MS,))
            conn.executemany(
                "INSERT OR REPLACE INTO connections (connection_id, gateway_id, instance_id, apps, functions, capacity,"
                " in_flight, state, last_heartbeat_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        await self._writer.submit(op)

    async def list_connections(self, now_ms: int) -> list[ConnectionRecord]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, str, str, bytes, bytes, int | None, int, str, int, int]]:
            return conn.execute(
                "SELECT connection_id, gateway_id, instance_id, apps, functions, capacity, in_flight, state,"
                " last_heartbeat_ms, expires_at_ms FROM connections WHERE expires_at_ms > ?"
                " ORDER BY gateway_id, connection_id",
                (now_ms,),
            ).fetchall()

        return [
            ConnectionRecord(cid, gw, inst, _decode_strings(apps), _decode_strings(fns), cap, busy, state, beat, exp)
            for cid, gw, inst, apps, fns, cap, busy, state, beat, exp in await self._writer.submit(op)
        ]

    def put_lease_within(
        self, request_id: str, lease_id: str, expires_at_ms: int, instance_id: str, limit: int, now_ms: int
    ) -> Awaitable[bool]:
        # One writer runs every operation of this store in turn: the count and the
        # insert cannot interleave with another's.
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR REPLACE INTO leases (request_id, lease_id, expires_at_ms, instance_id)"
                " SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM leases WHERE request_id = ?1 AND instance_id = ?4)"
                " OR (SELECT count(*) FROM leases WHERE instance_id = ?4 AND expires_at_ms > ?5"
                " AND request_id <> ?1) < ?6",
                (request_id, lease_id, expires_at_ms, instance_id, now_ms, limit),
            )
            return cur.rowcount == 1

        return self._writer.submit_nowait(op)

    # --- concurrency slots --------------------------------------------------------------

    async def acquire_slots(self, request_id: str, run_id: str, claims: Sequence[SlotClaim], order: int) -> bool:
        if not claims:
            return True
        wanted = list(claims)
        held, granted = await self._writer.submit(
            lambda conn: sqlite_slots.acquire(conn, request_id, run_id, wanted, order)
        )
        self._announce_grants(granted)
        return held

    async def release_slots(self, request_ids: Sequence[str]) -> list[str]:
        ids = list(request_ids)
        if not ids:
            return []
        granted = await self._writer.submit(lambda conn: sqlite_slots.release(conn, ids))
        self._announce_grants(granted)
        return granted

    async def release_run_slots(self, run_id: str, keep: Sequence[str] = ()) -> list[str]:
        kept = list(keep)
        granted = await self._writer.submit(lambda conn: sqlite_slots.release_run(conn, run_id, kept))
        self._announce_grants(granted)
        return granted

    async def slots_held(self, key: str) -> list[str]:
        return await self._writer.submit(lambda conn: sqlite_slots.held(conn, key))

    def _announce_grants(self, granted: list[str]) -> None:
        if granted and SLOTS_GRANTED in self._listeners:
            for payload in chunk_ids(granted):
                self._notify(SLOTS_GRANTED, payload)

    # --- history retention -------------------------------------------------------------

    async def prune_history(self, before_ms: int, limit: int, events_after: EventsCursor | None = None) -> Pruned:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        # One writer operation: it shares the commit of whatever else is
        # queued, and holds the loop only as long as `limit` rows take.
        return await self._writer.submit(lambda conn: _prune_history(conn, before_ms, limit, events_after))

    # --- executor: debounces and batches ------------------------------------------------

    async def next_held_due(self) -> int | None:
        def op(conn: sqlite3.Connection) -> int | None:
            (due,) = conn.execute("SELECT min(due_ms) FROM held_starts").fetchone()
            return None if due is None else int(due)

        return await self._writer.submit(op)

    async def take_throttle_turn(self, run_id: str, now_ms: int) -> int | None:
        turn = await self._writer.submit(lambda conn: _take_turn(conn, run_id, now_ms))
        if turn is None:
            return None
        if turn.granted is not None:
            self._notify(THROTTLE_TURN_GRANTED, turn.granted)
        return turn.wait_ms

    async def start_held(self, owner: str, now_ms: int, limit: int) -> list[Claim]:
        cancelled: list[str] = []

        def op(conn: sqlite3.Connection) -> list[str]:
            cancelled.clear()  # applied again after a failed batch: report that attempt's
            rows: list[_HeldRow] = conn.execute(
                f"{_SELECT_HELD} WHERE due_ms <= ? ORDER BY due_ms LIMIT ?", (now_ms, limit)
            ).fetchall()
            started: list[str] = []
            for row in rows:
                held = HeldStart(*row)
                conn.execute(_DELETE_HELD, (held.function_id, held.key))
                run_id = _start_held_run(conn, held, owner, NEW_RUN_FENCE, now_ms, cancelled)
                if run_id is not None:
                    started.append(run_id)
            return started

        started = await self._writer.submit(op)
        for run_id in cancelled:
            self._notify(RUN_CANCEL_REQUESTED, run_id)
        return [Claim(run_id, NEW_RUN_FENCE) for run_id in started]

    # --- executor: cron -------------------------------------------------------------

    async def cron_ticks(self) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            return conn.execute("SELECT schedule, tick_ms FROM cron_ticks").fetchall()

        return dict(await self._writer.submit(op))

    async def record_tick(self, key: str, tick_ms: int, event: NewEvent) -> bool:
        rows = [_event_rows(event)]

        cancelled: list[str] = []

        def op(conn: sqlite3.Connection) -> bool:
            cancelled.clear()
            [stored] = _insert_events(conn, rows, cancelled)
            conn.execute(
                "INSERT INTO cron_ticks (schedule, tick_ms) VALUES (?, ?)"
                " ON CONFLICT (schedule) DO UPDATE SET tick_ms = max(tick_ms, excluded.tick_ms)",
                (key, tick_ms),
            )
            return stored

        stored = await self._writer.submit(op)
        if stored:
            self._notify_events([event.event.id])
        for run_id in cancelled:
            self._notify(RUN_CANCEL_REQUESTED, run_id)
        return stored


#: `request_queue_stats`: counts over at most ?2 rows of the queue at ?1 (now, Unix ms).
_QUEUE_STATS: Final = (
    "SELECT COUNT(CASE WHEN NOT lapsed AND (holder IS NULL OR held_until_ms < ?1) THEN 1 END),"
    " COUNT(CASE WHEN NOT lapsed AND holder IS NOT NULL AND held_until_ms >= ?1 THEN 1 END),"
    " COUNT(CASE WHEN lapsed THEN 1 END),"
    " MIN(CASE WHEN NOT lapsed AND (holder IS NULL OR held_until_ms < ?1) THEN queued_at_ms END)"
    " FROM (SELECT holder, held_until_ms, lapsed, queued_at_ms FROM queued_requests LIMIT ?2) AS q"
)

# How each outcome of `settle_request` ends a hold; each returns the function slug.
_SETTLE: Final = {
    ANSWERED: "DELETE FROM queued_requests WHERE request_id = ? AND holder = ? RETURNING function_slug",
    RETURNED: "UPDATE queued_requests SET holder = NULL, held_until_ms = 0 WHERE request_id = ? AND holder = ?"
    " RETURNING function_slug",
    LAPSED: "UPDATE queued_requests SET holder = NULL, held_until_ms = 0, lapsed = 1 WHERE request_id = ?"
    " AND holder = ? RETURNING function_slug",
}


def _queue_order(request: QueuedRequest) -> tuple[int, str]:
    return request.queued_at_ms, request.request_id


def _event_from_row(row: _EventRow) -> EventRecord:
    return EventRecord(id=row[0], name=row[1], ts=row[2], received_at_ms=row[3], body=bytes(row[4]))
