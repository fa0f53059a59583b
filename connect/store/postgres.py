"""The store on PostgreSQL (asyncpg), with the semantics of the SQLite store.

Open with `await PostgresStore.open("postgresql://user@host/db")`. The schema
is migrated at open (`pg_schema`); a database written by a newer release is
refused. Writes go through `PostgresWriter`, which group-commits concurrent
callers and applies runs of the same operation together: the gateway's
`put_reply` / `put_lease` / `delete_lease` as statements over arrays, and the
executor's `save_run` as one statement per run (data-modifying CTEs),
pipelined for a run of saves. Reads run on the pool once the writes
submitted before them have committed.

Durability is PostgreSQL's: an awaited write has been committed with the
server's `synchronous_commit` (on by default, so flushed to its WAL on disk).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import asyncpg
import msgspec

from connect.store import pg_slots, run_listing
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
from connect.store.pg_notify import PostgresListener
from connect.store.pg_reconnect import DEFAULT_RECONNECT_TIMEOUT, validate_reconnect_timeout
from connect.store.pg_schema import FENCE_LOST, migrate
from connect.store.pg_writer import DEFAULT_POOL_SIZE, SINGLE, Bulk, Connection, PostgresWriter
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
from connect.store.start_gates import state_key as _state_key
from protocol.ids import new_ulid
from protocol.payloads import Event, FunctionConfig

_RUN_COLUMNS: Final = (
    "run_id, function_id, app_name, event_id, status, started_at_ms, ended_at_ms, max_attempts, requests,"
    " waiting, disable_immediate_execution, request_version, cancel_requested, output"
)
_INSERT_RUN: Final = (
    f"INSERT INTO runs ({_RUN_COLUMNS}, owner, fence)"  # noqa: S608 - constant
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
)
_SELECT_RUNS: Final = f"SELECT {_RUN_COLUMNS} FROM runs"  # noqa: S608 - constant
_SELECT_SKIPPED: Final = "SELECT run_id, function_id, event_id, reason, at_ms FROM skipped_starts"
#: A run with the events of its batch, if a batch started it (NULL otherwise).
_LOAD_RUN: Final = (
    f"SELECT {_RUN_COLUMNS}, (SELECT array_agg(body ORDER BY position) FROM run_events e"  # noqa: S608 - constant
    " WHERE e.run_id = runs.run_id) AS batch FROM runs WHERE run_id = $1"
)
_INSERT_EVENT: Final = (
    "INSERT INTO events (id, name, ts, received_at_ms, body) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT (id) DO NOTHING RETURNING TRUE"
)
_INSERT_MEMO: Final = (
    "INSERT INTO steps (run_id, step_hash, result, info) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (run_id, step_hash) DO NOTHING"
)
_FLAG_CANCEL: Final = "UPDATE runs SET cancel_requested = TRUE WHERE run_id = $1 AND status = 'Running'"
_SELECT_EVENTS: Final = "SELECT id, name, ts, received_at_ms, body FROM events"
#: Sends one notification per element of the text array $2 on channel $1.
_NOTIFY_EACH: Final = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"
#: First key of the advisory locks flow-control gates take (the second is a hash of
#: the function, the gate's kind and its key; see `_pass_gates`).
_GATE_LOCK_SPACE: Final = 0x636E6667  # "cnfg"
#: Takes the locks in ascending order (a volatile function in a sorted select list
#: is evaluated after the sort).
_LOCK_GATES: Final = (
    "SELECT count(*) FROM (SELECT pg_advisory_xact_lock($1, h) FROM"
    " (SELECT DISTINCT hashtext(k) AS h FROM unnest($2::text[]) AS k) AS wanted ORDER BY h) AS locked"
)
#: Takes one gate's lock if no other transaction holds it (TRUE), without waiting.
_TRY_LOCK_GATE: Final = "SELECT pg_try_advisory_xact_lock($1, hashtext($2))"
_SELECT_TAT: Final = "SELECT tat_ms FROM start_limits WHERE function_id = $1 AND kind = $2 AND key = $3"
_SET_TAT: Final = (
    "INSERT INTO start_limits (function_id, kind, key, tat_ms) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (function_id, kind, key) DO UPDATE SET tat_ms = excluded.tat_ms"
)
_SINGLETON_RUNNING: Final = (
    "SELECT s.run_id FROM singletons s JOIN runs r ON r.run_id = s.run_id"
    " WHERE s.function_id = $1 AND s.key = $2 AND r.status = 'Running'"
)
_HOLD_SINGLETON: Final = (
    "INSERT INTO singletons (function_id, key, run_id) VALUES ($1, $2, $3)"
    " ON CONFLICT (function_id, key) DO UPDATE SET run_id = excluded.run_id"
)
_INSERT_SKIP: Final = (
    "INSERT INTO skipped_starts (run_id, function_id, event_id, reason, at_ms) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT (run_id) DO NOTHING"
)
#: First key of the advisory locks `put_lease_within` takes (the second is the
#: instance id's hash), so they share no key with the migration lock.
_LEASE_LOCK_SPACE: Final = 0x636E6C73  # "cnls"

# One run's step in one statement: its new memos (in order; a memo already
# stored is kept), the consumed reply, lease and queued request (a request queued
# again while its reply was on its way must not be forwarded once the reply is
# consumed), and its new state (all but
# `cancel_requested`, which only `request_cancel` writes). A Running run's
# save passes no status ($5 NULL) and leaves status, end and output as they
# are, as the SQLite store does. The CTEs run though the UPDATE reads none.
_SAVE_RUN: Final = """
WITH memo AS (
    INSERT INTO steps (run_id, step_hash, result, info)
    SELECT $1, m.step_hash, m.result, m.info
    FROM unnest($2::text[], $3::bytea[], $14::bytea[]) WITH ORDINALITY AS m(step_hash, result, info, n)
    ORDER BY m.n
    ON CONFLICT (run_id, step_hash) DO NOTHING
), reply AS (
    DELETE FROM replies WHERE request_id = $4
), lease AS (
    DELETE FROM leases WHERE request_id = $4
), queued AS (
    DELETE FROM queued_requests WHERE request_id = $4
)
UPDATE runs SET status = COALESCE($5, status),
    ended_at_ms = CASE WHEN $5::text IS NULL THEN ended_at_ms ELSE $6 END,
    max_attempts = $7, requests = $8, waiting = $9, disable_immediate_execution = $10, request_version = $11,
    output = CASE WHEN $5::text IS NULL THEN output ELSE $12 END
