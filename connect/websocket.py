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

Frames handed over by either path are in the protocol's output in call order,
so they never overtake one another.

Receiving, websockets queues each message for `recv()`, whose task wakes on a
later turn of the loop. An owner that handles messages synchronously sets
`on_binary`: every complete binary message then goes to it as soon as it is
parsed, inside `data_received`. Whatever the callback does not take (text,
fragmented messages, and every message while earlier ones still wait for
`recv()`) is queued as usual, so messages are seen in the order they came and
`recv()` still ends with `ConnectionClosed` when the connection does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from websockets.asyncio.connection import Connection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import OPEN, Event

log = logging.getLogger("connect.websocket")


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
        try:
            handler(bytes(event.data))
        except Exception:
            # As if the handler were the reader task that crashed: drop the connection.
            log.exception("handling a message failed; closing the connection")
            self.on_binary = None
            self.protocol.fail(CloseCode.INTERNAL_ERROR, "internal error")
            self.send_data()

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
        for frame in frames:
            self.protocol.send_binary(frame)
        self.send_data()

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """Send binary messages in order, in one write; wait while the peer
        does not read. Raises ConnectionClosed as `send` does."""
        async with self.send_context():
            for frame in frames:
                self.protocol.send_binary(frame)

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
