"""One live worker connection on the gateway: the socket plus its session."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection

from protocol.gateway_session import GatewaySession, WorkerHello

log = logging.getLogger("connect.gateway")

#: Seconds a write may wait for a slow reader before the connection is dropped.
WRITE_TIMEOUT = 5.0
#: Bytes queued for one peer beyond which it is dropped without waiting.
MAX_SEND_BUFFER = 16 * 1024 * 1024
#: Write high-water mark of each connection (passed to the server): below it a send never waits.
WRITE_HIGH_WATER = 32 * 1024


class GatewayWebSocket(ServerConnection):
    """The gateway's server connection: frames queued together leave in one write.

    websockets writes each frame with its own `transport.write`: a system
    call (and, over loopback, a wake-up of the peer) per frame. `send_frames`
    hands them all to one `transport.writelines`."""

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """Send binary messages in order, in one write. Raises ConnectionClosed
        as `send` does. No back-pressure wait of its own: callers keep the
        batch under the write limit (`Connection.flush`)."""
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

    async def flush(self) -> None:
        """Write every frame the session queued, in order.

        Back-pressure: past the WebSocket library's write limit a send waits
        for the peer to read. A peer that does not drain within
        `write_timeout`, or has more than MAX_SEND_BUFFER bytes queued, cannot
        keep up and is dropped, so it never holds up anyone else and its
        queue never grows without bound."""
        frames = self.session.data_to_send()
        if not frames:
            return
        if self.ws.transport.get_write_buffer_size() > MAX_SEND_BUFFER:
            self._drop_slow()
            return
        transport = self.ws.transport
        room = WRITE_HIGH_WATER - transport.get_write_buffer_size()
        quick = 0
        while quick < len(frames) and len(frames[quick]) <= room:
            room -= len(frames[quick])
            quick += 1
        try:
            if quick:
                # Under the library's high-water mark the send cannot wait, so it
                # needs no (per-step, not free) timeout; the frames leave in one write.
                await self.ws.send_frames(frames[:quick])
            for frame in frames[quick:]:
                async with asyncio.timeout(self.write_timeout):
                    await self.ws.send(frame)
        except TimeoutError:
            self._drop_slow()

    def _drop_slow(self) -> None:
        self.slow = True
        log.warning("dropping connection %s: it does not read what we send", self.connection_id or self.remote)
        self.ws.transport.abort()
