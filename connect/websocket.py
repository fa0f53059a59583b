"""WebSocket connections that send several frames in one write, and without waiting when they can.

websockets writes each message with its own `transport.write` (a system
call, and over loopback a wake-up of the peer, per frame), and every `send`
goes through an async context manager even when nothing can make it wait.
The gateway and the worker each send a few small frames per step (a request
and a REPLY_ACK; an ACK and a reply), so both use `BatchingConnection`:

* `writable_now` / `send_frames_now`: while the connection is open and the
  transport is not over its write limit, frames are written at once by the
  caller, in one `transport.writelines`, with no coroutine and no turn of
  the loop;
* `send_frames`: the awaitable form, which also waits for the peer to read
  (back-pressure) and raises `ConnectionClosed` as `send` does.

Sending uses only documented surface: the connection class is passed to `serve` /
`connect` as `create_connection`, which hands it the Sans-I/O `Protocol`;
frames go through that protocol's public `send_binary` and `data_to_send`
(so websockets builds, checks, masks and logs every frame itself), and the
transport and its flow control are asyncio's own protocol callbacks
(`connection_made`, `pause_writing`, `resume_writing`, `connection_lost`),
each passed on to websockets unchanged.

Frames handed over by either path are in the protocol's output in call
order, and whatever websockets queued before them (a pong, a close frame)
leaves first, so nothing overtakes anything.

Receiving, websockets queues each message for `recv()`, whose task wakes on
a later turn of the loop: one more wake-up per step on each side. An owner
that handles messages synchronously sets `on_binary`: every complete binary
message then goes to it as soon as websockets has parsed it, from
`process_event`, the method websockets' asyncio connection calls with each
event its Sans-I/O protocol parsed. That method is not part of websockets'
documented API, so the releases it is used with are pinned and tested at both
ends of the declared range (tests/test_dependency_floor.py); it is the one
such dependency here. Every other event (control frames, text, fragments,
and every message while earlier ones still wait for `recv()`) goes to
websockets as usual, so messages are seen in the order they came and `recv()`
still ends with `ConnectionClosed` when the connection does.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast, overload

from websockets.asyncio.connection import Connection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import CLOSED, OPEN, Event, Protocol
from websockets.typing import Data

log = logging.getLogger("connect.websocket")
_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)

_HEAD = struct.Struct("!BB")
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")


def frame_header(first: int, length: int, mask_bit: int) -> bytes:
    """The first bytes of a frame (RFC 6455 section 5.2), up to the masking key:
    `first` is FIN, RSV and opcode; `mask_bit` is 0x80 for a masked frame or 0."""
    if length < 126:
        return _HEAD.pack(first, mask_bit | length)
    if length < 65536:
        return _HEAD_16.pack(first, mask_bit | 126, length)
    return _HEAD_64.pack(first, mask_bit | 127, length)


class BatchingConnection(Connection):
    """Mixed into the gateway's server and the worker's client connection classes.

    Its owners send only whole binary messages through it (never a
    fragmented one, which would make `send_binary` raise ProtocolError).
    """

    #: Set by the owner: called with each complete binary message as it is parsed.
    on_binary: Callable[[bytes], None] | None = None

    def __init__(self, protocol: Protocol, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        # Our own references, from the documented constructor and asyncio
        # callbacks, rather than attributes websockets keeps for itself.
        self._sansio = protocol
        self._socket: asyncio.Transport | None = None
        self._write_paused = False
        self._resumed: asyncio.Future[None] | None = None
        self._queued = 0  # messages handed to websockets' queue and not yet taken by recv()

    # --- receiving -------------------------------------------------------------------------

    def process_event(self, event: Event) -> None:
        handler = self.on_binary
        if isinstance(event, Frame) and event.opcode in _DATA:
            if handler is not None and event.opcode is Opcode.BINARY and event.fin and not self._queued:
                self._deliver(handler, bytes(event.data))
                return
            if event.fin:
                self._queued += 1
        super().process_event(event)

    @overload
    async def recv(self, decode: Literal[True]) -> str: ...
    @overload
    async def recv(self, decode: Literal[False]) -> bytes: ...
    @overload
    async def recv(self, decode: bool | None = None) -> Data: ...
    async def recv(self, decode: bool | None = None) -> Data:
        message = await super().recv(decode)
        self._queued -= 1
        return message

    def _deliver(self, handler: Callable[[bytes], None], message: bytes) -> None:
        try:
            handler(message)
        except Exception:
            # As if the handler were the reader task that crashed: drop the connection.
            log.exception("handling a message failed; closing the connection")
            self.on_binary = None
            self._sansio.fail(CloseCode.INTERNAL_ERROR, "internal error")
            self._write(self._sansio.data_to_send())

    # --- asyncio callbacks, passed on to websockets ----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._socket = cast(asyncio.Transport, transport)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_paused = True

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_paused = False
        self._wake_senders()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._write_paused = False
        self._wake_senders()

    def _wake_senders(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    # --- sending ---------------------------------------------------------------------------

    def writable_now(self) -> bool:
        """True if frames can be sent without waiting: the connection is open
        and the peer keeps up (the transport is under its write limit)."""
        socket = self._socket
        return socket is not None and self._sansio.state is OPEN and not self._write_paused and not socket.is_closing()

    def send_frames_now(self, frames: Sequence[bytes]) -> None:
        """Send binary messages in order, in one write. Only when `writable_now()`."""
        protocol = self._sansio
        for frame in frames:
            protocol.send_binary(frame)
        self._write(protocol.data_to_send())

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """Send binary messages in order, in one write; wait while the peer
        does not read. Raises ConnectionClosed as `send` does."""
        if self._sansio.state is not OPEN or self._socket is None:
            for frame in frames:
                await self.send(frame)  # websockets waits for the close and raises ConnectionClosed
            return
        self.send_frames_now(frames)
        while self._write_paused:
            if self._resumed is None:
                self._resumed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._resumed)  # one future for every waiting sender
        if self._sansio.state is CLOSED:  # lost while the frames waited to leave
            raise self._sansio.close_exc

    def _write(self, chunks: list[bytes]) -> None:
        socket = self._socket
        if not chunks or socket is None:
            return
        if all(chunks):
            socket.writelines(chunks)
            return
        for data in chunks:  # an empty chunk asks for a half-close, as websockets does it
            if data:
                socket.write(data)
            elif socket.can_write_eof():
                socket.write_eof()
