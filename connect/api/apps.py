"""`GET /v1/apps` and `GET /v1/functions`: what the apps registered.

A function is `{"id", "app", "name", "triggers", "status", "reason",
"not_honoured", "options"}`: `status` `active` (served) or `refused` (with
the `reason`), `not_honoured` the options registered that this platform does
not enforce, `options` every option registered as the SDK sent it. An app is
`{"name", "version", "functions": [function, ...]}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

#: Answers why a request is refused (401), or None to serve it.
Guard = Callable[[Request], Response | None]


class Registrations(Protocol):
    def registered_functions(self) -> list[dict[str, Any]]: ...
    def registered_apps(self) -> list[dict[str, Any]]: ...


def routes(registered: Registrations, guard: Guard) -> list[Route]:
    async def list_apps(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        return JSONResponse({"data": registered.registered_apps()})

    async def list_functions(request: Request) -> Response:
        """Every function the apps registered: served (`active`) or `refused`
        with the reason, and the options registered but not honoured."""
        if (denied := guard(request)) is not None:
            return denied
        return JSONResponse({"data": registered.registered_functions()})

    return [
        Route("/v1/apps", list_apps, methods=["GET"]),
        Route("/v1/functions", list_functions, methods=["GET"]),
    ]
