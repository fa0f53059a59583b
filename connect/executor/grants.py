"""Being told that something an executor's tasks wait for was granted.

The store announces grants on a notification channel (`SLOTS_GRANTED`:
concurrency slots, by request id; `THROTTLE_TURN_GRANTED`: throttle turns,
by run id), with the ids joined by ",". A task waiting for one registers its
id here (`waiting`) and waits on the event it gets; the event is set when its
id is announced, and every waiting task's is set when the listener
reconnected (an empty payload: grants may have been lost, so everyone asks
the store again). The waits themselves ask the store; this only wakes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from connect.store.base import Store


class Grants:
    """The ids of one channel this executor waits to hear of."""

    def __init__(self, store: Store, channel: str) -> None:
        self._store = store
        self._channel = channel
        self._waiting: dict[str, asyncio.Event] = {}
        self._listening = False

    async def start(self) -> None:
        if not self._listening:
            await self._store.listen(self._channel, self._heard)
            self._listening = True

    def _heard(self, payload: str) -> None:
        if not payload:
            # The listener reconnected: grants may have been lost, everyone asks again.
            for wake in self._waiting.values():
                wake.set()
            return
        for granted in payload.split(","):
            found = self._waiting.get(granted)
            if found is not None:
                found.set()

    def __len__(self) -> int:
        """How many ids are waited for now."""
        return len(self._waiting)

    @contextmanager
    def waiting(self, granted: str) -> Iterator[asyncio.Event]:
        """The event set when `granted` is announced, for as long as the block runs."""
        event = self._waiting.setdefault(granted, asyncio.Event())
        try:
            yield event
        finally:
            if self._waiting.get(granted) is event:
                del self._waiting[granted]
