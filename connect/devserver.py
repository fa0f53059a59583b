"""`connect dev`: API, gateway, executor and a SQLite store in one process.

Start order: store -> executor (resumes runs in flight) -> gateway -> API.
SIGTERM/SIGINT: the gateway drains (workers are told to reconnect), then the
API stops, run tasks are cancelled (their state stays in the store) and the
store closes. Starting again on the same database continues every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Generator
from dataclasses import dataclass

import uvicorn

from connect.api.app import ApiConfig, create_api
from connect.executor import Executor
from connect.gateway.auth import TokenIssuer
from connect.gateway.dispatcher import GatewayDispatcher
from connect.gateway.server import GatewayServer
from connect.store import SqliteStore
from protocol import limits
from protocol.gateway_session import GatewaySessionConfig

log = logging.getLogger("connect.dev")


@dataclass
class DevSettings:
    host: str = "127.0.0.1"
    port: int = 8288
    gateway_port: int = 8289
    db: str = "connect-dev.db"
    lease_duration: float = limits.LEASE_DURATION
    extend_lease_interval: float = limits.LEASE_EXTEND_INTERVAL
    heartbeat_interval: float = limits.HEARTBEAT_INTERVAL
    drain_timeout: float = 25.0


class _ApiServer(uvicorn.Server):
    """uvicorn without its own signal handling (the dev server owns signals)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.started_event = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.started_event.set()


class DevServer:
    def __init__(self, settings: DevSettings) -> None:
        self.settings = settings
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        s = self.settings
        store = await SqliteStore.open(s.db)
        tokens = TokenIssuer()
        dispatcher = GatewayDispatcher(
            store, lease_duration=s.lease_duration, extend_lease_interval=s.extend_lease_interval
        )
        executor = Executor(store, dispatcher)
        gateway = GatewayServer(
            dispatcher,
            tokens,
            executor.sync_app,
            session_config=GatewaySessionConfig(
                heartbeat_interval=s.heartbeat_interval, extend_lease_interval=s.extend_lease_interval
            ),
            on_drain_requested=self.request_stop,
        )
        await executor.start()
        gateway_port = await gateway.start(s.host, s.gateway_port)
        api = create_api(
            executor,
            dispatcher,
            tokens,
            ApiConfig(gateway_port=gateway_port, gateway_host=s.host),
            is_ready=lambda: not gateway.draining,
        )
        server = _ApiServer(
            uvicorn.Config(api, host=s.host, port=s.port, log_level="warning", lifespan="off", access_log=False)
        )
        api_task = asyncio.create_task(server.serve())
        started = asyncio.ensure_future(server.started_event.wait())
        await asyncio.wait({api_task, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if not server.started:
            await gateway.close()
            await executor.stop()
            await store.close()
            raise SystemExit(f"API could not start on {s.host}:{s.port}")
        log.info(
            "connect dev ready: api=http://%s:%d gateway=ws://%s:%d%s db=%s (open mode: no keys required)",
            s.host,
            s.port,
            s.host,
            gateway_port,
            limits.CONNECT_PATH,
            s.db,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._stop.wait()
        log.info("connect dev stopping: draining gateway (up to %.0fs)", s.drain_timeout)
        await gateway.drain(s.drain_timeout)
        log.info("gateway drained")
        server.should_exit = True
        with contextlib.suppress(Exception):
            await api_task
        await gateway.close()
        await executor.stop()
        await store.close()
        log.info("connect dev stopped")
