"""When a `Sleep` opcode wakes up.

SDKs say it two ways: the Python SDK puts the absolute wake time in `name`
(ISO-8601, `"2026-11-23T08:25:22.638Z"`), others send `opts.duration`
(`"30s"`, `"1h30m"`, `"2d"`). As in the reference executor, `opts.duration`
is read first, then `name`; a value of 10 or more characters is tried as a
time first, then as a duration. A sleep lasts at most one year.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from protocol.durations import parse_duration
from protocol.payloads import Opcode

MAX_SLEEP: Final = 365 * 24 * 3600.0


def wake_time(op: Opcode, now: float) -> float:
    """The Unix time at which the sleep in `op` ends. Raises ValueError."""
    candidates: list[str] = []
    if op.opts and isinstance(op.opts.get("duration"), str):
        candidates.append(op.opts["duration"])
    if op.name:
        candidates.append(op.name)
    for text in candidates:
        when = _read(text, now)
        if when is not None:
            return min(when, now + MAX_SLEEP)
    raise ValueError(f"sleep {op.id}: no wake time or duration in {candidates!r}")


def _read(text: str, now: float) -> float | None:
    if len(text) >= 10:
        when = _time(text)
        if when is not None:
            return when
    seconds = parse_duration(text)
    return None if seconds is None else now + seconds


def _time(text: str) -> float | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
