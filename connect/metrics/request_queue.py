"""The store's queue of step requests for gateways, as a gateway process sees it.

With split roles, executors queue step requests in the store
(`queued_requests`) and gateways take them: that queue is the platform's,
not any one executor's, so `connect_queue_depth` (an executor's own waiting
requests) does not show it. Gateway processes export it:

- `connect_request_queue_depth{state}`: `waiting` (a gateway may take them:
  none holds them, or its hold ran out), `held` (a gateway is forwarding
  them), `lapsed` (their worker was lost; their executor decides what follows);
- `connect_request_queue_oldest_seconds`: how long the oldest waiting request
  has waited (0 when none waits).

Every gateway reads the same queue, so these are not summed across
processes: take the max (or any one).

The queue is read when the metrics are scraped, never on a request's path:
one statement over at most `SCAN_LIMIT` rows (`Store.request_queue_stats`),
and not more often than every `MIN_INTERVAL` seconds however many scrapers
there are (a scrape in between sees the last reading). A reading that fails
or takes longer than `TIMEOUT` seconds leaves the last values in place
and is logged; the scrape is answered anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Gauge

from connect.store.base import RequestQueueStats

log = logging.getLogger("connect.metrics")

#: The most queue rows one reading counts; past it the depths are lower bounds.
SCAN_LIMIT: Final = 10_000
#: Seconds between two readings of the store, at least.
MIN_INTERVAL: Final = 1.0
#: Seconds a reading may take before the scrape goes on without it.
TIMEOUT: Final = 5.0

#: `connect_request_queue_depth`'s states.
STATES: Final = ("waiting", "held", "lapsed")


class QueueSource(Protocol):
    async def request_queue_stats(self, now_ms: int, limit: int) -> RequestQueueStats: ...


class RequestQueueGauges:
    """The gauges, and the reading that sets them (`refresh`, before a scrape)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        store: QueueSource,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._clock = clock
        self._monotonic = monotonic
        self._last_read: float | None = None
        self.depth = Gauge(
            "connect_request_queue_depth",
            "Step requests queued in the store for gateways (split roles): waiting to be taken, held by a gateway "
            "forwarding them, or lapsed (their worker was lost)",
            ["state"],
            registry=registry,
        )
        self.oldest = Gauge(
            "connect_request_queue_oldest_seconds",
            "How long the oldest step request waiting in the store's queue for a gateway has waited (0: none)",
            registry=registry,
        )
        for state in STATES:
            self.depth.labels(state)

    def set(self, stats: RequestQueueStats, now_ms: int) -> None:
        """Show `stats`, read at `now_ms`."""
        self.depth.labels("waiting").set(stats.waiting)
        self.depth.labels("held").set(stats.held)
        self.depth.labels("lapsed").set(stats.lapsed)
        oldest = stats.oldest_waiting_ms
        self.oldest.set(0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000))

    async def refresh(self) -> None:
        """Read the queue, unless it was read less than `MIN_INTERVAL` ago."""
        started = self._monotonic()
        if self._last_read is not None and started - self._last_read < MIN_INTERVAL:
            return
        self._last_read = started
        now_ms = int(self._clock() * 1000)
        try:
            async with asyncio.timeout(TIMEOUT):
                stats = await self._store.request_queue_stats(now_ms, SCAN_LIMIT)
        except Exception as exc:
            log.warning("could not read the request queue for /metrics (the last values stay): %s", exc)
            return
        self.set(stats, now_ms)
