"""Interval strings as they travel in GATEWAY_CONNECTION_READY.

Every official SDK parses whole seconds with an `s` suffix (`"10s"`), and
one of them accepts nothing else, so that is the only form we emit.
"""

from __future__ import annotations

import math
import re

_SECONDS = re.compile(r"^(\d+)s$")
_GO = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


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
