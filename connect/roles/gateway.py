"""The gateway role: the dispatcher (the executor's port to the workers) and
the WebSocket server workers connect to, on `settings.gateway_port`.

Start: the server listens before `start` returns. Stop: `drain` tells every
worker to reconnect elsewhere and waits for them to leave (up to
`settings.drain_timeout`), then `close` closes what is left.

`StandaloneGateway` runs this role with its own store and the worker-facing
HTTP API and no executor: the process whose owner drives
`dispatcher.dispatch(...)` itself, as the dispatch benchmark and the gateway
tests do.

`GatewayProcess` runs this role among other processes sharing PostgreSQL
(`connect serve --role gateway`): it takes the requests executors queue in
the store (`RequestPump`), keeps its own and its connections' registry rows
alive (`GatewayRegistry`), hears replies stored by others (`REPLY_STORED`)
and holds `max_worker_concurrency` together with the other gateways. Its
`drain` tells the registry first, then hands back what it took and has not
forwarded, moves its workers away, and waits for the forwards in flight to
be answered (on any gateway, or through `/flush`) until `drain_timeout`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from connect.api.elsewhere import ApiDirectory, ApiUrls
from connect.api.workers import LiveWorkers
from connect.gateway.auth import TokenIssuer
from connect.gateway.dispatcher import GatewayDispatcher, SharedStore
from connect.gateway.pump import RequestPump
from connect.gateway.registry import GatewayRegistry
from connect.gateway.server import DrainCause, GatewayServer, SyncHook
from connect.roles.api import ApiNotStarted, ApiRole, RunsElsewhere
from connect.roles.settings import PlatformSettings, default_process_id
from connect.roles.store import open_store
from connect.sdk.validation import cel_problem
from connect.store import AppRecord, ReplyStore, Store
from connect.store.base import REPLY_STORED
from protocol.gateway_session import GatewaySessionConfig
from protocol.payloads import FunctionConfig, RefusedFunction

log = logging.getLogger("connect.roles")


def gateway_dispatcher(
    settings: PlatformSettings, store: ReplyStore, *, shared_with: SharedStore | None = None
) -> GatewayDispatcher:
    """The dispatcher is built apart from the server: the executor needs it
    before the server exists, and the server needs the executor's sync hook.
    `shared_with`: the store other gateways share (see `GatewayDispatcher`)."""
    return GatewayDispatcher(
        store,
        lease_duration=settings.lease_duration,
        extend_lease_interval=settings.extend_lease_interval,
        shared_with=shared_with,
    )


class GatewayRole:
    def __init__(
        self,
        settings: PlatformSettings,
        dispatcher: GatewayDispatcher,
        tokens: TokenIssuer,
        on_sync: SyncHook,
        *,
        on_drain_requested: Callable[[DrainCause], None] | None = None,
        api_urls: ApiUrls | None = None,
    ) -> None:
        """`on_sync` records an app a worker registered; `on_drain_requested`
        hands SIGTERM-like requests (`POST /v0/connect/drain`) to the process's
        owner (None: the gateway drains in place and the process goes on).
        `api_urls`: where the API processes are, answered on `GET /` of the
        gateway port when this process serves no API (None: `/` is 404)."""
        s = settings
        self._settings = settings
        self.dispatcher = dispatcher
        self.server = GatewayServer(
            dispatcher,
            tokens,
            on_sync,
            session_config=GatewaySessionConfig(
                heartbeat_interval=s.heartbeat_interval,
                extend_lease_interval=s.extend_lease_interval,
                handshake_timeout=s.handshake_timeout,
                apps_per_connection=s.apps_per_connection,
                expression_problem=cel_problem,
            ),
            max_message_bytes=s.max_message_bytes,
            max_connections=s.max_connections,
            max_connections_per_instance=s.max_connections_per_instance,
            on_drain_requested=on_drain_requested,
            poll_window=s.poll_window,
            max_handshakes=s.max_handshakes,
            max_handshakes_per_peer=s.max_handshakes_per_peer,
            authorize=None if s.keys.open else s.keys.authorized,
            scrape=s.metrics.scrape,
            api_urls=api_urls,
        )
        s.metrics.watch_gateway(self.server)
        #: The port bound (the one asked for, or the one chosen for port 0).
        self.port = 0

    @property
    def ready(self) -> bool:
        return not self.server.draining

    async def start(self) -> int:
        self.port = await self.server.start(self._settings.host, self._settings.gateway_port)
        return self.port

    async def drain(self) -> None:
        await self.server.drain(self._settings.drain_timeout)

    async def close(self) -> None:
        await self.server.close()


@dataclass
class StandaloneGateway:
    """A gateway, its store and the worker-facing API, without an executor.

    Workers connect as to `connect dev` (`/v0/connect/start` on `api_url`,
    then the WebSocket); the apps they register are recorded in the store;
    `GET /v1/workers` lists this gateway's connections; events, run and app
    queries are refused with 503 naming the API processes the store's
    registry lists (`RunsElsewhere`), and so is the dashboard it serves at
    `/`. Started by
    `start_standalone_gateway`; `close` stops the API, the server and the
    store, in that order."""

    store: Store
    role: GatewayRole
    api: ApiRole

    @property
    def dispatcher(self) -> GatewayDispatcher:
        return self.role.dispatcher

    @property
    def server(self) -> GatewayServer:
        return self.role.server

    @property
    def gateway_port(self) -> int:
        return self.role.port

    @property
    def api_url(self) -> str:
        return self.api.url

    async def close(self) -> None:
        await self.api.stop()
        await self.role.close()
        await self.store.close()


async def start_standalone_gateway(settings: PlatformSettings) -> StandaloneGateway:
    store = await open_store(settings)
    tokens = settings.keys.token_issuer()
    role = GatewayRole(settings, gateway_dispatcher(settings, store), tokens, _app_recorder(store))
    try:
        await role.start()
        api = ApiRole(
            settings,
            RunsElsewhere(store),
            role.dispatcher,
            tokens,
            gateway_port=role.port,
            is_ready=lambda: role.ready,
            admit_connection=role.server.admit,
            workers=LiveWorkers(role.dispatcher, settings.process_id or default_process_id()),
        )
        await api.start()
    except (OSError, ApiNotStarted):
        await role.close()
        await store.close()
        raise
    return StandaloneGateway(store, role, api)


@dataclass
class GatewayProcess:
    """The gateway role among other processes; see the module's docstring.
    Started by `start_gateway_process`; the store is its owner's to close."""

    settings: PlatformSettings
    store: Store
    role: GatewayRole
    pump: RequestPump
    registry: GatewayRegistry
    _pumping: asyncio.Task[None] = field(repr=False)
    _closed: bool = field(default=False, repr=False)
    _draining: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def process_id(self) -> str:
        return self.registry.process_id

    @property
    def url(self) -> str:
        """The ws:// URL workers dial (advertised in the registry)."""
        return self.registry.address

    @property
    def dispatcher(self) -> GatewayDispatcher:
        return self.role.dispatcher

    @property
    def server(self) -> GatewayServer:
        return self.role.server

    @property
    def port(self) -> int:
        return self.role.port

    async def drain(self) -> None:
        """Registry "draining", `/ready` 503, queued requests not forwarded yet
        handed back, GATEWAY_CLOSING to every worker; then wait, up to
        `settings.drain_timeout` in all, for the forwards in flight to end."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout
        await self.registry.set_draining()
        returned = self.pump.stop_taking()
        if returned:
            log.info("gateway %s: handed back %d requests not forwarded yet", self.process_id, returned)
        await self.role.drain()
        if not await self.pump.finish(max(0.0, deadline - loop.time())):
            log.warning(
                "gateway %s: %d forwards still unanswered at the drain deadline; they go back to the queue",
                self.process_id,
                self.pump.in_flight,
            )

    def request_drain(self) -> None:
        """Start `drain` in the background, once (a drain asked for over HTTP
        with nobody else to hand it to); the process goes on, drained."""
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self.drain())

    async def close(self) -> None:
        """Stop the pump (what it still holds goes back to the queue), drop
        the registry rows, close the server. Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._draining is not None:
            self._draining.cancel()
            await asyncio.gather(self._draining, return_exceptions=True)
        self._pumping.cancel()
        await asyncio.gather(self._pumping, return_exceptions=True)
        log.debug("gateway %s: pump stopped", self.process_id)
        await self.registry.close()
        log.debug("gateway %s: registry entries dropped", self.process_id)
        await self.role.close()


