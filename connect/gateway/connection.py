"""One live worker connection on the gateway: the socket plus its session."""

from __future__ import annotations

from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection

from protocol.gateway_session import GatewaySession, WorkerHello


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

    async def flush(self) -> None:
        """Write every frame the session queued, in order."""
        for frame in self.session.data_to_send():
            await self.ws.send(frame)
