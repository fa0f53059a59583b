"""A poll window: keep an event loop awake for a moment after step traffic.

A loop with nothing to do blocks in `epoll_wait`, its thread sleeps, and an
idle CPU halts. The next message then pays for the wake-up: the sender's
kernel signals the sleeping thread, a halted virtual CPU has to be woken by
its host, and the thread resumes with cold caches. On the 2-vCPU machines the
benchmarks run on (virtual machines whose kernel halts at once, with no
halt polling of its own), that costs 30 to 90 µs per message, several times
per step, and it is most of what a step's round trip spends above the
physical floor (see bench/README.md).

`PollWindow` trades CPU for that latency. After a touch the loop keeps
running turns with a zero timeout, polling its sockets instead of sleeping,
until the window passes with no further touch (or `close()`); then it
sleeps as usual. The window is learned, as a kernel's halt-polling idle
driver learns its own: it grows while the next message comes soon after
the window ended (polling longer would have caught it) and shrinks when
the next one comes later than `most` (the polling was for nothing), down to
0. Its owner decides what touches it: the gateway touches it when a
request or a checkpoint's answer goes out to any worker, learns from each
ACK, reply or checkpoint that comes in, and closes it when the last reply
it awaits arrives (heartbeats never touch it); the worker touches its
connection loop's window after it sends while no user code runs, and
closes it when user code gets work. So:

* an idle process costs nothing: no step traffic, no window;
* traffic further apart than `most` teaches a window of 0: nothing either;
* on a saturated machine polling steps aside: a window whose thread got less
  than FAIR_SHARE of a CPU over a stretch of JUDGE_AFTER (others were waiting
  for that CPU, or for this process's GIL; a virtual CPU its host took away
  counts too) ends at once and halves, and no window opens for
  QUIET_AFTER_CROWDED. Without this a poller that is always runnable keeps its
  fair share of a CPU that a busy process next to it needs: 256 gateway-only
  steps in flight on 2 vCPUs went from about 14,000 to about 11,000 steps/s
  with the window on;
* in between, each gap can cost up to `most` of one core, spent on a thread
  that would otherwise sleep (at most one core per loop).

On by default in the platform's processes with `most` = DEFAULT_WINDOW (1 ms;
measured on the benchmarks' machines, a step's gaps are 0.1 to 0.5 ms, and a
fixed window of 0.2 ms made the round trip slower while 1 to 5 ms made it
about 1.7 times faster). Off by default in a worker (WORKER_DEFAULT_WINDOW):
a worker runs in the user's process, whose CPU quota and GIL are the user's,
so polling there is opt-in. Both take it as a setting (`--poll-window-ms`,
`CONNECT_POLL_WINDOW_MS`, `connect(poll_window=)`; 0 is off).

Only a loop's own thread calls `touch` (the connections call it from their
protocol callbacks), so the object needs no lock. Each poll is one
`call_soon` callback that first yields the CPU (`sched_yield`) to any other
thread the kernel has waiting for it: polling only takes CPU nobody else
wants at that moment (measured: without it, on 2 vCPUs shared by the
platform, a worker and the benchmark's driver, the worker's polling slowed
durable runs down; with it, they were as fast as with no window). The loop
still runs every ready callback and I/O event in order, and releases the
GIL in every turn's poll. Another thread of the process that wants the GIL
meanwhile may still wait for the interpreter's switch interval, which is why
the worker never polls while its user code runs.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable

#: The longest window accepted: beyond this it is a busy loop, not a window.
MAX_WINDOW = 1.0
#: The window a process grows to at most unless told otherwise (seconds).
DEFAULT_WINDOW = 0.001
#: A worker's window unless told otherwise: off (it runs in the user's process).
WORKER_DEFAULT_WINDOW = 0.0
#: The window's smallest size is `most / GROW_STEPS`: it reaches `most` in log2 of this many misses.
GROW_STEPS = 16
#: Polling steps aside once the loop's thread got less than this share of a
#: CPU over a stretch of JUDGE_AFTER: other threads want the CPU (or this process's GIL).
FAIR_SHARE = 0.75
#: The stretches of polling over which the thread's share of a CPU is judged (seconds).
JUDGE_AFTER = 1e-3
#: After stepping aside, no window opens for this long (seconds): a crowded machine stays
#: crowded for a while, and polling again at once would cost a stretch each time to find out.
QUIET_AFTER_CROWDED = 0.1

ENV_VAR = "CONNECT_POLL_WINDOW_MS"

#: Lets the kernel run another thread waiting for this CPU (a no-op where the OS has no such call).
_yield_cpu: Callable[[], None] = getattr(os, "sched_yield", lambda: None)


class PollWindow:
    """Keeps `loop` polling after each `touch()` for a window it learns, at most `most` seconds.

    The window adapts to the gaps it is meant to bridge, the way a kernel's
    halt-polling idle driver does. Each `touch()` (traffic) or `arrived()`
    (the awaited message came) ends a wait that began at the touch before,
    and how long that wait took decides. Inside the window, the loop was
    awake for it: nothing changes. Later, but within `most`, polling longer
    would have caught it: the window doubles (from `most / GROW_STEPS`).
    Later than `most`, polling was spent for nothing: the window halves, and
    below `most / GROW_STEPS` it is 0, so the loop sleeps at once again. A
    process whose traffic comes further apart than `most` learns a window
    of 0 and pays nothing."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        most: float,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        if not check_window(most):
            raise ValueError("a poll window of 0 is off: make no PollWindow")
        self._loop = loop
        self._most = most
        self._least = most / GROW_STEPS
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._window = 0.0
        # When the stretch being judged began, on both clocks.
        self._judged_at = 0.0
        self._judged_cpu = 0.0
        # No window opens before this (after stepping aside).
        self._quiet_until = 0.0
        self._deadline = 0.0
        self._waiting_since: float | None = None
        self._polling = False
        #: Turns run while polling, windows opened, and waits that ended inside
        #: the window, after it but within `most` (it grew), or later (it shrank).
        self.turns = 0
        self.opened = 0
        self.caught = 0
        self.grown = 0
        self.shrunk = 0
        #: Windows ended early because other threads wanted the CPU.
        self.stepped_aside = 0

    @property
    def most(self) -> float:
        return self._most

    @property
    def window(self) -> float:
        """The window learned so far (0.0: the loop sleeps right after traffic)."""
        return self._window

    @property
    def closes_at(self) -> float:
        """When the current window closes, on the window's clock (0.0 after `close()`)."""
        return self._deadline

    @property
    def polling(self) -> bool:
        """True while the loop is kept awake."""
        return self._polling

    def touch(self) -> None:
        """Traffic now, and more to come: poll for the learned window from now."""
        now = self._clock()
        self._learn(now)
        self._waiting_since = now
        if self._window <= 0.0 or now < self._quiet_until:
            return
        self._deadline = now + self._window
        if not self._polling:
            self._polling = True
            self.opened += 1
            self._judged_at = now
            self._judged_cpu = self._cpu_clock()
            self._loop.call_soon(self._turn)

    def arrived(self) -> None:
        """The awaited message came (the owner then touches or closes)."""
        self._learn(self._clock())
        self._waiting_since = None

    def close(self) -> None:
        """End the window now, and wait for nothing: the loop sleeps from its next turn."""
        self._deadline = 0.0
        self._waiting_since = None

    def summary(self) -> str:
        """One line for the log: what the window learned and what it did."""
        return (
            f"poll window {self._window * 1000:.3g} ms (up to {self._most * 1000:g} ms): "
            f"{self.opened} opened, {self.turns} turns, {self.stepped_aside} stepped aside for other threads; "
            f"waits caught {self.caught}, missed and grown {self.grown}, too long and shrunk {self.shrunk}"
        )

    def _learn(self, now: float) -> None:
        if self._waiting_since is None:
            return
        waited = now - self._waiting_since
        if waited <= self._window:
            self.caught += 1
        elif waited <= self._most:
            self.grown += 1
            self._window = min(self._most, max(self._least, self._window * 2))
        else:
            self.shrunk += 1
            self._halve()

    def _halve(self) -> None:
        """Poll half as long from now on; below `most / GROW_STEPS`, not at all."""
        half = self._window / 2
        self._window = half if half >= self._least else 0.0

    def _turn(self) -> None:
        now = self._clock()
        if now >= self._deadline:
            self._polling = False
        elif self._crowded(now):
            # Others wanted this CPU for much of the last stretch (a saturated
            # machine): polling would take it from them. Sleep, poll less, and
            # not at all for a while.
            self._polling = False
            self._deadline = 0.0
            self._quiet_until = now + QUIET_AFTER_CROWDED
            self.stepped_aside += 1
            self._halve()
        else:
            self.turns += 1
            _yield_cpu()
            self._loop.call_soon(self._turn)

    def _crowded(self, now: float) -> bool:
        """Whether the loop's thread ran for less than FAIR_SHARE of the stretch
        just ended (one of at least JUDGE_AFTER; the next one starts now).
        Judged stretch by stretch, not since the window opened: under steady
        traffic a window stays open for as long as the traffic lasts."""
        elapsed = now - self._judged_at
        if elapsed < JUDGE_AFTER:
            return False
        cpu = self._cpu_clock()
        ran = cpu - self._judged_cpu
        self._judged_at, self._judged_cpu = now, cpu
        return ran < FAIR_SHARE * elapsed


