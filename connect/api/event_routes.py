"""Stored events: `GET /v1/events` (newest first, `?name=`, paged as in
`connect.api.paging`), `GET /v1/events/{id}` (the event, the runs it started
and whether it `matched` any function), `GET /v1/events/{id}/runs` (its runs
alone) and `POST /v1/events/{id}/replay`
(sends it again as a new event: a new id, the same name and data; answers
`{"data": {"id": new id, "replay_of": id}}`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connect.api import paging
from connect.api.errors import error
from connect.executor.event_views import EventPage

#: Answers why a request is refused (401), or None to serve it.
Guard = Callable[[Request], Response | None]


class EventHistory(Protocol):
    async def runs_for_event(self, event_id: str) -> list[dict[str, Any]]: ...
    async def list_events(self, name: str | None, older_than: tuple[int, str] | None, limit: int) -> EventPage: ...
    async def event_detail(self, event_id: str) -> dict[str, Any] | None: ...
    async def replay_event(self, event_id: str) -> str | None: ...


def routes(events: EventHistory, guard: Guard) -> list[Route]:
    async def list_events(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        params = request.query_params
        try:
            limit = paging.page_limit(params.get("limit"))
            older_than = paging.decode_cursor(params.get("cursor"))
        except paging.BadQuery as exc:
            return error(400, str(exc))
        page = await events.list_events(params.get("name") or None, older_than, limit)
        cursor = None if page.next is None else paging.encode_cursor(page.next)
        return JSONResponse({"data": page.events, "cursor": cursor})

    async def get_event(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        event_id = request.path_params["event_id"]
        detail = await events.event_detail(event_id)
        if detail is None:
            return error(404, f"event {event_id} not found")
        return JSONResponse({"data": detail})

    async def event_runs(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        return JSONResponse({"data": await events.runs_for_event(request.path_params["event_id"])})

    async def replay(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        event_id = request.path_params["event_id"]
        new_id = await events.replay_event(event_id)
        if new_id is None:
            return error(404, f"event {event_id} not found")
        return JSONResponse({"data": {"id": new_id, "replay_of": event_id}})

    return [
        Route("/v1/events", list_events, methods=["GET"]),
        Route("/v1/events/{event_id}", get_event, methods=["GET"]),
        Route("/v1/events/{event_id}/runs", event_runs, methods=["GET"]),
        Route("/v1/events/{event_id}/replay", replay, methods=["POST"]),
    ]
