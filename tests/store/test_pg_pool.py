"""The PostgreSQL store holds at most `pool_size` connections: one writer, the rest readers."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from connect.store import PostgresStore
from tests.postgres import PostgresServer

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("pool_size", [2, 5])
async def test_the_store_opens_up_to_pool_size_connections_under_load(
    postgres_server: PostgresServer, pool_size: int
) -> None:
    dsn = postgres_server.create_database()
    store = await PostgresStore.open(dsn, pool_size=pool_size)
    try:
        # Far more concurrent reads than readers, and writes alongside: every
        # connection the pool may open is opened, and no more.
        await asyncio.gather(
            *(store.get_reply(f"r{i}") for i in range(300)), *(store.put_reply(f"w{i}", b"x") for i in range(50))
        )
        observer = await asyncpg.connect(dsn)
        try:
            held = await observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await observer.close()
        assert held == pool_size
    finally:
        await store.close()
