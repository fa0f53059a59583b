"""The worker's two clocks, injected so tests can drive time.

Wall time (`time`) stamps what the wire and the leases speak in (heartbeat
and lease deadlines, reply ages); monotonic time (`monotonic`) measures
spans the wall clock must not distort (a drain's deadline, stall probes).
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Clock:
    time: Callable[[], float] = _time.time
    monotonic: Callable[[], float] = _time.monotonic


SYSTEM_CLOCK = Clock()
