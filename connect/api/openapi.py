"""`GET /openapi.json`: an OpenAPI 3.1 document of every `/v1` route.

Written by hand next to the routes it describes; a test checks that it is a
valid OpenAPI 3.1 document and that every `/v1` route of the app is in it.
Under `connect serve` it needs the signing key, like the routes themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connect.api.paging import DEFAULT_LIMIT, MAX_LIMIT
from connect.api.runs import STATUSES

#: Answers why a request is refused (401), or None to serve it.
Guard = Callable[[Request], Response | None]

_TIME: Final = {"type": ["string", "null"], "format": "date-time"}
_ID: Final = {"type": "string"}
_ANY: Final[dict[str, Any]] = {}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: bool = True, **fields: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": fields}
    if required:
        schema["required"] = list(fields)
    return schema


def _data(schema: dict[str, Any]) -> dict[str, Any]:
    return _object(data=schema)


def _page(item: str) -> dict[str, Any]:
    return _object(
        data={"type": "array", "items": _ref(item)},
        cursor={"type": ["string", "null"], "description": "the next page's `cursor`; null on the last page"},
    )


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(summary: str, ok: dict[str, Any], *errors: int, **extra: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    responses |= {str(status): {"$ref": f"#/components/responses/E{status}"} for status in (401, *errors, 503)}
    return {"summary": summary, "responses": responses, **extra}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or _ID}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _ID}


_PAGING: Final = [
    _query(
        "limit",
        f"items per page, 1 to {MAX_LIMIT}",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    ),
    _query("cursor", "the `cursor` of the previous page"),
]

_SCHEMAS: Final[dict[str, Any]] = {
    "Error": _object(status={"type": "integer"}, error={"type": "string"})
    | {
        "properties": {
            "status": {"type": "integer"},
            "error": {"type": "string"},
            "api_urls": {
                "type": "array",
                "items": {"type": "string"},
                "description": "on a 503 from a process that serves no API: the API processes its registry lists",
            },
        }
    },
    "Run": _object(
        run_id=_ID,
        function_id=_ID,
        status={"type": "string", "enum": list(STATUSES)},
        output=_ANY | {"description": "the return value when Completed, the error when Failed"},
        event_id=_ID,
        run_started_at=_TIME,
        ended_at=_TIME,
    )
    | {"additionalProperties": True},
    "Step": _object(
        id=_ID,
        name={"type": ["string", "null"]},
        kind={
            "type": ["string", "null"],
            "enum": ["run", "send_event", "sleep", "wait", "invoke", None],
            "description": "send_event: a step.send_event of this platform's SDK or the TypeScript SDK "
            "(the official Python SDK's is a plain step.run on the wire, shown as run)",
        },
        status={"type": "string", "enum": ["Completed", "Failed", "Cancelled", "Running", "Sleeping", "Waiting"]},
        attempts={"type": ["integer", "null"]},
        started_at=_TIME
        | {
            "description": "a step a worker ran: when its body began, as the worker reported it (this platform's "
            "SDK and the TypeScript SDK send it), moved onto the server's clock; without that (the official "
            "Python SDK) when its request was sent, and null for a step run after another in the same request"
        },
        ended_at=_TIME,
        due_at=_TIME,
        ended_by={
            "type": ["string", "null"],
            "enum": ["woke", "event", "timeout", "returned", "error", "cancelled", "run_ended", None],
        },
        output=_ANY,
        error=_ANY,
    ),
    "Event": _object(
        id=_ID,
        name={"type": "string"},
        data={"type": "object"},
        user={"type": "object"},
        ts=_TIME,
        received_at=_TIME,
    ),
    "EventDetail": {
        "allOf": [
            _ref("Event"),
            _object(
                runs={"type": "array", "items": _ref("Run")},
                held={"type": "array", "items": _ref("EventHold")},
                matched={"type": "boolean"},
            ),
        ]
    },
    "EventHold": _object(
        function_id=_ID,
        kind={"type": "string", "enum": ["debounce", "batch"]},
        key={"type": ["string", "null"]},
        status={"type": "string", "enum": ["held", "started", "replaced"]},
        held_at=_TIME,
        due_at=_TIME,
        run_id={"type": ["string", "null"]},
    ),
    "Function": _object(
        id=_ID,
        app={"type": "string"},
        name={"type": ["string", "null"]},
        triggers={"type": "array", "items": {"type": "object"}},
        status={"type": "string", "enum": ["active", "refused"]},
        reason={"type": ["string", "null"]},
        not_honoured={"type": "object"},
        options={"type": "object"},
    ),
    "App": _object(
        name={"type": "string"},
        version={"type": ["string", "null"]},
        functions={"type": "array", "items": _ref("Function")},
    ),
    "Worker": _object(
        connection_id=_ID,
        instance_id=_ID,
        gateway={"type": "string"},
        apps={"type": "array", "items": {"type": "string"}},
        functions={"type": "array", "items": {"type": "string"}},
        state={"type": "string"},
        in_flight={"type": "integer"},
        capacity={"type": ["integer", "null"]},
        last_heartbeat=_TIME,
    ),
    "Cancellation": _object(
        required=False,
        function_id=_ID,
        app_id={"type": "string", "description": "accepted, not needed"},
        started_after=_TIME,
        started_before=_TIME,
        **{"if": {"type": "string", "description": "CEL over the run's triggering `event`"}},
        dry_run={"type": "boolean", "description": "count the runs it would cancel, cancel none"},
    )
    | {"required": ["function_id"]},
}

_RESPONSES: Final = {
    f"E{status}": _json(_ref("Error"), reason)
    for status, reason in {
        400: "bad input: the error names it",
        401: "no signing key (under `connect serve`)",
        404: "no such run or event",
        409: "not possible now: the error says why",
        501: "not supported here",
        503: "this process serves no API (a gateway on its own): `api_urls` says where it is",
    }.items()
}

_RUN_ID: Final = [_path("run_id")]
_EVENT_ID: Final = [_path("event_id")]

_PATHS: Final[dict[str, Any]] = {
    "/v1/runs": {
        "get": _operation(
            "Runs newest first, filtered by status, function and start time",
            _json(_page("Run"), "a page of runs"),
            400,
            parameters=[
                _query("status", "one of the run statuses (any case)", {"type": "string", "enum": list(STATUSES)}),
                _query("function", "a function id"),
                _query("from", "started at or after (ISO-8601)", {"type": "string", "format": "date-time"}),
                _query("to", "started before (ISO-8601)", {"type": "string", "format": "date-time"}),
                *_PAGING,
            ],
        )
    },
    "/v1/runs/{run_id}": {
        "get": _operation(
            "One run with its step timeline",
            _json(
                _data({"allOf": [_ref("Run"), _object(steps={"type": "array", "items": _ref("Step")})]}),
                "the run",
            ),
            404,
            parameters=_RUN_ID,
        )
    },
    "/v1/runs/{run_id}/steps": {
        "get": _operation(
            "The run's step timeline",
            _json(_data({"type": "array", "items": _ref("Step")}), "its steps in order"),
            404,
            parameters=_RUN_ID,
        )
    },
    "/v1/runs/{run_id}/cancel": {
        "post": _operation(
            "Cancel one run (202 while a step that was running finishes)",
            _json(_data(_ref("Run")), "the run, Cancelled"),
            404,
            409,
            parameters=_RUN_ID,
        )
    },
    "/v1/runs/{run_id}/rerun": {
        "post": _operation(
            "A new run of the run's function for a copy of its event",
            _json(
                _data(_object(run_id=_ID, event_id=_ID, status={"type": "string"}, rerun_of=_ID)),
                "the new run",
            ),
            404,
            409,
            parameters=_RUN_ID,
        )
    },
    "/v1/cancellations": {
        "post": _operation(
            "Cancel the Running runs of a function started in a time range",
            _json(
                _data(_object(required=False, cancelled={"type": "integer"}, matching={"type": "integer"})),
                "how many runs were flagged (`cancelled`), or would be (`matching`, a dry run)",
            ),
            400,
            requestBody={"required": True, "content": {"application/json": {"schema": _ref("Cancellation")}}},
        )
    },
    "/v1/events": {
        "get": _operation(
            "Events newest first",
            _json(_page("Event"), "a page of events"),
            400,
            parameters=[_query("name", "only events of this name"), *_PAGING],
        )
    },
    "/v1/events/{event_id}": {
        "get": _operation(
            "One event, the runs it started, and whether it matched a function",
            _json(_data(_ref("EventDetail")), "the event"),
            404,
            parameters=_EVENT_ID,
        )
    },
    "/v1/events/{event_id}/runs": {
        "get": _operation(
            "The runs an event started, then those flow control skipped",
            _json(_data({"type": "array", "items": _ref("Run")}), "its runs"),
            parameters=_EVENT_ID,
        )
    },
    "/v1/events/{event_id}/replay": {
        "post": _operation(
            "Send the stored event again as a new event",
            _json(_data(_object(id=_ID, replay_of=_ID)), "the new event's id"),
            404,
            parameters=_EVENT_ID,
        )
    },
    "/v1/apps": {
        "get": _operation("Apps with their functions", _json(_data({"type": "array", "items": _ref("App")}), "apps"))
    },
    "/v1/functions": {
        "get": _operation(
            "Every registered function, served or refused",
            _json(_data({"type": "array", "items": _ref("Function")}), "functions"),
        )
    },
    "/v1/workers": {
        "get": _operation(
            "Worker connections, latest heartbeat first",
            _json(_data({"type": "array", "items": _ref("Worker")}), "connections"),
        )
    },
    "/v1/checkpoint/{run_id}/async": {
        "post": _operation(
            "Steps an official TypeScript worker ran (for SDKs, not people)",
            _json(_data(_object(run_id=_ID)), "stored"),
            400,
            409,
            parameters=_RUN_ID,
            requestBody={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        )
    },
    "/v1/checkpoint/{run_id}/steps": {
        "post": _operation("Synchronous checkpoints: not supported", _json(_ANY, "never"), 501, parameters=_RUN_ID)
    },
    "/v1/checkpoint": {"post": _operation("Synchronous checkpoints: not supported", _json(_ANY, "never"), 501)},
}

DOCUMENT: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "connect REST API",
        "version": "1",
        "description": (
            "Runs, steps, events, apps, functions and workers. Listings are newest first, a page at a time "
            "(`{data, cursor}`); errors are `{status, error}`. Under `connect serve` every route needs "
            "`Authorization: Bearer <signing key>`."
        ),
    },
    "components": {
        "schemas": _SCHEMAS,
        "responses": _RESPONSES,
        "securitySchemes": {"signingKey": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"signingKey": []}],
    "paths": _PATHS,
}


def routes(guard: Guard) -> list[Route]:
    async def openapi(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        return JSONResponse(DOCUMENT)

    return [Route("/openapi.json", openapi, methods=["GET"])]
