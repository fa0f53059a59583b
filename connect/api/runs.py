"""`GET /v1/runs`: runs newest first, filtered by status, function and start
time; `GET /v1/runs/{id}`: one run with its `steps`; `POST /v1/runs/{id}/cancel`: cancel it;
`GET /v1/runs/{id}/steps`: one run's step timeline (`connect.executor.timeline`);
`POST /v1/runs/{id}/rerun`: a new run of its function (`connect.executor.reruns`).

Query: `status` (one of `STATUSES`, any case), `function` (a function id as
`GET /v1/functions` lists it), `from` / `to` (ISO-8601; a start at or after
`from` and before `to`), `limit` and `cursor` (see `connect.api.paging`).
Answer: `{"data": [run, ...], "cursor": next page or null}`, each run as
`GET /v1/runs/{id}` shows it. Starts that flow control skipped are listed
among the runs with status `Skipped` and their `skip_reason`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connect.api import paging
from connect.api.errors import error
from connect.executor.reruns import RerunRefused
from connect.executor.views import RunPage
from connect.store.base import CANCELLED, COMPLETED, FAILED, RUNNING, RunFilter
from connect.store.start_gates import SKIPPED

#: The statuses a run is shown with, and `?status=` takes.
STATUSES: Final = (RUNNING, COMPLETED, FAILED, CANCELLED, SKIPPED)
_BY_NAME: Final = {status.lower(): status for status in STATUSES}

#: Answers why a request is refused (401), or None to serve it.
Guard = Callable[[Request], Response | None]


class RunLister(Protocol):
    async def get_run(self, run_id: str) -> dict[str, Any] | None: ...
    async def cancel_run(self, run_id: str) -> dict[str, Any] | None: ...
    async def list_runs(self, query: RunFilter) -> RunPage: ...
    async def run_timeline(self, run_id: str) -> list[dict[str, Any]] | None: ...
    async def rerun(self, run_id: str) -> dict[str, Any] | None: ...


def run_filter(params: Mapping[str, str]) -> RunFilter:
    """The `RunFilter` a query string asks for; raises `paging.BadQuery`."""
    status = params.get("status") or None
    if status is not None:
        if status.lower() not in _BY_NAME:
            raise paging.BadQuery(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        status = _BY_NAME[status.lower()]
    started_from = paging.time_ms("from", params.get("from"))
    started_before = paging.time_ms("to", params.get("to"))
    if started_from is not None and started_before is not None and started_from > started_before:
        raise paging.BadQuery("from must not be later than to")
    return RunFilter(
        status=status,
        function_id=params.get("function") or None,
        started_from_ms=started_from,
        started_before_ms=started_before,
        older_than=paging.decode_cursor(params.get("cursor")),
        limit=paging.page_limit(params.get("limit")),
    )


def routes(runs: RunLister, guard: Guard) -> list[Route]:
    async def list_runs(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        try:
            query = run_filter(request.query_params)
        except paging.BadQuery as exc:
            return error(400, str(exc))
        page = await runs.list_runs(query)
        cursor = None if page.next is None else paging.encode_cursor(page.next)
        return JSONResponse({"data": page.runs, "cursor": cursor})

    async def get_run(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        run_id = request.path_params["run_id"]
        run = await runs.get_run(run_id)
        if run is None:
            return error(404, f"run {run_id} not found")
        # With its timeline, as `GET /v1/runs/{id}/steps` gives it.
        return JSONResponse({"data": {**run, "steps": await runs.run_timeline(run_id) or []}})

    async def cancel_run(request: Request) -> Response:
        """200 with the run once Cancelled; 202 while a step that was running
        finishes (the run stops right after it); 409 if it had already ended."""
        if (denied := guard(request)) is not None:
            return denied
        run_id = request.path_params["run_id"]
        run = await runs.cancel_run(run_id)
        if run is None:
            return error(404, f"run {run_id} not found")
        if run["status"] in (COMPLETED, FAILED):
            return error(409, f"run {run_id} already ended: {run['status']}", data=run)
        return JSONResponse({"data": run}, status_code=200 if run["status"] == CANCELLED else 202)

    async def run_steps(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        run_id = request.path_params["run_id"]
        steps = await runs.run_timeline(run_id)
        if steps is None:
            return error(404, f"run {run_id} not found")
        return JSONResponse({"data": steps})

    async def rerun(request: Request) -> Response:
        """A new run of the run's function for a copy of its event (`connect.executor.reruns`)."""
        if (denied := guard(request)) is not None:
            return denied
        run_id = request.path_params["run_id"]
        try:
            started = await runs.rerun(run_id)
        except RerunRefused as exc:
            return error(409, str(exc))
        if started is None:
            return error(404, f"run {run_id} not found")
        return JSONResponse({"data": started})

    return [
        Route("/v1/runs", list_runs, methods=["GET"]),
        Route("/v1/runs/{run_id}", get_run, methods=["GET"]),
        Route("/v1/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
        Route("/v1/runs/{run_id}/steps", run_steps, methods=["GET"]),
        Route("/v1/runs/{run_id}/rerun", rerun, methods=["POST"]),
    ]