WHERE run_id = $1 AND connect_fenced(run_id, fence, $13)
"""

_RunRow = tuple[str, str, str, str, str, int, int | None, int, bytes, bytes, bool, int, bool, bytes | None]
# run id, memo hashes, memo results, consumed request, the new state ($5...$12), the fence, memo infos
_SaveRow = tuple[
    str,
    list[str],
    list[bytes],
    str | None,
    str | None,
    int | None,
    int,
    bytes,
    bytes,
    bool,
    int,
    bytes | None,
    int,
    list[bytes | None],
]

_encode = msgspec.json.Encoder().encode
_decode_requests = msgspec.json.Decoder(list[PendingRequest]).decode
_decode_waiting = msgspec.json.Decoder(list[Waiting]).decode
_decode_functions = msgspec.json.Decoder(list[FunctionConfig]).decode
_EMPTY_LIST: Final = b"[]"


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """What a pool connection needs on release beyond asyncpg's own rollback of
    an open transaction: nothing. The store leaves no session state behind (no
    LISTEN, which has a connection of its own, no SET, cursors or session-level
    advisory locks), and asyncpg's default reset sends four statements
    (`CLOSE ALL`, `UNLISTEN *`, `RESET ALL`, `pg_advisory_unlock_all()`) on every
    release: more than the read itself."""


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
        run.disable_immediate_execution,
        run.request_version,
        run.cancel_requested,
        run.output,
    )


#: Run ids compared byte by byte: the order SQLite sorts text in, whatever the database's locale.
_BYTEWISE: Final = ' COLLATE "C"'


_encode_info = msgspec.json.Encoder().encode
_decode_info = msgspec.json.Decoder(StepInfo).decode


def _info(memo: StepMemo) -> bytes | None:
    return None if memo.info is None else _encode_info(memo.info)


def _read_info(raw: bytes | None) -> StepInfo | None:
    return None if raw is None else _decode_info(raw)


def _dollar(n: int) -> str:
    return f"${n}"


def _run_from_record(row: asyncpg.Record) -> RunRecord:
    requests: bytes = row["requests"]
    waiting: bytes = row["waiting"]
    return RunRecord(
        run_id=row["run_id"],
        function_id=row["function_id"],
        app_name=row["app_name"],
        event_id=row["event_id"],
        status=row["status"],
        started_at_ms=row["started_at_ms"],
        ended_at_ms=row["ended_at_ms"],
        max_attempts=row["max_attempts"],
        requests=_decode_requests(requests) if requests != _EMPTY_LIST else [],
        waiting=_decode_waiting(waiting) if waiting != _EMPTY_LIST else [],
        disable_immediate_execution=row["disable_immediate_execution"],
        request_version=row["request_version"],
        cancel_requested=row["cancel_requested"],
        output=row["output"],
    )


def _event_from_record(row: asyncpg.Record) -> EventRecord:
    return EventRecord(
        id=row["id"], name=row["name"], ts=row["ts"], received_at_ms=row["received_at_ms"], body=row["body"]
    )


async def _insert_events(conn: Connection, events: list[NewEvent]) -> list[bool]:
    """Store `events` (an event whose id is stored already, or earlier in the
    list, is not stored again) and, for each one stored, its runs, memos and
    cancellations: a fixed number of round trips, however many events.

    The events go first, then every stored event's runs, memos and
    cancellations in event order. That is the order one event at a time would
    give: what a later event's memos or cancellations name was either stored
    before this call or is a run of an earlier event, already inserted."""
    if not events:
        return []
    first: dict[str, int] = {}
    for i, new in enumerate(events):
        first.setdefault(new.event.id, i)
    unique = [events[i].event for i in first.values()]
    inserted = {
        r["id"]
        for r in await conn.fetch(
            "INSERT INTO events (id, name, ts, received_at_ms, body)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bytea[])"
            " ON CONFLICT (id) DO NOTHING RETURNING id",
            [e.id for e in unique],
            [e.name for e in unique],
            [e.ts for e in unique],
            [e.received_at_ms for e in unique],
            [e.body for e in unique],
        )
    }
    stored = [first[new.event.id] == i and new.event.id in inserted for i, new in enumerate(events)]
    new_ones = [new for new, is_new in zip(events, stored, strict=True) if is_new]
    gated = {g.run_id for new in new_ones for g in new.gates}
    runs = [
        (*_run_row(r), new.owner, NEW_RUN_FENCE if new.owner is not None else 0)
        for new in new_ones
        for r in new.runs
        if r.run_id not in gated
    ]
    if runs:
        await conn.executemany(_INSERT_RUN, runs)
    # The state of every gate decided below, locked in one sorted call (see `_pass_gates`).
    gate_keys = {k for new in new_ones for g in new.gates for k in g.lock_keys()}
    for new in new_ones:
        for hold in new.holds:
            for gate in (hold.admit, hold.gate):
                if gate is not None:
                    gate_keys.update(gate.lock_keys())
    if gate_keys:
        await conn.fetchval(_LOCK_GATES, _GATE_LOCK_SPACE, sorted(gate_keys))
    cancelled: list[str] = []
    if gated:
        await _pass_gates(conn, [new for new in new_ones if new.gates], cancelled)
    memos = [(m.run_id, m.memo.step_hash, m.memo.result, _info(m.memo)) for new in new_ones for m in new.memos]
    if memos:
        await conn.executemany(_INSERT_MEMO, memos)
    cancels = [(run_id,) for new in new_ones for run_id in new.cancels]
    if cancels:
        await conn.executemany(_FLAG_CANCEL, cancels)
    held = [(new, hold) for new in new_ones for hold in new.holds]
    if held:
        await _hold(conn, held, cancelled)
    if cancelled:
        # Sent at commit: the executor owning the run cancels it, as after `request_cancel`.
        await conn.execute(_NOTIFY_EACH, RUN_CANCEL_REQUESTED, cancelled)
    if any(new.slots for new in new_ones):
        await _acquire_starting_slots(conn, [new for new in new_ones if new.slots])
    return stored


async def _acquire_starting_slots(conn: Connection, events: list[NewEvent]) -> None:
    """The slots of the runs `events` start (`NewEvent.slots`), with the lock
    the batch took as its prelude (`_slots_prelude`)."""
    starting = [(new, run_id, item) for new in events for run_id, item in starting_slots(new)]
    held, granted = await pg_slots.acquire_many(
        conn, [(item.request_id, run_id, item.claims, item.order) for _, run_id, item in starting]
    )
    for new in events:
        new.held.clear()  # applied again after a failed batch: this attempt's
    for new, _, item in starting:
        if item.request_id in held:
            new.held.append(item.request_id)
    await _announce_grants(conn, granted)


async def _pass_gates(conn: Connection, events: list[NewEvent], cancelled: list[str]) -> None:
    """Decide each gated run of `events` and store it, or its skip (see
    `NewEvent.gates`); the runs singletons cancel are added to `cancelled`.
    The state every gate reads is locked first (by the caller, `_LOCK_GATES`),
    in one order (so two transactions never wait on each other in a cycle),
    until commit: however many processes record runs of the same key at once,
    each decision sees the one before."""
    for new in events:
        gates = {g.run_id: g for g in new.gates}
        fence = NEW_RUN_FENCE if new.owner is not None else 0
        for run in new.runs:
            gate = gates.get(run.run_id)
            if gate is None:
                continue
            decision = await _decide(conn, gate, run.started_at_ms)
            skip = apply_decision(new, run, decision)
            new.tell_invoker(gate, skip)  # a memo for the invoking step is written with the event's others
            if skip is not None:
                await _insert_skip(conn, skip)
                continue
            await conn.execute(_INSERT_RUN, *_run_row(run), new.owner, fence)
            await _keep_decision(conn, gate, run.run_id, decision, cancelled)


async def _decide(conn: Connection, gate: StartGate, now_ms: int) -> Decision:
    """`gate`'s decision at `now_ms`, on the state it reads (locked by the caller)."""
    fn = gate.function_id
    running = rate_tat = throttle_tat = None
    if gate.singleton is not None:
        running = await conn.fetchval(_SINGLETON_RUNNING, fn, gate.singleton.key)
    if gate.rate_limit is not None:
        rate_tat = await conn.fetchval(_SELECT_TAT, fn, RATE_LIMIT, gate.rate_limit.key)
    if gate.throttle is not None:
        throttle_tat = await conn.fetchval(_SELECT_TAT, fn, THROTTLE, gate.throttle.key)
    return decide(gate, now_ms, running=running, rate_tat=rate_tat, throttle_tat=throttle_tat)


_JOIN_LINE: Final = (
    "INSERT INTO throttle_waits (run_id, function_id, key, ord, seq, turn_ms) VALUES ($1, $2, $3, $4, $5, $6)"
    " ON CONFLICT (run_id) DO UPDATE SET ord = excluded.ord, seq = excluded.seq, turn_ms = excluded.turn_ms"
)
_AHEAD_OF: Final = 'function_id = $1 AND key = $2 AND (ord, seq, run_id COLLATE "C") < ($3, $4, $5)'


def _throttle_state_key(function_id: str, key: str) -> str:
    return _state_key(function_id, THROTTLE, key)


async def _take_turn(conn: Connection, run_id: str, now_ms: int) -> Turn | None:
    """`Store.take_throttle_turn`, under the lock of the key's throttle state
    (the one `_pass_gates` takes), so turns are taken and handed out one at a time."""
    row = await conn.fetchrow("SELECT function_id, key FROM throttle_waits WHERE run_id = $1", run_id)
    if row is None:
        return None
    fn, key = row["function_id"], row["key"]
    await conn.fetchval(_LOCK_GATES, _GATE_LOCK_SPACE, [_throttle_state_key(fn, key)])
    row = await conn.fetchrow("SELECT ord, seq, turn_ms FROM throttle_waits WHERE run_id = $1", run_id)
    if row is None:  # took its turn meanwhile (another ask of the same run)
        return None
    me = ThrottleWait(run_id, row["ord"], row["seq"], row["turn_ms"])
    if me.turn_ms <= now_ms:
        # Runs of the line that ended (cancelled while they waited) leave it.
        await conn.execute(
            "DELETE FROM throttle_waits w WHERE function_id = $1 AND key = $2 AND NOT EXISTS"
            " (SELECT 1 FROM runs r WHERE r.run_id = w.run_id AND r.status = 'Running')",
            fn,
            key,
        )
    due = await conn.fetchval(
        "SELECT count(*) FROM throttle_waits WHERE function_id = $1 AND key = $2 AND turn_ms <= $3", fn, key, now_ms
    )
    ahead = await conn.fetchval(
        f"SELECT count(*) FROM throttle_waits WHERE {_AHEAD_OF}",  # noqa: S608 - constant
        fn,
        key,
        me.order,
        me.seq,
        run_id,
    )
    found = await conn.fetchrow(
        f"SELECT run_id, ord, seq, turn_ms FROM throttle_waits WHERE {_AHEAD_OF} AND turn_ms > $6"  # noqa: S608 - constant
        ' ORDER BY ord, seq, run_id COLLATE "C" LIMIT 1',
        fn,
        key,
        me.order,
        me.seq,
        run_id,
        now_ms,
    )
    later = None if found is None else ThrottleWait(found["run_id"], found["ord"], found["seq"], found["turn_ms"])
    turn = take_turn(me, now_ms, due=due, ahead=ahead, later=later)
    if turn.wait_ms == 0:
        await conn.execute("DELETE FROM throttle_waits WHERE run_id = $1", run_id)
    elif turn.granted is not None:
        await conn.execute("UPDATE throttle_waits SET turn_ms = $1 WHERE run_id = $2", me.turn_ms, turn.granted)
        await conn.execute("UPDATE throttle_waits SET turn_ms = $1 WHERE run_id = $2", turn.wait_ms, run_id)
        await conn.execute("SELECT pg_notify($1, $2)", THROTTLE_TURN_GRANTED, turn.granted)
    return turn


