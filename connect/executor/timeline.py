"""A run's steps as the REST API shows them (`GET /v1/runs/{id}/steps`).

Each step stored, in the order its result was stored, then (while the run
is Running) the steps under way: requests a worker is running or will run,
and sleeps, waits and invokes not ended yet. A step is

    {"id", "name", "kind", "status", "attempts", "started_at", "ended_at",
     "due_at", "ended_by", "output", "error"}

`id` is the hashed step id the SDKs use; `name` the id its author wrote
(null when not known: a step stored by an older release, or a request that
has not answered yet); `kind` is `run`, `send_event` (a `step.send_event`
of this platform's SDK or the TypeScript SDK: the official Python SDK's is a
plain `step.run` on the wire, shown as `run`), `sleep`, `wait` or `invoke`;
`status` `Completed`, `Failed`, `Cancelled` (a sleep, wait or invoke the
run's end cut short), `Running` (a worker has it, or will), `Sleeping` or
`Waiting`; `attempts` the attempts a step a worker ran took (null when not
known: a step stored by an older release; 0 for the others); times
ISO-8601 UTC or null (see `connect.executor.step_infos` for where each
comes from). `due_at` is when a sleep ends, or a wait or an invoke times
out; `ended_by` says how it ended: `woke` (a sleep), `event` or `timeout`
(a wait), `returned`, `error` or `timeout` (an invoke), `cancelled` (the
run was cancelled while it was under way) or `run_ended` (the run ended
otherwise meanwhile), null for steps a worker ran and for steps under way.
`output` is a run step's or an invoke's value (a wait's matched event),
`error` the error object of a step that failed.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from connect.executor.step_infos import ulid_ms
from connect.executor.views import rfc3339
from connect.store.base import (
    DISCOVERY,
    RUNNING,
    STEP_RUN,
    STEP_SEND_EVENT,
    WAIT_EVENT,
    WAIT_INVOKE,
    WAIT_SLEEP,
    RunRecord,
    StepInfo,
    StepMemo,
    Store,
)

#: The error an invoke gets when its child did not finish in time.
_INVOKE_TIMEOUT: Final = "InngestInvokeTimeoutError"


def _time(ms: int) -> str | None:
    return rfc3339(ms) if ms > 0 else None


def stored_step(memo: StepMemo) -> dict[str, Any]:
    info = memo.info or StepInfo(kind="")
    result: Any = msgspec.json.decode(memo.result)
    kind = info.kind or None
    output: Any = None
    error: Any = None
    ended_by: str | None = None
    status = "Completed"
    if info.ended_by:
        # Cut short by the run's end: no result of its own.
        ended_by, status = info.ended_by, "Cancelled"
    elif kind == WAIT_SLEEP:
        ended_by = "woke"
    elif kind == WAIT_EVENT:
        ended_by = "timeout" if result is None else "event"
        output = result
    elif isinstance(result, dict) and "error" in result:
        error = result["error"]
        if kind == WAIT_INVOKE:
            timed_out = isinstance(error, dict) and error.get("name") == _INVOKE_TIMEOUT
            ended_by = "timeout" if timed_out else "error"
    else:
        output = result.get("data") if isinstance(result, dict) else result
        if kind == WAIT_INVOKE:
            ended_by = "returned"
    return {
        "id": memo.step_hash,
        "name": info.name or None,
        "kind": kind,
        "status": "Failed" if error is not None else status,
        "attempts": info.attempts if info.attempts or kind not in (STEP_RUN, STEP_SEND_EVENT) else None,
        "started_at": _time(info.started_ms),
        "ended_at": _time(info.ended_ms),
        "due_at": _time(info.due_ms),
        "ended_by": ended_by,
        "output": output,
        "error": error,
    }


def steps_under_way(run: RunRecord, stored: set[str]) -> list[dict[str, Any]]:
    """The steps of a Running run that have no result yet."""
    if run.status != RUNNING:
        return []
    steps: list[dict[str, Any]] = []
    for request in run.requests:
        if request.step_id == DISCOVERY or request.step_id in stored:
            continue
        steps.append(
            {
                "id": request.step_id,
                "name": None,
                "kind": STEP_RUN,
                "status": "Running",
                "attempts": request.attempt + 1,
                "started_at": _time(max(ulid_ms(request.request_id), request.wake_at_ms)),
                "ended_at": None,
                "due_at": None,
                "ended_by": None,
                "output": None,
                "error": None,
            }
        )
    for item in run.waiting:
        if item.step in stored:
            continue
        steps.append(
            {
                "id": item.step,
                "name": item.name or None,
                "kind": item.kind,
                "status": "Sleeping" if item.kind == WAIT_SLEEP else "Waiting",
                "attempts": 0,
                "started_at": _time(item.since_ms),
                "ended_at": None,
                "due_at": _time(item.due_ms),
                "ended_by": None,
                "output": None,
                "error": None,
            }
        )
    return steps


def timeline(run: RunRecord, memos: list[StepMemo]) -> list[dict[str, Any]]:
    """The steps of `run` whose results are `memos` (in the order stored), then those under way."""
    return [stored_step(memo) for memo in memos] + steps_under_way(run, {memo.step_hash for memo in memos})


async def run_timeline(store: Store, run_id: str) -> list[dict[str, Any]] | None:
    """`GET /v1/runs/{id}/steps`: the run's timeline; None for no such run."""
    run = await store.get_run(run_id)
    if run is None:
        return None
    return timeline(run, await store.run_steps(run_id))
