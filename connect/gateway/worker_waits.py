"""Runs waiting for a worker with room, per (app, function), woken oldest first.

A freed slot wakes one waiter; a newly ready connection wakes as many as it
has room for. Waking everyone on every change would make every freed slot a
stampede of retries. A waiter also returns after its timeout: being woken is
a hint to try again, never a promise of capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

Key = tuple[str, str]  # (app name, function slug)


class WorkerWaits:
    def __init__(self) -> None:
        self._waiting: dict[Key, dict[asyncio.Future[None], None]] = {}

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def __len__(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    async def wait(self, key: Key, timeout: float) -> None:
        """Return when woken for `key`, or after `timeout` seconds."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting.setdefault(key, {})
        queue[fut] = None
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # not wait_for: see connect.waiting
                    await fut
        finally:
            queue.pop(fut, None)
            if not queue and self._waiting.get(key) is queue:
                del self._waiting[key]

    def wake(self, keys: Iterable[Key], count: int | None) -> None:
        """Wake up to `count` waiters (None: all) among `keys`, oldest first per key."""
        for key in keys:
            queue = self._waiting.get(key)
            while queue and (count is None or count > 0):
                fut = next(iter(queue))
                del queue[fut]
                if not fut.done():
                    fut.set_result(None)
                    if count is not None:
                        count -= 1
            if count == 0:
                return
