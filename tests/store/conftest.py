"""The engines the store contract suite runs on, and a throwaway PostgreSQL for it."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from connect.store import PostgresStore, SqliteStore, Store
from tests.postgres import PostgresServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Engine:
    """One database of one engine, opened as often as a test likes."""

    name: str
    integrity_error: type[Exception]

    async def open(self, **options: Any) -> Store:
        raise NotImplementedError

    def open_source(self) -> str:
        """A Python expression that opens the same database in another process."""
        raise NotImplementedError

    async def set_schema_version(self, version: int) -> None:
        raise NotImplementedError

    async def schema_version(self) -> int:
        raise NotImplementedError


class SqliteEngine(Engine):
    name = "sqlite"
    integrity_error = sqlite3.IntegrityError

    def __init__(self, path: Path) -> None:
        self.path = path

    async def open(self, **options: Any) -> SqliteStore:
        return await SqliteStore.open(self.path, **options)

    def open_source(self) -> str:
        return f"connect.store.SqliteStore.open({str(self.path)!r})"

    async def set_schema_version(self, version: int) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.execute("UPDATE schema_version SET version = ?", (version,))
        conn.close()

    async def schema_version(self) -> int:
        with sqlite3.connect(self.path) as conn:
            [(version,)] = conn.execute("SELECT version FROM schema_version").fetchall()
        conn.close()
        return int(version)


class PostgresEngine(Engine):
    name = "postgres"
    integrity_error = asyncpg.UniqueViolationError

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def open(self, **options: Any) -> PostgresStore:
        return await PostgresStore.open(self.dsn, **options)

    def open_source(self) -> str:
        return f"connect.store.PostgresStore.open({self.dsn!r})"

    async def set_schema_version(self, version: int) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute("UPDATE schema_version SET version = $1", version)
        finally:
            await conn.close()

    async def schema_version(self) -> int:
        conn = await asyncpg.connect(self.dsn)
        try:
            return int(await conn.fetchval("SELECT version FROM schema_version"))
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """A fresh, empty database of each engine in turn."""
    if request.param == "sqlite":
        return SqliteEngine(tmp_path / "s.db")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return PostgresEngine(server.create_database())


@pytest.fixture
async def store(engine: Engine) -> AsyncIterator[Store]:
    opened = await engine.open()
    try:
        yield opened
    finally:
        await opened.close()
