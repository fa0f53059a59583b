"""Closed-loop load: keep N jobs in flight, count what completes in a window.

`closed_loop` starts jobs through `submit(keys)` (one call may start
several, e.g. one POST of a batch of events), learns of completions from the
UDP `Listener`, and tops the load back up to `in_flight` at once. After a
warm-up it counts completions inside the measuring window; jobs started
inside the window are the latency sample. Both sides of the comparison
(Celery chains and our runs) go through this same loop.
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

    @property
    def jobs_per_s(self) -> float:
        span = self.window_end - self.window_start
        return self.completed_in_window / span if span > 0 else 0.0

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
    while True:
        now = time.time()
        if now >= res.window_end:
            break
        outstanding = len(res.sent) - len(res.done)
        res.max_in_flight_seen = max(res.max_in_flight_seen, outstanding)
        room = in_flight - outstanding
        if room > 0:
            keys = [f"{prefix}{next(_counter)}" for _ in range(min(room, batch_max))]
            t = time.time()
            for k in keys:
                res.sent[k] = t
            submit(keys)
            timeout = 0.0
        else:
            timeout = 0.05
        for key, t in listener.poll(timeout):
            if key in res.sent and key not in res.done:
                res.done[key] = t
    res.completed_in_window = sum(1 for t in res.done.values() if res.window_start <= t < res.window_end)
    deadline = time.time() + drain
    while len(res.done) < len(res.sent) and time.time() < deadline:
        for key, t in listener.poll(0.1):
            if key in res.sent:
                res.done.setdefault(key, t)
    res.unfinished = len(res.sent) - len(res.done)
    return res
