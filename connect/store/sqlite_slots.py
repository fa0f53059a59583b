"""Concurrency slots in the SQLite store (see `Store.acquire_slots`).

Two tables (schema 9): `slot_holds`, one row per (key, request) holding a
slot, and `slot_waits`, one row per (key, request) waiting for one, with the
request's limit on that key and its place in line. A request with two claims
has two rows in one of them, never rows in both. Every function here runs on
the store's one writer, inside its transaction: a count and the insert that
follows it cannot interleave with another caller's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Final

from connect.store.base import SlotAcquire, SlotChange, SlotClaim

TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS slot_holds (
        key TEXT NOT NULL,
        request_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        PRIMARY KEY (key, request_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS slot_holds_by_request ON slot_holds (request_id)",
    "CREATE INDEX IF NOT EXISTS slot_holds_by_run ON slot_holds (run_id)",
    """CREATE TABLE IF NOT EXISTS slot_waits (
        key TEXT NOT NULL,
        request_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        lim INTEGER NOT NULL,
        ord INTEGER NOT NULL,
        PRIMARY KEY (key, request_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS slot_waits_in_line ON slot_waits (key, ord, run_id, request_id)",
    "CREATE INDEX IF NOT EXISTS slot_waits_by_request ON slot_waits (request_id)",
    "CREATE INDEX IF NOT EXISTS slot_waits_by_run ON slot_waits (run_id)",
)

#: How many waiters of one key a release looks at before it stops (the rest
#: are reached by later releases, or by their own executors asking again).
SCAN: Final = 200


def _held(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT count(*) FROM slot_holds WHERE key = ?", (key,)).fetchone()
    return int(row[0])


def _fits(conn: sqlite3.Connection, request_id: str, run_id: str, claims: Sequence[SlotClaim], order: int) -> bool:
    return all(
        _held(conn, c.key) < c.limit
        and conn.execute(
            "SELECT 1 FROM slot_waits WHERE key = ? AND (ord, run_id, request_id) < (?, ?, ?) LIMIT 1",
            (c.key, order, run_id, request_id),
        ).fetchone()
        is None
        for c in claims
    )


def _reap(conn: sqlite3.Connection, keys: Sequence[str]) -> int:
    """Forget the holds and waits on `keys` of runs that ended (left by a
    run that ended without a save releasing them); how many."""
    gone = 0
    for key in keys:
        for table in ("slot_holds", "slot_waits"):
            gone += conn.execute(
                f"DELETE FROM {table} AS s WHERE key = ? AND EXISTS"  # noqa: S608 - constant table names
                " (SELECT 1 FROM runs AS r WHERE r.run_id = s.run_id AND r.status <> 'Running')",
                (key,),
            ).rowcount
    return gone


#: In one statement: whether a request holds slots, whether it waits, and
#: whether it fits one claim (room under the limit, nobody ordered before it waiting).
_ACQUIRE_STATE: Final = """
SELECT EXISTS (SELECT 1 FROM slot_holds WHERE request_id = :rid),
EXISTS (SELECT 1 FROM slot_waits WHERE request_id = :rid),
(SELECT count(*) FROM slot_holds WHERE key = :key) < :lim
AND NOT EXISTS (SELECT 1 FROM slot_waits WHERE key = :key AND (ord, run_id, request_id) < (:ord, :run, :rid))
"""


def acquire(
    conn: sqlite3.Connection, request_id: str, run_id: str, claims: Sequence[SlotClaim], order: int
) -> tuple[bool, list[str]]:
    """Whether the request holds its slots now; and the waiters granted slots
    taken back from runs that ended (to be announced)."""
    if not claims:
        return True, []
    first = claims[0]
    holds, waits, fits = conn.execute(
        _ACQUIRE_STATE,
        {"rid": request_id, "run": run_id, "key": first.key, "lim": first.limit, "ord": order},
    ).fetchone()
    if holds:
        return True, []
    fits = bool(fits) and _fits(conn, request_id, run_id, claims[1:], order)
    keys = [c.key for c in claims]
    reaped = not fits and _reap(conn, keys) > 0
    if reaped:
        fits = _fits(conn, request_id, run_id, claims, order)
    if fits:
        if waits:
            conn.execute("DELETE FROM slot_waits WHERE request_id = ?", (request_id,))
        conn.executemany(
            "INSERT OR IGNORE INTO slot_holds (key, request_id, run_id) VALUES (?, ?, ?)",
            [(c.key, request_id, run_id) for c in claims],
        )
        return True, []
    conn.executemany(
        "INSERT OR IGNORE INTO slot_waits (key, request_id, run_id, lim, ord) VALUES (?, ?, ?, ?, ?)",
        [(c.key, request_id, run_id, c.limit, order) for c in claims],
    )
    if not reaped:
        return False, []
    # What was taken back goes to whoever is first in line (the release of
    # the run that ended will find nothing left to hand over).
    granted = grant(conn, keys)
    return request_id in granted, [g for g in granted if g != request_id]


def _forget(conn: sqlite3.Connection, request_ids: Iterable[str]) -> set[str]:
    """Delete the holds and waits of `request_ids`; the keys they were on."""
    keys: set[str] = set()
    for rid in request_ids:
        keys.update(k for (k,) in conn.execute("DELETE FROM slot_holds WHERE request_id = ? RETURNING key", (rid,)))
        keys.update(k for (k,) in conn.execute("DELETE FROM slot_waits WHERE request_id = ? RETURNING key", (rid,)))
    return keys


def _forget_run(conn: sqlite3.Connection, run_id: str, keep: Sequence[str] = ()) -> set[str]:
    if not keep:
        keys = {k for (k,) in conn.execute("DELETE FROM slot_holds WHERE run_id = ? RETURNING key", (run_id,))}
        keys.update(k for (k,) in conn.execute("DELETE FROM slot_waits WHERE run_id = ? RETURNING key", (run_id,)))
        return keys
    rows = conn.execute(
        "SELECT request_id FROM slot_holds WHERE run_id = ? UNION SELECT request_id FROM slot_waits WHERE run_id = ?",
        (run_id, run_id),
    ).fetchall()
    kept = set(keep)
    return _forget(conn, [rid for (rid,) in rows if rid not in kept])


def release(conn: sqlite3.Connection, request_ids: Iterable[str]) -> list[str]:
    return grant(conn, _forget(conn, request_ids))


def release_run(conn: sqlite3.Connection, run_id: str, keep: Sequence[str]) -> list[str]:
    return grant(conn, _forget_run(conn, run_id, keep))


#: A request's one slot handed on to the next request of its run, when that
#: is what releasing the one and acquiring for the other would do: the old
#: request holds this one key only, the key is within the new request's limit,
#: nobody ordered before the new request waits on it, and the new request
#: neither holds nor waits yet. Nothing is freed, so nobody is to be granted.
_HAND_ON: Final = """
UPDATE slot_holds SET request_id = :new
WHERE key = :key AND request_id = :old
AND (SELECT count(*) FROM slot_holds WHERE request_id = :old) = 1
AND (SELECT count(*) FROM slot_holds WHERE key = :key) <= :lim
AND NOT EXISTS (SELECT 1 FROM slot_waits WHERE key = :key AND (ord, run_id, request_id) < (:ord, :run, :new))
AND NOT EXISTS (SELECT 1 FROM slot_waits WHERE request_id = :new)
AND NOT EXISTS (SELECT 1 FROM slot_holds WHERE request_id = :new)
"""


def _hand_on(conn: sqlite3.Connection, run_id: str, old: str, item: SlotAcquire) -> bool:
    """`_HAND_ON` for a request of one claim (the usual case of a step
    following a step: one statement instead of a release and an acquire)."""
    if len(item.claims) != 1:
        return False
    claim = item.claims[0]
    values = {"new": item.request_id, "old": old, "key": claim.key, "lim": claim.limit}
    return conn.execute(_HAND_ON, {**values, "ord": item.order, "run": run_id}).rowcount == 1


def change(conn: sqlite3.Connection, run_id: str, slots: SlotChange) -> tuple[list[str], list[str]]:
    """`SlotChange` for `run_id`, within a save's transaction: the requests
    of `slots.acquire` that hold their slots, and the waiters granted slots
    (to be announced)."""
    if (
        not slots.release_run
        and len(slots.release) == 1
        and len(slots.acquire) == 1
        and _hand_on(conn, run_id, slots.release[0], slots.acquire[0])
    ):
        return [slots.acquire[0].request_id], []
    keys = _forget_run(conn, run_id) if slots.release_run else _forget(conn, slots.release)
    held: list[str] = []
    granted: list[str] = []
    for item in slots.acquire:
        ok, others = acquire(conn, item.request_id, run_id, item.claims, item.order)
        if ok:
            held.append(item.request_id)
        granted.extend(others)
    if keys:
        granted.extend(grant(conn, keys))
    return held, granted


def grant(conn: sqlite3.Connection, keys: Iterable[str]) -> list[str]:
    """Grant the earliest waiters of `keys` that fit now; their ids, in order."""
    granted: list[str] = []
    todo = sorted(set(keys))
    seen: set[str] = set()
    while todo:
        key = todo.pop(0)
        if key in seen:
            continue
        seen.add(key)
        row = conn.execute("SELECT max(lim) FROM slot_waits WHERE key = ?", (key,)).fetchone()
        if row is None or row[0] is None:
            continue
        most = int(row[0])
        line = conn.execute(
            "SELECT request_id, run_id FROM slot_waits WHERE key = ? ORDER BY ord, run_id, request_id LIMIT ?",
            (key, SCAN),
        ).fetchall()
        for request_id, run_id in line:
            if _held(conn, key) >= most:
                break
            claims = conn.execute("SELECT key, lim FROM slot_waits WHERE request_id = ?", (request_id,)).fetchall()
            if not all(_held(conn, k) < lim for k, lim in claims):
                continue
            conn.execute("DELETE FROM slot_waits WHERE request_id = ?", (request_id,))
            conn.executemany(
                "INSERT OR IGNORE INTO slot_holds (key, request_id, run_id) VALUES (?, ?, ?)",
                [(k, request_id, run_id) for k, _ in claims],
            )
            granted.append(request_id)
            # Its other keys lost a waiter ahead of others: look at them too.
            todo.extend(k for k, _ in claims if k not in seen)
    return granted


def held(conn: sqlite3.Connection, key: str) -> list[str]:
    return [
        rid for (rid,) in conn.execute("SELECT request_id FROM slot_holds WHERE key = ? ORDER BY request_id", (key,))
    ]
