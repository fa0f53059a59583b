"""A process's entry in the store's process registry, kept alive by a heartbeat.

The other processes learn who is alive from the registry: an entry lives
`ttl` seconds past its last renewal, and is renewed every third of `ttl`,
so two renewals in a row may fail (a slow or briefly unreachable database)
before it lapses. A renewal that fails is logged and tried again at the
next beat. `stop` removes the entry at once, so nobody waits for the TTL
of a process that left in good order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from connect.store.base import READY, ProcessRecord, Store

log = logging.getLogger(__name__)


class ProcessHeartbeat:
    """Registers (`process_id`, `role`) at `address` while started."""

    def __init__(
        self,
        store: Store,
        process_id: str,
        role: str,
        address: str,
        *,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"the registry TTL must be positive, got {ttl}")
        self._store = store
        self.process_id = process_id
        self.role = role
        self.address = address
        self._ttl = ttl
        self._clock = clock
        self._state = READY
        self._started_at_ms = int(clock() * 1000)
        self._task: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        return self._ttl / 3

    def _record(self) -> ProcessRecord:
        now_ms = int(self._clock() * 1000)
        return ProcessRecord(
            process_id=self.process_id,
            role=self.role,
            address=self.address,
            state=self._state,
            expires_at_ms=now_ms + int(self._ttl * 1000),
            started_at_ms=self._started_at_ms,
        )

    async def start(self) -> None:
        """Register now (raising if the store refuses), then renew in the background."""
        await self._store.put_process(self._record())
        self._task = asyncio.create_task(self._beat(), name=f"registry:{self.role}:{self.process_id}")

    async def set_state(self, state: str) -> None:
        """Change the state others see (`READY`, `DRAINING`), at once."""
        self._state = state
        await self._store.put_process(self._record())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._store.put_process(self._record())
            except Exception:
                log.warning(
                    "%s %s: could not renew its registry entry; retrying in %.1f s",
                    self.role,
                    self.process_id,
                    self.interval,
                    exc_info=True,
                )

    async def stop(self) -> None:
        """Stop renewing and remove the entry (left to lapse if the store fails)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self._store.drop_process(self.process_id, self.role)
        except Exception:
            log.warning(
                "%s %s: could not remove its registry entry; it lapses within %.0f s",
                self.role,
                self.process_id,
                self._ttl,
                exc_info=True,
            )
