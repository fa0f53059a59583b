"""`connect()`: keep an outbound WebSocket to the gateway and run steps.

The connection machinery (start call, WebSocket, heartbeats, lease
extensions, replies, reconnects) runs on its own event loop in its own
thread, so user code that blocks the caller's event loop or holds a CPU
cannot starve heartbeats. User functions run on the loop that called
`connect()` (plain `def` handlers run in a thread pool from there).

Requests cross to the caller's loop, and replies cross back, through a
deque each, drained by at most one pending `call_soon_threadsafe`: a burst
of requests or replies costs one wake-up of the other loop, not one each.
The deques need no bound of their own: they only carry requests already
in the ledger's in-flight set (and those requests' replies and checkpoints)
across. A new request's WORKER_REQUEST_ACK is held back for up to
`limits.ACK_COALESCE_WINDOW`: a step that finishes sooner sends its ACK and
its reply (or first checkpoint) in one write, and the gateway wakes once.
Held ACKs never make a write of their own before the window ends (no flush
with nothing else to send takes them); any other frame sent meanwhile
carries them.

The connection's loop may have a poll window (`connect.polling`; at most
`connect(poll_window=...)` or `CONNECT_POLL_WINDOW_MS`; off by default, as
it spends the user's CPU): after it sends while no user code runs (after the last reply, or
while every request waits for a checkpoint's answer) it keeps polling for
the window it learned from how soon the next request or answer came, so
that one is read without a wake-up. It stops as user code is handed work;
the caller's loop never polls, so user code keeps the GIL and the CPU it had.

States: CONNECTING -> ACTIVE <-> RECONNECTING -> CLOSING -> CLOSED.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import websockets
from google.protobuf.timestamp_pb2 import Timestamp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential_jitter,
)
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from connect import polling
from connect.sdk.client import Client
from connect.sdk.execution import SDK_VERSION, Invocation, execute
from connect.sdk.function import Function, functions_json
from connect.sdk.version import REQUEST_VERSION
from connect.websocket import BatchingConnection
from connect.worker import shutdown, stall
from connect.worker.masking import MaskedClientConnection
from connect.worker.readiness import HealthServer
from connect.worker.start import FatalStartError, StartClient
from protocol import codes, limits
from protocol import connect_pb2 as pb
from protocol import worker_session as ws_
from protocol.ledger import Admission, WorkerLedger
from protocol.payloads import Opcode

log = logging.getLogger("connect.worker")

SDK_LANGUAGE = "py"


class ConnectionState(enum.Enum):
    CONNECTING = "CONNECTING"
    ACTIVE = "ACTIVE"
    RECONNECTING = "RECONNECTING"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"


AppSpec = tuple[Client, Sequence[Function]]


@dataclass
class WorkerOptions:
    instance_id: str
    max_worker_concurrency: int | None
    drain_timeout: float | None = 600.0
    reply_buffer_bytes: int = 500 * 1024 * 1024
    reconnect_initial: float = 0.5
    reconnect_max: float = 10.0
    heartbeat_interval: float | None = None
    health_port: int | None = None
    health_host: str = "0.0.0.0"
    gateway_url: str | None = None
    poll_window: float = polling.WORKER_DEFAULT_WINDOW
    stall_threshold: float | None = stall.DEFAULT_THRESHOLD


class _WorkerWebSocket(BatchingConnection, MaskedClientConnection):
    """The worker's client connection: masking keys from a buffer, queued frames in one write."""


@dataclass(eq=False)
class _Socket:
    ws: _WorkerWebSocket
    session: ws_.WorkerSession
    gateway_group: str
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    draining: bool = False
    # Paused because the user's loop stalled; replaced by a new connection once
    # it recovers (a pause cannot be undone on one connection: the gateway keeps it draining).
    stall_paused: bool = False
    retired: bool = False
    session_end_reason: str = ""
    # Machinery: the flush of ACKs held back for a reply to share their write.
    ack_flush: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Checkpoint:
    """A checkpoint sent and not yet answered."""

    sock: _Socket
    answer: asyncio.Future[bool]  # on the caller's loop
    raw: bytes  # the SDKResponse sent: one StepRun op
    reply_behind: bool = False  # the request's reply went out right behind it


