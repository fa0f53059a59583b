"""Which runs received events start: shared by the executor and by an API
process that records events for executors elsewhere (`connect.api.stored_runs`).

Only the starting of runs lives here. Resuming waits and matching cancel
conditions need the runs in memory, so they stay with the executor.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from connect.executor.held_starts import hold_for
from connect.executor.system_events import FUNCTION_CANCELLED, FUNCTION_FAILED, FUNCTION_FINISHED, invoking_step
from connect.executor.triggers import Target, TriggerIndex
from connect.store.base import DEBOUNCE, EventRecord, Hold, NewEvent, PendingRequest, RunMemo, RunRecord
from connect.store.start_gates import SKIPPED, Invoker, StartGate, admitted, at_fire
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


def plan(index: TriggerIndex, event: Event, now_ms: int) -> tuple[list[RunRecord], list[Hold]]:
    """The runs `event` starts now, and the debounces and batches it goes to
    instead (see `connect.executor.held_starts`), to record with it."""
    runs: list[RunRecord] = []
    holds: list[Hold] = []
    as_dict: dict[str, Any] | None = None
    for target in targets(index, event):
        if target.held:
            info = index.lookup(target.function_id)
            if info is not None and info.held is not None:
                if as_dict is None:
                    as_dict = {
                        "name": event.name,
                        "data": event.data,
                        "id": event.id,
                        "ts": event.ts,
                        "user": event.user,
                    }
                hold = hold_for(info.held, target.function_id, target.app_name, target.max_attempts, as_dict)
                if hold is not None:
                    if info.start_limits is not None:
                        hold = gated_hold(hold, info.start_limits.gate(new_ulid(), event, now_ms))
                    holds.append(hold)
                    continue
        runs.append(new_run(target, event.id, now_ms))
    return runs, holds


def gated_hold(hold: Hold, gate: StartGate | None) -> Hold:
    """`hold` with the gates Inngest applies around a debounce or batch (see
    `connect.store.held_starts`): a debounced event passes the rate limit or
    idempotency before it is held; the run a debounce or batch fires passes
    the throttle and singleton, keyed on this event (kept if it is the one
    the run starts with)."""
    if gate is None:
        return hold
    admit = admitted(gate) if hold.kind == DEBOUNCE else None
    return msgspec.structs.replace(hold, admit=admit, gate=at_fire(gate))


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


def start_gates(
    index: TriggerIndex, runs: list[RunRecord], event: Event, invoker: Invoker | None = None
) -> list[StartGate]:
    """The flow-control gates the runs of functions with throttle, rate limit,
    idempotency or singleton must pass when they are recorded (see `NewEvent.gates`);
    `invoker`, the `step.invoke` step told if its run is refused."""
    gates: list[StartGate] = []
    for run in runs:
        info = index.lookup(run.function_id)
        if info is not None and info.start_limits is not None:
            gate = info.start_limits.gate(run.run_id, event, run.started_at_ms)
            if gate is not None:
                gates.append(gate if invoker is None else msgspec.structs.replace(gate, invoked_by=invoker))
    return gates


def gated_event(
    index: TriggerIndex,
    record: EventRecord,
    event: Event,
    now_ms: int,
    owner: str | None,
    found: list[Target] | None = None,
) -> NewEvent:
    """`record` with what it causes: the runs it starts, gated (see
    `start_gates`), of the functions `found`, or when None of those its
    triggers match, whose debounces and batches hold it instead (see `plan`).

    A run `step.invoke` starts (`found`, an `inngest/function.invoked`
    event) that its gate refuses ends the invoking step at once, with an
    error naming why (see `told_invokers`)."""
    invoker = None
    if found is None:
        runs, holds = plan(index, event, now_ms)
    else:
        runs, holds = [new_run(target, event.id, now_ms) for target in found], []
        step = invoking_step(event)
        invoker = None if step is None else Invoker(*step)
    return NewEvent(record, runs, owner=owner, gates=start_gates(index, runs, event, invoker), holds=holds)


def told_invokers(new: NewEvent) -> list[RunMemo]:
    """Once `new` is recorded: the `step.invoke` steps whose runs its gates
    refused, with the error memo the store gave each (see `NewEvent.tell_invoker`)."""
    skipped = {
        (g.invoked_by.run_id, g.invoked_by.step)
        for g in new.gates
        if g.invoked_by is not None and any(r.run_id == g.run_id and r.status == SKIPPED for r in new.runs)
    }
    return [m for m in new.memos if (m.run_id, m.memo.step_hash) in skipped] if skipped else []


def started(new: NewEvent) -> list[RunRecord]:
    """The runs of `new` its gates let start, once recorded."""
    if not new.gates:
        return new.runs
    return [run for run in new.runs if run.status != SKIPPED]


def event_record(event: Event, now_ms: int) -> EventRecord:
    """The stored form of `event`, received at `now_ms`."""
    return EventRecord(event.id, event.name, event.ts, now_ms, json_encoder.encode(event))
