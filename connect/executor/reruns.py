"""Rerun a run (`POST /v1/runs/{id}/rerun`): a new run of the same function
for a copy of its triggering event.

The copy has a new id (a stored event id starts nothing twice), the same
name, data and user, and the time of the rerun; it starts the function of
the run alone, whatever else its name triggers, through the same flow
control as any start (a rate limit may skip it: the answer says so). A run
a batch started is rerun with its first event only.
"""

from __future__ import annotations

from typing import Any

import msgspec

from connect.executor.triggers import FunctionInfo
from connect.store.base import EventRecord, NewEvent, RunRecord
from protocol.ids import new_ulid
from protocol.payloads import Event

_decode_event = msgspec.json.Decoder(Event).decode


class RerunRefused(Exception):
    """The run cannot be rerun now: answered 409 with the reason."""


def rerun_event(run: RunRecord, record: EventRecord | None, info: FunctionInfo | None, now_ms: int) -> Event:
    """The event to start the rerun with; raises `RerunRefused`."""
    if info is None:
        raise RerunRefused(f"function {run.function_id} is not registered now: a worker serving it must connect first")
    if record is None:
        raise RerunRefused(f"run {run.run_id}'s event {run.event_id} is no longer stored (history retention)")
    event = _decode_event(record.body)
    return Event(name=event.name, data=event.data, id=new_ulid(), ts=now_ms, user=event.user)


def rerun_view(rerun_of: str, new: NewEvent) -> dict[str, Any]:
    """`{"run_id", "event_id", "status", "rerun_of"}` of the run `new` started
    (status `Running`, or `Skipped` when its flow control refused it)."""
    [run] = new.runs
    return {"run_id": run.run_id, "event_id": new.event.id, "status": run.status, "rerun_of": rerun_of}
