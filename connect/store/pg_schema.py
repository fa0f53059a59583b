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
    # 1 -> 2: each open writer stamps its row with the number of every batch it
    # commits, so a batch whose COMMIT went unanswered can be found committed
    # or not (see `pg_writer`).
    (
        """CREATE TABLE writer_marks (
            writer_id TEXT PRIMARY KEY,
            batch BIGINT NOT NULL
        )""",
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