def gateway_address(settings: PlatformSettings, port: int) -> str:
    """The URL workers dial: `settings.gateway_url`, else the listening
    address (the host name when listening on every interface)."""
    if settings.gateway_url:
        return settings.gateway_url
    host = settings.host
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"ws://{host}:{port}/v0/connect"


async def start_gateway_process(
    settings: PlatformSettings,
    store: Store,
    *,
    on_drain_requested: Callable[[DrainCause], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> GatewayProcess:
    """Listen, register, and take queued requests; see `GatewayProcess`.
    `on_drain_requested`: as for `GatewayRole`, except that None drains the
    whole process in place (`GatewayProcess.drain`), not only its server."""
    process_id = settings.process_id or default_process_id()
    dispatcher = gateway_dispatcher(settings, store, shared_with=store)
    started: list[GatewayProcess] = []

    def drain_in_place(cause: DrainCause) -> None:
        if started:
            started[0].request_drain()

    role = GatewayRole(
        settings,
        dispatcher,
        settings.keys.token_issuer(),
        _app_recorder(store),
        on_drain_requested=on_drain_requested or drain_in_place,
        api_urls=None if "api" in settings.roles else ApiDirectory(store).urls,
    )
    await role.start()
    registry = GatewayRegistry(
        store,
        dispatcher,
        process_id=process_id,
        address=gateway_address(settings, role.port),
        ttl=settings.process_ttl,
        clock=clock,
    )
    pump = RequestPump(store, dispatcher, gateway_id=process_id, clock=clock)
    settings.metrics.watch_request_queue(store)
    try:
        await store.listen(REPLY_STORED, dispatcher.reply_stored_elsewhere)
        await registry.start()
    except BaseException:
        await registry.close()
        await role.close()
        raise
    pumping = asyncio.create_task(pump.run(), name=f"pump:{process_id}")
    started.append(GatewayProcess(settings, store, role, pump, registry, pumping))
    return started[0]


def _app_recorder(store: Store) -> SyncHook:
    async def record(
        app_name: str,
        app_version: str | None,
        functions: list[FunctionConfig],
        refused: list[RefusedFunction],
        unknown_fields: dict[str, list[str]],
    ) -> None:
        # What an executor reads at its start; refusals are the executor's to decide.
        await store.put_app(AppRecord(app_name, list(functions), app_version, int(time.time() * 1000)))

    return record
