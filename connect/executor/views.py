"""Runs as the REST API shows them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from connect.store.base import COMPLETED, FAILED, RunRecord


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
