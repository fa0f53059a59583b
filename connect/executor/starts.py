"""Which runs received events start: shared by the executor and by an API
process that records events for executors elsewhere (`connect.api.stored_runs`).

Only the starting of runs lives here. Resuming waits and matching cancel
conditions need the runs in memory, so they stay with the executor.
"""

from __future__ import annotations

from typing import Final

from connect.executor.system_events import FUNCTION_CANCELLED, FUNCTION_FAILED, FUNCTION_FINISHED
from connect.executor.triggers import Target, TriggerIndex
from connect.store.base import EventRecord, NewEvent, PendingRequest, RunRecord
from connect.store.start_gates import SKIPPED, StartGate
from protocol.ids import new_ulid
from protocol.payloads import Event, IncomingEvent, json_encoder

_END_EVENTS: Final = frozenset({FUNCTION_FINISHED, FUNCTION_FAILED, FUNCTION_CANCELLED})


def received(events: list[IncomingEvent], now_ms: int) -> list[Event]:
    """Events as sent, completed: a new id and `ts` = now where the sender gave none.
    Raises ValueError for an event without a name."""
    built: list[Event] = []
    for incoming in events:
        if not incoming.name:
            raise ValueError("an event needs a non-empty name")
        built.append(
            Event(
                name=incoming.name,
                data=incoming.data or {},
                id=incoming.id or new_ulid(),
                ts=incoming.ts or now_ms,
                user=incoming.user or {},
            )
        )
    return built


def targets(index: TriggerIndex, event: Event) -> list[Target]:
    """The functions `event` starts. A function never triggers itself with the
    end of its own run, which would start runs forever."""
    found = index.match(event)
    if event.name in _END_EVENTS:
        source = event.data.get("function_id")
        found = [t for t in found if t.function_id != source]
    return found


def new_run(target: Target, event_id: str, now_ms: int) -> RunRecord:
    """A Running run of `target` with its first (discovery) request pending."""
    return RunRecord(
        run_id=new_ulid(),
        function_id=target.function_id,
        app_name=target.app_name,
        event_id=event_id,
        started_at_ms=now_ms,
        max_attempts=target.max_attempts,
        requests=[PendingRequest(new_ulid())],
    )


def new_runs(
    index: TriggerIndex, found: list[Target], event: Event, now_ms: int
) -> tuple[list[RunRecord], list[StartGate]]:
    """The runs `event` starts of the functions `found`, and the flow-control
    gates those of functions with throttle, rate limit, idempotency or
    singleton must pass when they are recorded (see `NewEvent.gates`)."""
    runs = [new_run(target, event.id, now_ms) for target in found]
    gates: list[StartGate] = []
    for run in runs:
        info = index.lookup(run.function_id)
        if info is not None and info.start_limits is not None:
            gate = info.start_limits.gate(run.run_id, event)
            if gate is not None:
                gates.append(gate)
    return runs, gates


def gated_event(
    index: TriggerIndex, record: EventRecord, event: Event, found: list[Target], now_ms: int, owner: str | None
) -> NewEvent:
    """`record` with the runs it starts of `found`, gated (see `new_runs`)."""
    runs, gates = new_runs(index, found, event, now_ms)
    return NewEvent(record, runs, owner=owner, gates=gates)


def started(new: NewEvent) -> list[RunRecord]:
    """The runs of `new` its gates let start, once recorded."""
    if not new.gates:
        return new.runs
    return [run for run in new.runs if run.status != SKIPPED]


def event_record(event: Event, now_ms: int) -> EventRecord:
    """The stored form of `event`, received at `now_ms`."""
    return EventRecord(event.id, event.name, event.ts, now_ms, json_encoder.encode(event))
