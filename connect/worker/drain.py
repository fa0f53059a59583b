"""A worker's graceful drain: wait for in-flight work to finish and be delivered.

Once shutdown is requested the worker's connections are paused (no new
work) and this waits until the ledger is idle: every request finished and
every reply acknowledged. Past `timeout` (None: never) what is left is
abandoned: its leases lapse and the platform runs it elsewhere.
"""

from __future__ import annotations

import asyncio
import logging

from connect.waiting import wait_event
from connect.worker.clock import Clock
from protocol.ledger import WorkerLedger

log = logging.getLogger("connect.worker")


async def wait_idle(ledger: WorkerLedger, timeout: float | None, progress: asyncio.Event, clock: Clock) -> int:
    """Wait until `ledger` is idle, woken by `progress`; how many requests
    and replies were abandoned at the deadline (0 if none)."""
    started = clock.monotonic()
    while not ledger.idle:
        left = None if timeout is None else timeout - (clock.monotonic() - started)
        if left is not None and left <= 0:
            abandoned = ledger.abandon()
            log.warning("drain deadline passed: abandoning %d requests; their leases let them run elsewhere", abandoned)
            return abandoned
        progress.clear()
        await wait_event(progress, left)
    return 0
