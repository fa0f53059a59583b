"""Replies that missed their socket: sent again on the next one, or over HTTP.

A reply stays in the ledger's buffer until the gateway acknowledges it
(WORKER_REPLY_ACK) or `/v0/connect/flush` answers 200: replies never sent
(no connection was up) go out on the next connection, and replies sent but
not acknowledged within the ledger's ack timeout, or never sent while no
connection is up, are posted to `/v0/connect/flush`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from connect.worker.link import Link
from connect.worker.start import StartClient
from protocol import worker_session as ws_
from protocol.ledger import WorkerLedger

log = logging.getLogger("connect.worker")


def resend_unsent(ledger: WorkerLedger, link: Link, now: float) -> None:
    """Queue on `link` every buffered reply not sent yet (the caller flushes)."""
    for rid, raw in ledger.unsent():
        if link.session.send_reply_bytes(raw):
            ledger.mark_sent(rid, now)


async def flush_overdue(
    ledger: WorkerLedger, start: StartClient, active: Link | None, now: float, delivered: Callable[[], None]
) -> None:
    """Post overdue replies (and unsent ones, with no active connection) to
    `/v0/connect/flush`; `delivered` after each one stored."""
    pending = ledger.overdue(now)
    if active is None or active.session.phase is not ws_.WorkerPhase.ACTIVE:
        pending += ledger.unsent()
    for rid, raw in pending:
        if await start.flush(raw):
            ledger.acknowledged(rid)
            delivered()
            log.info("reply %s delivered via /v0/connect/flush", rid)
        else:
            ledger.mark_unsent(rid)
