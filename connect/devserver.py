"""`connect dev`: API, gateway, executor and the store (SQLite, or PostgreSQL) in one process.

Start order: store -> executor (resumes runs in flight) -> gateway -> API.
SIGTERM/SIGINT: the gateway drains (workers are told to reconnect), then the
API stops, run tasks are cancelled (their state stays in the store) and the
store closes. Starting again on the same database continues every run.
`POST /v0/connect/drain` on the gateway port does the same; the process then
exits with EXIT_DRAINED_ON_REQUEST instead of 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Generator
from dataclasses import dataclass, field

import uvicorn

from connect import polling
from connect.api.app import MAX_START_BYTES, ApiConfig, create_api
from connect.api.framing import HttpLimits
from connect.api.guard import guarded_http
from connect.executor import Executor
from connect.executor.runner import MAX_LEASE_LAPSES
from connect.gateway.admission import MAX_HANDSHAKES, MAX_HANDSHAKES_PER_PEER
from connect.gateway.auth import Keys
from connect.gateway.dispatcher import GatewayDispatcher
from connect.gateway.server import DrainCause, GatewayServer
from connect.store.open import DEFAULT_POOL_SIZE, describe_location, open_store
from protocol import limits
from protocol.gateway_session import GatewaySessionConfig

log = logging.getLogger("connect.dev")

#: Exit status after a drain asked for over HTTP (EX_TEMPFAIL in sysexits.h):
#: not 0, which a supervisor that restarts on failure takes for "leave it
#: down" (nobody told the supervisor), and not 1, a crash. After SIGTERM or
#: SIGINT, which come from the supervisor or the operator, the status is 0.
EXIT_DRAINED_ON_REQUEST = 75


@dataclass
class DevSettings:
    host: str = "127.0.0.1"
    port: int = 8288
    gateway_port: int = 8289
    db: str = "connect-dev.db"
    #: A postgresql:// URL: the store is PostgreSQL there, and `db` is not used.
    database_url: str | None = None
    #: PostgreSQL connections: one writer, the rest for reads (see `connect.store.pg_writer`).
    database_pool_size: int = DEFAULT_POOL_SIZE
    lease_duration: float = limits.LEASE_DURATION
    extend_lease_interval: float = limits.LEASE_EXTEND_INTERVAL
    #: Re-dispatches of one request after lost workers before its run fails.
    max_lease_lapses: int = MAX_LEASE_LAPSES
    heartbeat_interval: float = limits.HEARTBEAT_INTERVAL
    drain_timeout: float = 25.0
    #: Open mode (no keys) unless signing keys are set; see `connect serve`.
    keys: Keys = field(default_factory=Keys)
    max_message_bytes: int = limits.MAX_WORKER_MESSAGE_BYTES
    max_event_bytes: int = 512 * 1024
    max_request_bytes: int = 3 * 1024 * 1024
    apps_per_connection: int = limits.APPS_PER_CONNECTION
    max_connections: int = limits.MAX_CONNECTIONS
    max_connections_per_instance: int = limits.MAX_CONNECTIONS_PER_INSTANCE
    #: Connections not yet authenticated, at once, in all and from one peer address.
    max_handshakes: int = MAX_HANDSHAKES
    max_handshakes_per_peer: int = MAX_HANDSHAKES_PER_PEER
    handshake_timeout: float = limits.HANDSHAKE_TIMEOUT
    #: Let workers that support it store each step and go on in the same request.
    checkpoint_steps: bool = True
    #: The longest the loop keeps polling after step traffic, in seconds (0: off; see `connect.polling`).
    poll_window: float = polling.DEFAULT_WINDOW
    #: The name of the process in its log lines.
    name: str = "connect dev"


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
        self._cause: DrainCause | None = None

    def request_stop(self, cause: DrainCause = "signal") -> None:
        if self._cause is None:  # the first request decides the exit status
            self._cause = cause
        self._stop.set()

    async def run(self) -> int:
        """Serve until stopped; the process's exit status (0, or
        EXIT_DRAINED_ON_REQUEST after a drain asked for over HTTP)."""
        s = self.settings
        store = await open_store(s.db, s.database_url, pool_size=s.database_pool_size)
        tokens = s.keys.token_issuer()
        dispatcher = GatewayDispatcher(
            store, lease_duration=s.lease_duration, extend_lease_interval=s.extend_lease_interval
        )
        executor = Executor(store, dispatcher, checkpoint_steps=s.checkpoint_steps, max_lease_lapses=s.max_lease_lapses)
        gateway = GatewayServer(
            dispatcher,
            tokens,
            executor.sync_app,
            session_config=GatewaySessionConfig(
                heartbeat_interval=s.heartbeat_interval,
                extend_lease_interval=s.extend_lease_interval,
                handshake_timeout=s.handshake_timeout,
                apps_per_connection=s.apps_per_connection,
            ),
            max_message_bytes=s.max_message_bytes,
            max_connections=s.max_connections,
            max_connections_per_instance=s.max_connections_per_instance,
            on_drain_requested=self.request_stop,
            poll_window=s.poll_window,
            max_handshakes=s.max_handshakes,
            max_handshakes_per_peer=s.max_handshakes_per_peer,
            authorize=None if s.keys.open else s.keys.authorized,
        )
        await executor.start()
        gateway_port = await gateway.start(s.host, s.gateway_port)
        api = create_api(
            executor,
            dispatcher,
            tokens,
            ApiConfig(
                gateway_port=gateway_port,
                gateway_host=s.host,
                max_event_bytes=s.max_event_bytes,
                max_request_bytes=s.max_request_bytes,
            ),
            is_ready=lambda: not gateway.draining,
            keys=s.keys,
            admit_connection=gateway.admit,
        )
        http_limits = HttpLimits(
            route_body_bytes=(
                (b"/e/", s.max_request_bytes),
                (b"/v0/connect/flush", limits.MAX_WORKER_MESSAGE_BYTES),
                (b"/v0/connect/start", MAX_START_BYTES),
            )
        )
        server = _ApiServer(
            uvicorn.Config(
                api,
                host=s.host,
                port=s.port,
                log_level="warning",
                lifespan="off",
                access_log=False,
                backlog=4096,
                http=guarded_http(http_limits),
                # No WebSocket on this port: an upgraded connection would leave the guard's limits.
                ws="none",
                timeout_keep_alive=http_limits.keep_alive_timeout,
            )
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
        mode = (
            "open mode: no keys required"
            if s.keys.open
            else f"production mode: environment {s.keys.env!r}, signing and event keys required"
        )
        mode += f"; poll window up to {s.poll_window * 1000:g} ms" if s.poll_window > 0 else "; poll window off"
        log.info(
            "%s ready: api=http://%s:%d gateway=ws://%s:%d%s db=%s (%s)",
            s.name,
            s.host,
            s.port,
            s.host,
            gateway_port,
            limits.CONNECT_PATH,
            describe_location(s.db, s.database_url),
            mode,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._stop.wait()
        log.info("%s stopping: draining gateway (up to %.0fs)", s.name, s.drain_timeout)
        await gateway.drain(s.drain_timeout)
        log.info("gateway drained")
        server.should_exit = True
        with contextlib.suppress(Exception):
            await api_task
        await gateway.close()
        await executor.stop()
        await store.close()
        code = EXIT_DRAINED_ON_REQUEST if self._cause == "request" else 0
        log.info("%s stopped (exit status %d)", s.name, code)
        return code
