"""Runs as the REST API shows them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from connect.store.base import COMPLETED, FAILED, EventHold, RunFilter, RunRecord, Store
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


async def runs_of_event(store: Store, event_id: str, holds: list[EventHold] | None = None) -> list[dict[str, Any]]:
    """`GET /v1/events/{id}/runs`: the runs the event started, then those a
    debounce or batch that held it started (a batch's run is its first
    event's; `holds`: `store.event_holds(event_id)`, read if not given), then
    those its functions' flow control skipped (rate limit, idempotency, singleton)."""
    started = await store.runs_for_event(event_id)
    listed = {run.run_id for run in started}
    for hold in await store.event_holds(event_id) if holds is None else holds:
        if hold.run_id is not None and hold.run_id not in listed:
            run = await store.get_run(hold.run_id)
            if run is not None:
                started.append(run)
                listed.add(run.run_id)
    runs = [run_view(run) for run in started]
    return runs + [skipped_view(skip) for skip in await store.skipped_starts(event_id)]


def hold_view(hold: EventHold) -> dict[str, Any]:
    """How a function's debounce or batch held an event: `{"function_id",
    "kind", "key", "status", "held_at", "due_at", "run_id"}`. `status` is
    `held` (its run starts at `due_at`, or sooner when a batch fills),
    `started` (`run_id` is the run, listed in the event's runs) or `replaced`
    (a debounce started its run with a later event instead); `key` is the
    value of the debounce's or batch's key (null: no key)."""
    return {
        "function_id": hold.function_id,
        "kind": hold.kind,
        "key": hold.key or None,
        "status": hold.status,
        "held_at": rfc3339(hold.at_ms),
        "due_at": None if hold.due_ms is None else rfc3339(hold.due_ms),
        "run_id": hold.run_id,
    }


#: Where a listing stops: the (start in Unix ms, run id) of the last run listed.
Position = tuple[int, str]


class RunPage(msgspec.Struct, frozen=True):
    """One page of `GET /v1/runs`: the runs as the API shows them, newest
    first, and where the next page starts (None: this page is the last)."""

    runs: list[dict[str, Any]]
    next: Position | None


async def list_runs(store: Store, query: RunFilter) -> RunPage:
    """`GET /v1/runs`: the runs `query` selects, newest first, with the starts
    flow control skipped among them (status `Skipped`) unless `query.status`
    names another status. One run more than the page is read, so the last
    page says so (`next` None) instead of leading to an empty one."""
    ahead = msgspec.structs.replace(query, limit=query.limit + 1)
    found: list[tuple[Position, dict[str, Any]]] = []
    if query.status != SKIPPED:
        found += [((run.started_at_ms, run.run_id), run_view(run)) for run in await store.list_runs(ahead)]
    if query.status in (None, SKIPPED):
        found += [((skip.at_ms, skip.run_id), skipped_view(skip)) for skip in await store.list_skipped(ahead)]
        # Both lists come newest first; the page is the newest of the two together.
        found.sort(key=lambda item: item[0], reverse=True)
    page = found[: query.limit]
    more = len(found) > query.limit and bool(page)
    return RunPage([view for _, view in page], page[-1][0] if more else None)
