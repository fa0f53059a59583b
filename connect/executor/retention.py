"""History retention: deleting ended runs, and what only they needed, in the background.

Every `interval` seconds (and once at start) a round computes a cutoff, now
minus the retention period, and calls `Store.prune_history` with it in
batches of at most `batch` runs until a batch says nothing is left, pausing
`pause` seconds between two. Each batch goes on from where the previous
one's scan of old events stopped, so a round reads once each old event that
a live run still needs. A batch is one small transaction: the hot path waits
for at most one batch at a time and gets the loop (and the database) back
between two. The cutoff is fixed for the round, so a round ends even while
new history keeps coming. What a batch deletes, and what it never touches
(anything a Running run, sleeping, waiting or mid-step, still needs), is
`Store.prune_history`'s contract.

A round that fails (the database briefly unreachable, say) is logged and
tried again at the next interval; nothing is lost by a skipped round.

Event ids deduplicate sends only while the event is kept: an event sent again
with the id of one already pruned is a new event. `MIN_RETENTION` keeps that
window well above how long senders retry a send.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from connect.store.base import Pruned, Store
from protocol.durations import parse_duration

log = logging.getLogger(__name__)

DEFAULT_RETENTION: Final = 7 * 86400.0
"""Seconds an ended run is kept by default (7 days)."""

MIN_RETENTION: Final = 60.0
"""The shortest retention period accepted from the command line, in seconds."""

FOREVER: Final = "forever"
"""The `--history-retention` value that keeps everything."""

INTERVAL: Final = 60.0
"""Seconds between the start of one round and the next."""

BATCH: Final = 200
"""Runs (and replies, leases, old events examined) one batch takes at most:
a few milliseconds of SQLite's writer, which the hot path shares."""

PAUSE: Final = 0.05
"""Seconds between two batches of a round, left to the hot path."""


def parse_retention(text: str) -> float | None:
    """`"7d"`, `"12h"`, `"30m"`, `"1h30m"` -> seconds; `"forever"` -> None (keep everything).

    Raises ValueError saying what is accepted for anything else, and for a
    period shorter than `MIN_RETENTION`.
    """
    value = text.strip().lower()
    if value == FOREVER:
        return None
    seconds = parse_duration(value)
    if seconds is None:
        raise ValueError(
            f"{text!r} is not a duration: use a number with a unit (s, m, h, d, w), e.g. 7d, 12h or 30m, "
            f"or {FOREVER!r} to keep everything"
        )
    if seconds < MIN_RETENTION:
        raise ValueError(
            f"{text!r} is shorter than the minimum of {MIN_RETENTION:g} s: event ids deduplicate "
            "sends only while the event is kept"
        )
    return seconds


class Retention:
    """Prunes `store`'s history older than `period` seconds; see the module docstring.

    `clock` gives the wall time (Unix seconds) the cutoff is computed from;
    tests move it instead of waiting.
    """

    def __init__(
        self,
        store: Store,
        period: float,
        *,
        clock: Callable[[], float] = time.time,
        interval: float = INTERVAL,
        batch: int = BATCH,
        pause: float = PAUSE,
    ) -> None:
        if period <= 0:
            raise ValueError(f"the retention period must be positive, got {period}")
        if interval <= 0:
            raise ValueError(f"the retention interval must be positive, got {interval}")
        if batch < 1:
            raise ValueError(f"the retention batch must be at least 1, got {batch}")
        if pause < 0:
            raise ValueError(f"the pause between retention batches must not be negative, got {pause}")
        self._store = store
        self._period_ms = int(period * 1000)
        self._clock = clock
        self._interval = interval
        self._batch = batch
        self._pause = pause
        #: Rounds completed (for tests and logs).
        self.rounds = 0

    def cutoff_ms(self) -> int:
        """History that ended before this (Unix ms) is deleted by the next batch."""
        return int(self._clock() * 1000) - self._period_ms

    async def prune(self) -> Pruned:
        """One round: batches until nothing older than the cutoff is left; what they deleted."""
        cutoff = self.cutoff_ms()
        total = Pruned()
        if cutoff > 0:
            while True:
                pruned = await self._store.prune_history(cutoff, self._batch, total.events_cursor)
                total += pruned
                if not pruned.reached(self._batch):
                    break
                await asyncio.sleep(self._pause)
        self.rounds += 1
        if total.runs or total.events or total.replies or total.leases:
            log.info(
                "history retention: deleted %d runs (%d steps), %d events, %d replies and %d leases "
                "that ended before %s",
                total.runs,
                total.steps,
                total.events,
                total.replies,
                total.leases,
                datetime.fromtimestamp(cutoff / 1000, UTC).isoformat(timespec="seconds"),
            )
        return total

    async def run(self) -> None:
        """Prune now and every `interval` seconds until cancelled."""
        log.info(
            "history retention: ended runs are deleted %g s after they end (checked every %g s)",
            self._period_ms / 1000,
            self._interval,
        )
        while True:
            try:
                await self.prune()
            except Exception:
                log.warning("history retention: pruning failed; trying again in %g s", self._interval, exc_info=True)
            await asyncio.sleep(self._interval)
