"""The thread bridge: how work crosses between the caller's loop and the connection's.

The connection machinery runs on its own loop in its own thread; user code
runs on the loop that called `connect()`. Requests cross one way and replies
(and checkpoints) the other, each through a `Handoff`: a deque drained by at
most one pending `call_soon_threadsafe`, so a burst of N items costs the
other loop one wake-up, not N. A handoff needs no bound of its own: it only
carries requests already in the ledger's in-flight set, and their replies
and checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    """Items queued on one thread for a loop on another, with one wake-up pending at most.

    The producer appends to `items` and calls `wake()`; `drain` runs on the
    target loop and starts with `take()`, which clears the pending flag
    before the items are drained, so an item queued after that schedules a
    wake-up of its own and none is ever stranded.
    """

    def __init__(self, drain: Callable[[], None]) -> None:
        self.items: deque[T] = deque()
        self.pending = False
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop `drain` runs on
        self.drain = drain

    def wake(self) -> bool:
        """Schedule `drain` on the target loop unless a wake-up is pending.

        False when the target loop is closed: nothing will ever drain the
        items, and what to do with them is the producer's decision."""
        loop = self.loop
        assert loop is not None
        if self.pending and not loop.is_closed():
            return True
        self.pending = True
        try:
            loop.call_soon_threadsafe(self.drain)
        except RuntimeError:
            self.pending = False
            return False
        return True

    def take(self) -> deque[T]:
        """On the target loop: the items to drain (popped left by the caller)."""
        self.pending = False
        return self.items


def call_on(loop: asyncio.AbstractEventLoop | None, fn: Callable[[], None]) -> None:
    """Run `fn` on `loop` from any thread; nothing if that loop has ended."""
    if loop is not None and not loop.is_closed():
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn)


def resolve_on(loop: asyncio.AbstractEventLoop | None, answer: asyncio.Future[bool], value: bool) -> None:
    """Resolve a future of `loop` from another thread (once; later calls do nothing)."""

    def resolve() -> None:
        if not answer.done():
            answer.set_result(value)

    call_on(loop, resolve)


def run_loop(coro: Coroutine[Any, Any, None]) -> None:
    """Run the machinery's loop on this thread: uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(coro)
        return
    uvloop.run(coro)
