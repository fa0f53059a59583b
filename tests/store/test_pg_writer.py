"""The PostgreSQL writer's batch preludes: run first, inside the batch's transaction."""

from __future__ import annotations

import asyncio

import pytest

from connect.store import PostgresStore
from connect.store.pg_writer import Bulk, Connection
from tests.postgres import PostgresServer

pytestmark = pytest.mark.anyio


async def _setting(conn: Connection, args: list[int]) -> list[str]:
    name = await conn.fetchval("SELECT current_setting('application_name')")
    return [str(name)] * len(args)


async def test_a_prelude_runs_before_its_batch_in_the_same_transaction(postgres_server: PostgresServer) -> None:
    store = await PostgresStore.open(postgres_server.create_database())
    try:
        writer = store._writer  # the writer itself is under test
        marked: Bulk[int, str] = Bulk("marked", _setting, lambda n: "SET LOCAL application_name = 'in-prelude'")
        unmarked: Bulk[int, str] = Bulk("unmarked", _setting, lambda n: None)
        # One batch: the prelude of one operation holds for every operation of it.
        together = await asyncio.gather(writer.submit(unmarked, 1), writer.submit(marked, 2))
        assert together == ["in-prelude", "in-prelude"]
        # The next batch has no prelude: SET LOCAL ended with the commit.
        assert await writer.submit(unmarked, 3) != "in-prelude"
    finally:
        await store.close()
