"""One live worker connection on the gateway: the socket plus its session."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection

from protocol.gateway_session import GatewaySession, WorkerHello

log = logging.getLogger("connect.gateway")

#: Seconds a write may wait for a slow reader before the connection is dropped.
WRITE_TIMEOUT = 5.0


@dataclass(eq=False)
class Connection:
    ws: ServerConnection
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

        Back-pressure: the socket's send buffer is bounded by the WebSocket
        library's write limit, beyond which a send waits for the peer to
        read. A peer that does not drain it within `write_timeout` cannot keep
        up and is dropped, so it never holds up anyone else."""
        frames = self.session.data_to_send()
        if not frames:
            return
        try:
            async with asyncio.timeout(self.write_timeout):
                for frame in frames:
                    await self.ws.send(frame)
        except TimeoutError:
            self.slow = True
            log.warning("dropping connection %s: it does not read what we send", self.connection_id or self.remote)
            self.ws.transport.abort()
