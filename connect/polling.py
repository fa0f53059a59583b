"""A poll window: keep an event loop awake for a moment after WebSocket traffic.

A loop with nothing to do blocks in `epoll_wait`, its thread sleeps, and an
idle CPU halts. The next message then pays for the wake-up: the sender's
kernel signals the sleeping thread, a halted virtual CPU has to be woken by
its host, and the thread resumes with cold caches. On the 2-vCPU machines the
benchmarks run on, that costs 30 to 90 µs per message, several times per
step, and it is most of what a step's round trip spends above the physical
floor (see bench/README.md).

`PollWindow` trades CPU for that latency. After every touch the loop keeps
running turns with a zero timeout, polling its sockets instead of sleeping,
until `window` seconds pass with no further touch (or `close()`); then it
sleeps as usual. Its owner decides what touches it: the gateway's
connections touch it with every message in or out (`BatchingConnection.
poll_window`); the worker touches its connection loop's window after it
sends while no user code runs, and closes it when user code gets work. So:

* an idle process costs nothing: the window closes and the loop blocks;
* a busy one costs nothing more: its loop had no idle time to spend;
* in between, each message can cost up to `window` of one core, spent on
  a thread that would otherwise sleep (at most one core per loop).

The window must outlast the gap between messages it is meant to catch: one
shorter than a step's round trip ends just before the answer arrives, and
pays for the spinning and the wake-up both (measured: 0.2 ms made the
gateway-only round trip slower, 5 ms halved it). Off by default; the
platform and the worker each take it as a setting (`--poll-window-ms`,
`CONNECT_POLL_WINDOW_MS`).

Only a loop's own thread calls `touch` (the connections call it from their
protocol callbacks), so the object needs no lock. Each poll is one
`call_soon` callback: the loop still runs every ready callback and I/O
event in order, and releases the GIL in every turn's poll, so other threads
of the process run as before.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable

#: The longest window accepted: beyond this it is a busy loop, not a window.
MAX_WINDOW = 1.0

ENV_VAR = "CONNECT_POLL_WINDOW_MS"


class PollWindow:
    """Keeps `loop` polling for `window` seconds after the last `touch()`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not check_window(window):
            raise ValueError("a poll window of 0 is off: make no PollWindow")
        self._loop = loop
        self._window = window
        self._clock = clock
        self._deadline = 0.0
        self._polling = False
        #: Turns run while polling, and how many times a window opened (for tests and benchmarks).
        self.turns = 0
        self.opened = 0

    @property
    def window(self) -> float:
        return self._window

    @property
    def closes_at(self) -> float:
        """When the window closes, on the window's clock (0.0 after `close()`)."""
        return self._deadline

    @property
    def polling(self) -> bool:
        """True while the loop is kept awake."""
        return self._polling

    def touch(self) -> None:
        """Traffic now: keep polling until `window` seconds from now."""
        self._deadline = self._clock() + self._window
        if not self._polling:
            self._polling = True
            self.opened += 1
            self._loop.call_soon(self._turn)

    def close(self) -> None:
        """End the window now: the loop sleeps from its next turn."""
        self._deadline = 0.0

    def _turn(self) -> None:
        if self._clock() < self._deadline:
            self.turns += 1
            self._loop.call_soon(self._turn)
        else:
            self._polling = False


def check_window(window: float) -> float:
    """`window` (seconds) if it is 0 (off) or a window `PollWindow` takes; else ValueError."""
    if window != 0 and not 0 < window <= MAX_WINDOW:
        raise ValueError(f"a poll window is 0 (off) or more than 0 and at most {MAX_WINDOW} s, not {window!r}")
    return window


def parse_window_ms(value: str | float | None, source: str = ENV_VAR) -> float:
    """A window in milliseconds (a string from the environment or a flag) as
    seconds; 0.0 (off) for unset or empty. ValueError says what is wrong."""
    if value is None or value == "":
        return 0.0
    try:
        ms = float(value)
    except ValueError:
        raise ValueError(f"{source} must be a number of milliseconds, not {value!r}") from None
    if not math.isfinite(ms) or ms < 0 or ms > MAX_WINDOW * 1000:
        raise ValueError(f"{source} must be between 0 (off) and {MAX_WINDOW * 1000:g} ms, not {value!r}")
    return ms / 1000


def window_from_env() -> float:
    """The window `CONNECT_POLL_WINDOW_MS` asks for, in seconds; 0.0 if off."""
    return parse_window_ms(os.environ.get(ENV_VAR))