async def _insert_skip(conn: Connection, skip: SkippedStart) -> None:
    await conn.execute(_INSERT_SKIP, skip.run_id, skip.function_id, skip.event_id, skip.reason, skip.at_ms)
    report_skip(skip)


async def _keep_decision(
    conn: Connection, gate: StartGate, run_id: str, decision: Decision, cancelled: list[str]
) -> None:
    """Write back the state a decision that let run `run_id` start changed."""
    fn = gate.function_id
    if gate.rate_limit is not None and decision.rate_tat is not None:
        await conn.execute(_SET_TAT, fn, RATE_LIMIT, gate.rate_limit.key, decision.rate_tat)
    if gate.throttle is not None and decision.throttle_tat is not None:
        await conn.execute(_SET_TAT, fn, THROTTLE, gate.throttle.key, decision.throttle_tat)
        if gate.throttle.order is not None and decision.wake_at_ms:
            turn = decision.wake_at_ms  # also its place among runs of equal order: the order they came
            await conn.execute(_JOIN_LINE, run_id, fn, gate.throttle.key, gate.throttle.order, turn, turn)
    if gate.singleton is not None:
        await conn.execute(_HOLD_SINGLETON, fn, gate.singleton.key, run_id)
    if decision.cancel is not None and await conn.execute(_FLAG_CANCEL, decision.cancel) == "UPDATE 1":
        cancelled.append(decision.cancel)


# --- debounces and batches -----------------------------------------------------------

_HELD_COLUMNS: Final = (
    "kind, function_id, key, app_name, max_attempts, event_id, last_ts, opened_ms, due_ms, size, size_bytes, gate"
)
_SELECT_HELD: Final = f"SELECT {_HELD_COLUMNS} FROM held_starts"  # noqa: S608 - constant
_PUT_HELD: Final = (
    f"INSERT INTO held_starts ({_HELD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"  # noqa: S608 - constant
    " ON CONFLICT (function_id, key) DO UPDATE SET kind = excluded.kind, app_name = excluded.app_name,"
    " max_attempts = excluded.max_attempts, event_id = excluded.event_id, last_ts = excluded.last_ts,"
    " opened_ms = excluded.opened_ms, due_ms = excluded.due_ms, size = excluded.size,"
    " size_bytes = excluded.size_bytes, gate = excluded.gate"
)
_DELETE_HELD: Final = "DELETE FROM held_starts WHERE function_id = $1 AND key = $2"
#: `HeldStart`'s fields, in the order of its columns.
_HELD_FIELDS: Final = tuple(c.strip() for c in _HELD_COLUMNS.split(","))
_decode_event = msgspec.json.Decoder(Event).decode


