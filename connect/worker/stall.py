"""Noticing, from the connection thread, that the event loop running user code is stalled.

User functions run on the loop that called `connect()`; the connection runs
on its own thread, so heartbeats and lease extensions flow while user code
blocks that loop (`time.sleep`, a long computation in an `async def`). But a
request handed to a blocked loop waits until it turns again, so a worker
whose loop is blocked should take no new work.

The connection thread asks the user's loop to run a tiny callback (a probe)
every `interval`. `LoopWatch` decides, with injected time: a probe not run
within `threshold` of being sent means the loop is stalled; the first probe
that runs within `threshold` again means it has recovered (the probe sent
during the stall runs late when the stall ends, so recovery is seen one
`interval` after it). A probe costs the user's loop one wake-up per interval.
"""

from __future__ import annotations

#: How long the user's loop may go without running a probe before the worker
#: takes no new work (seconds): `connect(stall_threshold=)`, `connect worker --stall-threshold`.
DEFAULT_THRESHOLD = 5.0
#: Probes per threshold: how finely a stall, and its end, are timed.
PROBES_PER_THRESHOLD = 5


class LoopWatch:
    """Whether the user's loop is stalled, from the probes sent to it and run by it."""

    def __init__(self, threshold: float, now: float) -> None:
        if not threshold > 0:
            raise ValueError(f"a stall threshold is more than 0 seconds, not {threshold!r}")
        self.threshold = threshold
        self.interval = threshold / PROBES_PER_THRESHOLD
        self.stalled = False
        self._sent_at: float | None = None  # the probe not run yet
        self._next_probe = now

    def probe_due(self, now: float) -> bool:
        """Whether to send a probe now (one at a time: a stalled loop is sent no more)."""
        return self._sent_at is None and now >= self._next_probe

    def probe_sent(self, now: float) -> None:
        self._sent_at = now

    def probe_ran(self, sent_at: float, now: float) -> bool:
        """The probe sent at `sent_at` ran at `now`; True if the loop has recovered."""
        if sent_at != self._sent_at:
            return False
        self._sent_at = None
        self._next_probe = now + self.interval
        if self.stalled and now - sent_at < self.threshold:
            self.stalled = False
            return True
        return False

    def check(self, now: float) -> bool:
        """True if the loop has just been found stalled."""
        if not self.stalled and self._sent_at is not None and now - self._sent_at >= self.threshold:
            self.stalled = True
            return True
        return False

    def stalled_for(self, now: float) -> float:
        """How long the probe now outstanding has waited (0 with none)."""
        return 0.0 if self._sent_at is None else now - self._sent_at

    def next_deadline(self, now: float) -> float:
        """When to look again: when the next probe is due or the outstanding one
        overdue, and at least once an `interval`, since a probe's answer comes
        in between (it may make the next probe due sooner). While stalled,
        nothing is due until the outstanding probe runs: look once an interval."""
        due = self._next_probe if self._sent_at is None else self._sent_at + self.threshold
        return now + self.interval if due <= now else min(due, now + self.interval)
