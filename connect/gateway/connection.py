"""One live worker connection on the gateway: the socket plus its session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import ClassVar

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from connect.gateway.admission import HandshakeAdmission
from connect.polling import PollWindow
from connect.websocket import BatchingConnection
from protocol import connect_pb2 as pb
from protocol.gateway_session import GatewaySession, WorkerHello

log = logging.getLogger("connect.gateway")

#: Seconds a write may wait for a slow reader before the connection is dropped.
WRITE_TIMEOUT = 5.0
#: Bytes queued for one peer beyond which it is dropped without waiting.
MAX_SEND_BUFFER = 16 * 1024 * 1024
#: Write high-water mark of each connection (passed to the server): below it a send never waits.
WRITE_HIGH_WATER = 32 * 1024
#: Requests sent in one loop turn leave together, in writes of at most this many...
FORWARD_BATCH = 16
#: ...or about this many bytes (so a batch with its ACKs stays under the high-water mark).
FORWARD_BATCH_BYTES = WRITE_HIGH_WATER // 2


class GatewayWebSocket(BatchingConnection, ServerConnection):
    """The gateway's server connection: queued frames leave in one write (see `connect.websocket`).

    From its TCP accept until `authenticated` (or its end) it holds a place
    in the server's handshake budget (`admission`); without a place it is
    dropped at accept. The server binds `admission` in a subclass of its own."""

    admission: ClassVar[HandshakeAdmission | None] = None
    #: The peer address holding a place in the handshake budget, until it is freed.
    _handshake_peer: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.admission is None:
            return
        peer = _peer_host(transport)
        refusal = self.admission.enter(peer)
        if refusal is None:
            self._handshake_peer = peer
            return
        if self.admission.report_due(time.monotonic()):
            log.warning(
                "refused %d connections in the handshake budget; latest: %s",
                self.admission.take_refused(),
                refusal,
            )
        self.transport.abort()  # nothing read yet: the cheapest refusal there is

    def authenticated(self) -> None:
        """WORKER_CONNECT was valid: from now on `--max-connections` counts it."""
        if self._handshake_peer is not None and self.admission is not None:
            self.admission.leave(self._handshake_peer)
        self._handshake_peer = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.authenticated()  # frees the place of a connection that never authenticated
        # A peer that vanished mid-request or mid-frame leaves the parser's
        # error on the protocol (as the handshake's failure, or chained to the
        # close); its traceback holds the parser's frame, which holds the
        # protocol, which holds the error: a cycle per connection that only the
        # cyclic collector (whose thresholds the platform raises) would free.
        _drop_tracebacks(self.protocol.handshake_exc)
        _drop_tracebacks(self.protocol.close_exc.__cause__)


def _drop_tracebacks(exc: BaseException | None) -> None:
    """Clear the tracebacks of `exc` and of every exception chained to it."""
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending += (current.__cause__, current.__context__)


def _peer_host(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


@dataclass(eq=False)
class Connection:
    ws: GatewayWebSocket
    session: GatewaySession
    remote: str
    hello: WorkerHello | None = None
    #: (app_name, fully qualified function id) pairs this connection serves.
    functions: set[tuple[str, str]] = field(default_factory=set)

    @property
    def connection_id(self) -> str:
        return self.hello.connection_id if self.hello else ""

    @property
    def instance_id(self) -> str:
        return self.hello.instance_id if self.hello else ""

    #: Seconds a write may wait for the peer to read.
    write_timeout: float = WRITE_TIMEOUT
    #: Set when the peer stopped reading: the connection is being dropped.
    slow: bool = False
    #: Replies and checkpoints taken from the worker whose answer is not queued yet.
    storing: int = 0
    #: Sends started by `flush_soon` that had to wait.
    _sending: set[asyncio.Task[None]] = field(default_factory=set)
    #: The gateway's poll window (`connect.polling`), fed by this connection's step traffic.
    poll_window: PollWindow | None = None
    #: A `flush_later` is scheduled.
    _flush_due: bool = False
    #: Requests (and their bytes) queued by `send_request` since the last flush.
    _batched: int = 0
    _batched_bytes: int = 0
    #: A request left at once in this loop turn: the next ones of the turn are batched.
    _turn_open: bool = False

    def awaits_worker(self) -> None:
        """A request or a checkpoint's answer left: the worker answers soon, so poll."""
        if self.poll_window is not None:
            self.poll_window.touch()

    def worker_answered(self, *, last: bool = False) -> None:
        """An ACK, a reply or a checkpoint came; `last`: the gateway awaits
        nothing more from any worker, so its loop may sleep at once."""
        if self.poll_window is not None:
            self.poll_window.arrived()
            if last:
                self.poll_window.close()

    async def send_request(self, request: pb.GatewayExecutorRequestData, now: float) -> None:
        """Send a request to the worker.

        The first request of a loop turn leaves at once: one at a time,
        nothing waits. The others of that turn queue until its end, or until
        FORWARD_BATCH of them (or FORWARD_BATCH_BYTES) wait, and then leave
        in one write: one write per request costs both sides a syscall (and
        on loopback the sender carries the receiver's TCP work too). The
        batches stay small so the worker starts on the first requests while
        the gateway still forwards the rest. Raises ConnectionClosed if the
        socket is gone."""
        self._batched_bytes += self.session.send_request(request, now)
        self._batched += 1
        if not self._turn_open:
            self._turn_open = True
            self.ws.loop.call_soon(self._end_turn)
            await self.flush()
        elif self._batched < FORWARD_BATCH and self._batched_bytes < FORWARD_BATCH_BYTES and self.ws.writable_now():
            self.flush_later()
        else:
            await self.flush()

    def _end_turn(self) -> None:
        self._turn_open = False

    async def flush(self) -> None:
        """Write every frame the session queued, in order.

        Back-pressure: past the WebSocket library's write limit a send waits
        for the peer to read. A peer that does not drain within
        `write_timeout`, or has more than MAX_SEND_BUFFER bytes queued, cannot
        keep up and is dropped, so it never holds up anyone else and its
        queue never grows without bound."""
        frames = self._take_frames()
        if frames and not self._send_now(frames):
            await self._send(frames)

    def flush_later(self) -> None:
        """`flush_soon` after the callbacks already due on the loop; any
        number of calls in one turn make one flush."""
        if not self._flush_due:
            self._flush_due = True
            self.ws.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_due = False
        self.flush_soon()

    def flush_soon(self) -> None:
        """`flush` for callers that cannot wait: a send that would wait goes on in a task."""
        frames = self._take_frames()
        if frames and not self._send_now(frames):
            task = asyncio.ensure_future(self._send_quietly(frames))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    def _take_frames(self) -> list[bytes]:
        self._batched = self._batched_bytes = 0
        return self.session.data_to_send()

    def _send_now(self, frames: list[bytes]) -> bool:
        """Send (or drop the peer) if that needs no waiting; False if it does."""
        transport = self.ws.transport
        buffered = transport.get_write_buffer_size()
        if buffered > MAX_SEND_BUFFER:
            self._drop_slow()
            return True
        if buffered + sum(len(frame) for frame in frames) <= WRITE_HIGH_WATER and self.ws.writable_now():
            # The common case: nothing can make these sends wait. They leave
            # now, in one write, with no coroutine and no timeout.
            self.ws.send_frames_now(frames)
            return True
        return False

    async def _send(self, frames: list[bytes]) -> None:
        transport = self.ws.transport
        try:
            for frame in frames:
                if transport.get_write_buffer_size() + len(frame) <= WRITE_HIGH_WATER:
                    # Stays under the library's high-water mark: the send cannot
                    # wait, so it needs no (per-step, not free) timeout.
                    await self.ws.send(frame)
                else:
                    async with asyncio.timeout(self.write_timeout):
                        await self.ws.send(frame)
        except TimeoutError:
            self._drop_slow()

    async def _send_quietly(self, frames: list[bytes]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._send(frames)

    def _drop_slow(self) -> None:
        if self.slow:
            return  # dropped already (by another send that waited)
        self.slow = True
        log.warning("dropping connection %s: it does not read what we send", self.connection_id or self.remote)
        self.ws.transport.abort()