class WorkerConnection:
    """A running worker. Create it with `await connect(...)`."""

    def __init__(self, apps: Sequence[AppSpec], options: WorkerOptions) -> None:
        if not apps:
            raise ValueError("connect() needs at least one (client, functions) pair")
        ids = [c.app_id for c, _ in apps]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate app ids: {ids}")
        first = apps[0][0]
        for client, _ in apps:
            if client.api_base_url != first.api_base_url or client.signing_key != first.signing_key:
                raise ValueError("all apps of one connection must share api_base_url and signing_key")
        self._apps = {c.app_id: (c, {f.fully_qualified_id(c.app_id): f for f in fns}) for c, fns in apps}
        self._options = options
        self._api_base_url = first.api_base_url
        self._signing_key = first.signing_key
        self._state = ConnectionState.CONNECTING
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed_main: asyncio.Future[None] | None = None
        self._active_main: asyncio.Future[None] | None = None
        self._close_requested: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._tick: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None
        self._poll: polling.PollWindow | None = None  # on the machinery's loop
        self._ledger = WorkerLedger(max_buffer_bytes=options.reply_buffer_bytes)
        self._active: _Socket | None = None
        self._sockets: set[_Socket] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # Machinery -> caller's loop: requests to run. `_requests_pending` is
        # True while a `_start_requests` callback is scheduled and not yet started.
        self._requests: deque[pb.GatewayExecutorRequestData] = deque()
        self._requests_pending = False
        self._running: set[asyncio.Task[None]] = set()  # on the caller's loop
        # Caller's loop -> machinery, in order: (request id, serialized
        # SDKResponse, None) for a reply, (..., the answer's future) for a checkpoint.
        self._replies: deque[tuple[str, bytes, asyncio.Future[bool] | None]] = deque()
        self._replies_pending = False
        # Machinery: checkpoints awaiting WORKER_CHECKPOINT_ACK, by request id.
        self._checkpoints: dict[str, _Checkpoint] = {}
        # Machinery: checkpoints not stored whose request has not replied yet:
        # its reply, when it comes, is replaced by the checkpoint.
        self._refused: dict[str, bytes] = {}
        self._started_at = time.time()
        self._watch: stall.LoopWatch | None = None  # on the machinery's loop
        self._fatal: BaseException | None = None
        self._closing_requested = False
        self.abandoned = 0
        self.connection_id = ""
        self.in_flight_peak = 0

    # --- public API -------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def closed(self) -> asyncio.Future[None]:
        """Resolves when the connection is CLOSED."""
        assert self._closed_main is not None, "use `await connect(...)`"
        return self._closed_main

    @property
    def in_flight(self) -> int:
        return len(self._ledger.in_flight)

    @property
    def ready(self) -> bool:
        """ACTIVE, with a connection the gateway has confirmed and not asked us
        to leave, taking work, and the loop that runs user code not stalled."""
        sock = self._active
        return (
            self._state is ConnectionState.ACTIVE
            and sock is not None
            and not sock.draining
            and not sock.retired
            and sock.session.accepting
            and not self.stalled
        )

    @property
    def stalled(self) -> bool:
        """The loop that runs user code has not run a probe within `stall_threshold`."""
        watch = self._watch
        return watch is not None and watch.stalled

    def request_close(self) -> None:
        """Start a graceful shutdown from any thread (signal handlers use this)."""
        self._closing_requested = True
        self._set_state(ConnectionState.CLOSING)
        loop, event = self._loop, self._close_requested
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the machinery already ended
                loop.call_soon_threadsafe(event.set)

    async def close(self) -> None:
        """Graceful shutdown: pause, finish and deliver in-flight work, close."""
        self.request_close()
        await asyncio.shield(self.closed)

    # --- startup (caller's loop) ---------------------------------------------------------

    async def _start(self, wait_active: bool) -> None:
        self._main_loop = asyncio.get_running_loop()
        self._closed_main = self._main_loop.create_future()
        self._active_main = self._main_loop.create_future()
        self._thread = threading.Thread(target=self._thread_main, name="connect-worker", daemon=True)
        self._thread.start()
        if wait_active:
            done, _ = await asyncio.wait({self._active_main, self._closed_main}, return_when=asyncio.FIRST_COMPLETED)
            if self._closed_main in done and self._fatal is not None:
                raise self._fatal

    def _thread_main(self) -> None:
        try:
            _run_loop(self._machinery())
        except BaseException as exc:  # pragma: no cover - reported, then the thread ends
            log.exception("worker machinery crashed")
            self._fatal = exc
        finally:
            self._set_state(ConnectionState.CLOSED)
            self._to_main(self._resolve_closed)

    def _resolve_closed(self) -> None:
        assert self._closed_main is not None
        if not self._closed_main.done():
            self._closed_main.set_result(None)

    def _to_main(self, fn: Callable[[], None]) -> None:
        loop = self._main_loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn)

    def _set_state(self, state: ConnectionState) -> None:
        if self._state in (ConnectionState.CLOSING, ConnectionState.CLOSED) and state not in (
            ConnectionState.CLOSING,
            ConnectionState.CLOSED,
        ):
            return  # never regress from CLOSING/CLOSED
        if state is not self._state:
            self._state = state
            log.info("worker state %s", state.value)
        if state is ConnectionState.ACTIVE:

            def resolve() -> None:
                if self._active_main is not None and not self._active_main.done():
                    self._active_main.set_result(None)

            self._to_main(resolve)

    # --- machinery (own loop) ---------------------------------------------------------------

    async def _machinery(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._close_requested = asyncio.Event()
        if self._closing_requested:
            self._close_requested.set()
        self._wake = asyncio.Event()
        self._tick = asyncio.Event()
        self._progress = asyncio.Event()
        if self._options.poll_window > 0:
            self._poll = polling.PollWindow(self._loop, self._options.poll_window)
            log.info("poll window up to %g ms: polling while no user code runs", self._options.poll_window * 1000)
        else:
            log.info("poll window off")
        health: HealthServer | None = None
        if self._options.health_port is not None:
            health = HealthServer(
                self._options.health_port,
                self._options.health_host,
                lambda: self.ready,
                lambda: self._state.value,
                lambda: self.stalled,
            )
            await health.start()
        try:
            await self._machinery_body()
        finally:
            if health is not None:
                await health.stop()
            if self._poll is not None:
                log.info("worker %s", self._poll.summary())

    async def _machinery_body(self) -> None:
        assert self._close_requested is not None
        async with httpx.AsyncClient(timeout=10.0) as http:
            start = StartClient(
                http,
                self._api_base_url,
                self._signing_key,
                instance_id=self._options.instance_id,
                fallback_key=os.environ.get("CONNECT_SIGNING_KEY_FALLBACK") or None,
            )
            housekeeping = asyncio.create_task(self._housekeeping(start))
            closer = asyncio.create_task(self._close_when_requested(start))
            watcher = None
            if self._options.stall_threshold is not None:
                watcher = asyncio.create_task(self._watch_user_loop(self._options.stall_threshold))
            try:
                await self._connect_loop(start)
            except FatalStartError as exc:
                log.error("worker cannot connect: %s", exc)
                self._fatal = exc
            finally:
                closer.cancel()
                housekeeping.cancel()
                if watcher is not None:
                    watcher.cancel()
                for sock in list(self._sockets):
                    await self._close_socket(sock, codes.CloseCode.NORMAL, codes.WORKER_SHUTDOWN)
                for task in list(self._tasks):
                    task.cancel()

    async def _connect_loop(self, start: StartClient) -> None:
        assert self._close_requested is not None
        exclude: list[str] = []
        while not self._finished():
            sock = await self._open_with_retries(start, exclude)
            if sock is None:
                continue
            exclude = []
            old = self._active
            self._active = sock
            self._set_state(ConnectionState.CLOSING if self._close_requested.is_set() else ConnectionState.ACTIVE)
            self._resend_unsent(sock)
            if old is not None and old is not sock:
                await self._close_socket(old, codes.CloseCode.NORMAL, codes.WORKER_SHUTDOWN)
            await self._wait_socket_turn(sock)
            if sock.draining and not sock.ended.is_set():
                exclude = [sock.gateway_group]  # open a replacement while this one drains

    async def _wait_socket_turn(self, sock: _Socket) -> None:
        """Until the socket ends, the gateway asks us to move, or we are done."""
        assert self._wake is not None
        while not sock.ended.is_set() and not sock.draining and not sock.retired and not self._finished():
            self._wake.clear()
            ended = asyncio.ensure_future(sock.ended.wait())
            woke = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait({ended, woke}, return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            woke.cancel()

    def _finished(self) -> bool:
        assert self._close_requested is not None
        return self._close_requested.is_set() and self._ledger.idle

    async def _sleep_unless_closing(self, delay: float) -> None:
        assert self._close_requested is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._close_requested.wait(), delay)

    async def _open_with_retries(self, start: StartClient, exclude: list[str]) -> _Socket | None:
        """Open a connection, retrying with jittered exponential backoff and
        never giving up; None when shutdown finished meanwhile."""
        retrying = AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=self._options.reconnect_initial, max=self._options.reconnect_max),
            retry=retry_if_exception(lambda e: not isinstance(e, FatalStartError)),
            sleep=self._sleep_unless_closing,
            before_sleep=_log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            if self._finished():
                return None
            with attempt:
                return await self._open(start, exclude)
        return None

    async def _open(self, start: StartClient, exclude: list[str]) -> _Socket:
        assert self._close_requested is not None
        resp = await start.start(exclude)
        self.connection_id = resp.connection_id
        hello = self._hello(resp)
        endpoint = self._options.gateway_url or resp.gateway_endpoint
        ws = await websockets.connect(
            endpoint,
            subprotocols=[Subprotocol(limits.SUBPROTOCOL)],
            max_size=limits.MAX_WORKER_MESSAGE_BYTES,
            open_timeout=10,
            ping_interval=None,
            compression=None,
            max_queue=64,
            create_connection=_WorkerWebSocket,
        )
        assert isinstance(ws, _WorkerWebSocket)
        closing, stalled = self._close_requested.is_set(), self._pause_for_stall()
        session = ws_.WorkerSession(
            hello,
            frozenset(self._apps),
            time.time(),
            paused=closing or stalled,
            heartbeat_interval=self._options.heartbeat_interval,
        )
        sock = _Socket(ws, session, resp.gateway_group, stall_paused=stalled and not closing)
        self._sockets.add(sock)
        reader = asyncio.create_task(self._read(sock))
        self._tasks.add(reader)
        reader.add_done_callback(self._tasks.discard)
        ready = asyncio.ensure_future(sock.connected.wait())
        ended = asyncio.ensure_future(sock.ended.wait())
        await asyncio.wait({ready, ended}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        ended.cancel()
        if not sock.connected.is_set():
            await self._close_socket(sock, 4001, "UNEXPECTED")
            raise ConnectionError(f"handshake with {endpoint} failed: {sock.session_end_reason}")
        log.info("worker connected: connection=%s gateway=%s", resp.connection_id, endpoint)
        return sock

    def _hello(self, resp: pb.StartResponse) -> pb.WorkerConnectRequestData:
        started = Timestamp()
        started.FromNanoseconds(int(self._started_at * 1e9))
        hello = pb.WorkerConnectRequestData(
            connection_id=resp.connection_id,
            instance_id=self._options.instance_id,
            auth_data=pb.AuthData(session_token=resp.session_token, sync_token=resp.sync_token),
            capabilities=b'{"connect":"v1","trust_probe":"v1"}',
            worker_manual_readiness_ack=True,
            system_attributes=pb.SystemAttributes(
                cpu_cores=os.cpu_count() or 1, mem_bytes=_memory_bytes(), os=os.uname().sysname.lower()
            ),
            framework="connect",
            sdk_version=SDK_VERSION.split(":v", 1)[-1],
            sdk_language=SDK_LANGUAGE,
            started_at=started,
        )
        for app_id, (client, fns) in self._apps.items():
            app = hello.apps.add(app_name=app_id, functions=functions_json(app_id, list(fns.values())))
            if client.app_version:
                app.app_version = client.app_version
        if self._options.max_worker_concurrency:
            hello.max_worker_concurrency = self._options.max_worker_concurrency
        return hello

    async def _read(self, sock: _Socket) -> None:
        # Binary messages are handled as they are parsed (`_receive`); this
        # loop gets the rest (see `connect.websocket`) and the end of the connection.
        sock.ws.on_binary = functools.partial(self._receive, sock)
        try:
            async for message in sock.ws:
                data = message if isinstance(message, bytes) else message.encode()
                now = time.time()
                self._handle(sock, sock.session.receive(data, now), now)
                self._hand_over_requests()
                await self._flush(sock)
                if sock.session.phase is ws_.WorkerPhase.CLOSED:
                    break
        except ConnectionClosed:
            pass
        finally:
            sock.ws.on_binary = None
            if not sock.connected.is_set():
                rcvd = sock.ws.protocol.close_rcvd
                sock.session_end_reason = f"{rcvd.code} {rcvd.reason}" if rcvd else "connection closed"
            self._socket_ended(sock)

    def _receive(self, sock: _Socket, data: bytes) -> None:
        """Machinery: one binary message from the gateway, as soon as it is parsed."""
        now = time.time()
        self._handle(sock, sock.session.receive(data, now), now)
        if self._requests:
            # New requests: user code is woken first, and their ACKs wait up to
            # ACK_COALESCE_WINDOW for the replies, so a short step's ACK and
            # reply leave in one write and wake the gateway once.
            self._hand_over_requests()
            if sock.ack_flush is None:
                sock.ack_flush = asyncio.get_running_loop().call_later(
                    limits.ACK_COALESCE_WINDOW, self._flush_held_acks, sock
                )
        else:
            self._flush_soon(sock)

    def _flush_held_acks(self, sock: _Socket) -> None:
        """Machinery: the window passed with no reply to carry the held ACKs."""
        sock.ack_flush = None
        if not sock.ended.is_set():
            self._flush_soon(sock)

    def _handle(self, sock: _Socket, events: list[ws_.WorkerEvent], now: float) -> None:
        for event in events:
            match event:
                case ws_.Connected():
                    sock.connected.set()
                case ws_.Execute(request=req):
                    admission = self._ledger.accept(req, now, sock.session.extend_lease_interval)
                    if admission is Admission.RUN:
                        self._end_poll()  # user code needs the CPU now
                        self.in_flight_peak = max(self.in_flight_peak, len(self._ledger.in_flight))
                        self._requests.append(req)  # handed over by the caller of `_handle`
                    elif admission is Admission.REPLIED:
                        log.info(
                            "request %s came again after it finished here; sending its reply again", req.request_id
                        )
                        self._resend_unsent(sock)
                    elif admission is Admission.REDISPATCHED:
                        log.info(
                            "request %s dispatches again step %s of run %s, which runs here as request %s; "
                            "not starting it twice: that one answers it",
                            req.request_id,
                            req.step_id,
                            req.run_id,
                            self._ledger.running_id(req.request_id),
                        )
                    else:
                        log.info("request %s came again while it runs here; not starting it twice", req.request_id)
                case ws_.Ignored(request_id=rid, why=why):
                    log.warning("request %s not taken: %s", rid, why)
                case ws_.ReplyAcked(request_id=rid):
                    self._ledger.acknowledged(rid)
                    self._poke()
                case ws_.CheckpointAnswer(request_id=rid, stored=stored):
                    waiting = self._checkpoints.pop(rid, None)
                    if waiting is not None:
                        self._end_poll()
                        self._answer_checkpoint(rid, waiting, stored)
                case ws_.LeaseAnswer(request_id=rid, new_lease_id=new):
                    if not self._ledger.lease_answer(rid, new):
                        log.warning("lease lost for request %s; its result may be discarded", rid)
                        self._ledger.forget(rid)
                case ws_.GatewayClosing():
                    log.info("gateway is draining; reconnecting elsewhere")
                    sock.draining = True
                    self._restructure()
                case ws_.SyncFailed(code=code, message=message):
                    log.error("app sync failed: %s: %s", code, message)
                case ws_.Dead(why=why):
                    log.warning("connection lost: %s", why)
                    self._spawn(self._close_socket(sock, 4001, "UNEXPECTED"))

    async def _flush(self, sock: _Socket) -> None:
        if not self._flush_now(sock):
            frames = sock.session.data_to_send()
            if frames:
                await sock.ws.send_frames(frames)  # waits while the gateway does not read

    def _flush_soon(self, sock: _Socket) -> None:
        """`_flush` for callers that cannot wait: a send that would wait goes on in a task."""
        if not self._flush_now(sock):
            self._spawn(self._flush_quietly(sock))

    def _flush_now(self, sock: _Socket) -> bool:
        """Send what the session queued, in one write, if that needs no wait.
        ACKs held back for their replies (`_receive`) do not make a write on
        their own: they leave with the next frame or when the window ends."""
        if not sock.ws.writable_now():
            return False
        if sock.ack_flush is not None:
            if not sock.session.more_than_acks:
                return True
            sock.ack_flush.cancel()
            sock.ack_flush = None
        frames = sock.session.data_to_send()
        if frames:
            sock.ws.send_frames_now(frames)
        return True

    def _poke(self) -> None:
        """A request finished or a reply was delivered: progress for a drain.
        Deliberately cheap: it runs once per step."""
        if self._progress is not None:
            self._progress.set()
        if self._closing_requested:
            self._restructure()

    def _restructure(self) -> None:
        """A socket ended, a gateway drains or shutdown progressed: the
        connect loop and the timers re-evaluate."""
        if self._wake is not None:
            self._wake.set()
        if self._tick is not None:
            self._tick.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_socket(self, sock: _Socket, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await sock.ws.close(code, reason)
        self._socket_ended(sock)

    def _socket_ended(self, sock: _Socket) -> None:
        if sock.ack_flush is not None:
            sock.ack_flush.cancel()
            sock.ack_flush = None
        sock.session.connection_lost()
        sock.ended.set()
        self._sockets.discard(sock)
        for rid, waiting in list(self._checkpoints.items()):
            if waiting.sock is sock:  # no answer can come: the request ends with the step
                del self._checkpoints[rid]
                self._answer_checkpoint(rid, waiting, False)
        if self._active is sock:
            self._active = None
            if not self._closing_requested:
                self._set_state(ConnectionState.RECONNECTING)
        self._restructure()

    # --- executing requests ----------------------------------------------------------------

    def _hand_over_requests(self) -> None:
        """Machinery: wake the caller's loop for the queued requests, unless a
        wake-up is already pending (its `_start_requests` will see them)."""
        if not self._requests or self._requests_pending:
            return
        assert self._main_loop is not None
        self._requests_pending = True
        try:
            self._main_loop.call_soon_threadsafe(self._start_requests)
        except RuntimeError:  # the caller's loop is closed: nothing will ever run them
            self._requests_pending = False
            while self._requests:
                rid = self._requests.popleft().request_id
                # Out of the ledger, so its lease lapses (it runs elsewhere) and a drain is not held up.
                self._ledger.drop(rid)
                log.error("request %s not run: the event loop that called connect() is closed", rid)
            self._poke()

    def _start_requests(self) -> None:
        """Caller's loop: start a task for every handed-over request, in arrival order."""
        # Cleared before draining: a request queued after this line schedules a new call.
        self._requests_pending = False
        assert self._main_loop is not None
        loop, requests, running = self._main_loop, self._requests, self._running
        while requests:
            task = loop.create_task(self._run(requests.popleft()))
            running.add(task)
            task.add_done_callback(running.discard)

    async def _run(self, req: pb.GatewayExecutorRequestData) -> None:
        """Caller's loop: run one request and hand its reply back to the machinery."""
        try:
            raw = await self._execute(req)
        except BaseException as exc:  # the engine never raises; be safe anyway
            log.exception("request %s crashed", req.request_id)
            self._hand_back(req.request_id, _crash_reply(req, exc))
            if not isinstance(exc, Exception):
                raise  # cancellation, KeyboardInterrupt, SystemExit: reported, then honoured
            return
        self._hand_back(req.request_id, raw)

    async def _execute(self, req: pb.GatewayExecutorRequestData) -> bytes:
        """Runs on the caller's loop."""
        client, fns = self._apps[req.app_name]
        outcome = await execute(
            client,
            fns,
            Invocation(
                request_payload=req.request_payload,
                function_slug=req.function_slug,
                step_id=req.step_id if req.HasField("step_id") else "step",
                request_id=req.request_id,
                job_id=req.job_id,
                checkpoint=functools.partial(self._checkpoint, req),
            ),
        )
        status, body, no_retry = outcome.status, outcome.body, outcome.no_retry
        if len(body) > limits.MAX_STEP_OUTPUT_BYTES:
            # Fail the step, not the connection: a frame this large would be refused.
            log.error("request %s: output of %d bytes is over the limit", req.request_id, len(body))
            status, no_retry = pb.ERROR, True
            body = msgspec.json.encode(
                {
                    "code": "output_too_large",
                    "name": "OutputTooLargeError",
                    "message": f"step output is {len(body)} bytes; the limit is {limits.MAX_STEP_OUTPUT_BYTES} bytes",
                }
            )
        resp = _response(req, status, body, no_retry=no_retry, request_version=outcome.request_version)
        if outcome.retry_after is not None:
            resp.retry_after = outcome.retry_after
        return resp.SerializeToString()

    def _checkpoint(self, req: pb.GatewayExecutorRequestData, op: Opcode) -> asyncio.Future[bool]:
        """Caller's loop: send one finished step as WORKER_CHECKPOINT; the
        future answers True once the platform stored it (the handler then goes
        on to its next step). Queued with the replies, so a reply handed back
        next leaves behind it, in the same write."""
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        body = msgspec.json.encode([op])
        if self._closing_requested or len(body) > limits.MAX_STEP_OUTPUT_BYTES:
            # Shutting down: end the request with this step, so the run's next
            # steps go to another worker instead of holding up the drain. Too
            # large: the request ends with it, and `_execute` fails the step.
            answer.set_result(False)
            return answer
        raw = _response(req, pb.NOT_COMPLETED, body).SerializeToString()
        if not self._to_machinery(req.request_id, raw, answer):
            answer.set_result(False)  # the machinery ended
        return answer

    def _send_checkpoint(self, sock: _Socket | None, rid: str, raw: bytes, answer: asyncio.Future[bool]) -> bool:
        """Machinery: queue a checkpoint on the active socket; False if it cannot go."""
        if sock is None or rid not in self._ledger.in_flight or rid in self._checkpoints:
            return False
        if not sock.session.send_checkpoint(raw):
            return False
        self._checkpoints[rid] = _Checkpoint(sock, answer, raw)
        return True

    def _answer_checkpoint(self, rid: str, waiting: _Checkpoint, stored: bool) -> None:
        """Machinery: resolve a checkpoint's wait on the caller's loop. A reply
        already sent behind a checkpoint that was not stored is replaced, for
        any later delivery, by the checkpoint itself: the request ends with
        that step (the gateway does the same with the copy it received)."""
        if not stored:
            if waiting.reply_behind:
                self._ledger.replace(rid, waiting.raw)
            else:
                self._refused[rid] = waiting.raw
        self._answer_future(waiting.answer, stored)

    def _poll_if_idle(self) -> None:
        """Machinery, after sending: poll while no user code runs here, i.e.
        every request in flight waits for a checkpoint's answer (a count: a
        reply sent behind its checkpoint keeps that checkpoint counted until
        the answer comes, which can only make it poll a window too long)."""
        if self._poll is not None and len(self._ledger.in_flight) <= len(self._checkpoints):
            self._poll.touch()

    def _end_poll(self) -> None:
        """Machinery: the awaited message came (a new request, a checkpoint's
        answer) and user code is about to run: learn from the wait, stop polling."""
        if self._poll is not None:
            self._poll.arrived()
            self._poll.close()

    def _answer_future(self, answer: asyncio.Future[bool], stored: bool) -> None:
        def resolve() -> None:
            if not answer.done():
                answer.set_result(stored)

        self._to_main(resolve)

    def _hand_back(self, rid: str, raw: bytes) -> None:
        """Caller's loop: queue a reply for the machinery (abandoned if it has
        ended: the drain deadline passed)."""
        self._to_machinery(rid, raw, None)

    def _to_machinery(self, rid: str, raw: bytes, answer: asyncio.Future[bool] | None) -> bool:
        """Caller's loop: queue a reply (or a checkpoint) and wake the machinery,
        unless a wake-up is already pending (its `_deliver_replies` will see
        this one). False if the machinery has ended (drain deadline passed)."""
        self._replies.append((rid, raw, answer))
        loop = self._loop
        assert loop is not None
        if self._replies_pending and not loop.is_closed():
            return True
        self._replies_pending = True
        try:
            loop.call_soon_threadsafe(self._deliver_replies)
        except RuntimeError:
            self._replies_pending = False
            self._replies.clear()
            return False
        return True

    def _deliver_replies(self) -> None:
        """Machinery: buffer and send every reply and checkpoint handed back so
        far, in order, and flush them in one write."""
        # Cleared before draining: a reply queued after this line schedules a new call.
        self._replies_pending = False
        sock = self._active
        now = time.time()
        sent = False
        replies = self._replies
        while replies:
            rid, raw, answer = replies.popleft()
            if answer is not None:
                if self._send_checkpoint(sock, rid, raw, answer):
                    sent = True
                else:
                    self._refused[rid] = raw
                    self._answer_future(answer, False)
                continue
            raw = self._refused.pop(rid, raw)  # the request ends with the step that was not stored
            for evicted in self._ledger.complete(rid, raw):
                log.warning("reply buffer full: evicted the unacknowledged reply of request %s", evicted)
            waiting = self._checkpoints.get(rid)
            if waiting is not None:
                waiting.reply_behind = True
            # Held under the newest dispatch of the step (see `WorkerLedger`), which may not be `rid`.
            held = self._ledger.held_id(rid)
            pending = self._ledger.replies.get(held)
            if pending is not None and sock is not None and sock.session.send_reply_bytes(pending.response):
                self._ledger.mark_sent(held, now)
                sent = True
        if sent:
            assert sock is not None
            self._flush_soon(sock)
            self._poll_if_idle()
        self._poke()

    async def _flush_quietly(self, sock: _Socket) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._flush(sock)

    def _resend_unsent(self, sock: _Socket) -> None:
        for rid, raw in self._ledger.unsent():
            if sock.session.send_reply_bytes(raw):
                self._ledger.mark_sent(rid, time.time())
        self._spawn(self._flush_quietly(sock))

    # --- timers: heartbeats, leases, overdue replies --------------------------------------

    async def _housekeeping(self, start: StartClient) -> None:
        assert self._tick is not None
        while True:
            now = time.time()
            deadlines: list[float] = []
            for sock in list(self._sockets):
                self._handle(sock, sock.session.tick(now), now)
                d = sock.session.next_deadline()
                if d is not None:
                    deadlines.append(d)
            target = self._extension_socket()
            if target is not None:
                interval = target.session.extend_lease_interval
                for ext in self._ledger.due_extensions(now, interval):
                    target.session.extend_lease(ext)
                nxt = self._ledger.next_extension()
                if nxt is not None:
                    deadlines.append(nxt)
            for sock in list(self._sockets):
                if (sock.draining or sock.retired) and self._ledger.idle:
                    # Nothing left to deliver on it: leave the draining gateway
                    # now rather than when a replacement is up or it gives up.
                    await self._close_socket(sock, codes.CloseCode.NORMAL, codes.WORKER_SHUTDOWN)
                    continue
                with contextlib.suppress(ConnectionClosed):
                    await self._flush(sock)
            await self._flush_overdue(start, now)
            if self._ledger.replies:
                deadlines.append(now + 1.0)
            timeout = max(0.0, min(deadlines) - time.time()) if deadlines else 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tick.wait(), min(timeout, 1.0))
            self._tick.clear()

    def _extension_socket(self) -> _Socket | None:
        """Extend leases over the active connection, else any open one."""
        if self._active is not None and self._active.session.phase is ws_.WorkerPhase.ACTIVE:
            return self._active
        for sock in self._sockets:
            if sock.session.phase is ws_.WorkerPhase.ACTIVE:
                return sock
        return None

    async def _flush_overdue(self, start: StartClient, now: float) -> None:
        """Deliver replies the gateway has not acknowledged (or that never had
        a socket) over HTTP; a reply stays buffered until one path succeeds."""
        pending = self._ledger.overdue(now)
        if self._active is None or self._active.session.phase is not ws_.WorkerPhase.ACTIVE:
            pending += self._ledger.unsent()
        for rid, raw in pending:
            if await start.flush(raw):
                self._ledger.acknowledged(rid)
                self._poke()
                log.info("reply %s delivered via /v0/connect/flush", rid)
            else:
                self._ledger.mark_unsent(rid)

    # --- the user's loop: stalls ---------------------------------------------------------

    async def _watch_user_loop(self, threshold: float) -> None:
        """Machinery: probe the caller's loop (`stall.LoopWatch`); while it is
        stalled take no new work (WORKER_PAUSE where work could come, /ready 503)."""
        watch = self._watch = stall.LoopWatch(threshold, time.monotonic())
        loop = asyncio.get_running_loop()
        while True:
            now = time.monotonic()
            if watch.probe_due(now):
                watch.probe_sent(now)
                self._to_main(functools.partial(self._probe_ran, loop, now))
            if watch.check(now):
                self._stall_began(watch.stalled_for(now))
            await asyncio.sleep(max(0.0, watch.next_deadline(time.monotonic()) - time.monotonic()))

    def _probe_ran(self, machinery: asyncio.AbstractEventLoop, sent_at: float) -> None:
        """Caller's loop: the probe got its turn; tell the machinery when."""
        ran_at = time.monotonic()
        with contextlib.suppress(RuntimeError):  # the machinery ended
            machinery.call_soon_threadsafe(self._probe_answered, sent_at, ran_at)

    def _probe_answered(self, sent_at: float, ran_at: float) -> None:
        watch = self._watch
        if watch is not None and watch.probe_ran(sent_at, ran_at):
            self._stall_ended()

    def _pause_for_stall(self) -> bool:
        """While stalled, whether a connection must pause: the gateway could
        route new work to it (this instance is not at its concurrency limit)."""
        limit = self._options.max_worker_concurrency
        return self.stalled and (limit is None or len(self._ledger.in_flight) < limit)

    def _stall_began(self, seconds: float) -> None:
        pause = self._pause_for_stall()
        log.warning(
            "the event loop running your functions has not run for %.1f s: taking no new work until it does%s",
            seconds,
            " (WORKER_PAUSE sent)" if pause else "",
        )
        if not pause:
            return  # at its concurrency limit: the gateway routes nothing here anyway
        for sock in list(self._sockets):
            if not sock.session.paused:
                sock.stall_paused = True
                sock.session.pause()
                self._flush_soon(sock)

    def _stall_ended(self) -> None:
        """Take work again: connections paused for the stall are replaced by new ones."""
        paused = [sock for sock in self._sockets if sock.stall_paused and not sock.retired]
        log.info(
            "the event loop running your functions runs again%s",
            ": taking new work on a new connection" if paused and not self._closing_requested else "",
        )
        if self._closing_requested:
            return
        for sock in paused:
            sock.retired = True
        self._restructure()

    async def _close_when_requested(self, start: StartClient) -> None:
        assert self._close_requested is not None and self._progress is not None
        await self._close_requested.wait()
        self._set_state(ConnectionState.CLOSING)
        log.info("worker shutting down: %d requests in flight", len(self._ledger.in_flight))
        for sock in list(self._sockets):
            sock.session.pause()
            with contextlib.suppress(ConnectionClosed):
                await self._flush(sock)
        deadline = self._options.drain_timeout
        started = time.monotonic()
        while not self._ledger.idle:
            remaining = None if deadline is None else deadline - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                self.abandoned = self._ledger.abandon()
                log.warning(
                    "drain deadline passed: abandoning %d requests; their leases let them run elsewhere",
                    self.abandoned,
                )
                break
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        self._poke()


def _response(
    req: pb.GatewayExecutorRequestData,
    status: int,
    body: bytes,
    *,
    no_retry: bool = False,
    request_version: int = REQUEST_VERSION,
) -> pb.SDKResponse:
    """An answer to `req` (a reply or a checkpoint), echoing its identity."""
    return pb.SDKResponse(
        request_id=req.request_id,
        account_id=req.account_id,
        env_id=req.env_id,
        app_id=req.app_id,
        status=status,  # type: ignore[arg-type]
        body=body,
        no_retry=no_retry,
        sdk_version=SDK_VERSION,
        request_version=request_version,
        system_trace_ctx=req.system_trace_ctx or b"{}",
        user_trace_ctx=req.user_trace_ctx or b"{}",
        run_id=req.run_id,
    )


def _crash_reply(req: pb.GatewayExecutorRequestData, exc: BaseException) -> bytes:
    return pb.SDKResponse(
        request_id=req.request_id,
        status=pb.ERROR,
        body=b'{"code":"unknown","message":"internal error: %s"}' % type(exc).__name__.encode(),
        sdk_version=SDK_VERSION,
        request_version=2,
        system_trace_ctx=b"{}",
        user_trace_ctx=b"{}",
    ).SerializeToString()


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning(
        "connect attempt %d failed (%s); retrying in %.1fs",
        state.attempt_number,
        _describe(exc) if exc else "?",
        delay,
    )


def _run_loop(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(coro)
        return
    uvloop.run(coro)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InvalidHandshake | InvalidURI | OSError | httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}"
    return str(exc) or type(exc).__name__


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover
        return 0


async def connect(
    apps: Sequence[AppSpec],
    *,
    instance_id: str | None = None,
    max_worker_concurrency: int | None = None,
    handle_shutdown_signals: Sequence[str] = shutdown.DEFAULT_SIGNALS,
    drain_timeout: float | None = 600.0,
    health_port: int | None = None,
    gateway_url: str | None = None,
    reply_buffer_bytes: int = 500 * 1024 * 1024,
    wait_active: bool = True,
    poll_window: float | None = None,
    stall_threshold: float | None = stall.DEFAULT_THRESHOLD,
) -> WorkerConnection:
    """Connect a worker for `apps` and return once it is ACTIVE.

    Reconnects with jittered backoff for as long as it runs; only a rejected
    signing key (401/403 from the start call) is fatal.

    - `instance_id`: stable identity for capacity accounting (default: hostname).
    - `max_worker_concurrency`: requests this instance runs at once (default unlimited,
      or `CONNECT_MAX_WORKER_CONCURRENCY`).
    - `handle_shutdown_signals`: signals that start a graceful drain (empty: none).
    - `drain_timeout`: seconds a drain may take before in-flight steps are abandoned
      (their leases lapse and they run elsewhere); None waits forever.
    - `health_port`: serve `GET /ready` and `GET /live` there.
    - `gateway_url`: dial this WebSocket URL instead of the one `/start` returns
      (`CONNECT_GATEWAY_URL`), e.g. behind a proxy.
    - `reply_buffer_bytes`: bound of the buffer of unacknowledged replies.
    - `poll_window`: the longest the connection's loop keeps polling instead
      of sleeping after it sends while no user code runs, in seconds (default
      `CONNECT_POLL_WINDOW_MS` in milliseconds, else 0: off, as this is the
      user's process; at most 1 s). The window adapts to how soon answers
      come: lower step latency for CPU only while traffic is that dense. See
      `connect.polling`.
    - `stall_threshold`: seconds the loop that calls `connect()` (and runs the
      functions) may go without a turn before the worker takes no new work
      (WORKER_PAUSE while it could get some; `/ready` 503) until it turns
      again, then takes work on a new connection (default 5; None: never).
      Heartbeats and lease extensions flow all the while. See `connect.worker.stall`.
    """
    if stall_threshold is not None and not stall_threshold > 0:
        raise ValueError(f"stall_threshold must be more than 0 seconds or None, not {stall_threshold!r}")
    if max_worker_concurrency is None and os.environ.get("CONNECT_MAX_WORKER_CONCURRENCY"):
        max_worker_concurrency = int(os.environ["CONNECT_MAX_WORKER_CONCURRENCY"])
    if max_worker_concurrency is not None and max_worker_concurrency <= 0:
        raise ValueError("max_worker_concurrency must be a positive integer")
    if poll_window is None:
        poll_window = polling.window_from_env(polling.WORKER_DEFAULT_WINDOW)
    else:
        poll_window = polling.check_window(poll_window)
    options = WorkerOptions(
        instance_id=instance_id or socket.gethostname(),
        max_worker_concurrency=max_worker_concurrency,
        drain_timeout=drain_timeout,
        health_port=health_port,
        gateway_url=gateway_url or os.environ.get("CONNECT_GATEWAY_URL") or None,
        reply_buffer_bytes=reply_buffer_bytes,
        poll_window=poll_window,
        stall_threshold=stall_threshold,
    )
    conn = WorkerConnection(apps, options)
    shutdown.install(handle_shutdown_signals, conn.request_close)
    await conn._start(wait_active)
    return conn
