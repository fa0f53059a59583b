"""The WHERE and ORDER BY of a run listing (`Store.list_runs`, `Store.list_skipped`).

Both backends build the same conditions from a `RunFilter`; only the
placeholders differ (`?` for SQLite, `$n` for PostgreSQL) and PostgreSQL
compares run ids byte by byte (`COLLATE "C"`), the order SQLite sorts text
in. The page boundary is a row-value comparison on (start, run id), which
both engines answer from the indexes on those two columns
(`runs_by_start`, `runs_by_function_start`, `runs_by_status_start`).
"""

from __future__ import annotations

from collections.abc import Callable

from connect.store.base import RunFilter


def listing(
    query: RunFilter,
    *,
    start: str,
    placeholder: Callable[[int], str],
    collate: str = "",
    with_status: bool = True,
) -> tuple[str, list[object]]:
    """` WHERE ... ORDER BY ... LIMIT ...` for `query`, and its parameters.

    `start` is the column holding the start (Unix ms); `placeholder(n)` the
    n-th parameter (from 1); `collate` what follows `run_id` to order it
    byte-wise. `with_status`: the table has a `status` column to filter on."""
    conditions: list[str] = []
    params: list[object] = []

    def param(value: object) -> str:
        params.append(value)
        return placeholder(len(params))

    if with_status and query.status is not None:
        conditions.append(f"status = {param(query.status)}")
    if query.function_id is not None:
        conditions.append(f"function_id = {param(query.function_id)}")
    if query.started_from_ms is not None:
        conditions.append(f"{start} >= {param(query.started_from_ms)}")
    if query.started_before_ms is not None:
        conditions.append(f"{start} < {param(query.started_before_ms)}")
    if query.older_than is not None:
        at_ms, run_id = query.older_than
        conditions.append(f"({start}, run_id{collate}) < ({param(at_ms)}, {param(run_id)})")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    limit = param(max(0, query.limit))
    return f"{where} ORDER BY {start} DESC, run_id{collate} DESC LIMIT {limit}", params
