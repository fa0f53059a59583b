"""Two gateways among other processes (`GatewayProcess`), in one test process.

Each gateway has a store object of its own on PostgreSQL, as separate
processes have; on SQLite, which one process uses at a time, they share one
(its notifications reach only listeners on the same object). Workers find a
gateway through `StartDesk`: the worker-facing `/v0/connect/start` and
`/v0/connect/flush` of the API, sending workers to whichever gateway the
test points it at (`send_to`), as the API role does from the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from connect.api.app import ApiConfig, create_api
from connect.gateway.auth import Keys
from connect.roles.api import RunsElsewhere
from connect.roles.gateway import GatewayProcess, start_gateway_process
from connect.roles.settings import PlatformSettings
from connect.store import PostgresStore, SqliteStore, Store


class _QuietServer(uvicorn.Server):
    """Leaves the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class StartDesk:
    """`/v0/connect/start` for workers, answering with the gateway `send_to` chose.

    Replies workers `/flush` are taken by the gateway given as `flush_to`
    (stored, first stored wins, and announced to the other gateways)."""

    def __init__(self, first: GatewayProcess, flush_to: GatewayProcess) -> None:
        self.config = ApiConfig(gateway_port=first.port, gateway_group=first.process_id)
        app = create_api(RunsElsewhere(), flush_to.dispatcher, Keys().token_issuer(), self.config)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._server = _QuietServer(uvicorn.Config(app, log_level="warning", lifespan="off", ws="none"))
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def send_to(self, gateway: GatewayProcess) -> None:
        self.config.gateway_port = gateway.port
        self.config.gateway_group = gateway.process_id

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        async with asyncio.timeout(10):
            while not self._server.started:
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self._sock.close()


@dataclass
class Pair:
    a: GatewayProcess
    b: GatewayProcess
    #: The test's own view of the database (another process's, on PostgreSQL).
    store: Store
    desk: StartDesk
    _stores: list[Store] = field(default_factory=list)


def split_settings(db: Path, dsn: str | None, process_id: str, **fields: Any) -> PlatformSettings:
    return PlatformSettings(
        **{
            "port": 0,
            "gateway_port": 0,
            "db": str(db),
            "database_url": dsn,
            "name": f"test {process_id}",
            "process_id": process_id,
            "roles": frozenset({"gateway"}),
            **fields,
        }
    )


@contextlib.asynccontextmanager
async def two_gateways(db: Path, dsn: str | None, **fields: Any) -> AsyncIterator[Pair]:
    """Gateways "gw-a" and "gw-b" over one database (`dsn`, else SQLite at
    `db`); `fields` override their settings. The desk sends workers to A."""
    stores: list[Store] = []

    async def open_one() -> Store:
        if dsn is None and stores:
            return stores[0]
        store: Store = await (SqliteStore.open(db) if dsn is None else PostgresStore.open(dsn))
        stores.append(store)
        return store

    started: list[GatewayProcess] = []
    desk: StartDesk | None = None
    try:
        for name in ("gw-a", "gw-b"):
            started.append(await start_gateway_process(split_settings(db, dsn, name, **fields), await open_one()))
        a, b = started
        desk = StartDesk(a, b)
        await desk.start()
        yield Pair(a, b, await open_one(), desk, stores)
    finally:
        if desk is not None:
            await desk.stop()
        for gateway in started:
            await gateway.close()
        for store in stores:
            await store.close()
