"""Interval and duration strings as they travel on the wire.

Intervals in GATEWAY_CONNECTION_READY: every official SDK parses whole
seconds with an `s` suffix (`"10s"`), and one of them accepts nothing else,
so that is the only form we emit.

Durations in function configs (flow-control periods, timeouts): the SDKs
write them as one or more `<number><unit>` parts, `"30s"`, `"1h30m"`, `"2d"`,
`"1w"`, `"500ms"` (`parse_duration`).
"""

from __future__ import annotations

import math
import re

_SECONDS = re.compile(r"^(\d+)s$")
_GO = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)")
_DURATION_UNIT = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
}


def format_interval(seconds: float) -> str:
    """`30.0 -> "30s"`; fractions round up so an interval is never shortened to 0."""
    if seconds < 0:
        raise ValueError(f"interval must not be negative: {seconds}")
    return f"{math.ceil(seconds)}s"


def parse_interval(text: str, default: float) -> float:
    """Parse `"10s"`, `"500ms"`, `"1m30s"`; empty or malformed text gives `default`."""
    m = _SECONDS.match(text)
    if m:
        return float(m.group(1))
    parts = _GO.findall(text)
    if not parts or "".join(a + b for a, b in parts) != text:
        return default
    return sum(float(n) * _UNIT[u] for n, u in parts)


def parse_duration(text: str) -> float | None:
    """`"1h30m"` -> 5400.0, `"2d"` -> 172800.0; None unless the whole text is a duration."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _DURATION_UNIT[u] for n, u in parts)
