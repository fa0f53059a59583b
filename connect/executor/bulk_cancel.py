"""Cancel many runs at once (`POST /v1/cancellations`, as Inngest's).

Every Running run of one function started in a time range, and whose
triggering event satisfies the CEL `if` when one is given, is flagged for
cancellation as `POST /v1/runs/{id}/cancel` does (a step already on a
worker finishes; nothing after it runs). The runs are read a page of
`PAGE` at a time, newest first; a run that ends meanwhile is not counted.

A dry run (`Cancellation.dry_run`) reads the same runs and flags none: its
count is how many a cancellation sent now would flag (runs that start or end
before it is sent change that number).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import msgspec

from connect.executor.expressions import Expression
from connect.store.base import RUNNING, RunFilter, Store

#: Runs read at a time.
PAGE: Final = 500


class Cancellation(msgspec.Struct, frozen=True):
    """Which runs to cancel: `function_id`'s, started at or after
    `started_after_ms` and before `started_before_ms` (Unix ms), whose event
    `expression` holds for (None: every one). `dry_run`: count them, cancel none."""

    function_id: str
    started_after_ms: int | None = None
    started_before_ms: int | None = None
    expression: Expression | None = None
    dry_run: bool = False


async def cancel_matching(store: Store, cancellation: Cancellation, cancel: Callable[[str], Awaitable[bool]]) -> int:
    """Flag every run `cancellation` selects with `cancel(run_id)` (True when it
    was flagged now); how many were. A dry run calls no `cancel` and counts
    every run selected."""
    count = 0
    older_than: tuple[int, str] | None = None
    while True:
        page = await store.list_runs(
            RunFilter(
                status=RUNNING,
                function_id=cancellation.function_id,
                started_from_ms=cancellation.started_after_ms,
                started_before_ms=cancellation.started_before_ms,
                older_than=older_than,
                limit=PAGE,
            )
        )
        for run in page:
            if cancellation.expression is not None:
                event = await store.get_event(run.event_id)
                if event is None or not cancellation.expression.matches(msgspec.json.decode(event.body)):
                    continue
            if cancellation.dry_run or await cancel(run.run_id):
                count += 1
        if len(page) < PAGE:
            return count
        older_than = (page[-1].started_at_ms, page[-1].run_id)
