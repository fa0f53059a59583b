"""`GET /v1/runs` (runs by status and function, newest first) and
`GET /v1/events/{id}` (one stored event, as sent): what `connect runs` and
`connect replay` read. Same auth as every `/v1` route."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connect.executor.views import RUN_STATUSES

if TYPE_CHECKING:
    from connect.api.app import EventSink

#: Runs `GET /v1/runs` answers when no `limit` is given, and the most it answers.
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"status": status, "error": message}, status_code=status)


def routes(executor: EventSink, unauthorized: Callable[[Request], Response | None]) -> list[Route]:
    async def list_runs(request: Request) -> Response:
        """`?status=Running|Completed|Failed|Cancelled&function=FUNCTION_ID&limit=N` (1 to 500, default 50)."""
        if (denied := unauthorized(request)) is not None:
            return denied
        status = request.query_params.get("status") or None
        if status is not None and status not in RUN_STATUSES:
            return _error(400, f"status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
        text = request.query_params.get("limit") or str(DEFAULT_LIMIT)
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            return _error(400, f"limit must be a whole number from 1 to {MAX_LIMIT}, not {text!r}")
        function_id = request.query_params.get("function") or None
        return JSONResponse({"data": await executor.list_runs(status, function_id, int(text))})

    async def get_event(request: Request) -> Response:
        if (denied := unauthorized(request)) is not None:
            return denied
        event = await executor.get_event(request.path_params["event_id"])
        if event is None:
            return _error(404, f"event {request.path_params['event_id']} not found")
        return JSONResponse({"data": event})

    return [
        Route("/v1/runs", list_runs, methods=["GET"]),
        Route("/v1/events/{event_id}", get_event, methods=["GET"]),
    ]
