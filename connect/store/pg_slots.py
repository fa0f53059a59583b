"""Concurrency slots in the PostgreSQL store (see `Store.acquire_slots`).

The same two tables as SQLite's (`connect.store.sqlite_slots`; `pg_schema` migration 9).
Every operation first takes one transaction-scoped advisory lock, shared by
all slot operations of every process on the database, and keeps it until
its batch commits: a count and the insert that follows it never interleave
with another process's. One lock rather than one per key, because a grant
reaches keys other than the one released (a waiter's second limit); the
writer takes it once per batch (it is re-entrant within the transaction), so
the slot operations of one process's batch cost one lock between them.

Each statement is a round trip on the writer's one connection, which every
write of the process waits behind, so the common cases are kept to a few: an
acquire that fits is three statements (the lock, one read per claim, one
write), a release three (the lock, one delete of holds and waits together,
one look for waiters per key freed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from connect.store.base import SlotClaim
from connect.store.pg_writer import Connection

#: Key of the advisory lock every slot operation holds until it commits.
_LOCK_KEY: Final = 0x636E736C6F74  # "cnslot"

#: How many waiters of one key a release looks at before it stops.
SCAN: Final = 200


async def _lock(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)


async def _held(conn: Connection, key: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM slot_holds WHERE key = $1", key))


async def _fits(conn: Connection, request_id: str, run_id: str, claims: Sequence[SlotClaim], order: int) -> bool | None:
    """Whether the request fits every claim now; None when it already holds
    its slots (it holds all or none of them, so its first key tells). One
    statement per claim: the key's count, whether the request is among its
    holders, and whether anyone waits ahead of it on that key."""
    for i, c in enumerate(claims):
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM slot_holds WHERE key = $1) AS held,"
            " EXISTS (SELECT 1 FROM slot_holds WHERE key = $1 AND request_id = $4) AS mine,"
            " EXISTS (SELECT 1 FROM slot_waits WHERE key = $1 AND (ord, run_id, request_id) < ($2, $3, $4)) AS behind",
            c.key,
            order,
            run_id,
            request_id,
        )
        assert row is not None
        if i == 0 and row["mine"]:
            return None
        if row["held"] >= c.limit or row["behind"]:
            return False
    return True


async def _reap(conn: Connection, keys: Sequence[str]) -> int:
    """Forget the holds and waits on `keys` of runs that ended (left by a
    process stopped between a run's end and its release); how many."""
    gone = 0
    for table in ("slot_holds", "slot_waits"):
        status = await conn.execute(
            f"DELETE FROM {table} AS s WHERE key = ANY($1::text[]) AND EXISTS"  # noqa: S608 - constant table names
            " (SELECT 1 FROM runs AS r WHERE r.run_id = s.run_id AND r.status <> 'Running')",
            list(keys),
        )
        gone += int(status.split()[-1])
    return gone


async def acquire(
    conn: Connection, request_id: str, run_id: str, claims: Sequence[SlotClaim], order: int
) -> tuple[bool, list[str]]:
    """Whether the request holds its slots now; and the waiters granted slots
    taken back from runs that ended (to be announced)."""
    await _lock(conn)
    keys = [c.key for c in claims]
    fits = await _fits(conn, request_id, run_id, claims, order)
    if fits is None:
        return True, []
    reaped = fits is False and await _reap(conn, keys) > 0
    if reaped:
        fits = await _fits(conn, request_id, run_id, claims, order)
    if fits is not False:
        await conn.execute(
            "WITH gone AS (DELETE FROM slot_waits WHERE request_id = $2)"
            " INSERT INTO slot_holds (key, request_id, run_id) SELECT k, $2, $3 FROM unnest($1::text[]) AS k"
            " ON CONFLICT DO NOTHING",
            keys,
            request_id,
            run_id,
        )
        return True, []
    await conn.execute(
        "INSERT INTO slot_waits (key, request_id, run_id, lim, ord)"
        " SELECT k, $3, $4, l, $5 FROM unnest($1::text[], $2::int[]) AS c(k, l) ON CONFLICT DO NOTHING",
        keys,
        [c.limit for c in claims],
        request_id,
        run_id,
        order,
    )
    if not reaped:
        return False, []
    # What was taken back goes to whoever is first in line (the release of
    # the run that ended will find nothing left to hand over).
    granted = await _grant(conn, keys)
    return request_id in granted, [g for g in granted if g != request_id]


#: Deletes the holds and waits of the requests matched by `{match}`, returning their keys (one statement).
_FORGET: Final = (
    "WITH h AS (DELETE FROM slot_holds WHERE {match} RETURNING key),"
    " w AS (DELETE FROM slot_waits WHERE {match} RETURNING key)"
    " SELECT key FROM h UNION SELECT key FROM w"
)


async def release(conn: Connection, request_ids: Sequence[str]) -> list[str]:
    await _lock(conn)
    rows = await conn.fetch(_FORGET.format(match="request_id = ANY($1::text[])"), list(request_ids))
    return await _grant(conn, {r["key"] for r in rows})


async def release_run(conn: Connection, run_id: str, keep: Sequence[str]) -> list[str]:
    await _lock(conn)
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
