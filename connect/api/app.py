"""The HTTP API (port 8288): events in, connect start/flush, checkpoints, /metrics, and the
REST routes, each resource in a module of its own (`runs`, `event_routes`,
`cancellations`, `apps`, `workers`, `openapi`).

Every error is JSON with a specific status and message; nothing a client
sends can disturb other requests.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import msgspec
from google.protobuf.message import DecodeError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connect.api import apps, cancellations, checkpoints, event_routes, openapi, runs
from connect.api import workers as workers_routes
from connect.api.bodies import BodyRefused, read_body
from connect.api.dashboard import dashboard_routes
from connect.api.elsewhere import ServedElsewhere
from connect.api.errors import error as _error
from connect.api.events import EventRejected, parse_events
from connect.executor.bulk_cancel import Cancellation
from connect.executor.event_views import EventPage
from connect.executor.views import RunPage
from connect.gateway.auth import Keys, TokenIssuer
from connect.metrics import CONTENT_TYPE, PlatformMetrics
from connect.metrics.http_answers import HttpAnswers
from connect.store.base import RunFilter
from protocol import connect_pb2 as pb
from protocol import ids, limits
from protocol.payloads import IncomingEvent

log = logging.getLogger("connect.api")

#: The largest `/v0/connect/start` body (a StartRequest is a few hundred bytes).
MAX_START_BYTES = 1024 * 1024


class EventSink(Protocol):
    async def send_events(self, events: list[IncomingEvent]) -> list[str]: ...
    async def get_run(self, run_id: str) -> dict[str, Any] | None: ...
    async def runs_for_event(self, event_id: str) -> list[dict[str, Any]]: ...
    async def cancel_run(self, run_id: str) -> dict[str, Any] | None: ...
    async def list_runs(self, query: RunFilter) -> RunPage: ...
    async def run_timeline(self, run_id: str) -> list[dict[str, Any]] | None: ...
    async def list_events(self, name: str | None, older_than: tuple[int, str] | None, limit: int) -> EventPage: ...
    async def event_detail(self, event_id: str) -> dict[str, Any] | None: ...
    async def replay_event(self, event_id: str) -> str | None: ...
    def registered_functions(self) -> list[dict[str, Any]]: ...
    def registered_apps(self) -> list[dict[str, Any]]: ...
    async def cancel_matching(self, cancellation: Cancellation) -> int: ...
    async def rerun(self, run_id: str) -> dict[str, Any] | None: ...


class ReplySink(checkpoints.CheckpointSink, Protocol):
    async def accept_reply(self, raw: bytes, request_id: str) -> None: ...


class GatewayAssignment(NamedTuple):
    """Where `/v0/connect/start` sends a worker: the ws:// URL it dials, and the
    gateway's group (the name the worker lists in `exclude_gateways` to leave it)."""

    endpoint: str
    group: str


