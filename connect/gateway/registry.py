"""A gateway's entries in the store's registry: itself, and its ready connections.

Other processes read them: the API hands workers a live, non-draining
gateway from the process rows (`/v0/connect/start`), and anyone may see
which instance is connected where, serving what, with how much in flight.

Both kinds of row expire `ttl` seconds after their last write unless
written again: a gateway that dies vanishes from the registry by itself.
The process row is written every `ttl / 3` seconds and at once when the
state changes (`set_draining`); the connection rows are written every
`ttl / 3` seconds too, and `COALESCE` seconds after a connection became
ready or stopped being routable (changes within that window share one
write). `close` drops both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from connect.gateway.connection import Connection
from connect.gateway.dispatcher import GatewayDispatcher
from connect.store.base import DRAINING, READY, ROLE_GATEWAY, ConnectionRecord, ProcessRecord
from connect.waiting import wait_event

log = logging.getLogger("connect.gateway.registry")

#: Seconds between a connection change and the write that records it: a
#: reconnecting fleet of thousands costs a few writes a second, not one each.
COALESCE: Final = 0.5


class RegistryStore(Protocol):
    """What the registry needs from the store (see connect.store)."""

    async def put_process(self, record: ProcessRecord) -> None: ...
    async def drop_process(self, process_id: str, role: str) -> None: ...
    async def put_connections(self, gateway_id: str, records: list[ConnectionRecord]) -> None: ...


class GatewayRegistry:
    """Keeps this gateway's registry rows alive until `close`; `run` until cancelled."""

    def __init__(
        self,
        store: RegistryStore,
        dispatcher: GatewayDispatcher,
        *,
        process_id: str,
        address: str,
        ttl: float,
        clock: Callable[[], float] = time.time,
        coalesce: float = COALESCE,
    ) -> None:
        if ttl <= 0 or coalesce < 0:
            raise ValueError("ttl must be positive and coalesce not negative")
        self._store = store
        self._dispatcher = dispatcher
        self.process_id = process_id
        self.address = address
        self.ttl = ttl
        self._clock = clock
        self._coalesce = coalesce
        self.state = READY
        self.started_at_ms = int(clock() * 1000)
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        dispatcher.add_connection_listener(self._changed.set)

    async def start(self) -> None:
        """Write both rows once (a failure here is the caller's), then keep them alive."""
        await self._write()
        self._task = asyncio.create_task(self._run(), name=f"registry:{self.process_id}")

    async def set_draining(self) -> None:
        """Tell the others first: no worker is sent here from now on."""
        self.state = DRAINING
        try:
            await self._store.put_process(self._process_record())
        except Exception:
            log.warning("cannot record the gateway draining; its row expires by itself", exc_info=True)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self._store.put_connections(self.process_id, [])
            await self._store.drop_process(self.process_id, ROLE_GATEWAY)
        except Exception:
            log.warning("cannot drop the gateway's registry rows; they expire by themselves", exc_info=True)

    def connection_records(self) -> list[ConnectionRecord]:
        now_ms = int(self._clock() * 1000)
        expires_ms = now_ms + int(self.ttl * 1000)
        return [
            connection_record(conn, self._dispatcher, self.process_id, now_ms, expires_ms)
            for conn in self._dispatcher.router.ready_connections()
        ]

    async def _run(self) -> None:
        interval = self.ttl / 3
        while True:
            if await wait_event(self._changed, interval):
                await asyncio.sleep(self._coalesce)  # changes close together share one write
            self._changed.clear()
            try:
                await self._write()
            except Exception:
                log.warning("cannot write the gateway's registry rows; retrying", exc_info=True)
            self._dispatcher.forget_leases_held_elsewhere()

    async def _write(self) -> None:
        await self._store.put_process(self._process_record())
        await self._store.put_connections(self.process_id, self.connection_records())

    def _process_record(self) -> ProcessRecord:
        expires_ms = int((self._clock() + self.ttl) * 1000)
        return ProcessRecord(self.process_id, ROLE_GATEWAY, self.address, self.state, expires_ms, self.started_at_ms)


def connection_record(
    conn: Connection, dispatcher: GatewayDispatcher, gateway_id: str, heartbeat_ms: int, expires_ms: int
) -> ConnectionRecord:
    """A ready connection of `gateway_id` as the registry (and `GET /v1/workers`) shows it."""
    capacity = dispatcher.capacity
    return ConnectionRecord(
        connection_id=conn.connection_id,
        gateway_id=gateway_id,
        instance_id=conn.instance_id,
        apps=sorted({app for app, _ in conn.functions}),
        functions=sorted({slug for _, slug in conn.functions}),
        capacity=capacity.limit(conn.instance_id),
        in_flight=capacity.in_flight(conn.instance_id),
        state=READY,
        last_heartbeat_ms=heartbeat_ms,
        expires_at_ms=expires_ms,
    )
