"""HTTP answers by route template and status: a small ASGI middleware.

The route label is the template the request matched (`/v1/runs/{run_id}`),
read from the scope Starlette's router fills, never the raw path; a request
that matched no route is counted as `unmatched`. So the label set stays as
small as the API's routes times the statuses it answers.

Per request: one dictionary look-up and one counter increment, after the
answer's start is sent; nothing is awaited that the app would not await.
"""

from __future__ import annotations

from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The route label of a request that matched no route (a 404, or a 405).
UNMATCHED: Final = "unmatched"


def answers_counter(registry: CollectorRegistry) -> Counter:
    """`connect_http_responses_total{route,status}` in `registry`."""
    return Counter(
        "connect_http_responses",
        "HTTP answers of the API, by route template and status code",
        ["route", "status"],
        registry=registry,
    )


class HttpAnswers:
    """ASGI middleware: counts every answer in `counter` (see `answers_counter`).
    A request whose app raises before it answers is counted as a 500."""

    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app = app
        self._counter = counter
        self._children: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def counting_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self._count(scope, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            if not started:
                self._count(scope, 500)
            raise

    def _count(self, scope: Scope, status: int) -> None:
        route = scope.get("route")
        if route is None:
            route = _matching_route(scope)
        template = getattr(route, "path", None) or UNMATCHED
        key = (template, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._counter.labels(template, str(status))
        child.inc()


def _matching_route(scope: Scope) -> BaseRoute | None:
    """The app's route for a request the router did not name in the scope
    (a Starlette release that does not, or a 405): its full match, else the
    route that matched the path but not the method."""
    partial = None
    for route in getattr(scope.get("app"), "routes", ()):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route  # type: ignore[no-any-return]
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial
