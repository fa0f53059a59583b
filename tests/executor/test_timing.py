from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from connect.executor.retries import MAX_RETRY_AFTER, Backoff, parse_retry_after
from connect.executor.sleeps import MAX_SLEEP, wake_time
from protocol.durations import parse_duration
from protocol.payloads import Opcode

NOW = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff = Backoff(1.0, 60.0, random.Random(7))
    for attempt, ceiling in [(0, 1), (1, 2), (2, 4), (5, 32), (6, 60), (40, 60), (1000, 60)]:
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("garbage", None),
        ("30", 30.0),
        ("0", 1.0),
        ("999999", MAX_RETRY_AFTER),
        ("2026-01-01T00:00:10.000Z", 10.0),
        ("2026-01-01T00:00:10", 10.0),
        ("2025-12-31T00:00:00Z", 1.0),
        ("Thu, 01 Jan 2026 00:01:00 GMT", 60.0),
    ],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def sleep_op(name: str = "", opts: dict[str, object] | None = None) -> Opcode:
    return Opcode(op="Sleep", id="h", name=name, opts=opts)


def test_sleep_wake_times() -> None:
    assert wake_time(sleep_op("2026-01-01T00:00:05.500Z"), NOW) == NOW + 5.5
    assert wake_time(sleep_op("1h30m"), NOW) == NOW + 5400
    assert wake_time(sleep_op("x", {"duration": "2d"}), NOW) == NOW + 2 * 86400
    assert wake_time(sleep_op("2099-01-01T00:00:00Z"), NOW) == NOW + MAX_SLEEP
    with pytest.raises(ValueError, match="no wake time"):
        wake_time(sleep_op("soon"), NOW)


def test_parse_duration() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1w") == 7 * 86400
    assert parse_duration("10") is None
    assert parse_duration("1h junk") is None
