"""Throttle turns of runs whose function also has a `priority`.

Without a priority, a throttled run's turn is fixed when it is recorded (its
first request's `wake_at_ms`). With one, runs held back take the throttle's
turns in the order of their priority, as Inngest's backlog does: when a run's
turn comes, it asks the store (`Store.take_throttle_turn`), which gives that
turn to the run first in line, swapping turns if that is another run (see
`connect.store.start_gates.take_turn`). The run given a turn early is told on
`THROTTLE_TURN_GRANTED` and starts; the one that gave it away waits for its
new turn. A run asks again every `SWEEP_S` seconds while it waits, in case a
notification was lost, and a run whose owner stopped asks when its next
owner reaches its turn. Functions without a priority never come here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from connect.executor.grants import Grants
from connect.store.base import THROTTLE_TURN_GRANTED, Store
from connect.waiting import wait_event

#: How often a run waiting for its turn asks the store again (a lost notification).
SWEEP_S: Final = 10.0


class ThrottleTurns:
    """Taking throttle turns, and being told of turns given early (one per executor)."""

    def __init__(self, store: Store, clock: Callable[[], float], *, sweep: float = SWEEP_S) -> None:
        self._store = store
        self._clock = clock
        self._sweep = sweep
        self._grants = Grants(store, THROTTLE_TURN_GRANTED)

    async def start(self) -> None:
        await self._grants.start()

    async def take(self, run_id: str, wake_at_ms: int) -> None:
        """Return once run `run_id`, whose first request waits until
        `wake_at_ms`, may start: its turn came and was not given to a run
        ahead of it, or a turn was given to it (early, told by a notification:
        so the run waits here, listening, from the start). A run in no line
        (a retry's backoff) waits until `wake_at_ms`."""
        with self._grants.waiting(run_id) as event:
            while True:
                # Cleared before asking: a grant announced after this wakes the wait below.
                event.clear()
                wait_ms = await self._store.take_throttle_turn(run_id, int(self._clock() * 1000))
                if wait_ms is None:
                    delay = wake_at_ms / 1000 - self._clock()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    return
                if wait_ms == 0:
                    return
                await wait_event(event, max(0.0, min(self._sweep, wait_ms / 1000 - self._clock())))
