"""How long a run waits before it retries a failed attempt.

The default is exponential backoff with jitter: attempt n (0-based) waits
between half and all of `min(max, base * 2**n)` seconds, so runs that failed
together do not all come back together. A `retry-after` from the worker
replaces it, clamped to [1 s, 24 h].
"""

from __future__ import annotations

import email.utils
import random
from datetime import UTC, datetime
from typing import Final

MIN_RETRY_AFTER: Final = 1.0
MAX_RETRY_AFTER: Final = 24 * 3600.0


class Backoff:
    """Exponential backoff with "equal jitter"."""

    def __init__(self, base: float = 1.0, maximum: float = 60.0, rng: random.Random | None = None) -> None:
        if base < 0 or maximum < 0:
            raise ValueError("backoff base and maximum must not be negative")
        self.base = base
        self.maximum = maximum
        self._rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        """Seconds to wait after attempt `attempt` (0-based) failed."""
        ceiling = min(self.maximum, self.base * 2.0 ** min(max(attempt, 0), 62))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait for a `retry-after` value, or None if there is none.

    Accepts whole seconds (`"30"`), an ISO-8601 time (`"2026-11-23T08:23:33.642Z"`,
    what the Python SDK sends; no zone means UTC) and an HTTP date. The result
    is clamped to [1 s, 24 h]; a value that is none of these is ignored.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        delay = float(text)
    else:
        when = _parse_time(text)
        if when is None:
            return None
        delay = when - now
    return min(max(delay, MIN_RETRY_AFTER), MAX_RETRY_AFTER)


def _parse_time(text: str) -> float | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
