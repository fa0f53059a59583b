"""Function options beyond triggers and retries: cancellation and timeouts.

Each validates itself on construction (``FunctionConfigError`` for a bad
value) and knows its registration shape.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from connect.sdk.durations import to_duration_string
from connect.sdk.errors import FunctionConfigError

Duration = int | datetime.timedelta  # int = milliseconds


@dataclass(frozen=True)
class Cancel:
    """Cancel a run when an event named ``event`` arrives.

    ``if_exp`` is an optional CEL condition over ``event`` (the run's
    triggering event) and ``async`` (the incoming one), e.g.
    ``"async.data.order_id == event.data.order_id"``. ``timeout`` (ms or a
    ``timedelta``, whole seconds) limits how long after the run starts the
    condition applies. A cancelled run stops at its next step boundary.
    """

    event: str
    if_exp: str | None = None
    timeout: Duration | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event.strip():
            raise FunctionConfigError("Cancel.event must be a non-empty event name")
        if self.if_exp is not None and (not isinstance(self.if_exp, str) or not self.if_exp.strip()):
            raise FunctionConfigError("Cancel.if_exp must be a non-empty string or None")
        if self.timeout is not None:
            to_duration_string(self.timeout)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"event": self.event}
        if self.if_exp is not None:
            wire["if"] = self.if_exp
        if self.timeout is not None:
            wire["timeout"] = to_duration_string(self.timeout)
        return wire


@dataclass(frozen=True)
class Timeouts:
    """Limits on a run's life; a run past one is cancelled.

    ``start``: how long a run may wait for a worker to begin it.
    ``finish``: how long a run may take from start to end, sleeps and waits
    included. Each is ms or a ``timedelta`` (whole seconds), or None for no limit.
    """

    start: Duration | None = None
    finish: Duration | None = None

    def __post_init__(self) -> None:
        for value in (self.start, self.finish):
            if value is not None:
                to_duration_string(value)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {}
        if self.start is not None:
            wire["start"] = to_duration_string(self.start)
        if self.finish is not None:
            wire["finish"] = to_duration_string(self.finish)
        return wire
