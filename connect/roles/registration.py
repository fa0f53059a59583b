"""A process's entry in the store's process registry, kept alive by a heartbeat.

Every process of a split platform registers itself (`Store.put_process`)
with an expiry `ttl` seconds ahead and renews it every `ttl / 3`, so two
renewals may fail before the others count it gone. `stop` drops the entry
at once (`drop_process`), so a graceful stop is seen without waiting for
the TTL. A renewal that fails is logged and tried again at the next beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from connect.store.base import READY, ProcessRecord, Store

log = logging.getLogger(__name__)


class Registration:
    """The registry entry of (`process_id`, `role`) and its heartbeat task."""

    def __init__(
        self,
        store: Store,
        process_id: str,
        role: str,
        *,
        address: str = "",
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"the process TTL must be positive, got {ttl}")
        self._store = store
        self.process_id = process_id
        self.role = role
        self.address = address
        self.ttl = ttl
        self.state = READY
        self._clock = clock
        self._started_at_ms = int(clock() * 1000)
        self._task: asyncio.Task[None] | None = None

    def _record(self) -> ProcessRecord:
        now_ms = int(self._clock() * 1000)
        return ProcessRecord(
            self.process_id,
            self.role,
            self.address,
            self.state,
            now_ms + int(self.ttl * 1000),
            self._started_at_ms,
        )

    async def start(self) -> None:
        """Register now (errors propagate: a process that cannot register does not start), then keep renewing."""
        await self._store.put_process(self._record())
        self._task = asyncio.create_task(self._beat(), name=f"registry:{self.role}:{self.process_id}")

    async def set_state(self, state: str) -> None:
        """Change the advertised state (e.g. draining) and write it at once."""
        self.state = state
        await self._store.put_process(self._record())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self._store.put_process(self._record())
            except Exception:
                log.warning("could not renew the registry entry of %s %s", self.role, self.process_id, exc_info=True)

    async def stop(self) -> None:
        """Stop renewing and remove the entry."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self._store.drop_process(self.process_id, self.role)
        except Exception:
            log.warning("could not drop the registry entry of %s %s; it lapses on its own", self.role, self.process_id)
