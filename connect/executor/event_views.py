"""Events as the REST API shows them (`GET /v1/events`, `GET /v1/events/{id}`),
and the event a replay sends again."""

from __future__ import annotations

from typing import Any

import msgspec

from connect.executor.views import Position, hold_view, rfc3339, runs_of_event
from connect.store.base import EventRecord, Store
from protocol.payloads import Event, IncomingEvent

_decode_event = msgspec.json.Decoder(Event).decode


class EventPage(msgspec.Struct, frozen=True):
    """One page of `GET /v1/events`, newest first, and where the next starts (None: the last page)."""

    events: list[dict[str, Any]]
    next: Position | None


def event_view(record: EventRecord) -> dict[str, Any]:
    """`{"id", "name", "data", "user", "ts", "received_at"}`: `ts` is the time the
    sender gave it (or its arrival), `received_at` when it was stored."""
    event = _decode_event(record.body)
    return {
        "id": record.id,
        "name": record.name,
        "data": event.data,
        "user": event.user,
        "ts": rfc3339(record.ts),
        "received_at": rfc3339(record.received_at_ms),
    }


async def list_events(store: Store, name: str | None, older_than: Position | None, limit: int) -> EventPage:
    """`GET /v1/events`: one event more than the page is read, so the last page says so."""
    found = await store.list_events(name, older_than, limit + 1)
    page = found[:limit]
    more = len(found) > limit and bool(page)
    return EventPage([event_view(e) for e in page], (page[-1].received_at_ms, page[-1].id) if more else None)


async def event_detail(store: Store, event_id: str) -> dict[str, Any] | None:
    """`GET /v1/events/{id}`: the event with `runs` (as `GET /v1/events/{id}/runs`),
    `held` (the debounces and batches that held it, see `hold_view`: a held
    event has matched though no run has started yet) and `matched`, false
    when it started no run, no function held it and flow control skipped
    none; None when no such event is stored."""
    record = await store.get_event(event_id)
    if record is None:
        return None
    holds = await store.event_holds(event_id)
    runs = await runs_of_event(store, event_id, holds)
    return {
        **event_view(record),
        "runs": runs,
        "held": [hold_view(hold) for hold in holds],
        "matched": bool(runs) or bool(holds),
    }


async def replay_of(store: Store, event_id: str) -> IncomingEvent | None:
    """The stored event as a new one to send: same name, data and user, a new
    id and the time of sending (None when no such event is stored)."""
    record = await store.get_event(event_id)
    if record is None:
        return None
    event = _decode_event(record.body)
    return IncomingEvent(name=event.name, data=event.data, user=event.user or None)
