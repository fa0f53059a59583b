"""Cron schedules: parsing (with time zones) and tick arithmetic, via croniter.

A schedule is a 5-field cron expression (or croniter's `@hourly`-style
names), optionally prefixed with its time zone as `TZ=Europe/Paris ` or
`CRON_TZ=Europe/Paris `; without one it is UTC. Ticks are computed in that
zone, so `0 9 * * *` with `TZ=America/New_York` is 9:00 New York time on
both sides of a DST change.

Each tick is one run: the executor records the tick's event under an id
derived from (function, schedule, tick), so recording it twice (say, on both
sides of a restart) stores it once. See `Executor` for the scheduling.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]

#: The event a tick's run receives (the name official SDKs know).
CRON_EVENT: Final = "inngest/scheduled.timer"

_TZ_PREFIXES: Final = ("TZ=", "CRON_TZ=")


class CronSchedule:
    """One cron expression in one time zone."""

    def __init__(self, spec: str) -> None:
        """Raises ValueError for an unknown time zone or an invalid expression."""
        text = spec.strip()
        zone: tzinfo = UTC
        for prefix in _TZ_PREFIXES:
            if text.startswith(prefix):
                name, _, text = text[len(prefix) :].partition(" ")
                try:
                    zone = ZoneInfo(name)
                except (ZoneInfoNotFoundError, ValueError) as exc:
                    raise ValueError(f"cron {spec!r}: unknown time zone {name!r}") from exc
                text = text.strip()
                break
        if not text or not croniter.is_valid(text):
            raise ValueError(f"cron {spec!r}: {text!r} is not a valid cron expression")
        self.spec = spec
        self.expression = text
        self.zone = zone

    def next_after(self, ms: int) -> int:
        """The first tick strictly after `ms` (Unix milliseconds)."""
        base = datetime.fromtimestamp(ms / 1000, self.zone)
        nxt: datetime = croniter(self.expression, base).get_next(datetime)
        return int(nxt.timestamp() * 1000)

    def latest_at_or_before(self, ms: int) -> int:
        """The last tick at or before `ms`."""
        # croniter's get_prev excludes the base instant itself, hence the +1 ms.
        base = datetime.fromtimestamp((ms + 1) / 1000, self.zone)
        prev: datetime = croniter(self.expression, base).get_prev(datetime)
        return int(prev.timestamp() * 1000)

    def __repr__(self) -> str:
        return f"CronSchedule({self.spec!r})"
