"""`connect()` and the `WorkerConnection` it returns: the connection's asyncio shell.

The connection machinery (start call, WebSocket, heartbeats, lease
extensions, replies, reconnects) runs on its own event loop in its own
thread, so user code that blocks the caller's event loop or holds a CPU
cannot starve heartbeats. User functions run on the loop that called
`connect()` (plain `def` handlers run in a thread pool from there).

This module wires the concerns, each of which has a module of its own:

- `options`: configuration and states; `clock`: the injected clocks.
- `bridge`: requests and replies crossing between the two loops, one wake-up per burst.
- `execution`: running a request on the caller's loop into a serialized reply.
- `link`: one WebSocket to a gateway (opening it, its hello, its flags).
- `sending`: what leaves on a connection and when (one write per batch, ACK coalescing).
- `checkpoints`: the rules of checkpoints sent, answered, refused and lost.
- `fallback`: replies that missed their socket (resent, or posted to `/v0/connect/flush`).
- `drain`: waiting for in-flight work at shutdown, up to the drain deadline.
- `stall`, `readiness`, `shutdown`, `start`, `masking`: as their names say.

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
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential_jitter,
)
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from connect import polling
from connect.metrics import render
from connect.metrics.worker import WorkerCollector, WorkerCounts
from connect.waiting import wait_event
from connect.worker import drain, fallback, link, sending, shutdown, stall
from connect.worker.bridge import Handoff, call_on, resolve_on, run_loop
from connect.worker.checkpoints import Answered, Checkpoints
from connect.worker.execution import RequestRunner
from connect.worker.link import Link
from connect.worker.options import AppSpec, ConnectionState, WorkerOptions
from connect.worker.readiness import HealthServer, HealthServerNotStarted
from connect.worker.start import FatalStartError, StartClient
from protocol import codes
from protocol import connect_pb2 as pb
from protocol import worker_session as ws_
from protocol.ledger import Admission, WorkerLedger

log = logging.getLogger("connect.worker")

__all__ = ["AppSpec", "ConnectionState", "WorkerConnection", "WorkerOptions", "connect"]


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
        # CONNECT_SIGNING_KEY_FALLBACK, else INNGEST_SIGNING_KEY_FALLBACK (connect.sdk.settings).
        self._fallback_key = first.signing_key_fallback
        self._state = ConnectionState.CONNECTING
        self._clock = options.clock
        self._thread: threading.Thread | None = None
        self._closed_main: asyncio.Future[None] | None = None
        self._active_main: asyncio.Future[None] | None = None
        self._close_requested: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._tick: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None
        self._poll: polling.PollWindow | None = None  # on the machinery's loop
        self._ledger = WorkerLedger(max_buffer_bytes=options.reply_buffer_bytes)
        self._active: Link | None = None
        self._sockets: set[Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # Machinery -> caller's loop: requests to run.
        self._requests: Handoff[pb.GatewayExecutorRequestData] = Handoff(self._start_requests)
        self._running: set[asyncio.Task[None]] = set()  # on the caller's loop
        # Caller's loop -> machinery, in order: (request id, serialized
        # SDKResponse, None) for a reply, (..., the answer's future) for a checkpoint.
        self._replies: Handoff[tuple[str, bytes, asyncio.Future[bool] | None]] = Handoff(self._deliver_replies)
        self._runner = RequestRunner(self._apps, self._to_machinery, lambda: self._closing_requested)
        self._checkpoints: Checkpoints[Link, asyncio.Future[bool]] = Checkpoints()  # on the machinery
        self._started_at = self._clock.time()
        self._watch: stall.LoopWatch | None = None  # on the machinery's loop
        self._fatal: BaseException | None = None
        self._closing_requested = False
        self.abandoned = 0
        self.connection_id = ""
        self.in_flight_peak = 0
        #: Counts behind `connect_worker_*` (see `connect.metrics.worker`).
        self.counts = WorkerCounts()
        #: This worker's Prometheus registry, served on `/metrics` of the health
        #: port: its own, so metrics the user's code registers stay apart.
        self.metrics = CollectorRegistry(auto_describe=True)
        self.metrics.register(WorkerCollector(self))

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
    def max_worker_concurrency(self) -> int | None:
        return self._options.max_worker_concurrency

    @property
    def replies_buffered(self) -> int:
        """Replies held until the gateway acknowledges them."""
        return len(self._ledger.replies)

    @property
    def replies_buffered_bytes(self) -> int:
        return self._ledger.buffered_bytes

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

    @property
    def _main_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop that called `connect()` and runs user code."""
        return self._requests.loop

    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None:
        """The machinery's loop, on the connection's thread."""
        return self._replies.loop

    async def _start(self, wait_active: bool) -> None:
        self._requests.loop = asyncio.get_running_loop()
        assert self._main_loop is not None
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
            run_loop(self._machinery())
        except HealthServerNotStarted as exc:
            log.error("%s", exc)
            self._fatal = exc
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
        call_on(self._main_loop, fn)

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
        self._replies.loop = asyncio.get_running_loop()
        assert self._loop is not None
        self._close_requested = asyncio.Event()
        if self._closing_requested:
            self._close_requested.set()
        self._wake = asyncio.Event()
        self._tick = asyncio.Event()
        self._progress = asyncio.Event()
        if self._options.poll_window > 0:
            self._poll = polling.PollWindow(self._loop, self._options.poll_window, clock=self._clock.monotonic)
            log.debug("poll window up to %g ms: polling while no user code runs", self._options.poll_window * 1000)
        else:
            log.debug("poll window off")
        health: HealthServer | None = None
        if self._options.health_port is not None:
            health = HealthServer(
                self._options.health_port,
                self._options.health_host,
                lambda: self.ready,
                lambda: self._state.value,
                lambda: self.stalled,
                lambda: render(self.metrics),
            )
            await health.start()
        try:
            await self._machinery_body()
        finally:
            if health is not None:
                await health.stop()
            if self._poll is not None:
                log.debug("worker %s", self._poll.summary())

    async def _machinery_body(self) -> None:
        assert self._close_requested is not None
        async with httpx.AsyncClient(timeout=10.0) as http:
            start = StartClient(
                http,
                self._api_base_url,
                self._signing_key,
                instance_id=self._options.instance_id,
                fallback_key=self._fallback_key,
            )
            housekeeping = asyncio.create_task(self._housekeeping(start))
            closer = asyncio.create_task(self._close_when_requested(start))
            watcher = None
            if self._options.stall_threshold is not None:
                watcher = asyncio.create_task(self._watch_user_loop(self._options.stall_threshold))
            for app_id, (_client, functions) in self._apps.items():
                log.info(
                    "worker serves app %s: %s; platform at %s",
                    app_id,
                    ", ".join(functions) or "no functions",
                    start.start_url.removesuffix("/v0/connect/start"),
                    extra={"app": app_id, "functions": list(functions), "api_url": start.start_url},
                )
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

    async def _wait_socket_turn(self, sock: Link) -> None:
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
        await wait_event(self._close_requested, delay)

    async def _open_with_retries(self, start: StartClient, exclude: list[str]) -> Link | None:
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

    async def _open(self, start: StartClient, exclude: list[str]) -> Link:
        assert self._close_requested is not None
        try:
            resp = await start.start(exclude)
        except (httpx.HTTPError, OSError) as exc:
            raise ConnectionError(
                f"cannot reach the API at {start.start_url}: {_describe(exc)} "
                "(set by the client's api_url, or CONNECT_API_URL)"
            ) from exc
        except ConnectionError as exc:
            raise ConnectionError(f"{start.start_url}: {exc}") from exc
        self.connection_id = resp.connection_id
        hello = link.hello(
            resp,
            self._apps,
            instance_id=self._options.instance_id,
            max_worker_concurrency=self._options.max_worker_concurrency,
            started_at=self._started_at,
        )
        endpoint = self._options.gateway_url or resp.gateway_endpoint
        try:
            ws = await link.open_websocket(endpoint)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            source = (
                "set by gateway_url, or CONNECT_GATEWAY_URL"
                if self._options.gateway_url
                else "handed out by the platform at its --gateway-url; CONNECT_GATEWAY_URL overrides it here"
            )
            raise ConnectionError(f"cannot reach the gateway at {endpoint}: {_describe(exc)} ({source})") from exc
        closing, stalled = self._close_requested.is_set(), self._pause_for_stall()
        session = ws_.WorkerSession(
            hello,
            frozenset(self._apps),
            self._clock.time(),
            paused=closing or stalled,
            heartbeat_interval=self._options.heartbeat_interval,
        )
        sock = Link(ws, session, resp.gateway_group, stall_paused=stalled and not closing)
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
        log.info(
            "worker connected: connection=%s gateway=%s",
            resp.connection_id,
            endpoint,
            extra={"connection_id": resp.connection_id, "instance_id": self._options.instance_id, "url": endpoint},
        )
        self.counts.connections += 1
        return sock

    async def _read(self, sock: Link) -> None:
        # Binary messages are handled as they are parsed (`_receive`); this
        # loop gets the rest (see `connect.websocket`) and the end of the connection.
        sock.ws.on_binary = functools.partial(self._receive, sock)
        try:
            async for message in sock.ws:
                data = message if isinstance(message, bytes) else message.encode()
                now = self._clock.time()
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

    def _receive(self, sock: Link, data: bytes) -> None:
        """Machinery: one binary message from the gateway, as soon as it is parsed."""
        now = self._clock.time()
        self._handle(sock, sock.session.receive(data, now), now)
        if self._requests.items:
            # New requests: user code is woken first, and their ACKs wait for
            # the replies (`connect.worker.sending`), so a short step's ACK and
            # reply leave in one write and wake the gateway once.
            self._hand_over_requests()
            sending.hold_acks(sock, self._flush_held_acks)
        else:
            self._flush_soon(sock)

    def _flush_held_acks(self, sock: Link) -> None:
        """Machinery: the window passed with no reply to carry the held ACKs."""
        sock.ack_flush = None
        if not sock.ended.is_set():
            self._flush_soon(sock)

    def _handle(self, sock: Link, events: list[ws_.WorkerEvent], now: float) -> None:
        for event in events:
            match event:
                case ws_.Connected():
                    sock.connected.set()
                case ws_.Execute(request=req):
                    admission = self._ledger.accept(req, now, sock.session.extend_lease_interval)
                    if admission is Admission.RUN:
                        self._end_poll()  # user code needs the CPU now
                        self.in_flight_peak = max(self.in_flight_peak, len(self._ledger.in_flight))
                        self._requests.items.append(req)  # handed over by the caller of `_handle`
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
                    answered = self._checkpoints.answer(rid, stored)
                    if answered is not None:
                        self._end_poll()
                        self._answer_checkpoint(answered)
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
                    # Reconnect (and flush) now: the close handshake with a
                    # gateway we cannot hear may wait out its whole timeout.
                    self._socket_ended(sock)
                    self._spawn(self._close_socket(sock, 4001, "UNEXPECTED"))

    async def _flush(self, sock: Link) -> None:
        await sending.flush(sock)

    def _flush_soon(self, sock: Link) -> None:
        """`_flush` for callers that cannot wait: a send that would wait goes on in a task."""
        if not sending.flush_now(sock):
            self._spawn(self._flush_quietly(sock))

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

    async def _close_socket(self, sock: Link, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await sock.ws.close(code, reason)
        self._socket_ended(sock)

    def _socket_ended(self, sock: Link) -> None:
        sending.release_held_acks(sock)
        sock.session.connection_lost()
        sock.ended.set()
        self._sockets.discard(sock)
        for answered in self._checkpoints.lost(sock):  # no answer can come: the request ends with the step
            self._answer_checkpoint(answered)
        if self._active is sock:
            self._active = None
            if not self._closing_requested:
                self._set_state(ConnectionState.RECONNECTING)
        self._restructure()

    # --- crossing between the loops (`connect.worker.bridge`) --------------------------------

    def _hand_over_requests(self) -> None:
        """Machinery: wake the caller's loop for the queued requests, unless a
        wake-up is already pending (its `_start_requests` will see them)."""
        requests = self._requests
        if not requests.items or requests.pending:
            return
        if not requests.wake():  # the caller's loop is closed: nothing will ever run them
            while requests.items:
                rid = requests.items.popleft().request_id
                # Out of the ledger, so its lease lapses (it runs elsewhere) and a drain is not held up.
                self._ledger.drop(rid)
                log.error("request %s not run: the event loop that called connect() is closed", rid)
            self._poke()

    def _start_requests(self) -> None:
        """Caller's loop: start a task for every handed-over request, in arrival order."""
        requests = self._requests.take()
        loop, run, running = self._main_loop, self._runner.run, self._running
        assert loop is not None
        self.counts.requests += len(requests)
        while requests:
            task = loop.create_task(run(requests.popleft()))
            running.add(task)
            task.add_done_callback(running.discard)

    def _to_machinery(self, rid: str, raw: bytes, answer: asyncio.Future[bool] | None) -> bool:
        """Caller's loop: queue a reply (or a checkpoint) and wake the machinery,
        unless a wake-up is already pending (its `_deliver_replies` will see
        this one). False if the machinery has ended (drain deadline passed)."""
        self._replies.items.append((rid, raw, answer))
        if self._replies.wake():
            return True
        self._replies.items.clear()
        return False

    def _deliver_replies(self) -> None:
        """Machinery: buffer and send every reply and checkpoint handed back so
        far, in order, and flush them in one write."""
        replies = self._replies.take()
        sock = self._active
        now = self._clock.time()
        sent = False
        checkpoints = self._checkpoints
        while replies:
            rid, raw, answer = replies.popleft()
            if answer is not None:
                if self._send_checkpoint(sock, rid, raw, answer):
                    sent = True
                else:
                    checkpoints.not_sent(rid, raw)
                    resolve_on(self._main_loop, answer, False)
                continue
            raw = checkpoints.reply(rid, raw)  # the refused checkpoint, if the request ends with it
            for evicted in self._ledger.complete(rid, raw):
                log.warning("reply buffer full: evicted the unacknowledged reply of request %s", evicted)
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

    # --- checkpoints (`connect.worker.checkpoints`) ---------------------------------------

    def _send_checkpoint(self, sock: Link | None, rid: str, raw: bytes, answer: asyncio.Future[bool]) -> bool:
        """Machinery: queue a checkpoint on the active socket; False if it cannot go."""
        if sock is None or rid not in self._ledger.in_flight or not self._checkpoints.may_send(rid):
            return False
        if not sock.session.send_checkpoint(raw):
            return False
        self._checkpoints.sent(sock, rid, raw, answer)
        return True

    def _answer_checkpoint(self, answered: Answered[asyncio.Future[bool]]) -> None:
        """Machinery: resolve a checkpoint's wait on the caller's loop, and
        replace a reply already sent behind a checkpoint not stored."""
        if answered.replace is not None:
            self._ledger.replace(answered.rid, answered.replace)
        resolve_on(self._main_loop, answered.answer, answered.stored)

    # --- the poll window (`connect.polling`) ------------------------------------------------

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

    async def _flush_quietly(self, sock: Link) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._flush(sock)

    def _resend_unsent(self, sock: Link) -> None:
        fallback.resend_unsent(self._ledger, sock, self._clock.time())
        self._spawn(self._flush_quietly(sock))

    # --- timers: heartbeats, leases, overdue replies --------------------------------------

    async def _housekeeping(self, start: StartClient) -> None:
        assert self._tick is not None
        while True:
            now = self._clock.time()
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
            await fallback.flush_overdue(self._ledger, start, self._active, now, self._flushed)
            if self._ledger.replies:
                deadlines.append(now + 1.0)
            timeout = max(0.0, min(deadlines) - self._clock.time()) if deadlines else 1.0
            await wait_event(self._tick, min(timeout, 1.0))
            self._tick.clear()

    def _flushed(self) -> None:
        """A reply was delivered over `/v0/connect/flush`."""
        self.counts.flushes += 1
        self._poke()

    def _extension_socket(self) -> Link | None:
        """Extend leases over the active connection, else any open one."""
        if self._active is not None and self._active.session.phase is ws_.WorkerPhase.ACTIVE:
            return self._active
        for sock in self._sockets:
            if sock.session.phase is ws_.WorkerPhase.ACTIVE:
                return sock
        return None

    # --- the user's loop: stalls ---------------------------------------------------------

    async def _watch_user_loop(self, threshold: float) -> None:
        """Machinery: probe the caller's loop (`stall.LoopWatch`); while it is
        stalled take no new work (WORKER_PAUSE where work could come, /ready 503)."""
        monotonic = self._clock.monotonic
        watch = self._watch = stall.LoopWatch(threshold, monotonic())
        loop = asyncio.get_running_loop()
        while True:
            now = monotonic()
            if watch.probe_due(now):
                watch.probe_sent(now)
                self._to_main(functools.partial(self._probe_ran, loop, now))
            if watch.check(now):
                self._stall_began(watch.stalled_for(now))
            await asyncio.sleep(max(0.0, watch.next_deadline(monotonic()) - monotonic()))

    def _probe_ran(self, machinery: asyncio.AbstractEventLoop, sent_at: float) -> None:
        """Caller's loop: the probe got its turn; tell the machinery when."""
        ran_at = self._clock.monotonic()
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
        self.abandoned = await drain.wait_idle(self._ledger, self._options.drain_timeout, self._progress, self._clock)
        self._poke()


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning(
        "connect attempt %d failed (%s); retrying in %.1fs",
        state.attempt_number,
        _describe(exc) if exc else "?",
        delay,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InvalidHandshake | InvalidURI | OSError | httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}"
    return str(exc) or type(exc).__name__


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
    - `health_port`: serve `GET /ready`, `GET /live` and `GET /metrics` (the
      worker's own Prometheus registry, `WorkerConnection.metrics`) there.
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
