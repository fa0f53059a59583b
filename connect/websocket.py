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
"""

from __future__ import annotations

from collections.abc import Sequence

from websockets.asyncio.connection import Connection
from websockets.protocol import OPEN


class BatchingConnection(Connection):
    """Mixed into the gateway's server and the worker's client connection classes."""

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
