"""Closed-loop load: keep N jobs in flight, count what completes in a window.

`closed_loop` starts jobs through `submit(keys)` (one call may start
several, e.g. one POST of a batch of events), learns of completions from the
UDP `Listener`, and tops the load back up to `in_flight` at once. After a
warm-up it counts completions inside the measuring window; jobs started
inside the window are the latency sample. Both sides of the comparison
(Celery chains and our runs) go through this same loop.

Counting completions in a window is exact only when they come evenly. A
slow system can move the whole load in step: all 300 jobs start together,
advance together and end within a few milliseconds of each other, seconds
apart (the official TypeScript worker does, with runs of about 4 s), so the
count is a whole number of such waves and the figure is off by up to one
wave per window. `inflight_jobs_per_s` does not depend on when completions
come: by Little's law, the jobs kept in flight (averaged over the window)
divided by the mean time from submission to completion of the jobs that
completed in it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.notify import Listener


@dataclass
class LoopResult:
    sent: dict[str, float] = field(default_factory=dict)  # key -> wall time it was submitted
    done: dict[str, float] = field(default_factory=dict)  # key -> wall time its notification arrived
    window_start: float = 0.0
    window_end: float = 0.0
    completed_in_window: int = 0
    max_in_flight_seen: int = 0
    unfinished: int = 0
    #: The integral of jobs in flight over the window (job-seconds).
    in_flight_area: float = 0.0

    @property
    def jobs_per_s(self) -> float:
        span = self.window_end - self.window_start
        return self.completed_in_window / span if span > 0 else 0.0

    @property
    def inflight_jobs_per_s(self) -> float:
        """Mean jobs in flight / mean latency of the jobs completed in the window (see the module doc)."""
        span = self.window_end - self.window_start
        latencies = [t - self.sent[k] for k, t in self.done.items() if self.window_start <= t < self.window_end]
        if span <= 0 or not latencies:
            return 0.0
        return (self.in_flight_area / span) / (sum(latencies) / len(latencies))

    def window_keys(self) -> list[str]:
        """Jobs started inside the window that completed."""
        return [k for k, t in self.sent.items() if self.window_start <= t < self.window_end and k in self.done]


_counter = itertools.count()


def closed_loop(
    submit: Callable[[list[str]], None],
    listener: Listener,
    *,
    in_flight: int,
    warmup: float,
    seconds: float,
    drain: float = 30.0,
    batch_max: int = 100,
    prefix: str = "j",
) -> LoopResult:
    res = LoopResult()
    start = time.time()
    res.window_start = start + warmup
    res.window_end = res.window_start + seconds
    # The jobs in flight change only inside this loop (submissions, and the
    # completions each poll returns): `held` is the count since `held_since`.
    held, held_since = 0, start

    def account(until: float) -> None:
        nonlocal held_since
        overlap = min(until, res.window_end) - max(held_since, res.window_start)
        if overlap > 0:
            res.in_flight_area += held * overlap
        held_since = max(held_since, until)

    while True:
        now = time.time()
        account(now)
        if now >= res.window_end:
            break
        outstanding = len(res.sent) - len(res.done)
        held = outstanding
        res.max_in_flight_seen = max(res.max_in_flight_seen, outstanding)
        room = in_flight - outstanding
        if room > 0:
            keys = [f"{prefix}{next(_counter)}" for _ in range(min(room, batch_max))]
            t = time.time()
            account(t)
            held = outstanding + len(keys)
            for k in keys:
                res.sent[k] = t
            submit(keys)
            timeout = 0.0
        else:
            timeout = 0.05
        for key, t in listener.poll(timeout):
            if key in res.sent and key not in res.done:
                account(t)
                held -= 1
                res.done[key] = t
    res.completed_in_window = sum(1 for t in res.done.values() if res.window_start <= t < res.window_end)
    deadline = time.time() + drain
    while len(res.done) < len(res.sent) and time.time() < deadline:
        for key, t in listener.poll(0.1):
            if key in res.sent:
                res.done.setdefault(key, t)
    res.unfinished = len(res.sent) - len(res.done)
    return res