class GatewayRefused(Exception):
    """No gateway for this worker now: answered with `status` and `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Gateways(Protocol):
    """The gateways of other processes, for `/v0/connect/start` (see `connect.api.gateways`)."""

    async def assign(self, instance_id: str | None, exclude: Collection[str]) -> GatewayAssignment:
        """A gateway for a new connection of `instance_id`, avoiding `exclude`
        if possible; raises `GatewayRefused` when there is none or the instance
        is at its limit."""
        ...


class ApiConfig(msgspec.Struct):
    gateway_port: int
    gateway_host: str = "127.0.0.1"
    gateway_group: str = "gw-dev"
    max_event_bytes: int = 512 * 1024
    max_request_bytes: int = 3 * 1024 * 1024


def create_api(
    executor: EventSink,
    replies: ReplySink,
    tokens: TokenIssuer,
    config: ApiConfig,
    *,
    is_ready: Callable[[], bool] = lambda: True,
    keys: Keys | None = None,
    admit_connection: Callable[[str | None], str | None] = lambda _instance: None,
    gateways: Gateways | None = None,
    metrics: PlatformMetrics | None = None,
    workers: workers_routes.WorkerList | None = None,
) -> Starlette:
    """`admit_connection(instance_id or None)` returns why a new worker
    connection is refused (answered 429), or None to admit it.

    `metrics`: the process's metrics, served on `GET /metrics` (with the
    signing key, as `/v1`, when the server has keys) and counted here:
    events received, replies flushed, every answer by route and status.
    None: no `/metrics` route and nothing counted.

    `gateways`: where `/v0/connect/start` sends workers when the gateways run
    in other processes (it then admits connections too, and `admit_connection`
    and `config.gateway_port` are not used); None: to the gateway at
    `config.gateway_port` in this process.

    `workers`: the worker connections `GET /v1/workers` lists (None: it is
    answered 503, this process does not know them)."""
    keys = keys or Keys()

    def unauthorized(request: Request) -> Response | None:
        if keys.authorized(request.headers.get("authorization")):
            return None
        return _error(401, "authentication failed: send Authorization: Bearer <signing key>")

    async def send_events(request: Request) -> Response:
        if not keys.event_key_ok(request.path_params["event_key"]):
            return _error(401, "Event key not found")
        env = request.headers.get("x-inngest-env")
        if not keys.open and env and env != keys.env:
            return _error(401, f"this event key is not valid for environment {env!r}")
        try:
            events = parse_events(await read_body(request, config.max_request_bytes), config.max_event_bytes)
        except BodyRefused as exc:
            return exc.response
        except EventRejected as exc:
            return _error(exc.status, exc.message)
        seed = request.headers.get("x-inngest-event-id-seed")
        if seed is not None:
            # A retried send repeats its seed: the same events get the same ids and are stored once.
            try:
                seeded = ids.seeded_event_ids(seed, len(events))
            except ValueError as exc:
                return _error(400, str(exc))
            for event, event_id in zip(events, seeded, strict=True):
                if not event.id:
                    event.id = event_id
        event_ids = await executor.send_events(events)
        if metrics is not None:
            metrics.events_received.inc(len(event_ids))
        return JSONResponse({"ids": event_ids, "status": 200})

    async def connect_start(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        instance_id = request.headers.get("x-connect-instance-id")
        if gateways is None:
            refusal = admit_connection(instance_id)
            if refusal is not None:
                return _error(429, refusal)
        try:
            body = await read_body(request, MAX_START_BYTES, "start request")
        except BodyRefused as exc:
            return exc.response
        start = pb.StartRequest()
        try:
            start.ParseFromString(body)
        except DecodeError:
            return _error(400, "body is not a StartRequest")
        if gateways is not None:
            try:
                endpoint, group = await gateways.assign(instance_id, frozenset(start.exclude_gateways))
            except GatewayRefused as exc:
                return _error(exc.status, exc.message)
        else:
            host = config.gateway_host
            if request.headers.get("host"):
                # Workers reach the gateway by the same name they used for the API.
                host = urlsplit(f"//{request.headers['host']}").hostname or host
            endpoint = f"ws://{_host(host)}:{config.gateway_port}{limits.CONNECT_PATH}"
            group = config.gateway_group
        resp = pb.StartResponse(
            connection_id=ids.new_ulid(),
            gateway_endpoint=endpoint,
            gateway_group=group,
            session_token=tokens.issue(),
            sync_token=_bearer(request),
        )
        return Response(resp.SerializeToString(), media_type="application/octet-stream")

    async def connect_flush(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        try:
            body = await read_body(request, limits.MAX_WORKER_MESSAGE_BYTES, "reply")
        except BodyRefused as exc:
            return exc.response
        if not body:
            return _error(400, "empty body: send a serialized SDKResponse")
        msg = pb.SDKResponse()
        try:
            msg.ParseFromString(body)
        except DecodeError:
            return _error(400, "body is not a serialized SDKResponse")
        if not msg.request_id:
            return _error(400, "SDKResponse has no request_id")
        await replies.accept_reply(body, msg.request_id)
        if metrics is not None:
            metrics.flushed_replies.inc()
        return Response(
            pb.FlushResponse(request_id=msg.request_id).SerializeToString(), media_type="application/octet-stream"
        )

    async def checkpoint_async(request: Request) -> Response:
        """Steps an official TypeScript worker ran and stores before going on
        (see `connect/api/checkpoints.py` for what each answer makes it do)."""
        if (denied := unauthorized(request)) is not None:
            return denied
        run_id = request.path_params["run_id"]
        try:
            body = await read_body(request, limits.MAX_WORKER_MESSAGE_BYTES, "checkpoint")
            request_id, ops = checkpoints.parse(run_id, body)
        except BodyRefused as exc:
            return exc.response
        except checkpoints.CheckpointRejected as exc:
            return _error(400, str(exc))
        status, message = checkpoints.answer(await replies.checkpoint_over_http(run_id, request_id, ops))
        if status == 200:
            return JSONResponse({"status": 200, "data": {"run_id": run_id}})
        return _error(status, message)

    async def checkpoint_sync(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        return _error(501, checkpoints.SYNC_UNSUPPORTED)

    async def scrape(request: Request) -> Response:
        """The process's metrics in Prometheus's text format."""
        if (denied := unauthorized(request)) is not None:
            return denied
        assert metrics is not None
        return Response(await metrics.scrape(), media_type=CONTENT_TYPE)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        if is_ready():
            return JSONResponse({"status": "ready"})
        return _error(503, "not ready")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if isinstance(exc, ServedElsewhere) and exc.api_urls is not None:
            return _error(exc.status_code, str(exc.detail), api_urls=await exc.api_urls())
        if exc.status_code == 404:
            return _error(404, f"no route for {request.method} {request.url.path}")
        if exc.status_code == 405:
            return _error(405, f"method {request.method} not allowed on {request.url.path}")
        return _error(exc.status_code, str(exc.detail))

    routes = [
        Route("/e/{event_key}", send_events, methods=["POST"]),
        Route("/v0/connect/start", connect_start, methods=["POST"]),
        Route("/v0/connect/flush", connect_flush, methods=["POST"]),
        Route("/v1/checkpoint/{run_id}/async", checkpoint_async, methods=["POST"]),
        Route("/v1/checkpoint/{run_id}/steps", checkpoint_sync, methods=["POST"]),
        Route("/v1/checkpoint", checkpoint_sync, methods=["POST"]),
        *event_routes.routes(executor, unauthorized),
        *runs.routes(executor, unauthorized),
        *cancellations.routes(executor, unauthorized),
        *apps.routes(executor, unauthorized),
        *workers_routes.routes(workers, unauthorized),
        *openapi.routes(unauthorized),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        # The dashboard's page and assets load without a key; its `/v1` calls need one under serve.
        *dashboard_routes(),
    ]
    middleware: list[Middleware] = []
    if metrics is not None:
        routes.append(Route("/metrics", scrape, methods=["GET"]))
        middleware.append(Middleware(HttpAnswers, counter=metrics.http_responses))
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {HTTPException: http_error}
    return Starlette(routes=routes, exception_handlers=handlers, middleware=middleware)


def _bearer(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else ""


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
