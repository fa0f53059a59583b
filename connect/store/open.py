"""Opening the store the settings name: PostgreSQL for a database URL, else SQLite at a path.

`connect dev` and `connect serve` take `--database-url` / `CONNECT_DATABASE_URL`;
a `postgresql://` or `postgres://` URL (libpq's form, with user, password,
host, port, database and query parameters such as `sslmode`) selects
`PostgresStore`. Without one the store is SQLite at `--db`, which needs no
server. Settings are checked here, before anything starts, so a wrong one
stops the command with its reason instead of a traceback.
"""

from __future__ import annotations

import urllib.parse
from typing import Final

from connect.store.base import Store
from connect.store.pg_writer import DEFAULT_POOL_SIZE

#: URL schemes that select PostgreSQL (both spellings libpq accepts).
POSTGRES_SCHEMES: Final = ("postgresql", "postgres")

#: Bounds of `--database-pool-size`: one writer and at least one reader, and
#: no more than a few dozen readers, which is already more than the platform's
#: short reads keep busy while each costs PostgreSQL a backend process.
MIN_POOL_SIZE: Final = 2
MAX_POOL_SIZE: Final = 64

__all__ = [
    "DEFAULT_POOL_SIZE",
    "MAX_POOL_SIZE",
    "MIN_POOL_SIZE",
    "POSTGRES_SCHEMES",
    "StoreOpenError",
    "check_database_url",
    "check_pool_size",
    "describe_location",
    "open_store",
]


class StoreOpenError(RuntimeError):
    """The store could not be opened: the database is unreachable, refuses us,
    or holds a schema newer than this release knows. The message says which."""


def check_database_url(url: str, source: str = "--database-url") -> str:
    """`url` if it names a PostgreSQL database, else ValueError saying what is
    accepted. The message never repeats the URL, which may hold a password."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in POSTGRES_SCHEMES:
        shown = f"scheme {scheme!r}" if sep else "no scheme"
        raise ValueError(
            f"{source} must be a PostgreSQL URL, postgresql://user:password@host:port/database "
            f"(or postgres://...), got one with {shown}; leave it out to use SQLite at --db"
        )
    return url


def check_pool_size(value: str | int, source: str = "--database-pool-size") -> int:
    """`value` as a pool size within [MIN_POOL_SIZE, MAX_POOL_SIZE], else ValueError."""
    try:
        size = int(value)
    except ValueError:
        raise ValueError(f"{source} must be a whole number of connections, got {value!r}") from None
    if not MIN_POOL_SIZE <= size <= MAX_POOL_SIZE:
        raise ValueError(
            f"{source} must be between {MIN_POOL_SIZE} (one writer, one reader) and {MAX_POOL_SIZE}, got {size}"
        )
    return size


def describe_location(db: str, database_url: str | None) -> str:
    """Where the store is, for log lines: the URL without its password, or the SQLite path."""
    if database_url is None:
        return db
    parts = urllib.parse.urlsplit(database_url)
    if parts.password is None:
        return database_url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


async def open_store(db: str, database_url: str | None = None, *, pool_size: int = DEFAULT_POOL_SIZE) -> Store:
    """PostgreSQL at `database_url` when it is given (`pool_size` connections),
    else SQLite at `db`. Both migrate their schema at open."""
    if database_url is None:
        import sqlite3

        from connect.store.sqlite import SqliteStore

        try:
            return await SqliteStore.open(db)
        except (OSError, sqlite3.Error) as exc:
            raise StoreOpenError(
                f"cannot open the SQLite store at {db}: {exc}: check that its directory exists and is writable, "
                "or choose another file with --db (or CONNECT_DB)"
            ) from exc
    import asyncpg

    from connect.store.pg_schema import SchemaTooNew
    from connect.store.postgres import PostgresStore

    try:
        return await PostgresStore.open(check_database_url(database_url), pool_size=check_pool_size(pool_size))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, SchemaTooNew) as exc:
        fix = (
            ""
            if isinstance(exc, SchemaTooNew)
            else ": check that the server is up and the URL is right (--database-url, or CONNECT_DATABASE_URL)"
        )
        raise StoreOpenError(
            f"cannot open the PostgreSQL store at {describe_location(db, database_url)}: "
            f"{type(exc).__name__}: {exc}{fix}"
        ) from exc
