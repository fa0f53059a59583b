"""The gateway's WebSocket server: a thin asyncio shell over `GatewaySession`.

Each connection gets a reader loop (frames in, session events out) and a
timer that wakes at the session's next deadline (handshake, heartbeat
watchdog, ACK timeouts). While the gateway awaits a worker (from a request
or a checkpoint's answer going out until the last reply it awaits comes
in), its loop polls for a window it learns from how soon the answers came,
at most `poll_window` (see `connect.polling`; 0 is off); heartbeats never
make it poll. `/ready` answers 200, or 503 while draining.

Connections count against two separate budgets: from TCP accept until their
WORKER_CONNECT is authenticated, the handshake budget (`admission`, with a
cap per peer address); from then on, `max_connections`. Sockets that never
authenticate can exhaust only the first.

`POST /v0/connect/drain` changes the process's state, so it needs what the
`/v1` API needs: the signing key, when the server has one (`authorize`).
`GET /metrics` (when the server is given `scrape`) needs it too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import http
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from connect.gateway.admission import MAX_HANDSHAKES, MAX_HANDSHAKES_PER_PEER, HandshakeAdmission
from connect.gateway.auth import TokenIssuer
from connect.gateway.connection import WRITE_HIGH_WATER, WRITE_TIMEOUT, Connection, GatewayWebSocket
from connect.gateway.dispatcher import GatewayDispatcher
from connect.metrics import CONTENT_TYPE
from connect.polling import DEFAULT_WINDOW, PollWindow, check_window
from connect.waiting import wait_event
from protocol import codes, limits
from protocol import connect_pb2 as pb
from protocol import gateway_session as gs
from protocol.payloads import FunctionConfig, RefusedFunction

log = logging.getLogger("connect.gateway")

#: Records an app a worker registered: (app name, app version, functions served,
#: functions refused, per function the config fields no known SDK sends).
SyncHook = Callable[
    [str, str | None, list[FunctionConfig], list[RefusedFunction], dict[str, list[str]]], Awaitable[None]
]

#: Why a drain began: a signal to the process, or `POST /v0/connect/drain`.
DrainCause = Literal["signal", "request"]

DRAIN_TIMEOUT = 25.0
ACCEPT_BACKLOG = 4096
#: Seconds a new TCP connection has to complete its WebSocket upgrade; one
#: that is silent holds its place in the handshake budget until then.
UPGRADE_TIMEOUT = 10.0


class GatewayServer:
    def __init__(
        self,
        dispatcher: GatewayDispatcher,
        tokens: TokenIssuer,
        on_sync: SyncHook,
        *,
        session_config: gs.GatewaySessionConfig | None = None,
        max_message_bytes: int = limits.MAX_WORKER_MESSAGE_BYTES,
        max_connections: int = limits.MAX_CONNECTIONS,
        max_connections_per_instance: int = limits.MAX_CONNECTIONS_PER_INSTANCE,
        write_timeout: float = WRITE_TIMEOUT,
        clock: Callable[[], float] = time.time,
        on_drain_requested: Callable[[DrainCause], None] | None = None,
        poll_window: float = DEFAULT_WINDOW,
        max_handshakes: int = MAX_HANDSHAKES,
        max_handshakes_per_peer: int = MAX_HANDSHAKES_PER_PEER,
        authorize: Callable[[str | None], bool] | None = None,
        scrape: Callable[[], Awaitable[bytes]] | None = None,
        api_urls: Callable[[], Awaitable[list[str]]] | None = None,
    ) -> None:
        """`authorize(Authorization header or None)` decides who may drain the
        gateway or read its metrics over HTTP; None lets anyone (open mode,
        `connect dev`). `scrape` renders the process's metrics for `GET
        /metrics` (None: no such route); it may read the store first.
        `api_urls` lists the API processes, for `GET /` on a gateway whose
        process serves no API (None: `/` is an unknown route)."""
        self.dispatcher = dispatcher
        self._poll_seconds = check_window(poll_window)
        self.poll_window: PollWindow | None = None  # made on the loop, in `start`
        self.max_connections = max_connections
        self.max_connections_per_instance = max_connections_per_instance
        self.admission = HandshakeAdmission(max_handshakes, max_handshakes_per_peer)
        self._authorize = authorize
        self._scrape = scrape
        self._api_urls = api_urls
        self._write_timeout = write_timeout
        self._on_drain_requested = on_drain_requested
        self._on_sync = on_sync
        self._clock = clock
        self._max_message_bytes = max_message_bytes
        cfg = session_config or gs.GatewaySessionConfig()
        cfg.authenticate = tokens.verify
        self._session_config = cfg
        self.connections: set[Connection] = set()
        self.draining = False
        self._server: Server | None = None
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._drain_task: asyncio.Task[None] | None = None
        #: Live handshaken connections per instance id (kept, not counted: a
        #: reconnect herd would make counting quadratic).
        self._per_instance: dict[str, int] = {}
        #: Live authenticated connections: what `max_connections` bounds.
        self.authenticated_connections = 0
        #: Ended worker connections by disconnect reason (as logged).
        self.disconnects: collections.Counter[str] = collections.Counter()

    # --- lifecycle ----------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        if self._poll_seconds > 0:
            self.poll_window = PollWindow(asyncio.get_running_loop(), self._poll_seconds)
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            process_response=_select_subprotocol,
            max_size=self._max_message_bytes,
            open_timeout=UPGRADE_TIMEOUT,
            ping_interval=None,  # liveness is application heartbeats
            compression=None,
            max_queue=64,
            write_limit=WRITE_HIGH_WATER,
            # Each server its own subclass, so its connections use its budget.
            create_connection=type("GatewayWebSocket", (GatewayWebSocket,), {"admission": self.admission}),
            # A restarted gateway meets its whole fleet at once: a short accept
            # queue turns that into dropped SYNs and seconds of client backoff.
            backlog=ACCEPT_BACKLOG,
        )
        sock = next(iter(self._server.sockets))
        return int(sock.getsockname()[1])

    async def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Stop taking connections, send GATEWAY_CLOSING to every worker, wait
        for them to leave (they reconnect elsewhere), then close the rest 1001.

        A connection with nothing in flight (nothing leased to its worker
        from it, no reply or checkpoint being stored) is closed as soon as
        that is so: official SDKs keep the old connection open until a new
        one is up, and with no other gateway to go to they would otherwise
        hold the drain for its whole timeout while their reconnect backoff
        grows (the TypeScript SDK's reaches 5 minutes)."""
        if not self.draining:
            self.draining = True
            log.info("gateway draining: %d connections", len(self.connections))
            for conn in list(self.connections):
                self.dispatcher.connection_unroutable(conn)
                await self._apply(conn, conn.session.drain())
                await self._close_if_drained(conn)
        await wait_event(self._all_closed, timeout)
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                await conn.ws.close(codes.CloseCode.GOING_AWAY, codes.GATEWAY_CLOSING)

    def request_drain(self, cause: DrainCause = "signal") -> None:
        """What SIGTERM and `POST /v0/connect/drain` do: hand over to the
        owner of the process (which drains, then exits), or drain in place."""
        if self._on_drain_requested is not None:
            self._on_drain_requested(cause)
        elif not self.draining:
            self._drain_task = asyncio.get_running_loop().create_task(self.drain())

    def admit(self, instance_id: str | None) -> str | None:
        """Why a new connection would be refused (the answer of /start), or None.
        Only authenticated connections count: sockets still in the handshake
        have a budget of their own."""
        if self.authenticated_connections >= self.max_connections:
            return f"reached max allowed connections ({self.max_connections})"
        if instance_id and self._instance_connections(instance_id) >= self.max_connections_per_instance:
            return f"instance {instance_id!r} reached max allowed connections ({self.max_connections_per_instance})"
        return None

    def _instance_connections(self, instance_id: str) -> int:
        return self._per_instance.get(instance_id, 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
        if self.poll_window is not None:
            log.debug("gateway %s", self.poll_window.summary())

    # --- HTTP on the gateway port ------------------------------------------------------

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | Awaitable[Response] | None:
        path = request.path.split("?", 1)[0]
        if request.method == "POST" and path == "/v0/connect/drain":
            if self._authorize is not None and not self._authorize(request.headers.get("Authorization")):
                log.warning("refused an unauthenticated drain request from %s", _remote(ws))
                return _json(
                    http.HTTPStatus.UNAUTHORIZED,
                    "draining the gateway needs Authorization: Bearer <signing key>, as /v1 does",
                )
            log.info("drain requested over HTTP by %s", _remote(ws))
            self.request_drain("request")
            return _text(http.HTTPStatus.OK, '{"status":"ok"}', "application/json")
        if request.method != "GET":
            return _text(http.HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} not allowed on {path}\n")
        if path == "/ready":
            if self.draining:
                return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
            return _text(http.HTTPStatus.OK, "ready\n")
        if path == "/metrics" and self._scrape is not None:
            if self._authorize is not None and not self._authorize(request.headers.get("Authorization")):
                return _json(
                    http.HTTPStatus.UNAUTHORIZED,
                    "reading metrics needs Authorization: Bearer <signing key>, as /v1 does",
                )
            return self._metrics(self._scrape)
        if path == "/" and self._api_urls is not None:
            return self._where_api(self._api_urls)
        if path in ("/v0", "/v0/"):
            return _text(http.HTTPStatus.OK, ".")
        if path != limits.CONNECT_PATH:
            return _text(http.HTTPStatus.NOT_FOUND, f"no route for {path}\n")
        return None

    async def _metrics(self, scrape: Callable[[], Awaitable[bytes]]) -> Response:
        # Only this route awaits (websockets takes an awaitable from process_request):
        # a worker's handshake never waits on the store.
        return _text(http.HTTPStatus.OK, (await scrape()).decode(), CONTENT_TYPE)

    async def _where_api(self, api_urls: Callable[[], Awaitable[list[str]]]) -> Response:
        # Someone opened the gateway port in a browser: the dashboard and `/v1` are elsewhere.
        body = {
            "status": 404,
            "error": f"this port is a worker gateway (WebSocket at {limits.CONNECT_PATH}): the dashboard and the "
            "REST API are served by the API processes",
            "api_urls": await api_urls(),
        }
        return _text(http.HTTPStatus.NOT_FOUND, json.dumps(body), "application/json")

    # --- one connection -----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, GatewayWebSocket)  # `start` passes it as create_connection
        if self.draining:
            await ws.close(codes.CloseCode.GOING_AWAY, codes.GATEWAY_CLOSING)
            return
        session = gs.GatewaySession(self._session_config, self._clock())
        conn = Connection(ws, session, _remote(ws), write_timeout=self._write_timeout)
        conn.poll_window = self.poll_window
        self.connections.add(conn)
        self._all_closed.clear()
        timer = asyncio.create_task(self._timer(conn))
        try:
            await conn.flush()  # GATEWAY_HELLO
            # The handshake goes through this loop. Once the worker is ready,
            # binary messages are handled as they are parsed (`_receive`) and
            # the loop gets the rest (see `connect.websocket`) and the end.
            async for message in ws:
                data = message if isinstance(message, bytes) else message.encode()
                await self._apply(conn, session.receive(data, self._clock()))
                if session.phase is gs.Phase.CLOSED:
                    break
        except ConnectionClosed:
            pass
        finally:
            ws.on_binary = None
            timer.cancel()
            rcvd, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
            close_code = rcvd.code if rcvd else None
            close_reason = rcvd.reason if rcvd else ""
            if sent is not None and sent.code == codes.CloseCode.MESSAGE_TOO_BIG:
                close_code = codes.CloseCode.MESSAGE_TOO_BIG  # we refused an oversized frame
            await self._apply(conn, session.connection_lost(close_code, close_reason, work_left=self._work_left(conn)))
            if conn.slow:
                session.disconnect_reason = codes.SLOW_READER
            clean = session.disconnect_reason == codes.DisconnectReason.WORKER_SHUTDOWN
            # Dropped for not reading, the worker may be alive but cut off: its
            # leases last as long as they would have on the silent connection.
            keep_for = max(0.0, session.silent_close_at - self._clock()) if conn.slow else 0.0
            self.dispatcher.connection_lost(conn, clean, keep_for=keep_for)
            self.connections.discard(conn)
            if conn.hello is not None:
                self.authenticated_connections -= 1
                left = self._per_instance.get(conn.instance_id, 1) - 1
                if left > 0:
                    self._per_instance[conn.instance_id] = left
                else:
                    self._per_instance.pop(conn.instance_id, None)
            if not self.connections:
                self._all_closed.set()
            if conn.hello is not None:
                reason = _reason_name(session.disconnect_reason)
                self.disconnects[reason] += 1
                log.info(
                    "worker disconnected: connection=%s instance=%s reason=%s",
                    conn.connection_id,
                    conn.instance_id,
                    reason,
                    extra={"connection_id": conn.connection_id, "instance_id": conn.instance_id},
                )

    async def _close_if_drained(self, conn: Connection) -> None:
        if self.draining and conn.hello is not None and conn.storing == 0 and not self._work_left(conn):
            await self._apply(conn, conn.session.close_drained())

    def _work_left(self, conn: Connection) -> bool:
        """Whether a request sent on `conn` is still leased to its worker
        (not answered there, not lapsed and sent elsewhere)."""
        for rid in conn.session.unanswered_requests:
            lease = self.dispatcher.leases.get(rid)
            if lease is not None and lease.instance_id == conn.instance_id:
                return True
        return False

    async def _timer(self, conn: Connection) -> None:
        session = conn.session
        while session.phase is not gs.Phase.CLOSED:
            deadline = session.next_deadline()
            if deadline is None:
                return
            await asyncio.sleep(max(0.0, deadline - self._clock()))
            await self._apply(conn, session.tick(self._clock()))

    async def _apply(self, conn: Connection, events: list[gs.Event]) -> None:
        """Act on session events, then write what the session queued."""
        for event in events:
            if self._act(conn, event):
                continue
            match event:
                case gs.HelloAccepted(hello=hello):
                    await self._accept(conn, hello)
                case gs.Close(code=code, reason=reason):
                    for app_name, refused in conn.session.refused_functions:
                        log.warning(
                            "app %s, function %s: refused, not served: %s (nothing valid left: connection closed)",
                            app_name,
                            refused.id,
                            refused.reason,
                        )
                    self.dispatcher.connection_unroutable(conn)
                    await self._close(conn, code, reason)
                    return
        try:
            await conn.flush()
        except ConnectionClosed:
            pass

    def _receive(self, conn: Connection, data: bytes) -> None:
        """A binary message from a ready worker, handled as soon as it is parsed."""
        events = conn.session.receive(data, self._clock())
        for i, event in enumerate(events):
            if not self._act(conn, event):  # a Close: the rest in order, in a task
                conn.ws.on_binary = None
                self._spawn(self._apply(conn, events[i:]))
                return
        conn.flush_soon()

    def _act(self, conn: Connection, event: gs.Event) -> bool:
        """Act on one event that needs no waiting; False for one that does."""
        match event:
            case gs.Ready():
                self.dispatcher.connection_ready(conn)
                conn.ws.on_binary = functools.partial(self._receive, conn)
                log.info(
                    "worker ready: connection=%s instance=%s",
                    conn.connection_id,
                    conn.instance_id,
                    extra={"connection_id": conn.connection_id, "instance_id": conn.instance_id},
                )
            case gs.RequestAcked(request_id=rid):
                conn.worker_answered()
                self.dispatcher.request_acked(rid, True)
            case gs.AckFailed(request_id=rid):
                conn.worker_answered()
                self.dispatcher.request_acked(rid, False)
            case gs.AckLost():
                # The worker may have it: its lease decides (cut short by
                # `connection_lost`, extended by the worker if it runs it).
                conn.worker_answered()
            case gs.ReplyReceived(response=response, raw=raw):
                conn.worker_answered(last=self.dispatcher.pending <= 1)
                # Stored off the reader loop (the store calls back): one slow
                # commit must not hold up heartbeats or other replies here.
                rid = response.request_id
                conn.storing += 1
                self.dispatcher.take_reply(rid, raw, response, functools.partial(self._replied, conn, rid))
            case gs.CheckpointReceived(response=response, raw=raw):
                conn.worker_answered()
                rid = response.request_id
                # Taken or refused now: a reply behind it in this read waits for it.
                conn.storing += 1
                storing = self.dispatcher.accept_checkpoint(raw, rid, conn.instance_id, response)
                self._spawn(self._checkpoint(conn, rid, storing))
            case gs.LeaseExtension(data=data):
                self._spawn(self._extend(conn, data))
            case gs.Paused():
                self.dispatcher.connection_unroutable(conn)
                log.info(
                    "worker paused: connection=%s instance=%s",
                    conn.connection_id,
                    conn.instance_id,
                    extra={"connection_id": conn.connection_id, "instance_id": conn.instance_id},
                )
            case gs.HelloAccepted() | gs.Close():
                return False
        return True

    async def _accept(self, conn: Connection, hello: gs.WorkerHello) -> None:
        if self.authenticated_connections >= self.max_connections:
            await self._apply(conn, conn.session.refuse(codes.CloseCode.TRY_AGAIN_LATER, codes.TOO_MANY_CONNECTIONS))
            return
        if self._instance_connections(hello.instance_id) >= self.max_connections_per_instance:
            # Workers that do not announce their instance to /start are held here.
            await self._apply(
                conn, conn.session.refuse(codes.CloseCode.POLICY_VIOLATION, codes.TOO_MANY_CONNECTIONS_PER_INSTANCE)
            )
            return
        conn.hello = hello
        conn.ws.authenticated()  # leaves the handshake budget for `max_connections`
        self.authenticated_connections += 1
        self._per_instance[hello.instance_id] = self._per_instance.get(hello.instance_id, 0) + 1
        conn.functions = {(app.app_name, fn.id) for app in hello.apps for fn in app.functions}
        for app in hello.apps:
            await self._on_sync(app.app_name, app.app_version, app.functions, app.refused, app.unknown_fields)
        self.dispatcher.capacity.set_limit(hello.instance_id, hello.max_worker_concurrency)
        log.info(
            "worker connected: connection=%s instance=%s apps=%s sdk=%s:%s max_concurrency=%s",
            hello.connection_id,
            hello.instance_id,
            ",".join(a.app_name for a in hello.apps),
            hello.sdk_language,
            hello.sdk_version,
            hello.max_worker_concurrency or "unlimited",
        )
        await self._apply(conn, conn.session.connection_ready(self._clock()))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _replied(self, conn: Connection, request_id: str, error: BaseException | None) -> None:
        conn.storing -= 1
        if error is not None:
            log.error("storing reply %s failed", request_id, exc_info=error)
            self._spawn(self._close(conn, codes.CloseCode.INTERNAL_ERROR, codes.INTERNAL_ERROR))
            return
        conn.session.ack_reply(request_id)  # only after the reply is durable
        # The ACK only lets the worker drop its copy: the caller waiting for
        # this reply goes first (it was woken a moment ago), and whatever it
        # sends this worker next carries the queued ACK out in the same write.
        conn.flush_later()
        if self.draining:
            self._spawn(self._close_if_drained(conn))  # its close writes the ACK first

    async def _checkpoint(self, conn: Connection, request_id: str, storing: Awaitable[bool]) -> None:
        # Known now if the reply came in the same read: the executor may then
        # store the step with it, and the request is over before the answer.
        behind = self.dispatcher.reply_behind(request_id)
        try:
            stored = await storing
        except Exception:
            log.exception("storing a checkpoint of request %s failed", request_id)
            stored = False  # the worker ends the request with the step: its reply is stored instead
        finally:
            conn.storing -= 1
        conn.session.ack_checkpoint(request_id, stored)
        if behind or self.dispatcher.reply_behind(request_id):
            # The worker returned after this step and waits for no answer;
            # its reply is taken next (or was, stored with this step), and
            # the write of the reply's ACK carries this answer out
            # (`_replied` flushes, or `_close` does).
            return
        conn.flush_soon()  # the worker waits for this before its next step
        conn.awaits_worker()

    async def _extend(self, conn: Connection, data: pb.WorkerRequestExtendLeaseData) -> None:
        new_id = await self.dispatcher.extend_lease(data, conn.instance_id)
        conn.session.lease_ack(data, new_id)
        with contextlib.suppress(ConnectionClosed):
            await conn.flush()

    async def _close(self, conn: Connection, code: int | None, reason: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await conn.flush()
        if code is None:
            conn.ws.transport.abort()
            return
        log.info(
            "closing connection %s: %d %s",
            conn.connection_id or conn.remote,
            code,
            reason,
            extra={"connection_id": conn.connection_id or None, "instance_id": conn.instance_id or None},
        )
        with contextlib.suppress(Exception):
            await conn.ws.close(code, reason)


def _json(status: http.HTTPStatus, error: str) -> Response:
    body = json.dumps({"status": status.value, "error": error})
    return _text(status, body, "application/json")


def _select_subprotocol(ws: ServerConnection, request: Request, response: Response) -> None:
    """Answer with our subprotocol when the client offers it (the official
    SDKs do); clients that do not are still served.

    Done on the response rather than through `serve(select_subprotocol=...)`:
    websockets wraps that callback in a closure over the connection, a
    reference cycle per connection that only the cyclic collector frees."""
    if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
        return
    offered = [p.strip() for v in request.headers.get_all("Sec-WebSocket-Protocol") for p in v.split(",")]
    if limits.SUBPROTOCOL in offered:
        response.headers["Sec-WebSocket-Protocol"] = limits.SUBPROTOCOL


def _text(status: http.HTTPStatus, body: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    data = body.encode()
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(data)))])
    return Response(status.value, status.phrase, headers, data)


def _remote(ws: ServerConnection) -> str:
    addr = ws.remote_address
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


def _reason_name(reason: codes.DisconnectReason | str | None) -> str:
    if isinstance(reason, codes.DisconnectReason):
        return reason.name
    return reason or "UNEXPECTED"
