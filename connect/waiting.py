"""Waiting for an `asyncio.Event` with a timeout, without losing a cancellation.

On Python 3.11, `asyncio.wait_for` returns normally when its task is
cancelled at the moment the awaited thing completes: the cancellation is
lost. A loop of `wait_for(event.wait(), t)` that is cancelled just as its
event is set then goes on, and whoever cancelled it and waits for it to end
waits forever (a gateway that never exits after its drain). `asyncio.timeout`
keeps a cancellation from outside apart from its own, so one always ends the
wait. The project bans `asyncio.wait_for` (see `pyproject.toml`); wait with
`wait_event`, or `asyncio.timeout` for anything else.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """True once `event` is set, False after `timeout` seconds (None: no
    limit) if it was not; a cancellation of the caller always propagates."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
