"""Concurrency slots in the PostgreSQL store (see `Store.acquire_slots`).

The same two tables as SQLite's (`connect.store.sqlite_slots`; `pg_schema` migration 9).
Every operation runs under one transaction-scoped advisory lock, shared by
all slot operations of every process on the database, and kept until its
batch commits: a count and the insert that follows it never interleave
with another process's. One lock rather than one per key, because a grant
reaches keys other than the one released (a waiter's second limit). The
store's writer takes it as the first statement of every batch that touches
slots (`LOCK`, sent with `BEGIN`), so the slot operations of one process's
batch cost one lock between them, and a transaction holding any other lock
never waits for this one.

Each statement is a round trip on the writer's one connection, which every
write of the process waits behind, so the common cases cost a few per batch
rather than a few per request. Acquires and the slot changes of saves take
the lock as a prelude of the batch's BEGIN (`LOCK`, no round trip of its
own). A run of acquires in one batch is one pipelined statement per request
(the check and the hold, or the place in line, together) and one read of
which of them hold; when some have to wait, one more, to take back slots
of runs that ended. A batch's releases made by saves are one
statement (holds and waits deleted, and the keys someone still waits on),
plus the grants when someone waits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from connect.store.base import SlotChange, SlotClaim
from connect.store.pg_writer import Connection

#: Key of the advisory lock every slot operation holds until it commits.
_LOCK_KEY: Final = 0x636E736C6F74  # "cnslot"

#: How many waiters of one key a release looks at before it stops.
SCAN: Final = 200


#: The lock as a batch's prelude (see `pg_writer.Bulk`).
LOCK: Final = f"SELECT pg_advisory_xact_lock({_LOCK_KEY})"


async def _held(conn: Connection, key: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM slot_holds WHERE key = $1", key))


#: Deletes the holds and waits on keys $1 of runs that ended (left by a
#: run that ended without a save releasing them); returns how many.
_REAP: Final = """
WITH h AS (
    DELETE FROM slot_holds AS s WHERE key = ANY($1::text[])
    AND EXISTS (SELECT 1 FROM runs AS r WHERE r.run_id = s.run_id AND r.status <> 'Running') RETURNING 1
), w AS (
    DELETE FROM slot_waits AS s WHERE key = ANY($1::text[])
    AND EXISTS (SELECT 1 FROM runs AS r WHERE r.run_id = s.run_id AND r.status <> 'Running') RETURNING 1
)
SELECT (SELECT count(*) FROM h) + (SELECT count(*) FROM w)
"""


async def _reap(conn: Connection, keys: Sequence[str]) -> int:
    return int(await conn.fetchval(_REAP, list(keys)))


#: One request's acquire, with the lock held: if it holds its slots already,
#: nothing; if it fits (every key below its limit, nobody ordered before it
#: waiting on any), it holds them; otherwise it takes (or keeps) its place in
#: line. Returns whether it held them before and whether it fits.
_ACQUIRE: Final = """
WITH c AS (SELECT k, l FROM unnest($1::text[], $2::int[]) AS c(k, l)),
st AS (
    SELECT EXISTS (SELECT 1 FROM slot_holds WHERE request_id = $3) AS mine,
    NOT EXISTS (
        SELECT 1 FROM c WHERE (SELECT count(*) FROM slot_holds AS h WHERE h.key = c.k) >= c.l
        OR EXISTS (
            SELECT 1 FROM slot_waits AS w WHERE w.key = c.k AND (w.ord, w.run_id, w.request_id) < ($5::bigint, $4, $3)
        )
    ) AS fits
), gone AS (
    DELETE FROM slot_waits WHERE request_id = $3 AND (SELECT fits AND NOT mine FROM st)
), hold AS (
    INSERT INTO slot_holds (key, request_id, run_id) SELECT c.k, $3, $4 FROM c, st WHERE st.fits AND NOT st.mine
    ON CONFLICT DO NOTHING
), wait AS (
    INSERT INTO slot_waits (key, request_id, run_id, lim, ord) SELECT c.k, $3, $4, c.l, $5 FROM c, st
    WHERE NOT st.fits AND NOT st.mine ON CONFLICT DO NOTHING
)
SELECT mine, fits FROM st
"""

#: (request id, run id, claims, order), as `acquire` takes them.
Acquiring = tuple[str, str, Sequence[SlotClaim], int]


def _acquire_args(item: Acquiring) -> tuple[list[str], list[int], str, str, int]:
    request_id, run_id, claims, order = item
    return [c.key for c in claims], [c.limit for c in claims], request_id, run_id, order


async def acquire_many(conn: Connection, items: Sequence[Acquiring]) -> tuple[set[str], list[str]]:
    """`acquire` for each of `items`, in order, with the lock held (a batch's
    prelude): the request ids that hold their slots, and the waiters granted
    slots taken back from runs that ended (to be announced). One statement
    per request, pipelined, and one read of who holds; when some are left
    waiting, one more (taking back slots of runs that ended)."""
    # No claims at all: granted.
    held = {item[0] for item in items if not item[2]}
    items = [item for item in items if item[2]]
    if not items:
        return held, []
    if len(items) == 1:
        row = await conn.fetchrow(_ACQUIRE, *_acquire_args(items[0]))
        assert row is not None
        if row["mine"] or row["fits"]:
            held.add(items[0][0])
    else:
        await conn.executemany(_ACQUIRE, [_acquire_args(item) for item in items])
        rows = await conn.fetch(
            "SELECT DISTINCT request_id FROM slot_holds WHERE request_id = ANY($1::text[])", [i[0] for i in items]
        )
        held.update(r["request_id"] for r in rows)
    granted: list[str] = []
    waiting = {item[0] for item in items if item[0] not in held}
    if waiting:
        # Keys found full may be full of runs that ended: take those slots back,
        # once for every key of the requests left waiting.
        keys = sorted({c.key for request_id, _, claims, _ in items if request_id in waiting for c in claims})
        if await _reap(conn, keys) > 0:
            # What was taken back goes to whoever is first in line, maybe one of these requests.
            for rid in await _grant(conn, keys):
                (held.add if rid in waiting else granted.append)(rid)
    return held, granted


#: Deletes the holds and waits of requests $1 and of runs $2; returns the keys
#: they were on that others still wait on (in one statement, whose reads see
#: the rows as they were before it: the waits it deletes are left out by hand).
_FORGET_MANY: Final = """
WITH h AS (
    DELETE FROM slot_holds WHERE request_id = ANY($1::text[]) OR run_id = ANY($2::text[]) RETURNING key
), w AS (
    DELETE FROM slot_waits WHERE request_id = ANY($1::text[]) OR run_id = ANY($2::text[]) RETURNING key, request_id
), k AS (
    SELECT key FROM h UNION SELECT key FROM w
)
SELECT key FROM k WHERE EXISTS (
    SELECT 1 FROM slot_waits AS s WHERE s.key = k.key AND s.request_id NOT IN (SELECT request_id FROM w)
)
"""


async def change_many(conn: Connection, changes: Sequence[tuple[str, SlotChange]]) -> tuple[set[str], list[str]]:
    """The `SlotChange`s of a batch's saves, as (run id, change), with the
    lock held (a batch's prelude): every release first, then every acquire in
    order, then the grants the releases made possible. Returns the acquiring
    requests that hold their slots, and the waiters granted (to be announced)."""
    request_ids = [rid for _, c in changes if not c.release_run for rid in c.release]
    run_ids = [run_id for run_id, c in changes if c.release_run]
    waited: list[str] = []
    if request_ids or run_ids:
        waited = [r["key"] for r in await conn.fetch(_FORGET_MANY, request_ids, run_ids)]
    held, granted = await acquire_many(
        conn, [(a.request_id, run_id, a.claims, a.order) for run_id, c in changes for a in c.acquire]
    )
    if waited:
        granted.extend(await _grant(conn, waited))
    return held, granted


#: Deletes the holds and waits of the requests matched by `{match}`, returning their keys (one statement).
_FORGET: Final = (
    "WITH h AS (DELETE FROM slot_holds WHERE {match} RETURNING key),"
    " w AS (DELETE FROM slot_waits WHERE {match} RETURNING key)"
    " SELECT key FROM h UNION SELECT key FROM w"
)


async def release(conn: Connection, request_ids: Sequence[str]) -> list[str]:
    """With the lock held (a batch's prelude)."""
    rows = await conn.fetch(_FORGET.format(match="request_id = ANY($1::text[])"), list(request_ids))
    return await _grant(conn, {r["key"] for r in rows})


async def release_run(conn: Connection, run_id: str, keep: Sequence[str]) -> list[str]:
    """With the lock held (a batch's prelude)."""
    rows = await conn.fetch(
        _FORGET.format(match="run_id = $1 AND NOT (request_id = ANY($2::text[]))"), run_id, list(keep)
    )
    return await _grant(conn, {r["key"] for r in rows})


async def _grant(conn: Connection, keys: Iterable[str]) -> list[str]:
    """Grant the earliest waiters of `keys` that fit now; their ids, in order."""
    granted: list[str] = []
    todo = sorted(set(keys))
    seen: set[str] = set()
    while todo:
        key = todo.pop(0)
        if key in seen:
            continue
        seen.add(key)
        most = await conn.fetchval("SELECT max(lim) FROM slot_waits WHERE key = $1", key)
        if most is None:
            continue
        line = await conn.fetch(
            "SELECT request_id, run_id FROM slot_waits WHERE key = $1 ORDER BY ord, run_id, request_id LIMIT $2",
            key,
            SCAN,
        )
        for waiter in line:
            if await _held(conn, key) >= most:
                break
            request_id, run_id = waiter["request_id"], waiter["run_id"]
            claims = await conn.fetch("SELECT key, lim FROM slot_waits WHERE request_id = $1", request_id)
            if not all([await _held(conn, c["key"]) < c["lim"] for c in claims]):
                continue
            await conn.execute("DELETE FROM slot_waits WHERE request_id = $1", request_id)
            await conn.execute(
                "INSERT INTO slot_holds (key, request_id, run_id) SELECT k, $2, $3 FROM unnest($1::text[]) AS k"
                " ON CONFLICT DO NOTHING",
                [c["key"] for c in claims],
                request_id,
                run_id,
            )
            granted.append(request_id)
            todo.extend(c["key"] for c in claims if c["key"] not in seen)
    return granted


async def held(conn: Connection, key: str) -> list[str]:
    rows = await conn.fetch("SELECT request_id FROM slot_holds WHERE key = $1 ORDER BY request_id", key)
    return [r["request_id"] for r in rows]
