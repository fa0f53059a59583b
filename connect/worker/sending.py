"""What leaves on one connection, and when: one write per batch, ACKs coalesced.

Frames the session queued leave in one write. A new request's
WORKER_REQUEST_ACK is held back for up to `limits.ACK_COALESCE_WINDOW`: a
step that finishes sooner sends its ACK and its reply (or first checkpoint)
in one write, and the gateway wakes once. Held ACKs never make a write of
their own before the window ends (no flush with nothing else to send takes
them); any other frame sent meanwhile carries them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from connect.worker.link import Link
from protocol import limits


async def flush(link: Link) -> None:
    """Send what the session queued; waits while the gateway does not read."""
    if not flush_now(link):
        frames = link.session.data_to_send()
        if frames:
            await link.ws.send_frames(frames)


def flush_now(link: Link) -> bool:
    """Send what the session queued, in one write, if that needs no wait
    (False: it would wait; nothing was sent). Held ACKs alone make no write."""
    if not link.ws.writable_now():
        return False
    if link.ack_flush is not None:
        if not link.session.more_than_acks:
            return True
        release_held_acks(link)
    frames = link.session.data_to_send()
    if frames:
        link.ws.send_frames_now(frames)
    return True


def hold_acks(link: Link, window_ended: Callable[[Link], None]) -> None:
    """New requests' ACKs are queued: hold them for the window, then call
    `window_ended` (which flushes) unless a frame carried them first."""
    if link.ack_flush is None:
        link.ack_flush = asyncio.get_running_loop().call_later(limits.ACK_COALESCE_WINDOW, window_ended, link)


def release_held_acks(link: Link) -> None:
    """Stop holding: they leave with the write being made, or never (the link ended)."""
    if link.ack_flush is not None:
        link.ack_flush.cancel()
        link.ack_flush = None
