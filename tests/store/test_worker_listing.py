"""`GET /v1/workers` with split roles lists what the gateways reported to the
store's registry (`StoredWorkers`), on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest

from connect.api.workers import StoredWorkers
from connect.store import ConnectionRecord, Store

pytestmark = pytest.mark.anyio


def record(connection_id: str, gateway: str, heard_ms: int, expires_ms: int) -> ConnectionRecord:
    return ConnectionRecord(
        connection_id=connection_id,
        gateway_id=gateway,
        instance_id=f"inst-{connection_id}",
        apps=["shop"],
        functions=["shop-a", "shop-b"],
        capacity=8,
        in_flight=3,
        state="ready",
        last_heartbeat_ms=heard_ms,
        expires_at_ms=expires_ms,
    )


async def test_live_connections_of_every_gateway_newest_heartbeat_first(store: Store) -> None:
    await store.put_connections("gw-1", [record("c1", "gw-1", 1_000, 60_000), record("c2", "gw-1", 3_000, 60_000)])
    await store.put_connections("gw-2", [record("c3", "gw-2", 2_000, 60_000), record("old", "gw-2", 500, 4_000)])
    workers = await StoredWorkers(store, clock=lambda: 5.0).workers()
    assert [(w["connection_id"], w["gateway"]) for w in workers] == [("c2", "gw-1"), ("c3", "gw-2"), ("c1", "gw-1")]
    assert workers[0] == {
        "connection_id": "c2",
        "instance_id": "inst-c2",
        "gateway": "gw-1",
        "apps": ["shop"],
        "functions": ["shop-a", "shop-b"],
        "state": "ready",
        "in_flight": 3,
        "capacity": 8,
        "last_heartbeat": "1970-01-01T00:00:03.000Z",
    }
