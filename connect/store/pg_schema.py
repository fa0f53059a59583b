"""The PostgreSQL schema: versioned, forward-only migrations applied at open.

`MIGRATIONS[n]` takes a database from version n to n + 1; nothing is ever
changed in a migration once released, a new layout is a new entry. `migrate`
runs in one transaction under an advisory lock, so processes opening the same
database at once apply each migration once, and a failed migration leaves the
database as it was. A database whose version is newer than this code knows
is refused: an older release must not write into a layout it does not know.
"""

from __future__ import annotations

from typing import Final

from connect.store.pg_writer import Connection

#: Key of the advisory lock held while migrating (any constant unique to this schema).
_LOCK_KEY: Final = 0x636F6E6E656374  # "connect"
#: The SQLSTATE `connect_fenced` raises for a write carrying a stale fencing token.
FENCE_LOST: Final = "CN001"

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 0 -> 1: the layout of SQLite schema 2.
    (
        """CREATE TABLE replies (
            request_id TEXT PRIMARY KEY,
            data BYTEA NOT NULL,
            stored_at_ms BIGINT NOT NULL
        )""",
        "CREATE INDEX replies_by_age ON replies (stored_at_ms)",
        """CREATE TABLE leases (
            request_id TEXT PRIMARY KEY,
            lease_id TEXT NOT NULL,
            expires_at_ms BIGINT NOT NULL,
            instance_id TEXT NOT NULL
        )""",
        """CREATE TABLE apps (
            app_name TEXT PRIMARY KEY,
            app_version TEXT,
            functions BYTEA NOT NULL,
            updated_at_ms BIGINT NOT NULL
        )""",
        """CREATE TABLE events (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            ts BIGINT NOT NULL,
            received_at_ms BIGINT NOT NULL,
            body BYTEA NOT NULL
        )""",
        # `seq` is the order memos were stored in (SQLite's rowid).
        """CREATE TABLE steps (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id TEXT NOT NULL,
            step_hash TEXT NOT NULL,
            result BYTEA NOT NULL,
            UNIQUE (run_id, step_hash)
        )""",
        """CREATE TABLE cron_ticks (
            schedule TEXT PRIMARY KEY,
            tick_ms BIGINT NOT NULL
        )""",
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            function_id TEXT NOT NULL,
            app_name TEXT NOT NULL,
            event_id TEXT NOT NULL,
            status TEXT NOT NULL,
            started_at_ms BIGINT NOT NULL,
            ended_at_ms BIGINT,
            max_attempts INTEGER NOT NULL,
            requests BYTEA NOT NULL,
            waiting BYTEA NOT NULL,
            disable_immediate_execution BOOLEAN NOT NULL,
            request_version INTEGER NOT NULL,
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
            output BYTEA
        )""",
        "CREATE INDEX runs_by_event ON runs (event_id)",
        "CREATE INDEX runs_by_status ON runs (status)",
    ),
    # 1 -> 2: run ownership. Runs carried over are owned by nobody (fence 0):
    # the first executor to start claims them.
    (
        "ALTER TABLE runs ADD COLUMN owner TEXT",
        "ALTER TABLE runs ADD COLUMN fence BIGINT NOT NULL DEFAULT 0",
        """CREATE TABLE owners (
            owner TEXT PRIMARY KEY,
            expires_at_ms BIGINT NOT NULL
        )""",
        # A save's fence check inside its own UPDATE (no round trip of its own): a
        # stale token aborts the statement, and with it the save's other writes.
        f"""CREATE FUNCTION connect_fenced(run_id TEXT, stored BIGINT, carried BIGINT) RETURNS BOOLEAN
        LANGUAGE plpgsql AS $$
        BEGIN
            IF stored <> carried THEN
                RAISE EXCEPTION 'run % is owned by another executor now', run_id
                    USING ERRCODE = '{FENCE_LOST}', DETAIL = run_id;
            END IF;
            RETURN TRUE;
        END
        $$""",
    ),
    # 2 -> 3: history retention. Ended runs by age and the oldest Running run
    # are index lookups; both runs indexes are partial, so a Running run's
    # step (which changes neither status nor end) leaves them alone. A run
    # that ended without an end recorded is taken to have ended when it started.
    (
        "UPDATE runs SET ended_at_ms = started_at_ms WHERE status <> 'Running' AND ended_at_ms IS NULL",
        "CREATE INDEX runs_by_end ON runs (ended_at_ms) WHERE ended_at_ms IS NOT NULL",
        "CREATE INDEX running_runs_by_start ON runs (started_at_ms) WHERE status = 'Running'",
        "CREATE INDEX events_by_age ON events (received_at_ms, id)",
    ),
    # 3 -> 4: step requests queued for any gateway, while executor and gateways are
    # separate processes; `holder` is the gateway forwarding one, until `held_until_ms`.
    (
        """CREATE TABLE queued_requests (
            request_id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            app_name TEXT NOT NULL,
            function_slug TEXT NOT NULL,
            step_id TEXT NOT NULL,
            payload BYTEA NOT NULL,
            queued_at_ms BIGINT NOT NULL,
            holder TEXT,
            held_until_ms BIGINT NOT NULL DEFAULT 0,
            lapsed BOOLEAN NOT NULL DEFAULT FALSE
        )""",
        "CREATE INDEX queued_requests_by_function ON queued_requests (function_slug, queued_at_ms)",
    ),
    # 4 -> 5: each open writer stamps its row with the number of every batch it
    # commits, so a batch whose COMMIT went unanswered can be found committed
    # or not (see `pg_writer`).
    (
        """CREATE TABLE writer_marks (
            writer_id TEXT PRIMARY KEY,
            batch BIGINT NOT NULL
        )""",
    ),
    # 5 -> 6: the process registry of split deployments: processes and the worker
    # connections each gateway holds, each entry live until `expires_at_ms`; and
    # an instance's leases by instance, which `put_lease_within` counts.
    (
        """CREATE TABLE processes (
            process_id TEXT NOT NULL,
            role TEXT NOT NULL,
            address TEXT NOT NULL,
            state TEXT NOT NULL,
            expires_at_ms BIGINT NOT NULL,
            started_at_ms BIGINT NOT NULL,
            PRIMARY KEY (process_id, role)
        )""",
        "CREATE INDEX processes_by_expiry ON processes (expires_at_ms)",
        """CREATE TABLE connections (
            connection_id TEXT NOT NULL,
            gateway_id TEXT NOT NULL,
            instance_id TEXT NOT NULL,
            apps TEXT[] NOT NULL,
            functions TEXT[] NOT NULL,
            capacity INTEGER,
            in_flight INTEGER NOT NULL,
            state TEXT NOT NULL,
            last_heartbeat_ms BIGINT NOT NULL,
            expires_at_ms BIGINT NOT NULL,
            PRIMARY KEY (gateway_id, connection_id)
        )""",
        "CREATE INDEX connections_by_expiry ON connections (expires_at_ms)",
        "CREATE INDEX leases_by_instance ON leases (instance_id, expires_at_ms)",
    ),
    # 6 -> 7: flow control at run start (see `start_gates`): the theoretical arrival
    # time of each throttle and rate-limit key, the run holding each singleton key,
    # and the runs gates refused.
    (
        """CREATE TABLE start_limits (
            function_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            tat_ms BIGINT NOT NULL,
            PRIMARY KEY (function_id, kind, key)
        )""",
        "CREATE INDEX start_limits_by_tat ON start_limits (tat_ms)",
        """CREATE TABLE singletons (
            function_id TEXT NOT NULL,
            key TEXT NOT NULL,
            run_id TEXT NOT NULL,
            PRIMARY KEY (function_id, key)
        )""",
        """CREATE TABLE skipped_starts (
            run_id TEXT PRIMARY KEY,
            function_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            reason TEXT NOT NULL,
            at_ms BIGINT NOT NULL
        )""",
        "CREATE INDEX skipped_starts_by_event ON skipped_starts (event_id)",
        "CREATE INDEX skipped_starts_by_age ON skipped_starts (at_ms)",
    ),
    # 7 -> 8: debounces and batches waiting to start their run, one per (function,
    # key), the events each holds, and the events of the runs batches started
    # (see `connect.store.held_starts`).
    (
        """CREATE TABLE held_starts (
            function_id TEXT NOT NULL,
            key TEXT NOT NULL,
            kind TEXT NOT NULL,
            app_name TEXT NOT NULL,
            max_attempts INTEGER NOT NULL,
            event_id TEXT NOT NULL,
            last_ts BIGINT NOT NULL,
            opened_ms BIGINT NOT NULL,
            due_ms BIGINT NOT NULL,
            size INTEGER NOT NULL,
            size_bytes BIGINT NOT NULL,
            PRIMARY KEY (function_id, key)
        )""",
        "CREATE INDEX held_starts_by_due ON held_starts (due_ms)",
        """CREATE TABLE held_events (
            function_id TEXT NOT NULL,
            key TEXT NOT NULL,
            position INTEGER NOT NULL,
            body BYTEA NOT NULL,
            PRIMARY KEY (function_id, key, position)
        )""",
        """CREATE TABLE run_events (
            run_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            body BYTEA NOT NULL,
            PRIMARY KEY (run_id, position)
        )""",
    ),
    # 8 -> 9: concurrency slots held per (key, request) and requests waiting for
    # them (see `connect.store.pg_slots`).
    (
        """CREATE TABLE slot_holds (
            key TEXT NOT NULL,
            request_id TEXT NOT NULL,
            run_id TEXT NOT NULL,
            PRIMARY KEY (key, request_id)
        )""",
        "CREATE INDEX slot_holds_by_request ON slot_holds (request_id)",
        "CREATE INDEX slot_holds_by_run ON slot_holds (run_id)",
        """CREATE TABLE slot_waits (
            key TEXT NOT NULL,
            request_id TEXT NOT NULL,
            run_id TEXT NOT NULL,
            lim INTEGER NOT NULL,
            ord BIGINT NOT NULL,
            PRIMARY KEY (key, request_id)
        )""",
        "CREATE INDEX slot_waits_in_line ON slot_waits (key, ord, run_id, request_id)",
        "CREATE INDEX slot_waits_by_request ON slot_waits (request_id)",
        "CREATE INDEX slot_waits_by_run ON slot_waits (run_id)",
    ),
    # 9 -> 10: each step's name, kind and times (below), and run listings newest
    # first (`Store.list_runs`), filtered by status, by function or by neither:
    # each is a walk down one index. The status index replaces the one on status
    # alone (same writes: at a run's insert and end); the steps a Running run
    # saves change none of these columns.
    (
        "DROP INDEX runs_by_status",
        'CREATE INDEX runs_by_status_start ON runs (status, started_at_ms, run_id COLLATE "C")',
        'CREATE INDEX runs_by_start ON runs (started_at_ms, run_id COLLATE "C")',
        'CREATE INDEX runs_by_function_start ON runs (function_id, started_at_ms, run_id COLLATE "C")',
        'CREATE INDEX skipped_starts_by_start ON skipped_starts (at_ms, run_id COLLATE "C")',
        "CREATE INDEX events_by_name ON events (name, received_at_ms, id)",
        # What the timeline shows of each step, stored with its result (`StepInfo`).
        "ALTER TABLE steps ADD COLUMN info BYTEA",
    ),
    # 10 -> 11: what became of each event a debounce or batch held: the run its
    # held start fired, once it did (`Store.event_holds`). Events held before
    # have no row.
    (
        """CREATE TABLE event_holds (
            event_id TEXT NOT NULL,
            function_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            at_ms BIGINT NOT NULL,
            run_id TEXT,
            PRIMARY KEY (event_id, function_id)
        )""",
        "CREATE INDEX event_holds_by_age ON event_holds (at_ms)",
    ),
    # 11 -> 12: the gate (throttle, singleton) the run a held start fires passes
    # (`HeldStart.gate`; NULL: none), and the runs a throttle holds back, of
    # functions with a priority, in their key's line (`Store.take_throttle_turn`).
    (
        "ALTER TABLE held_starts ADD COLUMN gate BYTEA",
        """CREATE TABLE throttle_waits (
            run_id TEXT PRIMARY KEY,
            function_id TEXT NOT NULL,
            key TEXT NOT NULL,
            ord BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            turn_ms BIGINT NOT NULL
        )""",
        'CREATE INDEX throttle_waits_in_line ON throttle_waits (function_id, key, ord, seq, run_id COLLATE "C")',
    ),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was written by a newer release than this one."""


async def migrate(conn: Connection) -> int:
    """Bring the database to `SCHEMA_VERSION`; returns the version it was at."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        found = await conn.fetchval("SELECT max(version) FROM schema_version")
        version = 0 if found is None else int(found)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database was written by a newer release (schema {version}, this one knows "
                f"{SCHEMA_VERSION}); upgrade, or point the store at another database"
            )
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                await conn.execute(statement)
        if found is None:
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            await conn.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION)
        return version
