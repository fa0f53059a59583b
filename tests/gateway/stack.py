"""A gateway and our worker in one test process: the gateway role on its own
(`StandaloneGateway`) over a real SQLite file, the worker connected over a
real socket."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from connect import Client
from connect.roles import PlatformSettings, StandaloneGateway, start_standalone_gateway
from connect.sdk.function import Function
from connect.worker.connection import WorkerConnection, connect


def gateway_settings(db: Path, **fields: Any) -> PlatformSettings:
    """Settings for a gateway on ephemeral ports over `db`; `fields` override the rest."""
    return PlatformSettings(**{"port": 0, "gateway_port": 0, "db": str(db), "name": "test gateway", **fields})


async def start_gateway(db: Path, **fields: Any) -> StandaloneGateway:
    return await start_standalone_gateway(gateway_settings(db, **fields))


@contextlib.asynccontextmanager
async def gateway_with_worker(
    db: Path, client: Client, functions: Sequence[Function], instance_id: str
) -> AsyncIterator[tuple[StandaloneGateway, WorkerConnection]]:
    """Start a gateway on `db`, point `client` at it and connect a worker
    serving `functions`; both are closed on the way out (the worker first)."""
    gw = await start_gateway(db)
    try:
        client.api_base_url = gw.api_url
        worker = await connect([(client, list(functions))], instance_id=instance_id, handle_shutdown_signals=())
        try:
            yield gw, worker
        finally:
            await worker.close()
    finally:
        await gw.close()