def check_window(window: float) -> float:
    """`window` (seconds) if it is 0 (off) or a window `PollWindow` takes; else ValueError."""
    if window != 0 and not 0 < window <= MAX_WINDOW:
        raise ValueError(f"a poll window is 0 (off) or more than 0 and at most {MAX_WINDOW} s, not {window!r}")
    return window


def parse_window_ms(value: str | float | None, source: str = ENV_VAR, default: float = DEFAULT_WINDOW) -> float:
    """A window in milliseconds (a string from the environment or a flag) as
    seconds; `default` (seconds) for unset or empty, 0.0 for "0" (off).
    ValueError says what is wrong."""
    if value is None or value == "":
        return default
    try:
        ms = float(value)
    except ValueError:
        raise ValueError(f"{source} must be a number of milliseconds, not {value!r}") from None
    if not math.isfinite(ms) or ms < 0 or ms > MAX_WINDOW * 1000:
        raise ValueError(f"{source} must be between 0 (off) and {MAX_WINDOW * 1000:g} ms, not {value!r}")
    return ms / 1000


def window_from_env(default: float = DEFAULT_WINDOW) -> float:
    """The window `CONNECT_POLL_WINDOW_MS` asks for, in seconds (`default` if unset, 0.0 if off)."""
    return parse_window_ms(os.environ.get(ENV_VAR), default=default)
