"""Runs waiting for capacity are woken one per freed slot, oldest first."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from connect.gateway.connection import Connection
from connect.gateway.dispatcher import GatewayDispatcher
from connect.store import SqliteStore
from protocol import ids
from protocol.gateway_session import GatewaySession, GatewaySessionConfig, WorkerHello

KEY = ("app", "app-f")


def ready_connection(instance: str) -> Connection:
    hello = WorkerHello(
        connection_id=ids.new_ulid(),
        instance_id=instance,
        apps=[],
        manual_readiness=False,
        max_worker_concurrency=None,
        sdk_language="py",
        sdk_version="t",
        framework="connect",
        environment=None,
        sync_token="",
        capabilities={},
    )
    conn = Connection(ws=None, session=GatewaySession(GatewaySessionConfig(), 0.0), remote="test", hello=hello)  # type: ignore[arg-type]
    conn.functions = {KEY}
    return conn


async def scenario(db: Path) -> dict[str, Any]:
    store = await SqliteStore.open(db)
    d = GatewayDispatcher(store)
    try:
        d.capacity.set_limit("i", 1)
        conn = ready_connection("i")
        d.connection_ready(conn)
        assert d.capacity.assign("i", "busy")
        woken: list[int] = []

        async def wait(n: int) -> None:
            await d.wait_for_worker(*KEY, timeout=5)
            woken.append(n)

        tasks = [asyncio.create_task(wait(n)) for n in range(5)]
        await asyncio.sleep(0.05)
        assert d.waiting() == 5 and woken == []
        d._finish("busy", stored=False)  # one slot frees: exactly one run wakes, the oldest
        await asyncio.sleep(0.05)
        first = list(woken)
        d.connection_ready(ready_connection("unlimited"))  # room for everyone
        await asyncio.gather(*tasks)
        return {"first": first, "all": sorted(woken), "left": d.waiting()}
    finally:
        await store.close()


def test_one_waiter_per_freed_slot_then_all_for_an_unlimited_worker(tmp_path: Path) -> None:
    result = asyncio.run(scenario(tmp_path / "d.db"))
    assert result["first"] == [0]
    assert result["all"] == [0, 1, 2, 3, 4]
    assert result["left"] == 0
