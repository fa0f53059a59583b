"""Debounces and event batches: runs held back in the store until they start.

An event for a function with `debounce` or `batchEvents` starts no run at
once (see `connect.executor.held_starts` for which events are held, and
under which key). It goes to the held start of its (function, key), one row
in the store, and the run starts when that fires:

* **debounce**: the held start keeps the *last* event. Each new event for the
  key replaces it and pushes the start back to `period` after it, but never
  past `timeout` after the first event (when a timeout is set). An event
  whose `ts` is older than the one kept is ignored (events arriving out of
  order never replace a newer one). The run starts with the kept event once
  its time comes.
* **batch**: the held start collects events in the order they were recorded.
  It opens with its first event and starts a run with all of them once
  `max_size` are in (in the very transaction that adds the last one), once
  their JSON reaches `MAX_BATCH_BYTES`, or once `timeout` passed since it
  opened. The run's trigger is the first event; its `events` are all of them.

Flow control at run start (`connect.store.start_gates`), as Inngest applies
it to these runs: an event for a debounce first passes the function's rate
limit or idempotency (`Hold.admit`): over it, the event is recorded as a
skip and joins nothing (nor pushes the debounce back). The run a held start
fires passes the function's throttle and singleton (`Hold.gate`, kept with
the held start: that of a debounce's last event, of a batch's first) in the
transaction that fires it: throttled, its first request waits for its turn;
skipped by a singleton, it is recorded as a skip instead of a run; a
singleton in `cancel` mode cancels the Running run. (A batch may have
neither a rate limit, idempotency nor singleton: registration refuses them.)

A held start is one row (its state, `HeldStart`) and one row per event it
holds (the event's JSON, by position), so adding an event to a batch writes
that event and the small state row, whatever the batch holds already.

What became of each event held is one more row per (event, function), in
`event_holds`: written with the event, given the run's id when its held
start fires, and read back as an `EventHold` by `hold_of` (what
`GET /v1/events/{id}` shows of an event that started no run at once).

Everything here is pure: the store engines call `hold_event` inside the
transaction that records the event (holding the (function, key) row, or its
lock, for the whole decision), and `started_run` inside the one that fires
a held start, so a held start fires once however many processes record
events and fire timers at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec

from connect.store.base import (
    BATCH,
    DEBOUNCE,
    HOLD_HELD,
    HOLD_REPLACED,
    HOLD_STARTED,
    EventHold,
    HeldStart,
    Hold,
    PendingRequest,
    RunRecord,
)
from connect.store.start_gates import encode_gate

#: A batch starts its run once its events' JSON reaches this size, full or not.
MAX_BATCH_BYTES: Final = 10 * 1024 * 1024


class HeldChange(msgspec.Struct, frozen=True):
    """What recording one held event does, in the order an engine applies it:

    1. `fire_before`: a held start of another kind (the function's options
       changed since it opened) starts its run as it stands;
    2. `add`: the event's body is stored at position `position` of the key's
       held events (after deleting the one held, if `replace`: a debounce);
    3. `fire`: the held start, this event included, starts its run now (a
       full batch); otherwise `keep` is stored (None: nothing is held any
       more) when `changed`.
    """

    keep: HeldStart | None
    changed: bool = True
    add: bool = False
    replace: bool = False
    position: int = 0
    fire_before: HeldStart | None = None
    fire: HeldStart | None = None


def hold_event(stored: HeldStart | None, hold: Hold, event_id: str, ts: int, size: int, now_ms: int) -> HeldChange:
    """What recording one held event (`size` bytes of JSON) does to the held
    start of its key (see `HeldChange`). An event older (by `ts`) than the one
    a debounce keeps changes nothing."""
    fire_before: HeldStart | None = None
    if stored is not None and stored.kind != hold.kind:
        fire_before, stored = stored, None
    if hold.kind == DEBOUNCE:
        if stored is None:
            opened = now_ms
        elif ts < stored.last_ts:
            return HeldChange(keep=stored, changed=False)
        else:
            opened = stored.opened_ms
        due = now_ms + hold.period_ms
        if hold.timeout_ms is not None:
            due = min(due, opened + hold.timeout_ms)
        state = _state(hold, event_id, ts, opened, due, 1, size)  # the gate of the event kept
        return HeldChange(keep=state, add=True, replace=stored is not None, fire_before=fire_before)
    if stored is None:
        due = now_ms + (hold.timeout_ms if hold.timeout_ms is not None else 0)
        state = _state(hold, event_id, ts, now_ms, due, 1, size)
    else:
        state = msgspec.structs.replace(stored, size=stored.size + 1, size_bytes=stored.size_bytes + size)
    position = state.size - 1
    if state.size >= hold.max_size or state.size_bytes >= MAX_BATCH_BYTES:
        return HeldChange(keep=None, add=True, position=position, fire_before=fire_before, fire=state)
    return HeldChange(keep=state, add=True, position=position, fire_before=fire_before)


def started_run(held: HeldStart, run_id: str, request_id: str, now_ms: int) -> RunRecord:
    """The run a held start fires: Running, its discovery request pending."""
    return RunRecord(
        run_id=run_id,
        function_id=held.function_id,
        app_name=held.app_name,
        event_id=held.event_id,
        started_at_ms=now_ms,
        max_attempts=held.max_attempts,
        requests=[PendingRequest(request_id)],
    )


class _EventId(msgspec.Struct):
    id: str = ""


_decode_id = msgspec.json.Decoder(_EventId).decode


def event_ids(bodies: list[bytes]) -> list[str]:
    """The ids of the held events whose JSON bodies are `bodies` (the events a
    held start fires with: their `event_holds` rows get its run)."""
    return [_decode_id(body).id for body in bodies]


def hold_of(
    event_id: str,
    row: tuple[str, str, str, int, str | None],
    held: tuple[str, str, int] | None,
) -> EventHold:
    """What became of `event_id` held by one function: its `event_holds` row
    (function id, kind, key, when, run id) and the held start of that
    (function, key) now, if any: (kind, event id it keeps, due)."""
    function_id, kind, key, at_ms, run_id = row
    if run_id is not None:
        return EventHold(function_id, kind, key, at_ms, HOLD_STARTED, run_id=run_id)
    if held is not None and held[0] == kind and (kind == BATCH or held[1] == event_id):
        # A batch's events not started yet are all in its open batch; a
        # debounce holds only the event it keeps.
        return EventHold(function_id, kind, key, at_ms, HOLD_HELD, due_ms=held[2])
    return EventHold(function_id, kind, key, at_ms, HOLD_REPLACED)


def run_events(held: HeldStart, bodies: list[bytes]) -> list[bytes]:
    """The events stored with the run a held start fires (`LoadedRun.batch`),
    given the bodies it held in order: all of a batch's, the trigger first;
    none for a debounce, whose run has its one event as its trigger."""
    return bodies if held.kind == BATCH else []


def _state(hold: Hold, event_id: str, ts: int, opened: int, due: int, size: int, size_bytes: int) -> HeldStart:
    return HeldStart(
        gate=None if hold.gate is None else encode_gate(hold.gate),
        kind=hold.kind,
        function_id=hold.function_id,
        key=hold.key,
        app_name=hold.app_name,
        max_attempts=hold.max_attempts,
        event_id=event_id,
        last_ts=ts,
        opened_ms=opened,
        due_ms=due,
        size=size,
        size_bytes=size_bytes,
    )


@dataclass
class HeldNotes:
    """What one transaction did to held starts, for the notifications sent
    once it commits: the earliest due time written, and whether a batch
    that filled started a run nobody owns yet."""

    due_ms: int | None = None
    started: bool = False

    def wrote(self, due_ms: int) -> None:
        self.due_ms = due_ms if self.due_ms is None else min(self.due_ms, due_ms)