def _held_lock(function_id: str, key: str) -> int:
    """The advisory lock (one 64-bit key, a space of its own apart from the
    two-key locks of `put_lease_within`) serialising the held start of (function, key)."""
    digest = hashlib.blake2b(f"{function_id}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _held_from_record(row: asyncpg.Record) -> HeldStart:
    return HeldStart(*(row[c] for c in _HELD_FIELDS))


#: An event held by a function (`event_holds`); a duplicate of a stored event is never held again.
_PUT_EVENT_HOLD: Final = (
    "INSERT INTO event_holds (event_id, function_id, kind, key, at_ms) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT DO NOTHING"
)
#: An event's holds with the held start of each (function, key) now: one statement, one snapshot.
_SELECT_EVENT_HOLDS: Final = (
    "SELECT h.function_id, h.kind, h.key, h.at_ms, h.run_id, s.kind, s.event_id, s.due_ms FROM event_holds h"
    " LEFT JOIN held_starts s ON s.function_id = h.function_id AND s.key = h.key"
    ' WHERE h.event_id = $1 ORDER BY h.function_id COLLATE "C"'
)


async def _hold(conn: Connection, held: list[tuple[NewEvent, Hold]], cancelled: list[str]) -> None:
    """Apply new events to the held starts they go to (each once it passed
    what it must to be held, `Hold.admit`: the caller locked the state of
    those gates, and of the gates the held starts keep; the refused are
    reported in `NewEvent.refused_holds`). Each (function, key)
    is locked first and stays locked until commit: the read, the decision and
    the write of a held start are never interleaved with another transaction's.

    One call takes its locks in one global order, so two transactions that
    each hold events in one call never wait on each other. A transaction
    that applies held events in two calls (events a run's end emits, for a
    debounced function, in a batch with other writes), or a batch filled by
    an event whose throttle key differs from its first event's, may deadlock
    with another; PostgreSQL then aborts one, and the writer applies that
    transaction's operations again one at a time (see `pg_writer`)."""
    for lock in sorted({_held_lock(hold.function_id, hold.key) for _, hold in held}):
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
    notes = HeldNotes()
    for new, _ in held:
        new.refused_holds.clear()  # applied again after a failed batch: this attempt's
    for new, hold in held:
        event = new.event
        if hold.admit is not None:
            decision = await _decide(conn, hold.admit, event.received_at_ms)
            if decision.skip is not None:
                skip = SkippedStart(hold.admit.run_id, hold.function_id, event.id, decision.skip, event.received_at_ms)
                await _insert_skip(conn, skip)
                new.refused_holds.append(hold.admit.run_id)
                continue
            await _keep_decision(conn, hold.admit, hold.admit.run_id, decision, cancelled)
        where = (hold.function_id, hold.key)
        await conn.execute(_PUT_EVENT_HOLD, event.id, hold.function_id, hold.kind, hold.key, event.received_at_ms)
        row = await conn.fetchrow(f"{_SELECT_HELD} WHERE function_id = $1 AND key = $2", *where)
        stored = None if row is None else _held_from_record(row)
        change = hold_event(stored, hold, event.id, event.ts, len(event.body), event.received_at_ms)
        if change.fire_before is not None:
            await _start_held_run(conn, change.fire_before, None, 0, event.received_at_ms, cancelled, wait=True)
            notes.started = True
        if change.add:
            if change.replace:
                await conn.execute("DELETE FROM held_events WHERE function_id = $1 AND key = $2", *where)
            await conn.execute(
                "INSERT INTO held_events (function_id, key, position, body) VALUES ($1, $2, $3, $4)",
                *where,
                change.position,
                event.body,
            )
        if change.fire is not None:
            await _start_held_run(conn, change.fire, None, 0, event.received_at_ms, cancelled, wait=True)
            notes.started = True
        if change.keep is None:
            if stored is not None:
                await conn.execute(_DELETE_HELD, *where)
        elif change.changed:
            await conn.execute(_PUT_HELD, *(getattr(change.keep, f) for f in _HELD_FIELDS))
            notes.wrote(change.keep.due_ms)
    if notes.due_ms is not None:
        await conn.execute("SELECT pg_notify($1, $2)", HELD_STARTS_CHANGED, str(notes.due_ms))
    if notes.started:
        await conn.execute("SELECT pg_notify($1, $2)", RUNS_RELEASED, "")


class _GateBusy(Exception):
    """The state a held start's gate reads is locked by another transaction."""


async def _start_held_run(
    conn: Connection,
    held: HeldStart,
    owner: str | None,
    fence: int,
    now_ms: int,
    cancelled: list[str],
    *,
    wait: bool,
) -> str | None:
    """Create the run `held` fires, with its batch, and take its events out of
    the held ones (the caller deletes or replaces its state row); returns its
    id, or None when its gate refused it (recorded as a skip).

    The state its gate reads is locked first: waiting for it (`wait`), or
    not (raising `_GateBusy` before anything is written when another
    transaction holds it)."""
    run = started_run(held, new_ulid(), new_ulid(), now_ms)
    gate = None if held.gate is None else decode_gate(held.gate, run.run_id)
    decision = None
    if gate is not None:
        if wait:
            await conn.fetchval(_LOCK_GATES, _GATE_LOCK_SPACE, gate.lock_keys())
        else:
            for key in gate.lock_keys():
                if not await conn.fetchval(_TRY_LOCK_GATE, _GATE_LOCK_SPACE, key):
                    raise _GateBusy
        decision = await _decide(conn, gate, now_ms)
    taken = await conn.fetch(
        "DELETE FROM held_events WHERE function_id = $1 AND key = $2 RETURNING position, body",
        held.function_id,
        held.key,
    )
    bodies = [r["body"] for r in sorted(taken, key=lambda r: int(r["position"]))]
    if bodies:
        # The trigger's row goes back in should history retention have pruned it while held.
        trigger = _decode_event(bodies[0])
        await conn.execute(_INSERT_EVENT, trigger.id, trigger.name, trigger.ts, now_ms, bodies[0])
    # The held events' rows name the run they went to (or its skip record).
    await conn.execute(
        "UPDATE event_holds SET run_id = $1 WHERE event_id = ANY($2::text[]) AND function_id = $3",
        run.run_id,
        event_ids(bodies),
        held.function_id,
    )
    if gate is not None and decision is not None:
        skip = apply_to_run(run, decision, [])
        if skip is not None:
            await _insert_skip(conn, skip)
            return None
    await conn.execute(_INSERT_RUN, *_run_row(run), owner, fence)
    if gate is not None and decision is not None:
        await _keep_decision(conn, gate, run.run_id, decision, cancelled)
    batch = run_events(held, bodies)
    if batch:
        await conn.execute(
            "INSERT INTO run_events (run_id, position, body)"
            " SELECT $1, n - 1, b FROM unnest($2::bytea[]) WITH ORDINALITY AS e(b, n)",
            run.run_id,
            batch,
        )
    return run.run_id


# --- operations applied a run at a time (see `Bulk`) ------------------------------------


# The replies of a run of `put_reply` calls, in one statement: each stored unless
# one is, its lease ended and its queued request (split roles) removed, answered.
# Returns the stored ids (TRUE) and the dequeued ones (FALSE).
_PUT_REPLIES: Final = """
WITH stored AS (
    INSERT INTO replies (request_id, data, stored_at_ms)
    SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[])
    ON CONFLICT (request_id) DO NOTHING RETURNING request_id
), lease AS (
    DELETE FROM leases WHERE request_id = ANY($1::text[])
), queued AS (
    DELETE FROM queued_requests WHERE request_id = ANY($1::text[]) RETURNING request_id
)
SELECT TRUE, request_id FROM stored UNION ALL SELECT FALSE, request_id FROM queued
"""


async def _put_replies(conn: Connection, args: list[tuple[str, bytes, int]]) -> list[bool]:
    # Within the run the first call for a request id is the one that may store it.
    first: dict[str, int] = {}
    for i, (request_id, _, _) in enumerate(args):
        first.setdefault(request_id, i)
    rows = [args[i] for i in first.values()]
    stored: set[str] = set()
    dequeued: list[str] = []
    for is_stored, request_id in await conn.fetch(
        _PUT_REPLIES, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    ):
        (stored.add if is_stored else dequeued.append)(request_id)
    if dequeued:
        # Sent at commit, with the replies stored: the answers themselves when this
        # call stored them and they fit, else the ids (an older reply is the answer).
        data = {r[0]: r[1] for r in rows}
        answers, too_long = answer_entries([(rid, data[rid]) for rid in dequeued if rid in stored])
        if answers:
            await conn.execute(_NOTIFY_EACH, REQUEST_ANSWERED, answers)
        settled = [rid for rid in dequeued if rid not in stored] + too_long
        if settled:
            await conn.execute(_NOTIFY_EACH, REQUEST_SETTLED, chunk_ids(settled))
    return [first[request_id] == i and request_id in stored for i, (request_id, _, _) in enumerate(args)]


_LeaseChange = tuple[str, LeaseRecord | None]  # (request id, new lease or None to delete)


async def _change_leases(conn: Connection, args: list[_LeaseChange]) -> list[None]:
    # Only the last change of each request id matters; one upsert and one delete cover the run.
    last: dict[str, LeaseRecord | None] = {}
    for request_id, lease in args:
        last.pop(request_id, None)
        last[request_id] = lease
    puts = [lease for lease in last.values() if lease is not None]
    deletes = [request_id for request_id, lease in last.items() if lease is None]
    if deletes:
        await conn.execute("DELETE FROM leases WHERE request_id = ANY($1::text[])", deletes)
    if puts:
        await conn.execute(
            "INSERT INTO leases (request_id, lease_id, expires_at_ms, instance_id)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])"
            " ON CONFLICT (request_id) DO UPDATE SET lease_id = excluded.lease_id,"
            " expires_at_ms = excluded.expires_at_ms, instance_id = excluded.instance_id",
            [p.request_id for p in puts],
            [p.lease_id for p in puts],
            [p.expires_at_ms for p in puts],
            [p.instance_id for p in puts],
        )
    return [None] * len(args)


_SaveArgs = tuple[_SaveRow, list[NewEvent], SlotChange | None]
#: Per save: whether each event was new, and the acquiring requests of its `SlotChange` that hold.
_Saved = tuple[list[bool], list[str]]


async def _save_runs(conn: Connection, args: list[_SaveArgs]) -> list[_Saved]:
    # A stale fencing token aborts its statement (`connect_fenced`) and so the batch;
    # the writer then retries each save on its own, so only the stale save is refused.
    try:
        stored = await _apply_saves(conn, args)
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == FENCE_LOST:
            raise RunOwnershipLost(str(exc.detail)) from None
        raise
    changes = [(row[0], slots) for row, _, slots in args if slots is not None]
    if not changes:
        return [(s, []) for s in stored]
    # After every save of the run of saves (slots read runs' statuses), with
    # the lock the batch took as its prelude (`_save_prelude`).
    held, granted = await pg_slots.change_many(conn, changes)
    await _announce_grants(conn, granted)
    return [
        (s, [] if slots is None else [a.request_id for a in slots.acquire if a.request_id in held])
        for s, (_, _, slots) in zip(stored, args, strict=True)
    ]


def _save_prelude(args: _SaveArgs) -> str | None:
    _, events, slots = args
    if slots is not None or (events and any(e.slots for e in events)):
        return pg_slots.LOCK
    return None


def _slots_prelude(events: list[NewEvent]) -> str | None:
    """The slot lock, for a batch recording runs that take slots."""
    return pg_slots.LOCK if any(e.slots for e in events) else None


async def _apply_saves(conn: Connection, args: list[_SaveArgs]) -> list[list[bool]]:
    # A run's events are stored after its save and before any later save they
    # could bear on. Events that only record (no runs, memos or cancellations,
    # as `inngest/function.finished` with nothing triggered by it) bear on no
    # save: they wait and go together after the saves, so a run of saves is
    # one pipelined round trip and one for the events instead of several per run.
    results: list[list[bool]] = [[] for _ in args]
    plain: list[_SaveRow] = []
    deferred: list[tuple[int, list[NewEvent]]] = []  # (index in args, its events)

    async def flush() -> None:
        nonlocal plain, deferred
        if plain:
            # executemany pipelines the statements: one round trip for the whole run of saves.
            await conn.executemany(_SAVE_RUN, plain)
            plain = []
        if deferred:
            stored = await _insert_events(conn, [e for _, events in deferred for e in events])
            at = 0
            for i, events in deferred:
                results[i] = stored[at : at + len(events)]
                at += len(events)
            deferred = []

    for i, (row, events, _) in enumerate(args):
        plain.append(row)
        if not events:
            continue
        if any(e.runs or e.memos or e.cancels or e.holds for e in events):
            await flush()
            results[i] = await _insert_events(conn, events)
        else:
            deferred.append((i, events))
    await flush()
    return results


def _deleted(status: str) -> int:
    return int(status.split()[-1])


#: Before every event: where a round's scan of old events starts.
_FIRST_EVENT: Final = (-(2**63), "")


async def _prune_history(conn: Connection, before_ms: int, limit: int, events_after: EventsCursor | None) -> Pruned:
    # Every selection skips rows another transaction holds, so two processes
    # pruning at once take disjoint batches and never wait on each other.
    async with conn.transaction():
        runs = await conn.fetch(
            "SELECT run_id, event_id FROM runs WHERE ended_at_ms < $1 AND status <> 'Running'"
            " ORDER BY ended_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED",
            before_ms,
            limit,
        )
        steps = events = 0
        if runs:
            run_ids = [r["run_id"] for r in runs]
            steps = _deleted(await conn.execute("DELETE FROM steps WHERE run_id = ANY($1::text[])", run_ids))
            await conn.execute("DELETE FROM run_events WHERE run_id = ANY($1::text[])", run_ids)
            await conn.execute("DELETE FROM runs WHERE run_id = ANY($1::text[])", run_ids)
            # Their events, unless a run the same event started remains. No run
            # can start on an event already stored (runs are inserted only with
            # a new event), so an event found unreferenced stays so.
            events = _deleted(
                await conn.execute(
                    "DELETE FROM events e WHERE e.id = ANY($1::text[]) AND e.received_at_ms < $2"
                    " AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id)",
                    list({r["event_id"] for r in runs}),
                    before_ms,
                )
            )
        # The other old events (emitted, or that started nothing), in age order
        # from where the previous batch stopped: one that a live run still needs
        # is examined once a round, not once a batch.
        after_ms, after_id = events_after or _FIRST_EVENT
        scanned = await conn.fetch(
            "SELECT e.received_at_ms, e.id, EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id) AS referenced"
            " FROM events e WHERE e.received_at_ms < $1 AND (e.received_at_ms, e.id) > ($2, $3)"
            " ORDER BY e.received_at_ms, e.id LIMIT $4 FOR UPDATE SKIP LOCKED",
            before_ms,
            after_ms,
            after_id,
            limit,
        )
        unneeded = [r["id"] for r in scanned if not r["referenced"]]
        if unneeded:
            events += _deleted(await conn.execute("DELETE FROM events WHERE id = ANY($1::text[])", unneeded))
        cursor = (scanned[-1]["received_at_ms"], scanned[-1]["id"]) if len(scanned) == limit else None
        # A request is created after its run started: a reply stored before the
        # oldest Running run started can be no live run's (LEAST skips a NULL).
        replies = _deleted(
            await conn.execute(
                "DELETE FROM replies WHERE request_id IN (SELECT request_id FROM replies WHERE stored_at_ms <"
                " LEAST($1, (SELECT min(started_at_ms) FROM runs WHERE status = 'Running'))"
                " ORDER BY stored_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED)",
                before_ms,
                limit,
            )
        )
        leases = _deleted(
            await conn.execute(
                "DELETE FROM leases WHERE request_id IN (SELECT request_id FROM leases WHERE expires_at_ms < $1"
                " LIMIT $2 FOR UPDATE SKIP LOCKED)",
                before_ms,
                limit,
            )
        )
        # Heartbeats of executors gone since before the cutoff (they own nothing
        # any more: their runs are claimable since their heartbeat lapsed).
        await conn.execute(
            "DELETE FROM owners WHERE owner IN (SELECT owner FROM owners WHERE expires_at_ms < $1"
            " LIMIT $2 FOR UPDATE SKIP LOCKED)",
            before_ms,
            limit,
        )
        # Flow-control history: skips, and GCRA state in the past (the same as none).
        await conn.execute(
            "DELETE FROM skipped_starts WHERE run_id IN (SELECT run_id FROM skipped_starts WHERE at_ms < $1"
            " LIMIT $2 FOR UPDATE SKIP LOCKED)",
            before_ms,
            limit,
        )
        await conn.execute(
            "DELETE FROM event_holds WHERE (event_id, function_id) IN (SELECT event_id, function_id"
            " FROM event_holds WHERE at_ms < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            before_ms,
            limit,
        )
        await conn.execute(
            "DELETE FROM start_limits WHERE (function_id, kind, key) IN (SELECT function_id, kind, key"
            " FROM start_limits WHERE tat_ms < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            before_ms,
            limit,
        )
        # Singleton keys whose run is no longer Running (or gone): the same as
        # no holder. The run id is part of the match, so a key a gate gave to a
        # new run meanwhile is not deleted (its row no longer matches).
        singletons = _deleted(
            await conn.execute(
                "DELETE FROM singletons WHERE (function_id, key, run_id) IN (SELECT s.function_id, s.key, s.run_id"
                " FROM singletons s LEFT JOIN runs r ON r.run_id = s.run_id"
                " WHERE r.run_id IS NULL OR r.status <> 'Running' LIMIT $1 FOR UPDATE OF s SKIP LOCKED)",
                limit,
            )
        )
        # Runs of a throttle's line that ended while they waited (cancelled).
        await conn.execute(
            "DELETE FROM throttle_waits WHERE run_id IN (SELECT w.run_id FROM throttle_waits w"
            " LEFT JOIN runs r ON r.run_id = w.run_id WHERE r.run_id IS NULL OR r.status <> 'Running'"
            " LIMIT $1 FOR UPDATE OF w SKIP LOCKED)",
            limit,
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


#: `request_queue_stats`: counts over at most $2 rows of the queue at $1 (now, Unix ms).
_QUEUE_STATS: Final = (
    "SELECT COUNT(CASE WHEN NOT lapsed AND (holder IS NULL OR held_until_ms < $1) THEN 1 END),"
    " COUNT(CASE WHEN NOT lapsed AND holder IS NOT NULL AND held_until_ms >= $1 THEN 1 END),"
    " COUNT(CASE WHEN lapsed THEN 1 END),"
    " MIN(CASE WHEN NOT lapsed AND (holder IS NULL OR held_until_ms < $1) THEN queued_at_ms END)"
    " FROM (SELECT holder, held_until_ms, lapsed, queued_at_ms FROM queued_requests LIMIT $2) AS q"
)

# How each outcome of `settle_request` ends a hold; each returns the function slug.
#: `held_until_ms` of a request not held: queued fresh and never taken (see
#: `QueuedRequest.fresh`; a value older versions never write), or any other.
_NEVER_HELD: Final = -1
_HELD_BEFORE: Final = 0

_SETTLE: Final = {
    ANSWERED: "DELETE FROM queued_requests WHERE request_id = $1 AND holder = $2 RETURNING function_slug",
    RETURNED: "UPDATE queued_requests SET holder = NULL, held_until_ms = 0 WHERE request_id = $1 AND holder = $2"
    " RETURNING function_slug",
    LAPSED: "UPDATE queued_requests SET holder = NULL, held_until_ms = 0, lapsed = TRUE WHERE request_id = $1"
    " AND holder = $2 RETURNING function_slug",
}

_QUEUE_REQUESTS: Final = """
INSERT INTO queued_requests (request_id, run_id, app_name, function_slug, step_id, payload, queued_at_ms, held_until_ms)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::bigint[], $8::bigint[]
)
ON CONFLICT (request_id) DO UPDATE SET
    holder = CASE WHEN queued_requests.lapsed THEN NULL ELSE queued_requests.holder END,
    lapsed = FALSE, held_until_ms = GREATEST(queued_requests.held_until_ms, 0)
"""


async def _queue_requests(conn: Connection, args: list[QueuedRequest]) -> list[None]:
    # One statement per round of distinct ids (one upsert may not touch a row
    # twice); a request id queued twice in one run comes round again, as if alone.
    rest = args
    while rest:
        seen: set[str] = set()
        now: list[QueuedRequest] = []
        later: list[QueuedRequest] = []
        for r in rest:
            (later if r.request_id in seen else now).append(r)
            seen.add(r.request_id)
        await conn.execute(
            _QUEUE_REQUESTS,
            [r.request_id for r in now],
            [r.run_id for r in now],
            [r.app_name for r in now],
            [r.function_slug for r in now],
            [r.step_id for r in now],
            [r.payload for r in now],
            [r.queued_at_ms for r in now],
            [_NEVER_HELD if r.fresh else _HELD_BEFORE for r in now],
        )
        rest = later
    # Sent at commit, so a gateway told finds them: one notification per function.
    await conn.execute(_NOTIFY_EACH, REQUEST_QUEUED, list(dict.fromkeys(r.function_slug for r in args)))
    return [None] * len(args)


_QUEUE: Final = Bulk("queue_request", _queue_requests)
_PUT_REPLY: Final = Bulk("put_reply", _put_replies)
_CHANGE_LEASE: Final = Bulk("change_lease", _change_leases)
_SAVE: Final = Bulk("save_run", _save_runs, _save_prelude)


async def _record_events(conn: Connection, args: list[list[NewEvent]]) -> list[list[bool]]:
    # Several callers' events in one `_insert_events`: the same order as one call each.
    flat = [e for events in args for e in events]
    stored = await _insert_events(conn, flat)
    await _notify_events(conn, [e.event.id for e, is_new in zip(flat, stored, strict=True) if is_new])
    out: list[list[bool]] = []
    at = 0
    for events in args:
        out.append(stored[at : at + len(events)])
        at += len(events)
    return out


_RECORD_EVENTS: Final = Bulk("record_events", _record_events, _slots_prelude)


async def _notify_events(conn: Connection, event_ids: list[str]) -> None:
    """Announce `event_ids` at commit, in as few notifications as the payload limit allows."""
    if event_ids:
        await conn.execute(_NOTIFY_EACH, EVENTS_RECORDED, chunk_ids(event_ids))


async def _announce_grants(conn: Connection, granted: list[str]) -> list[str]:
    """Announce `granted` on `SLOTS_GRANTED` at commit."""
    if granted:
        await conn.execute(_NOTIFY_EACH, SLOTS_GRANTED, chunk_ids(granted))
    return granted


async def _acquire_slots(conn: Connection, args: list[pg_slots.Acquiring]) -> list[bool]:
    held, granted = await pg_slots.acquire_many(conn, args)
    await _announce_grants(conn, granted)
    return [request_id in held for request_id, *_ in args]


#: Slot operations of no particular kind, run one after another under the
#: slot lock, taken as the batch's prelude. Every batch that touches slots
#: takes that lock first, before any other lock or row, so no transaction
#: holding another lock ever waits for it: slot work cannot deadlock with
#: the rest.
_LOCKED: Final[Bulk[Callable[[Connection], Awaitable[Any]], Any]] = Bulk(
    "slot_operations", SINGLE.apply, lambda _: pg_slots.LOCK
)

#: A run of `acquire_slots` calls: the lock as the batch's prelude, then `pg_slots.acquire_many`.
_ACQUIRE_SLOTS: Final = Bulk("acquire_slots", _acquire_slots, lambda _: pg_slots.LOCK)


_LeaseWithin = tuple[LeaseRecord, int, int]  # (the lease, the instance's limit, now)


async def _put_leases_within(conn: Connection, args: list[_LeaseWithin]) -> list[bool]:
    # The instances' locks first, in one order (by key) so two writers locking
    # several instances cannot deadlock on them; each is held until the batch
    # commits, so the count below sees every other process's committed leases
    # and none can commit one in between.
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, k) FROM"
        " (SELECT DISTINCT hashtext(i) AS k FROM unnest($2::text[]) AS i ORDER BY k) AS keys",
        _LEASE_LOCK_SPACE,
        list({lease.instance_id for lease, _, _ in args}),
    )
    results: list[bool] = []
    for lease, limit, now_ms in args:
        stored = await conn.fetchval(
            "INSERT INTO leases (request_id, lease_id, expires_at_ms, instance_id)"
            " SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM leases WHERE request_id = $1 AND instance_id = $4)"
            " OR (SELECT count(*) FROM leases WHERE instance_id = $4 AND expires_at_ms > $5 AND request_id <> $1) < $6"
            " ON CONFLICT (request_id) DO UPDATE SET lease_id = excluded.lease_id,"
            " expires_at_ms = excluded.expires_at_ms, instance_id = excluded.instance_id RETURNING TRUE",
            lease.request_id,
            lease.lease_id,
            lease.expires_at_ms,
            lease.instance_id,
            now_ms,
            limit,
        )
        results.append(bool(stored))
    return results


