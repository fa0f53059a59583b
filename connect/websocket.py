"""WebSocket connections that send several frames in one write, and without waiting when they can.

websockets writes each frame with its own `transport.write` (a system call,
and over loopback a wake-up of the peer, per frame), and every `send` goes
through an async context manager even when nothing can make it wait. The
gateway and the worker each send a few small frames per step (a request and
a REPLY_ACK; an ACK and a reply), so both use `BatchingConnection`:

* `send_data` hands every chunk the protocol has ready to one
  `transport.writelines`;
* `writable_now` / `send_frames_now`: while the connection is open and the
  transport is not over its write limit, frames are written at once by the
  caller, with no coroutine and no turn of the loop;
* `send_frames`: the awaitable form, which waits for the peer to read (the
  library's back-pressure) and raises `ConnectionClosed` as `send` does.

Both serialize the frames here: a header and the payload (masked on a client
with a key from its `MaskSource`), straight into the protocol's output, where
websockets builds a `Frame`, checks and serializes it in Python per frame.
With extensions, debug logging, a fragmented message being sent or a client
protocol without a key source, websockets does it as before.

Frames handed over by either path are in the protocol's output in call order,
so they never overtake one another.

Receiving, websockets queues each message for `recv()`, whose task wakes on a
later turn of the loop. An owner that handles messages synchronously sets
`on_binary`: every complete binary message then goes to it as soon as it is
parsed, inside `data_received`. Whatever the callback does not take (text,
fragmented messages, and every message while earlier ones still wait for
`recv()`) is queued as usual, so messages are seen in the order they came and
`recv()` still ends with `ConnectionClosed` when the connection does.

While `on_binary` is set, the frames are also split here rather than by
websockets' generator-based parser (a few µs per frame when warm, 15 to 35 µs
one message at a time on a 2-vCPU VM; our header check costs under 1 µs).
A complete, final, unextended binary frame with the side's masking and within
the size limit goes to `on_binary` at once; every other complete frame
(control, text, fragments, wrong masking, anything while messages wait for
`recv()`) is handed to websockets on its own, so its parser is always between
frames and it answers, queues or fails the connection exactly as before. The
start of a frame not complete yet waits here (bounded by the size limit; a
frame over the limit goes to websockets from its header, which fails the
connection with 1009). Splitting starts only when websockets' parser is
between frames, and stops for good when the connection leaves OPEN.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence

from websockets.asyncio.connection import Connection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import CLIENT, OPEN, SERVER, Event
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

log = logging.getLogger("connect.websocket")

_FIN_BINARY = 0x82  # first header byte of a final binary frame with no RSV bits
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


_BETWEEN_FRAMES = StreamReader.at_eof.__code__  # where websockets' parser waits for a new frame


class BatchingConnection(Connection):
    """Mixed into the gateway's server and the worker's client connection classes."""

    #: Set by the owner: called with each complete binary message as it is parsed.
    on_binary: Callable[[bytes], None] | None = None

    def process_event(self, event: Event) -> None:
        handler = self.on_binary
        if (
            handler is None
            or not isinstance(event, Frame)
            or event.opcode is not Opcode.BINARY
            or not event.fin
            or len(self.recv_messages.frames)  # earlier messages wait for recv(): keep the order
        ):
            super().process_event(event)
            return
        self._deliver(handler, bytes(event.data))

    def _deliver(self, handler: Callable[[bytes], None], message: bytes) -> None:
        try:
            handler(message)
        except Exception:
            # As if the handler were the reader task that crashed: drop the connection.
            log.exception("handling a message failed; closing the connection")
            self.on_binary = None
            self.protocol.fail(CloseCode.INTERNAL_ERROR, "internal error")
            self.send_data()

    # --- splitting frames (see the module's docstring) --------------------------------------

    _splitting = False
    _held: bytearray | None = None  # the start of a frame not complete yet
    _held_need = 0  # the bytes that frame needs in all; 0 while its header is incomplete

    def data_received(self, data: bytes) -> None:
        if not self._splitting:
            if self.on_binary is None or not self._between_frames():
                super().data_received(data)
                return
            self._splitting = True
        held = self._held
        if held is not None:
            held += data
            if len(held) < self._held_need:
                return
            self._held = None
            data = bytes(held)
        self._split(data)

    def eof_received(self) -> None:
        held, self._held = self._held, None
        self._splitting = False
        if held is not None:
            super().data_received(bytes(held))  # websockets reports the truncated frame
        super().eof_received()

    def _between_frames(self) -> bool:
        protocol = self.protocol
        if (
            protocol.state is not OPEN
            or protocol.extensions
            # websockets before 17 names the size attributes differently: never split there.
            or getattr(protocol, "current_size", 0) is not None
            or not hasattr(protocol, "max_fragment_size")
            or protocol.reader.buffer
        ):
            return False
        # The innermost generator the parser waits in (the handshake's parser
        # delegates to the frames' parser, which waits in the reader's at_eof).
        waiting: object = protocol.parser
        while (inner := getattr(waiting, "gi_yieldfrom", None)) is not None:
            waiting = inner
        return getattr(waiting, "gi_code", None) is _BETWEEN_FRAMES

    def _split(self, data: bytes) -> None:
        protocol = self.protocol
        masked_in = protocol.side is SERVER  # a client masks every frame, a server none
        limit = protocol.max_message_size
        if protocol.max_fragment_size is not None:
            limit = protocol.max_fragment_size if limit is None else min(limit, protocol.max_fragment_size)
        size = len(data)
        pos = 0
        while pos < size:
            if protocol.state is not OPEN:
                self._splitting = False
                super().data_received(data[pos:])
                return
            start = pos + 2
            if start > size:
                self._hold(data[pos:], 0)
                return
            first, second = data[pos], data[pos + 1]
            length = second & 0x7F
            if length >= 126:
                width = 2 if length == 126 else 8
                if start + width > size:
                    self._hold(data[pos:], 0)
                    return
                length = int.from_bytes(data[start : start + width], "big")
                start += width
            masked = second & 0x80
            if masked:
                start += 4
            end = start + length
            if limit is not None and length > limit:
                # websockets refuses it from its header (1009 message too big).
                self._splitting = False
                super().data_received(data[pos:])
                return
            if end > size:
                self._hold(data[pos:], end - pos)
                return
            handler = self.on_binary
            if (
                first == _FIN_BINARY
                and bool(masked) is masked_in
                and handler is not None
                and protocol.current_size is None
                and not len(self.recv_messages.frames)
            ):
                payload = data[start:end]
                self._deliver(handler, apply_mask(payload, data[start - 4 : start]) if masked else payload)
            else:
                super().data_received(data[pos:end])
            pos = end

    def _hold(self, rest: bytes, need: int) -> None:
        self._held = bytearray(rest)
        self._held_need = need

    def writable_now(self) -> bool:
        """True if frames can be sent without waiting: the connection is open,
        nothing is being sent in fragments and the peer keeps up."""
        return (
            self.protocol.state is OPEN
            and not self.paused
            and self.send_in_progress is None
            and not self.transport.is_closing()
        )

    def send_frames_now(self, frames: Sequence[bytes]) -> None:
        """Send binary messages in order, in one write. Only when `writable_now()`."""
        self._queue_binary(frames)
        self.send_data()

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """Send binary messages in order, in one write; wait while the peer
        does not read. Raises ConnectionClosed as `send` does."""
        async with self.send_context():
            self._queue_binary(frames)

    def _queue_binary(self, frames: Sequence[bytes]) -> None:
        """Each frame a final binary message, into the protocol's output."""
        protocol = self.protocol
        masks = getattr(protocol, "masks", None) if protocol.side is CLIENT else None
        if (
            protocol.state is not OPEN
            or protocol.extensions
            or protocol.expect_continuation_frame
            or protocol.debug
            or (masks is None and protocol.side is CLIENT)
        ):
            for frame in frames:
                protocol.send_binary(frame)  # websockets' checks, errors and logging
            return
        writes = protocol.writes
        if masks is None:
            for frame in frames:
                writes.append(frame_header(_FIN_BINARY, len(frame), 0) + frame)
            return
        for frame in frames:
            key = masks.take()
            writes.append(b"".join((frame_header(_FIN_BINARY, len(frame), 0x80), key, apply_mask(frame, key))))

    def send_data(self) -> None:
        chunks = self.protocol.data_to_send()
        if not chunks:
            return
        if all(chunks):
            self.transport.writelines(chunks)
            return
        for data in chunks:  # an empty chunk asks for a half-close, as in websockets
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
