"""The feed of events recorded elsewhere: seen ids, the cursor and its lookback."""

from __future__ import annotations

import pytest

from connect.executor.feed import EventFeed
from connect.store.base import EventRecord


def record(event_id: str, received_ms: int) -> EventRecord:
    return EventRecord(event_id, "e", received_ms, received_ms, b"{}")


def test_ids_seen_here_are_not_read_again() -> None:
    feed = EventFeed()
    feed.saw("a")
    assert feed.unseen(["a", "b", "b", "", "c"]) == ["b", "c"]


def test_records_read_back_advance_the_cursor_and_are_taken_once() -> None:
    feed = EventFeed(lookback_ms=1_000)
    feed.start_at(10_000)
    assert feed.catch_up_start() == 9_000
    assert [r.id for r in feed.take([record("a", 10_500), record("b", 12_000)])] == ["a", "b"]
    assert feed.catch_up_start() == 11_000
    # A catch-up reads them again within the lookback: nothing new.
    assert feed.take([record("b", 12_000), record("c", 11_900)]) == [record("c", 11_900)]
    assert feed.cursor_ms == 12_000  # an older commit never moves the cursor back


def test_a_late_watch_moves_the_next_start_back_once() -> None:
    feed = EventFeed(lookback_ms=1_000)
    feed.caught_up(20_000)
    feed.want_from(15_000)
    feed.want_from(16_000)
    assert feed.catch_up_start() == 14_999  # events received at 15_000 are read too
    assert feed.catch_up_start() == 19_000


def test_the_seen_set_is_bounded_oldest_first() -> None:
    feed = EventFeed(seen_limit=2)
    for event_id in "abc":
        feed.saw(event_id)
    assert feed.unseen(["a", "b", "c"]) == ["a"]


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        EventFeed(lookback_ms=-1)
    with pytest.raises(ValueError):
        EventFeed(seen_limit=0)
