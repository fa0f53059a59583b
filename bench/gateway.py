"""A gateway process without an executor: store, dispatcher, WebSocket server, start API.

The same composition as `connect.devserver.DevServer` minus the executor:
a `SqliteStore` on a file in the work directory, a `GatewayDispatcher` over
it, a `GatewayServer`, and the HTTP API (only `/v0/connect/start` and
`/v0/connect/flush` matter here; app syncs are accepted and ignored). The
benchmark drives `dispatcher.dispatch(...)` in this same process, where the
executor would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from connect import polling
from connect.api.app import ApiConfig, create_api
from connect.gateway.auth import Keys
from connect.gateway.dispatcher import GatewayDispatcher
from connect.gateway.server import GatewayServer
from connect.store import SqliteStore
from protocol.gateway_session import GatewaySessionConfig
from protocol.payloads import IncomingEvent


class _NoRuns:
    """The API's event side, unused here: no executor runs in this process."""

    async def send_events(self, events: list[IncomingEvent]) -> list[str]:
        return []

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        return None

    async def runs_for_event(self, event_id: str) -> list[dict[str, Any]]:
        return []

    def registered_functions(self) -> list[dict[str, Any]]:
        return []


async def _ignore_sync(*_registration: object) -> None:
    return None


class _Api(uvicorn.Server):
    """uvicorn without signal handling of its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class Gateway:
    store: SqliteStore
    dispatcher: GatewayDispatcher
    server: GatewayServer
    api: _Api
    api_task: asyncio.Task[None]
    api_port: int
    gateway_port: int

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    async def close(self) -> None:
        self.api.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.api_task, 5)
        await self.server.close()
        await self.store.close()


async def start(db: Path, *, heartbeat_interval: float | None = None, max_connections: int | None = None) -> Gateway:
    store = await SqliteStore.open(str(db))
    keys = Keys()
    tokens = keys.token_issuer()
    dispatcher = GatewayDispatcher(store)
    cfg = GatewaySessionConfig()
    if heartbeat_interval is not None:
        cfg.heartbeat_interval = heartbeat_interval
    kwargs: dict[str, Any] = {}
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    # As `connect dev` takes it: --poll-window-ms or CONNECT_POLL_WINDOW_MS.
    kwargs["poll_window"] = polling.window_from_env()
    server = GatewayServer(dispatcher, tokens, _ignore_sync, session_config=cfg, **kwargs)
    gateway_port = await server.start("127.0.0.1", 0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    api_port = int(sock.getsockname()[1])
    app = create_api(
        _NoRuns(),
        dispatcher,
        tokens,
        ApiConfig(gateway_port=gateway_port, gateway_host="127.0.0.1"),
        is_ready=lambda: not server.draining,
        keys=keys,
        admit_connection=server.admit,
    )
    api = _Api(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    api_task = asyncio.create_task(api.serve(sockets=[sock]))
    while not api.started:
        if api_task.done():
            api_task.result()
            raise RuntimeError("the API did not start")
        await asyncio.sleep(0.01)
    return Gateway(store, dispatcher, server, api, api_task, api_port, gateway_port)