_PUT_LEASE_WITHIN: Final = Bulk("put_lease_within", _put_leases_within)

# Upsert a process's entry, delete entries long expired ($7), and notify ($8) when
# the entry is new, changed state or belongs to a restarted process.
_PUT_PROCESS: Final = """
WITH prev AS (
    SELECT state, started_at_ms FROM processes WHERE process_id = $1 AND role = $2
), gone AS (
    DELETE FROM processes WHERE expires_at_ms < $7 AND NOT (process_id = $1 AND role = $2)
), put AS (
    INSERT INTO processes (process_id, role, address, state, expires_at_ms, started_at_ms)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (process_id, role) DO UPDATE SET address = excluded.address, state = excluded.state,
        expires_at_ms = excluded.expires_at_ms, started_at_ms = excluded.started_at_ms
)
SELECT pg_notify($8, $1) WHERE NOT EXISTS (SELECT 1 FROM prev WHERE state = $4 AND started_at_ms = $6)
"""


class PostgresStore:
    """`Store` on a PostgreSQL database. Open with `await PostgresStore.open(dsn)`."""

    def __init__(self, writer: PostgresWriter, listener: PostgresListener) -> None:
        self._writer = writer
        self._listener = listener

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        max_batch: int = 1024,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
    ) -> PostgresStore:
        """Connect to `dsn`, migrate its schema, and start the writer.

        `pool_size` (at least 2) is how many connections the store holds at
        most: one for the writer, the others for reads. `max_batch` caps how
        many operations share one transaction; 1 turns group commit off.
        `reconnect_timeout` is how many seconds an operation that met a lost
        connection keeps retrying (`pg_reconnect`). The first connection is
        not retried: a wrong address fails the open at once.
        """
        if pool_size < 2:
            raise ValueError(f"pool_size must be at least 2 (one writer, one reader), got {pool_size}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        validate_reconnect_timeout(reconnect_timeout)
        # No floor (min_size=0): connections are opened as they are needed, and
        # after a server restart the pool does not race the store to reopen
        # them while the server still refuses connections.
        pool: asyncpg.Pool[asyncpg.Record] = await asyncpg.create_pool(
            dsn, min_size=0, max_size=pool_size, reset=_keep_session
        )
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            writer = PostgresWriter(pool, max_batch=max_batch, reconnect_timeout=reconnect_timeout)
            await writer.start()
        except BaseException:
            await pool.close()
            raise
        return cls(writer, PostgresListener(dsn))

    @property
    def commits(self) -> int:
        """Write transactions committed since open."""
        return self._writer.commits

    async def close(self) -> None:
        await self._listener.close()
        await self._writer.close()

    # --- gateway: replies and leases --------------------------------------------

    def put_reply(self, request_id: str, data: bytes) -> Awaitable[bool]:
        return self._writer.submit(_PUT_REPLY, (request_id, data, _now_ms()))

    async def get_reply(self, request_id: str) -> bytes | None:
        async def op(conn: Connection) -> bytes | None:
            data: bytes | None = await conn.fetchval("SELECT data FROM replies WHERE request_id = $1", request_id)
            return data

        return await self._writer.read(op)

    async def prune_replies(self, stored_before_ms: int) -> int:
        async def op(conn: Connection) -> int:
            status = await conn.execute("DELETE FROM replies WHERE stored_at_ms < $1", stored_before_ms)
            return int(status.split()[-1])

        return await self._writer.run(op)

    def put_lease(self, request_id: str, lease_id: str, expires_at_ms: int, instance_id: str) -> Awaitable[None]:
        return self._writer.submit(
            _CHANGE_LEASE, (request_id, LeaseRecord(request_id, lease_id, expires_at_ms, instance_id))
        )

    async def get_lease(self, request_id: str) -> LeaseRecord | None:
        async def op(conn: Connection) -> LeaseRecord | None:
            row = await conn.fetchrow(
                "SELECT lease_id, expires_at_ms, instance_id FROM leases WHERE request_id = $1", request_id
            )
            return None if row is None else LeaseRecord(request_id, row[0], row[1], row[2])

        return await self._writer.read(op)

    def delete_lease(self, request_id: str) -> Awaitable[None]:
        return self._writer.submit(_CHANGE_LEASE, (request_id, None))

    # --- executor: apps ----------------------------------------------------------

    async def put_app(self, app: AppRecord) -> None:
        functions = _encode(app.functions)

        async def op(conn: Connection) -> None:
            await conn.execute(
                "INSERT INTO apps (app_name, app_version, functions, updated_at_ms) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (app_name) DO UPDATE SET app_version = excluded.app_version,"
                " functions = excluded.functions, updated_at_ms = excluded.updated_at_ms",
                app.app_name,
                app.app_version,
                functions,
                app.updated_at_ms,
            )
            await conn.execute("SELECT pg_notify($1, $2)", APPS_CHANGED, app.app_name)

        await self._writer.run(op)

    async def list_apps(self) -> list[AppRecord]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "SELECT app_name, app_version, functions, updated_at_ms FROM apps ORDER BY app_name"
            )

        return [
            AppRecord(
                app_name=r["app_name"],
                functions=_decode_functions(r["functions"]),
                app_version=r["app_version"],
                updated_at_ms=r["updated_at_ms"],
            )
            for r in await self._writer.read(op)
        ]

    # --- executor: events and runs ------------------------------------------------

    async def record_events(self, events: list[NewEvent]) -> list[bool]:
        return await self._writer.submit(_RECORD_EVENTS, list(events))

    async def event_holds(self, event_id: str) -> list[EventHold]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(_SELECT_EVENT_HOLDS, event_id)

        return [
            hold_of(event_id, (r[0], r[1], r[2], r[3], r[4]), None if r[5] is None else (r[5], r[6], r[7]))
            for r in await self._writer.read(op)
        ]

    async def skipped_starts(self, event_id: str) -> list[SkippedStart]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "SELECT run_id, function_id, event_id, reason, at_ms FROM skipped_starts WHERE event_id = $1"
                ' ORDER BY at_ms, run_id COLLATE "C"',
                event_id,
            )

        return [SkippedStart(r[0], r[1], r[2], r[3], r[4]) for r in await self._writer.read(op)]

    async def get_event(self, event_id: str) -> EventRecord | None:
        async def op(conn: Connection) -> asyncpg.Record | None:
            return await conn.fetchrow("SELECT id, name, ts, received_at_ms, body FROM events WHERE id = $1", event_id)

        row = await self._writer.read(op)
        return None if row is None else _event_from_record(row)

    async def get_events(self, event_ids: Sequence[str]) -> list[EventRecord]:
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return []

        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                f"{_SELECT_EVENTS} JOIN unnest($1::text[]) WITH ORDINALITY AS wanted(id, n) USING (id) ORDER BY n",
                ids,
            )

        return [_event_from_record(r) for r in await self._writer.read(op)]

    async def events_since(self, received_after_ms: int, limit: int) -> list[EventRecord]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                f'{_SELECT_EVENTS} WHERE received_at_ms > $1 ORDER BY received_at_ms, id COLLATE "C" LIMIT $2',
                received_after_ms,
                limit,
            )

        return [_event_from_record(r) for r in await self._writer.read(op)]

    async def list_events(self, name: str | None, older_than: tuple[int, str] | None, limit: int) -> list[EventRecord]:
        conditions: list[str] = []
        params: list[object] = []
        if name is not None:
            params.append(name)
            conditions.append(f"name = ${len(params)}")
        if older_than is not None:
            params += older_than
            conditions.append(f"(received_at_ms, id) < (${len(params) - 1}, ${len(params)})")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        params.append(max(0, limit))
        # The database's own collation on ids, as the indexes on events use.
        sql = f"{_SELECT_EVENTS}{where} ORDER BY received_at_ms DESC, id DESC LIMIT ${len(params)}"

        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(sql, *params)

        return [_event_from_record(r) for r in await self._writer.read(op)]

    async def get_run(self, run_id: str) -> RunRecord | None:
        async def op(conn: Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(f"{_SELECT_RUNS} WHERE run_id = $1", run_id)

        row = await self._writer.read(op)
        return None if row is None else _run_from_record(row)

    async def load_run(self, run_id: str) -> LoadedRun | None:
        async def op(conn: Connection) -> LoadedRun | None:
            # One snapshot for the three reads, so memos and state agree.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                row = await conn.fetchrow(_LOAD_RUN, run_id)
                if row is None:
                    return None
                event = await conn.fetchrow(
                    "SELECT id, name, ts, received_at_ms, body FROM events WHERE id = $1", row["event_id"]
                )
                memos = await conn.fetch("SELECT step_hash, result FROM steps WHERE run_id = $1 ORDER BY seq", run_id)
            return LoadedRun(
                run=_run_from_record(row),
                event=None if event is None else _event_from_record(event),
                memos=[StepMemo(m["step_hash"], m["result"]) for m in memos],
                batch=list(row["batch"] or ()),
            )

        return await self._writer.read(op)

    async def runs_for_event(self, event_id: str) -> list[RunRecord]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                f'{_SELECT_RUNS} WHERE event_id = $1 ORDER BY started_at_ms, run_id COLLATE "C"', event_id
            )

        return [_run_from_record(r) for r in await self._writer.read(op)]

    async def runs_with_status(self, status: str) -> list[RunRecord]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            # COLLATE "C": the byte order SQLite sorts text in, whatever the database's locale.
            return await conn.fetch(f'{_SELECT_RUNS} WHERE status = $1 ORDER BY run_id COLLATE "C"', status)

        return [_run_from_record(r) for r in await self._writer.read(op)]

    async def list_runs(self, query: RunFilter) -> list[RunRecord]:
        tail, params = run_listing.listing(query, start="started_at_ms", placeholder=_dollar, collate=_BYTEWISE)
        sql = _SELECT_RUNS + tail

        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(sql, *params)

        return [_run_from_record(r) for r in await self._writer.read(op)]

    async def list_skipped(self, query: RunFilter) -> list[SkippedStart]:
        tail, params = run_listing.listing(
            query, start="at_ms", placeholder=_dollar, collate=_BYTEWISE, with_status=False
        )
        sql = _SELECT_SKIPPED + tail

        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(sql, *params)

        return [SkippedStart(r[0], r[1], r[2], r[3], r[4]) for r in await self._writer.read(op)]

    async def run_steps(self, run_id: str) -> list[StepMemo]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch("SELECT step_hash, result, info FROM steps WHERE run_id = $1 ORDER BY seq", run_id)

        return [StepMemo(m[0], m[1], _read_info(m[2])) for m in await self._writer.read(op)]

    async def get_memos(self, run_id: str) -> list[StepMemo]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch("SELECT step_hash, result FROM steps WHERE run_id = $1 ORDER BY seq", run_id)

        return [StepMemo(m["step_hash"], m["result"]) for m in await self._writer.read(op)]

    async def put_memo(self, run_id: str, memo: StepMemo) -> bool:
        async def op(conn: Connection) -> bool:
            status = await conn.execute(_INSERT_MEMO, run_id, memo.step_hash, memo.result, _info(memo))
            return status == "INSERT 0 1"

        return await self._writer.run(op)

    async def request_cancel(self, run_id: str) -> bool:
        async def op(conn: Connection) -> bool:
            if await conn.execute(_FLAG_CANCEL, run_id) != "UPDATE 1":
                return False
            await conn.execute("SELECT pg_notify($1, $2)", RUN_CANCEL_REQUESTED, run_id)
            return True

        return await self._writer.run(op)

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
        row: _SaveRow = (
            run.run_id,
            [m.step_hash for m in memos or ()],
            [m.result for m in memos or ()],
            consumed_request_id,
            None if run.status == RUNNING else run.status,
            run.ended_at_ms,
            run.max_attempts,
            _encode(run.requests) if run.requests else _EMPTY_LIST,
            _encode(run.waiting) if run.waiting else _EMPTY_LIST,
            run.disable_immediate_execution,
            run.request_version,
            run.output,
            fence,
            [_info(m) for m in memos or ()],
        )
        stored, held = await self._writer.submit(_SAVE, (row, list(events or ()), slots))
        if slots is not None:
            slots.held = held
        return stored

    # --- executor: run ownership -------------------------------------------------------

    async def heartbeat(self, owner: str, expires_at_ms: int) -> None:
        async def op(conn: Connection) -> None:
            await conn.execute(
                "INSERT INTO owners (owner, expires_at_ms) VALUES ($1, $2)"
                " ON CONFLICT (owner) DO UPDATE SET expires_at_ms = excluded.expires_at_ms",
                owner,
                expires_at_ms,
            )

        await self._writer.run(op)

    async def claim_runs(self, owner: str, now_ms: int, limit: int) -> list[Claim]:
        # SKIP LOCKED: rows another transaction is claiming (or saving) are left to it,
        # so concurrent claimers neither wait on each other nor take the same run.
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "UPDATE runs SET owner = $1, fence = runs.fence + 1 FROM ("
                " SELECT run_id FROM runs r WHERE status = 'Running' AND (owner IS NULL"
                " OR (owner <> $1 AND NOT EXISTS"
                " (SELECT 1 FROM owners o WHERE o.owner = r.owner AND o.expires_at_ms >= $2)))"
                ' ORDER BY run_id COLLATE "C" LIMIT $3 FOR UPDATE SKIP LOCKED) AS due'
                " WHERE runs.run_id = due.run_id RETURNING runs.run_id, runs.fence",
                owner,
                now_ms,
                limit,
            )

        rows = await self._writer.run(op)
        return [Claim(r["run_id"], r["fence"]) for r in sorted(rows, key=lambda r: r["run_id"].encode())]

    async def release_runs(self, owner: str) -> int:
        async def op(conn: Connection) -> int:
            status = await conn.execute("UPDATE runs SET owner = NULL WHERE owner = $1 AND status = 'Running'", owner)
            await conn.execute("DELETE FROM owners WHERE owner = $1", owner)
            released = int(status.split()[-1])
            if released:
                # Delivered at commit, so listeners find the runs claimable.
                await conn.execute("SELECT pg_notify($1, $2)", RUNS_RELEASED, owner)
            return released

        return await self._writer.run(op)

    # --- queued requests -----------------------------------------------------------------

    async def queue_request(self, request: QueuedRequest) -> None:
        await self._writer.submit(_QUEUE, request)

    async def take_requests(
        self, gateway: str, function_slugs: Sequence[str], now_ms: int, hold_until_ms: int, limit: int
    ) -> list[QueuedRequest]:
        if not function_slugs:
            return []

        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "UPDATE queued_requests q SET holder = $1, held_until_ms = $2 FROM ("
                " SELECT request_id, held_until_ms FROM queued_requests WHERE function_slug = ANY($3::text[])"
                " AND NOT lapsed AND (holder IS NULL OR held_until_ms < $4)"
                ' ORDER BY queued_at_ms, request_id COLLATE "C"'
                " LIMIT $5 FOR UPDATE SKIP LOCKED) AS due WHERE q.request_id = due.request_id"
                " RETURNING q.request_id, q.run_id, q.app_name, q.function_slug, q.step_id, q.payload,"
                " q.queued_at_ms, due.held_until_ms < 0",
                gateway,
                hold_until_ms,
                list(function_slugs),
                now_ms,
                limit,
            )

        rows = await self._writer.run(op)
        taken = [QueuedRequest(*r) for r in rows]
        return sorted(taken, key=lambda q: (q.queued_at_ms, q.request_id.encode()))

    async def request_queue_stats(self, now_ms: int, limit: int) -> RequestQueueStats:
        async def op(conn: Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(_QUEUE_STATS, now_ms, limit)

        row = await self._writer.read(op)
        assert row is not None
        waiting, held, lapsed, oldest = row[0], row[1], row[2], row[3]
        return RequestQueueStats(waiting, held, lapsed, oldest, waiting + held + lapsed >= limit)

    async def hold_requests(self, gateway: str, request_ids: Sequence[str], hold_until_ms: int) -> None:
        async def op(conn: Connection) -> None:
            await conn.execute(
                "UPDATE queued_requests SET held_until_ms = $1 WHERE request_id = ANY($2::text[]) AND holder = $3",
                hold_until_ms,
                list(request_ids),
                gateway,
            )

        await self._writer.run(op)

    async def settle_request(self, request_id: str, gateway: str, outcome: str) -> bool:
        statement = _SETTLE.get(outcome)
        if statement is None:
            raise ValueError(f"a request is settled as {ANSWERED}, {RETURNED} or {LAPSED}, not {outcome!r}")

        async def op(conn: Connection) -> bool:
            slug: str | None = await conn.fetchval(statement, request_id, gateway)
            if slug is None:
                return False
            # Sent at commit, so whoever is told finds the new state.
            channel, payload = (REQUEST_QUEUED, slug) if outcome == RETURNED else (REQUEST_SETTLED, request_id)
            await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
            return True

        return await self._writer.run(op)

    async def request_lapsed(self, request_id: str) -> bool:
        async def op(conn: Connection) -> bool:
            return bool(await conn.fetchval("SELECT lapsed FROM queued_requests WHERE request_id = $1", request_id))

        return await self._writer.read(op)

    async def dequeue_request(self, request_id: str) -> None:
        async def op(conn: Connection) -> None:
            await conn.execute("DELETE FROM queued_requests WHERE request_id = $1", request_id)

        await self._writer.run(op)

    async def taken_request(self, request_id: str, gateway: str, now_ms: int) -> TakenRequest:
        async def op(conn: Connection) -> TakenRequest:
            # One statement, so one snapshot: a reply consumed and its request
            # dequeued by the same commit are seen both present or both gone.
            row = await conn.fetchrow(
                "SELECT (SELECT data FROM replies WHERE request_id = $1),"
                " EXISTS (SELECT 1 FROM queued_requests WHERE request_id = $1 AND holder = $2),"
                " EXISTS (SELECT 1 FROM leases WHERE request_id = $1 AND expires_at_ms > $3)",
                request_id,
                gateway,
                now_ms,
            )
            assert row is not None
            return TakenRequest(row[0], row[1], row[2])

        return await self._writer.read(op)

    # --- notifications -------------------------------------------------------------------

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        await self._listener.add(channel, callback)

    async def notify(self, channel: str, payload: str) -> None:
        async def op(conn: Connection) -> None:
            await conn.execute("SELECT pg_notify($1, $2)", channel, payload)

        await self._writer.run(op)

    # --- the process registry ---------------------------------------------------------------

    async def put_process(self, record: ProcessRecord) -> None:
        r = record

        async def op(conn: Connection) -> None:
            await conn.execute(
                _PUT_PROCESS,
                r.process_id,
                r.role,
                r.address,
                r.state,
                r.expires_at_ms,
                r.started_at_ms,
                r.expires_at_ms - REGISTRY_KEEP_MS,
                PROCESSES_CHANGED,
            )

        await self._writer.run(op)

    async def list_processes(self, role: str | None, now_ms: int) -> list[ProcessRecord]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "SELECT process_id, role, address, state, expires_at_ms, started_at_ms FROM processes"
                " WHERE ($1::text IS NULL OR role = $1) AND expires_at_ms > $2"
                ' ORDER BY started_at_ms, process_id COLLATE "C", role COLLATE "C"',
                role,
                now_ms,
            )

        return [ProcessRecord(*r) for r in await self._writer.read(op)]

    async def drop_process(self, process_id: str, role: str) -> None:
        async def op(conn: Connection) -> None:
            await conn.execute("DELETE FROM processes WHERE process_id = $1 AND role = $2", process_id, role)
            await conn.execute("SELECT pg_notify($1, $2)", PROCESSES_CHANGED, process_id)

        await self._writer.run(op)

    async def put_connections(self, gateway_id: str, records: list[ConnectionRecord]) -> None:
        stale_before = max((c.expires_at_ms for c in records), default=None)

        async def op(conn: Connection) -> None:
            await conn.execute("DELETE FROM connections WHERE gateway_id = $1", gateway_id)
            if stale_before is None:
                return
            await conn.execute("DELETE FROM connections WHERE expires_at_ms < $1", stale_before - REGISTRY_KEEP_MS)
            await conn.executemany(
                "INSERT INTO connections (connection_id, gateway_id, instance_id, apps, functions, capacity,"
                " in_flight, state, last_heartbeat_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                " ON CONFLICT (gateway_id, connection_id) DO UPDATE SET instance_id = excluded.instance_id,"
                " apps = excluded.apps, functions = excluded.functions, capacity = excluded.capacity,"
                " in_flight = excluded.in_flight, state = excluded.state,"
                " last_heartbeat_ms = excluded.last_heartbeat_ms, expires_at_ms = excluded.expires_at_ms",
                [
                    (
                        c.connection_id,
                        gateway_id,
                        c.instance_id,
                        list(c.apps),
                        list(c.functions),
                        c.capacity,
                        c.in_flight,
                        c.state,
                        c.last_heartbeat_ms,
                        c.expires_at_ms,
                    )
                    for c in records
                ],
            )

        await self._writer.run(op)

    async def list_connections(self, now_ms: int) -> list[ConnectionRecord]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "SELECT connection_id, gateway_id, instance_id, apps, functions, capacity, in_flight, state,"
                " last_heartbeat_ms, expires_at_ms FROM connections WHERE expires_at_ms > $1"
                ' ORDER BY gateway_id COLLATE "C", connection_id COLLATE "C"',
                now_ms,
            )

        return [
            ConnectionRecord(
                connection_id=r["connection_id"],
                gateway_id=r["gateway_id"],
                instance_id=r["instance_id"],
                apps=list(r["apps"]),
                functions=list(r["functions"]),
                capacity=r["capacity"],
                in_flight=r["in_flight"],
                state=r["state"],
                last_heartbeat_ms=r["last_heartbeat_ms"],
                expires_at_ms=r["expires_at_ms"],
            )
            for r in await self._writer.read(op)
        ]

    def put_lease_within(
        self, request_id: str, lease_id: str, expires_at_ms: int, instance_id: str, limit: int, now_ms: int
    ) -> Awaitable[bool]:
        return self._writer.submit(
            _PUT_LEASE_WITHIN, (LeaseRecord(request_id, lease_id, expires_at_ms, instance_id), limit, now_ms)
        )

    # --- concurrency slots --------------------------------------------------------------

    async def acquire_slots(self, request_id: str, run_id: str, claims: Sequence[SlotClaim], order: int) -> bool:
        if not claims:
            return True
        return await self._writer.submit(_ACQUIRE_SLOTS, (request_id, run_id, list(claims), order))

    async def release_slots(self, request_ids: Sequence[str]) -> list[str]:
        ids = list(request_ids)
        if not ids:
            return []

        async def op(conn: Connection) -> list[str]:
            return await _announce_grants(conn, await pg_slots.release(conn, ids))

        return await self._writer.submit(_LOCKED, op)

    async def release_run_slots(self, run_id: str, keep: Sequence[str] = ()) -> list[str]:
        kept = list(keep)

        async def op(conn: Connection) -> list[str]:
            return await _announce_grants(conn, await pg_slots.release_run(conn, run_id, kept))

        return await self._writer.submit(_LOCKED, op)

    async def slots_held(self, key: str) -> list[str]:
        return await self._writer.read(lambda conn: pg_slots.held(conn, key))

    # --- history retention -------------------------------------------------------------

    async def prune_history(self, before_ms: int, limit: int, events_after: EventsCursor | None = None) -> Pruned:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        return await self._writer.aside(lambda conn: _prune_history(conn, before_ms, limit, events_after))

    # --- executor: debounces and batches ------------------------------------------------

    async def next_held_due(self) -> int | None:
        async def op(conn: Connection) -> int | None:
            due = await conn.fetchval("SELECT min(due_ms) FROM held_starts")
            return None if due is None else int(due)

        return await self._writer.read(op)

    async def take_throttle_turn(self, run_id: str, now_ms: int) -> int | None:
        turn = await self._writer.run(lambda conn: _take_turn(conn, run_id, now_ms))
        return None if turn is None else turn.wait_ms

    async def start_held(self, owner: str, now_ms: int, limit: int) -> list[Claim]:
        async def op(conn: Connection) -> list[str]:
            cancelled: list[str] = []
            rows = await conn.fetch(
                "SELECT function_id, key FROM held_starts WHERE due_ms <= $1 ORDER BY due_ms LIMIT $2", now_ms, limit
            )
            started: list[str] = []
            for row in rows:
                function_id, key = row["function_id"], row["key"]
                # Skip what another transaction holds (an event being added, or
                # another executor firing it); read it again once it is ours.
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _held_lock(function_id, key)):
                    continue
                current = await conn.fetchrow(f"{_SELECT_HELD} WHERE function_id = $1 AND key = $2", function_id, key)
                if current is None or current["due_ms"] > now_ms:
                    continue
                held = _held_from_record(current)
                try:
                    run_id = await _start_held_run(conn, held, owner, NEW_RUN_FENCE, now_ms, cancelled, wait=False)
                except _GateBusy:
                    continue  # its gate's state is another transaction's: look again soon
                await conn.execute(_DELETE_HELD, function_id, key)
                if run_id is not None:
                    started.append(run_id)
            if cancelled:
                await conn.execute(_NOTIFY_EACH, RUN_CANCEL_REQUESTED, cancelled)
            return started

        return [Claim(run_id, NEW_RUN_FENCE) for run_id in await self._writer.run(op)]

    # --- executor: cron -------------------------------------------------------------

    async def cron_ticks(self) -> dict[str, int]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch("SELECT schedule, tick_ms FROM cron_ticks")

        return {r["schedule"]: r["tick_ms"] for r in await self._writer.read(op)}

    async def record_tick(self, key: str, tick_ms: int, event: NewEvent) -> bool:
        async def op(conn: Connection) -> bool:
            [stored] = await _insert_events(conn, [event])
            await conn.execute(
                "INSERT INTO cron_ticks (schedule, tick_ms) VALUES ($1, $2) ON CONFLICT (schedule)"
                " DO UPDATE SET tick_ms = GREATEST(cron_ticks.tick_ms, excluded.tick_ms)",
                key,
                tick_ms,
            )
            if stored:
                await _notify_events(conn, [event.event.id])
            return stored

        return await self._writer.run(op)
