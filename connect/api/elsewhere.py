"""Where the API is, for a process that serves the HTTP port without it.

A gateway on its own (`connect.roles.gateway.StandaloneGateway`) answers the
worker-facing routes and serves the dashboard's page, but has no executor:
every event, run and app route is refused with 503. `ServedElsewhere` is that
refusal; its answer names the API processes the store's process registry
lists now (`ApiDirectory`), so a user who opened this port, or a client that
called it, learns where to go:

    {"status": 503, "error": "...", "api_urls": ["http://api-1:8288", ...]}

`api_urls` holds the registered addresses of API processes whose entry is
live and `ready` (not draining), oldest start first; it is empty when the
registry lists none (a gateway on its own store, or every API process down).
The dashboard shows them as links. The registry is read once per refused
request (one indexed query); nothing is read on any other route.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.exceptions import HTTPException

from connect.store.base import READY, ROLE_API, ProcessRecord

#: Where the API processes are: their addresses (see the module doc).
ApiUrls = Callable[[], Awaitable[list[str]]]


class ProcessSource(Protocol):
    async def list_processes(self, role: str | None, now_ms: int) -> list[ProcessRecord]: ...


class ApiDirectory:
    """The API processes of the store's registry."""

    def __init__(self, store: ProcessSource, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def urls(self) -> list[str]:
        """The addresses of the live, ready API processes, oldest start first."""
        records = await self._store.list_processes(ROLE_API, int(self._clock() * 1000))
        return [r.address for r in records if r.state == READY and r.address]


class ServedElsewhere(HTTPException):
    """503: this process does not serve the route; `api_urls` says where it is
    served (None: nowhere known, the answer then has no `api_urls`)."""

    def __init__(self, reason: str, api_urls: ApiUrls | None) -> None:
        super().__init__(503, reason)
        self.api_urls = api_urls
