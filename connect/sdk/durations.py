"""How times and durations are written on the wire.

Durations (wait and invoke timeouts) are strings like ``"90s"`` or ``"1h"``;
instants (sleep wake times, ``retry-after``) are ISO-8601 UTC with milliseconds.
"""

from __future__ import annotations

import datetime

from connect.sdk.errors import FunctionConfigError

_UNITS = (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def to_duration_string(value: int | datetime.timedelta) -> str:
    """Milliseconds or a ``timedelta`` as ``<n><unit>`` with the largest exact unit.

    The value must be a whole number of seconds and at least one second, because
    the executor's duration parser has no smaller unit; anything else raises
    ``FunctionConfigError``. 90000 ms → ``"90s"``, 3600000 → ``"1h"``, 7 days → ``"1w"``.
    """
    if isinstance(value, bool) or not isinstance(value, int | datetime.timedelta):
        raise FunctionConfigError(f"a duration must be int milliseconds or a timedelta, got {value!r}")
    micros = (
        value * 1000
        if isinstance(value, int)
        else (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    )
    if micros < 1_000_000 or micros % 1_000_000:
        raise FunctionConfigError(f"a duration must be a whole number of seconds and at least 1s, got {value!r}")
    seconds = micros // 1_000_000
    for unit, size in _UNITS:
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise AssertionError("unreachable: every whole number of seconds divides by 1")


def to_iso_utc(moment: datetime.datetime) -> str:
    """``2026-11-23T08:23:33.642Z``: UTC, millisecond precision. A naive datetime counts as local time."""
    utc = moment.astimezone(datetime.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
