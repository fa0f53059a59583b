"""The events the executor itself emits, with the shapes official SDKs expect.

* `inngest/function.finished` when any run ends: `result` on success, `error`
  otherwise, and `correlation_id` when the run was invoked (how the invoking
  run is resumed).
* `inngest/function.failed` when a run fails; an `on_failure` handler is a
  function triggered by it (`event.data.function_id == '<fq id>'`).
* `inngest/function.cancelled` when a run is cancelled.
* `inngest/function.invoked` starts the run `step.invoke` asked for; its data
  is the invoke payload plus `_inngest` (who invoked it, and the correlation id).

These are real events: stored, visible under `/v1/events/{id}/runs`, and
matched against triggers and waits like any other. Their ids are derived
from the run (or the invoking step), so emitting one twice stores it once.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from ulid import ULID

from protocol.payloads import Event

FUNCTION_FINISHED: Final = "inngest/function.finished"
FUNCTION_FAILED: Final = "inngest/function.failed"
FUNCTION_CANCELLED: Final = "inngest/function.cancelled"
FUNCTION_INVOKED: Final = "inngest/function.invoked"

#: The error an invoking run receives when the invoked run was cancelled.
CANCELLED_ERROR: Final = {
    "name": "FunctionCancelledError",
    "message": "the invoked function run was cancelled",
}


def derived_id(base: str, *parts: str) -> str:
    """A ULID that is a pure function of its inputs.

    Its time part is `base`'s when `base` is a ULID (so derived ids sort
    near what they derive from) and its random part a hash of everything.
    """
    try:
        millis = ULID.from_str(base).milliseconds
    except (ValueError, TypeError):
        millis = 0
    return derived_id_at(millis, base, *parts)


def derived_id_at(millis: int, *parts: str) -> str:
    """A ULID with time part `millis` and a random part hashed from `parts`."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return str(ULID.from_bytes(max(millis, 0).to_bytes(6, "big") + digest[:10]))


def correlation_id(run_id: str, step_hash: str) -> str:
    return f"{run_id}.{step_hash}"


def invoking_step(event: Event) -> tuple[str, str] | None:
    """The (run id, step hash) of the `step.invoke` step that `event`, an
    `inngest/function.invoked`, starts a run for; None for any other event."""
    if event.name != FUNCTION_INVOKED:
        return None
    meta = event.data.get("_inngest")
    correlation = meta.get("correlation_id") if isinstance(meta, dict) else None
    if not isinstance(correlation, str):
        return None
    run_id, dot, step_hash = correlation.partition(".")  # a run id (a ULID) has no dot
    return (run_id, step_hash) if dot and run_id and step_hash else None


def invoked_event(
    *,
    parent_run_id: str,
    parent_function_id: str,
    parent_app: str,
    step_hash: str,
    function_id: str,
    data: dict[str, Any] | None,
    expire_ms: int,
    now_ms: int,
) -> Event:
    payload = dict(data or {})
    payload["_inngest"] = {
        "fn_id": function_id,
        "correlation_id": correlation_id(parent_run_id, step_hash),
        "expire": expire_ms,
        "source_app_id": parent_app,
        "source_fn_id": parent_function_id,
        "name": FUNCTION_INVOKED,
    }
    return Event(
        name=FUNCTION_INVOKED,
        data=payload,
        id=derived_id(parent_run_id, "invoke", step_hash),
        ts=now_ms,
    )


def end_events(
    *,
    run_id: str,
    function_id: str,
    trigger: Event,
    status: str,
    result: Any = None,
    error: dict[str, Any] | None = None,
    cancelled: bool = False,
    now_ms: int,
) -> list[Event]:
    """`function.finished`, plus `function.failed` or `function.cancelled` when it applies."""
    base: dict[str, Any] = {
        "function_id": function_id,
        "run_id": run_id,
        "event": _as_dict(trigger),
        "events": [_as_dict(trigger)],
    }
    correlation = None
    if trigger.name == FUNCTION_INVOKED:
        meta = trigger.data.get("_inngest")
        if isinstance(meta, dict) and isinstance(meta.get("correlation_id"), str):
            correlation = meta["correlation_id"]
    finished = dict(base)
    if error is None:
        finished["result"] = result
    else:
        finished["error"] = error
    if correlation is not None:
        finished["correlation_id"] = correlation
    finished["_inngest"] = {"status": status}
    events = [Event(name=FUNCTION_FINISHED, data=finished, id=derived_id(run_id, "finished"), ts=now_ms)]
    if error is not None and not cancelled:
        # The failed event's id is the run id, as the reference executor does.
        events.append(Event(name=FUNCTION_FAILED, data={**base, "error": error}, id=run_id, ts=now_ms))
    if cancelled:
        events.append(
            Event(
                name=FUNCTION_CANCELLED,
                data={**base, "error": error},
                id=derived_id(run_id, "cancelled"),
                ts=now_ms,
            )
        )
    return events


def _as_dict(event: Event) -> dict[str, Any]:
    return {"name": event.name, "data": event.data, "id": event.id, "ts": event.ts, "user": event.user}
