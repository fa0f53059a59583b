"""The API role: the HTTP API (events in, connect start/flush, checkpoints,
run REST, probes) served by uvicorn on `settings.port`.

`ApiProcess` (`start_api_process`) is this role as a process of split roles:
no executor and no gateway with it, only the store, so any number of them
can serve behind a load balancer. Events and run queries go to the store
(`connect.api.stored_runs`), `/v0/connect/start` hands out gateways from the
process registry (`connect.api.gateways`), `/v0/connect/flush` stores the
reply (`connect.api.stored_replies`), and the process registers itself with
a heartbeat (`connect.roles.registration`).

Start: the socket is bound and uvicorn serves before `start` returns (or
`ApiNotStarted` says why not). Stop: uvicorn stops accepting, finishes the
requests in progress, and closes. uvicorn installs no signal handlers: the
process's composition root owns the signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Generator
from typing import Any, Final, NoReturn

import uvicorn

from connect.api.app import MAX_START_BYTES, ApiConfig, EventSink, Gateways, ReplySink, create_api
from connect.api.elsewhere import ApiDirectory, ProcessSource, ServedElsewhere
from connect.api.framing import HttpLimits
from connect.api.gateways import GatewayDirectory
from connect.api.guard import guarded_http
from connect.api.stored_replies import StoredReplies
from connect.api.stored_runs import StoredRuns
from connect.api.workers import StoredWorkers, WorkerList
from connect.binding import bind_failure
from connect.executor.bulk_cancel import Cancellation
from connect.executor.event_views import EventPage
from connect.executor.views import RunPage
from connect.gateway.auth import TokenIssuer
from connect.roles.registration import Registration
from connect.roles.settings import PlatformSettings, default_process_id
from connect.store import ROLE_API, RunFilter, Store
from protocol import limits
from protocol.payloads import IncomingEvent


class ApiNotStarted(RuntimeError):
    """uvicorn stopped before it served; the message is one line naming the
    cause and the fix (most often: the port is taken)."""


class _Server(uvicorn.Server):
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


class RunsElsewhere:
    """The event and run side of the API in a process that runs no executor
    (a gateway on its own): every call is refused with 503 and the reason,
    which a load balancer takes as "try another process". Given the store,
    the answer also lists the API processes its registry knows
    (`connect.api.elsewhere`: `api_urls`), and the dashboard links to them."""

    REASON = "this process runs no executor: send events and run queries to an API process"

    def __init__(self, store: ProcessSource | None = None) -> None:
        self._api_urls = None if store is None else ApiDirectory(store).urls

    def _refuse(self) -> NoReturn:
        raise ServedElsewhere(self.REASON, self._api_urls)

    async def send_events(self, events: list[IncomingEvent]) -> list[str]:
        self._refuse()

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        self._refuse()

    async def runs_for_event(self, event_id: str) -> list[dict[str, Any]]:
        self._refuse()

    async def cancel_run(self, run_id: str) -> dict[str, Any] | None:
        self._refuse()

    async def list_runs(self, query: RunFilter) -> RunPage:
        self._refuse()

    async def run_timeline(self, run_id: str) -> list[dict[str, Any]] | None:
        self._refuse()

    async def list_events(self, name: str | None, older_than: tuple[int, str] | None, limit: int) -> EventPage:
        self._refuse()

    async def event_detail(self, event_id: str) -> dict[str, Any] | None:
        self._refuse()

    async def replay_event(self, event_id: str) -> str | None:
        self._refuse()

    def registered_functions(self) -> list[dict[str, Any]]:
        self._refuse()

    def registered_apps(self) -> list[dict[str, Any]]:
        self._refuse()

    async def cancel_matching(self, cancellation: Cancellation) -> int:
        self._refuse()

    async def rerun(self, run_id: str) -> dict[str, Any] | None:
        self._refuse()


class ApiRole:
    def __init__(
        self,
        settings: PlatformSettings,
        runs: EventSink,
        replies: ReplySink,
        tokens: TokenIssuer,
        *,
        gateway_port: int,
        is_ready: Callable[[], bool],
        admit_connection: Callable[[str | None], str | None],
        gateways: Gateways | None = None,
        workers: WorkerList | None = None,
    ) -> None:
        """`gateway_port` is the port `/v0/connect/start` sends workers to;
        `is_ready` answers `/ready`; `admit_connection` is the gateway's
        admission of a new worker connection. `gateways`, when the gateways
        are other processes, replaces the last two (see `create_api`)."""
        s = settings
        self._settings = settings
        app = create_api(
            runs,
            replies,
            tokens,
            ApiConfig(
                gateway_port=gateway_port,
                gateway_host=s.host,
                max_event_bytes=s.max_event_bytes,
                max_request_bytes=s.max_request_bytes,
            ),
            is_ready=is_ready,
            keys=s.keys,
            admit_connection=admit_connection,
            gateways=gateways,
            metrics=s.metrics,
            workers=workers,
        )
        http_limits = HttpLimits(
            route_body_bytes=(
                (b"/e/", s.max_request_bytes),
                (b"/v0/connect/flush", limits.MAX_WORKER_MESSAGE_BYTES),
                (b"/v0/connect/start", MAX_START_BYTES),
            )
        )
        self._server = _Server(
            uvicorn.Config(
                app,
                host=s.host,
                port=s.port,
                log_level="warning",
                # uvicorn's lines go to the process's handlers: JSON under --log-format json.
                log_config=None,
                lifespan="off",
                access_log=False,
                backlog=4096,
                http=guarded_http(http_limits),
                # No WebSocket on this port: an upgraded connection would leave the guard's limits.
                ws="none",
                timeout_keep_alive=http_limits.keep_alive_timeout,
            )
        )
        self._task: asyncio.Task[None] | None = None
        #: The port bound (the one asked for, or the one chosen for port 0).
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self._settings.host}:{self.port}"

    async def start(self) -> None:
        server = self._server
        self._task = task = asyncio.create_task(self._serve())
        started = asyncio.ensure_future(server.started_event.wait())
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if not server.started:
            with contextlib.suppress(ApiNotStarted):
                await task
            raise ApiNotStarted(bind_failure("the HTTP API", "--port", self._settings.host, self._settings.port))
        self.port = int(server.servers[0].sockets[0].getsockname()[1])

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit:
            # uvicorn exits the process when it cannot bind (after logging why);
            # the role's owner decides that, once it has stopped the other roles.
            raise ApiNotStarted(
                bind_failure("the HTTP API", "--port", self._settings.host, self._settings.port)
            ) from None

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task


#: Listening addresses that name no host another process could reach.
_EVERY_INTERFACE: Final = frozenset({"", "0.0.0.0", "::"})


class ApiProcess:
    """The API role of split roles: see the module doc. Built by `start_api_process`."""

    def __init__(self, settings: PlatformSettings, store: Store) -> None:
        self.process_id = settings.process_id or default_process_id()
        self.runs = StoredRuns(store, metrics=settings.metrics.runs)
        self.gateways = GatewayDirectory(store, max_connections_per_instance=settings.max_connections_per_instance)
        self._serving = False
        self.role = ApiRole(
            settings,
            self.runs,
            StoredReplies(store),
            settings.keys.token_issuer(),
            gateway_port=settings.gateway_port,
            is_ready=lambda: self._serving,
            admit_connection=lambda _instance: None,
            gateways=self.gateways,
            workers=StoredWorkers(store),
        )
        self._store = store
        self._host = settings.host
        self._ttl = settings.process_ttl
        self._heartbeat: Registration | None = None

    @property
    def port(self) -> int:
        return self.role.port

    @property
    def url(self) -> str:
        return self.role.url

    @property
    def address(self) -> str:
        """The URL the registry shows: `url`, with the host name for an address
        listening on every interface (0.0.0.0 names no host to reach)."""
        host = self._host
        if host in _EVERY_INTERFACE:
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Read the apps, listen for changes, serve, then register: `/ready`
        turns true once all of it is done."""
        await self.runs.start()
        await self.gateways.start()
        try:
            await self.role.start()
        except ApiNotStarted:
            await self.runs.stop()
            await self.gateways.stop()
            raise
        self._heartbeat = Registration(self._store, self.process_id, ROLE_API, address=self.address, ttl=self._ttl)
        try:
            await self._heartbeat.start()
        except BaseException:
            await self._stop_serving()
            raise
        self._serving = True

    async def stop(self) -> None:
        """`/ready` turns 503, the entry leaves the registry, and uvicorn
        finishes the requests in progress. The store is the caller's to close."""
        self._serving = False
        if self._heartbeat is not None:
            await self._heartbeat.stop()
        await self._stop_serving()

    async def _stop_serving(self) -> None:
        await self.role.stop()
        await self.runs.stop()
        await self.gateways.stop()


async def start_api_process(settings: PlatformSettings, store: Store) -> ApiProcess:
    """An API process over `store` (PostgreSQL), started; raises `ApiNotStarted`
    when uvicorn cannot serve."""
    api = ApiProcess(settings, store)
    await api.start()
    return api
