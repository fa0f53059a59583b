"""Every executor deadline on one asyncio timer.

Sleeps ending, waits and invokes timing out, `timeouts.finish` and cron
ticks are all entries `(due time, key)` in one heap. Exactly one asyncio
timer handle is armed, for the earliest entry; when it fires, every entry
that is due is handed to the callback and the handle is re-armed for the
next. Nothing polls: an idle executor with a million sleeping runs has one
timer and no wake-ups until the first of them is due.

Due times are wall-clock Unix milliseconds (they come from the store and
survive restarts); the handle is armed on the loop's monotonic clock for
the remaining delay. Setting a key again replaces its entry; cancelled or
replaced entries stay in the heap until they surface and are then skipped,
so both operations are O(log n).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)


class Timers(Generic[K]):
    """Keys with due times; `on_due(key)` is called (synchronously) once each comes due."""

    def __init__(self, on_due: Callable[[K], None], clock: Callable[[], float]) -> None:
        self._on_due = on_due
        self._clock = clock
        self._heap: list[tuple[int, int, K]] = []
        self._live: dict[K, tuple[int, int]] = {}
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: K) -> bool:
        return key in self._live

    def start(self) -> None:
        """Begin firing (on the running loop); entries set before are kept."""
        self._loop = asyncio.get_running_loop()
        self._rearm()

    def stop(self) -> None:
        """Stop firing; entries are kept, so `start` resumes them."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._armed_for = None
        self._loop = None

    def due(self, key: K) -> int | None:
        entry = self._live.get(key)
        return None if entry is None else entry[0]

    def set(self, key: K, due_ms: int) -> None:
        """Fire `key` at `due_ms` (now, if that is past); replaces an earlier setting."""
        seq = next(self._seq)
        self._live[key] = (due_ms, seq)
        heapq.heappush(self._heap, (due_ms, seq, key))
        if self._armed_for is None or due_ms < self._armed_for:
            self._rearm()

    def cancel(self, key: K) -> bool:
        return self._live.pop(key, None) is not None

    def _rearm(self) -> None:
        heap = self._heap
        while heap and self._live.get(heap[0][2]) != (heap[0][0], heap[0][1]):
            heapq.heappop(heap)  # cancelled or replaced
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_for = None
        if not heap or self._loop is None:
            return
        due_ms = heap[0][0]
        delay = max(0.0, due_ms / 1000 - self._clock())
        self._armed_for = due_ms
        self._handle = self._loop.call_at(self._loop.time() + delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_for = None
        # Never early: when the loop's timer fires a hair before the first due
        # time, nothing fires and `_rearm` arms it again for what is left.
        now_ms = self._clock() * 1000
        heap = self._heap
        fired: list[K] = []
        while heap and heap[0][0] <= now_ms:
            due_ms, seq, key = heapq.heappop(heap)
            if self._live.get(key) == (due_ms, seq):
                del self._live[key]
                fired.append(key)
        for key in fired:
            try:
                self._on_due(key)
            except Exception:  # one bad callback must not stop every other deadline
                log.exception("timer callback for %r failed", key)
        self._rearm()
