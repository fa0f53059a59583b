"""Runs as the REST API shows them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from connect.store.base import CANCELLED, COMPLETED, FAILED, RUNNING, EventRecord, RunRecord, Store
from connect.store.start_gates import SKIPPED, SkippedStart


def rfc3339(ms: int) -> str:
    """Unix milliseconds as RFC 3339 UTC with milliseconds: `2026-01-01T00:00:00.000Z`."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_view(run: RunRecord) -> dict[str, Any]:
    """`output` is the return value when Completed, the error object when Failed, else None."""
    output: Any = None
    if run.status in (COMPLETED, FAILED) and run.output is not None:
        output = msgspec.json.decode(run.output)
    return {
        "run_id": run.run_id,
        "function_id": run.function_id,
        "status": run.status,
        "output": output,
        "event_id": run.event_id,
        "run_started_at": rfc3339(run.started_at_ms),
        "ended_at": None if run.ended_at_ms is None else rfc3339(run.ended_at_ms),
    }


def skipped_view(skip: SkippedStart) -> dict[str, Any]:
    """A run an event would have started, refused by flow control (no such run
    exists): status `Skipped`, and the reason in `skip_reason`."""
    at = rfc3339(skip.at_ms)
    return {
        "run_id": skip.run_id,
        "function_id": skip.function_id,
        "status": SKIPPED,
        "output": None,
        "event_id": skip.event_id,
        "run_started_at": at,
        "ended_at": at,
        "skip_reason": skip.reason,
    }


async def runs_of_event(store: Store, event_id: str) -> list[dict[str, Any]]:
    """`GET /v1/events/{id}/runs`: the runs the event started, then those its
    functions' flow control skipped (rate limit, idempotency, singleton)."""
    runs = [run_view(run) for run in await store.runs_for_event(event_id)]
    return runs + [skipped_view(skip) for skip in await store.skipped_starts(event_id)]


#: The statuses `GET /v1/runs?status=` accepts.
RUN_STATUSES: tuple[str, ...] = (RUNNING, COMPLETED, FAILED, CANCELLED)


async def list_runs(store: Store, status: str | None, function_id: str | None, limit: int) -> list[dict[str, Any]]:
    """`GET /v1/runs`: the newest `limit` runs with `status` (every status when
    None) of `function_id` (every function when None), newest first."""
    runs: list[RunRecord] = []
    for each in (status,) if status is not None else RUN_STATUSES:
        runs += [r for r in await store.runs_with_status(each) if function_id is None or r.function_id == function_id]
    runs.sort(key=lambda r: (r.started_at_ms, r.run_id), reverse=True)
    return [run_view(run) for run in runs[:limit]]


def event_view(event: EventRecord) -> dict[str, Any]:
    """`GET /v1/events/{id}`: the event as it was sent (name, data, user, ts), and when it was received."""
    body: dict[str, Any] = msgspec.json.decode(event.body)
    return {
        "id": event.id,
        "name": event.name,
        "data": body.get("data") or {},
        "user": body.get("user") or {},
        "ts": event.ts,
        "received_at": rfc3339(event.received_at_ms),
    }
