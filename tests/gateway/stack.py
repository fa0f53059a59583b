"""A gateway and our worker in one test process: the gateway and its
dispatcher over a real SQLite file, the worker connected over a real socket."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from bench import gateway
from connect import Client
from connect.sdk.function import Function
from connect.worker.connection import WorkerConnection, connect


@contextlib.asynccontextmanager
async def gateway_with_worker(
    db: Path, client: Client, functions: Sequence[Function], instance_id: str
) -> AsyncIterator[tuple[gateway.Gateway, WorkerConnection]]:
    """Start a gateway on `db`, point `client` at it and connect a worker
    serving `functions`; both are closed on the way out (the worker first)."""
    gw = await gateway.start(db)
    try:
        client.api_base_url = gw.api_url
        worker = await connect([(client, list(functions))], instance_id=instance_id, handle_shutdown_signals=())
        try:
            yield gw, worker
        finally:
            await worker.close()
    finally:
        await gw.close()
