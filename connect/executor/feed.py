"""Which events recorded by other processes this executor has still to match.

Executors sharing a database learn of each other's events (and of those the
API role records) from `EVENTS_RECORDED` notifications, which carry event
ids. Notifications can be lost (a dropped listening connection), so the
executor also reads the events recorded since its cursor now and then
(`events_since`), starting `LOOKBACK_MS` before the newest one it saw:
`received_at_ms` comes from the recording process's clock, and a transaction
that took its timestamp earlier may commit after one that took it later.
The lookback covers both, as long as clocks agree and commits land within
it; an event whose notification was lost and that commits later than that
is not matched.

The feed is plain bookkeeping (no I/O): it remembers the ids it has seen,
bounded to `SEEN_LIMIT` (the oldest are forgotten first; an event seen again
after that is matched again, which finds nothing to do: its waits were
resolved and its cancellations requested), and the cursor.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Final

from connect.store.base import EventRecord

#: How far before the newest event seen a catch-up read starts, in ms.
LOOKBACK_MS: Final = 10_000
#: Event ids remembered as seen; sized above the events one lookback holds at a
#: few thousand events per second.
SEEN_LIMIT: Final = 50_000
#: Events read in one catch-up page.
PAGE: Final = 500


class EventFeed:
    """Seen event ids and the catch-up cursor."""

    def __init__(self, *, lookback_ms: int = LOOKBACK_MS, seen_limit: int = SEEN_LIMIT) -> None:
        if lookback_ms < 0 or seen_limit < 1:
            raise ValueError("lookback_ms must not be negative and seen_limit must be positive")
        self.lookback_ms = lookback_ms
        self._limit = seen_limit
        self._seen: OrderedDict[str, None] = OrderedDict()
        #: The newest `received_at_ms` seen; catch-up starts `lookback_ms` before it.
        self.cursor_ms = 0
        #: An earlier start asked for by watches filed late (see `want_from`).
        self._from_ms: int | None = None

    def start_at(self, now_ms: int) -> None:
        """Events recorded before this executor started are not its concern
        (its runs' waits are re-filed then); start catching up from `now_ms`."""
        self.cursor_ms = max(self.cursor_ms, now_ms)

    def saw(self, event_id: str) -> None:
        """`event_id` was matched here (recorded by this executor, or read back)."""
        self._seen[event_id] = None
        self._seen.move_to_end(event_id)
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)

    def unseen(self, event_ids: Iterable[str]) -> list[str]:
        """The ids in `event_ids` not matched here yet, without duplicates."""
        out: dict[str, None] = {}
        for event_id in event_ids:
            if event_id and event_id not in self._seen:
                out[event_id] = None
        return list(out)

    def want_from(self, since_ms: int) -> None:
        """A watch filed now takes events from `since_ms` (a run read back from
        the store): the next catch-up starts there, if that is earlier."""
        self._from_ms = since_ms if self._from_ms is None else min(self._from_ms, since_ms)

    def catch_up_start(self) -> int:
        """Where the next `events_since` read starts (exclusive); consumes `want_from`."""
        start = self.cursor_ms - self.lookback_ms
        if self._from_ms is not None:
            start = min(start, self._from_ms - 1)
            self._from_ms = None
        return max(0, start)

    def caught_up(self, now_ms: int) -> None:
        """Everything received up to `now_ms` was read (or could match nothing here)."""
        self.cursor_ms = max(self.cursor_ms, now_ms)

    def take(self, records: Sequence[EventRecord]) -> list[EventRecord]:
        """Records read from the store: advance the cursor, mark them seen,
        and return those not matched here before."""
        fresh: list[EventRecord] = []
        for record in records:
            self.cursor_ms = max(self.cursor_ms, record.received_at_ms)
            if record.id in self._seen:
                continue
            self.saw(record.id)
            fresh.append(record)
        return fresh
