"""`--metrics-port`: the process's `/metrics` on a port of its own.

The API and gateway ports serve `/metrics` already; a process of split
roles that runs neither (`connect serve --role executor`) has no port, so
it is given one for its metrics (and any process may be: a scrape that
should not share the API's port). `GET /metrics` there needs what it needs
on the API port: the signing key under `connect serve`; `GET /health`
answers 200 for probes. uvicorn installs no signal handlers: the process's
composition root owns the signals.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connect.gateway.auth import Keys
from connect.metrics import CONTENT_TYPE, PlatformMetrics


class MetricsPortNotStarted(RuntimeError):
    """The metrics port could not be bound (most often: it is taken)."""


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class MetricsPort:
    def __init__(self, host: str, port: int, metrics: PlatformMetrics, keys: Keys) -> None:
        async def scrape(request: Request) -> Response:
            if not keys.authorized(request.headers.get("authorization")):
                return JSONResponse(
                    {"status": 401, "error": "authentication failed: send Authorization: Bearer <signing key>"},
                    status_code=401,
                )
            return Response(await metrics.scrape(), media_type=CONTENT_TYPE)

        async def health(request: Request) -> Response:
            return JSONResponse({"status": "ok"})

        app = Starlette(routes=[Route("/metrics", scrape), Route("/health", health)])
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", access_log=False)
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self._where = f"{host}:{port}"
        #: The port bound (the one asked for, or the one chosen for port 0).
        self.port = 0

    async def start(self) -> None:
        """Serve; raises `MetricsPortNotStarted` if uvicorn stops before it serves."""
        self._task = task = asyncio.create_task(self._serve())
        while not self._server.started:
            if task.done():
                raise MetricsPortNotStarted(f"the metrics port could not start on {self._where}")
            await asyncio.sleep(0.01)
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])

    async def _serve(self) -> None:
        with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind (after logging why)
            await self._server.serve()

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
