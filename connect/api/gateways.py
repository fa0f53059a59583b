"""Which gateway `/v0/connect/start` sends a worker to, when the gateways
are other processes: read from the process registry in the store.

A gateway is a candidate while its registry entry is unexpired and `ready`
(a draining gateway has turned to `draining`). Gateways the worker asks to
avoid (`exclude_gateways`: the groups, that is the process ids, it is
leaving) are passed over, unless every candidate is excluded: then one of
them is still better than no answer, since a drain only ends once its
workers have somewhere to go. Among the rest, the one with the fewest
registered connections is chosen, at random among equals, so workers spread
over the gateways.

Reads are cached for at most `max_age` seconds (1 s by default) and made
again at once when `PROCESSES_CHANGED` announces a gateway came, went or
changed state. Workers handed a gateway since the last read count as
connections of it until the next read, so a burst of workers arriving
within one cache period spreads too.

Admission: an instance id may hold at most `max_connections_per_instance`
connections across all gateways, counted from the connections registry
(what the gateways last reported, so up to one gateway heartbeat old) plus
the workers of that instance sent to a gateway since the last read. The
limit on all connections (`max_connections`) stays each gateway's own,
checked at its handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Final

from connect.api.app import GatewayAssignment, GatewayRefused
from connect.store.base import PROCESSES_CHANGED, READY, ROLE_GATEWAY, ProcessRecord, Store

#: The oldest registry read `/v0/connect/start` answers from, in seconds.
MAX_AGE: Final = 1.0


@dataclass
class _Snapshot:
    read_at: float
    generation: int
    ready: list[ProcessRecord]
    draining: int
    per_gateway: Counter[str] = field(default_factory=Counter)
    per_instance: Counter[str] = field(default_factory=Counter)


class GatewayDirectory:
    """`connect.api.app.Gateways` over the process and connection registries."""

    def __init__(
        self,
        store: Store,
        *,
        max_connections_per_instance: int,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._max_per_instance = max_connections_per_instance
        self._max_age = max_age
        self._clock = clock
        self._rng = rng or random.Random()  # spreading load, not security
        self._generation = 0
        self._snapshot: _Snapshot | None = None
        self._reading: asyncio.Task[_Snapshot] | None = None
        self._reading_generation = 0

    async def start(self) -> None:
        """Subscribe to registry changes (the cache is then dropped at each one)."""
        await self._store.listen(PROCESSES_CHANGED, self._changed)

    async def stop(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reading

    def _changed(self, _process_id: str) -> None:
        self._generation += 1

    async def assign(self, instance_id: str | None, exclude: Collection[str]) -> GatewayAssignment:
        try:
            snapshot = await self._current()
        except Exception as exc:
            raise GatewayRefused(503, f"could not read the gateway registry: {exc}; try again shortly") from exc
        if instance_id and snapshot.per_instance[instance_id] >= self._max_per_instance:
            raise GatewayRefused(
                429, f"instance {instance_id!r} reached max allowed connections ({self._max_per_instance})"
            )
        if not snapshot.ready:
            if snapshot.draining:
                cause = f"every registered gateway ({snapshot.draining}) is draining"
            else:
                cause = "no gateway is registered (none started, or none renewed its registration in time)"
            raise GatewayRefused(503, f"no gateway to connect to: {cause}; try again shortly")
        candidates = [g for g in snapshot.ready if g.process_id not in exclude] or snapshot.ready
        fewest = min(snapshot.per_gateway[g.process_id] for g in candidates)
        chosen = self._rng.choice([g for g in candidates if snapshot.per_gateway[g.process_id] == fewest])
        snapshot.per_gateway[chosen.process_id] += 1
        if instance_id:
            snapshot.per_instance[instance_id] += 1
        return GatewayAssignment(chosen.address, chosen.process_id)

    async def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        if (
            snapshot is not None
            and snapshot.generation == self._generation
            and self._clock() - snapshot.read_at < self._max_age
        ):
            return snapshot
        # One read at a time: the requests that arrive meanwhile share it,
        # unless a change was announced after it began.
        reading = self._reading
        if reading is None or reading.done() or self._reading_generation != self._generation:
            self._reading_generation = self._generation
            self._reading = reading = asyncio.create_task(self._read(self._generation), name="api:read-gateways")
        return await asyncio.shield(reading)

    async def _read(self, generation: int) -> _Snapshot:
        now = self._clock()
        now_ms = int(now * 1000)
        gateways = await self._store.list_processes(ROLE_GATEWAY, now_ms)
        connections = await self._store.list_connections(now_ms)
        ready = [g for g in gateways if g.state == READY]
        snapshot = _Snapshot(
            read_at=now,
            generation=generation,
            ready=ready,
            draining=len(gateways) - len(ready),
            per_gateway=Counter(c.gateway_id for c in connections),
            per_instance=Counter(c.instance_id for c in connections),
        )
        if self._snapshot is None or self._snapshot.generation <= generation:
            self._snapshot = snapshot  # a read begun earlier and ended later is not kept
        return snapshot
