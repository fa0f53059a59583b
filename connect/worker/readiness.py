"""Probes for orchestrators: `GET /ready` and `GET /live` on `health_port`.

Served from the worker's connection thread, so probes answer even while
user code blocks the main event loop. `/ready` is 200 only while the worker
is ACTIVE, the gateway has confirmed the connection and the event loop that
runs user code is not stalled (it is 503 from the moment a drain starts, and
while that loop is stalled: `"stalled": true`); `/live` is 200 while the
connection machinery runs, draining and stalls included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Generator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connect.binding import bind_failure

log = logging.getLogger("connect.worker")


class HealthServerNotStarted(RuntimeError):
    """The health port could not be bound; the message names the cause and the fix."""


class _ProbeServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals belong to the worker process, not the probe server


class HealthServer:
    def __init__(
        self,
        port: int,
        host: str,
        ready: Callable[[], bool],
        state: Callable[[], str],
        stalled: Callable[[], bool],
    ) -> None:
        async def ready_probe(request: Request) -> JSONResponse:
            ok = ready()
            return JSONResponse({"ready": ok, "state": state(), "stalled": stalled()}, status_code=200 if ok else 503)

        async def live_probe(request: Request) -> JSONResponse:
            return JSONResponse({"live": True, "state": state(), "stalled": stalled()})

        app = Starlette(routes=[Route("/ready", ready_probe), Route("/live", live_probe)])
        # log_config=None: uvicorn's lines go to the process's own handlers (and format).
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", log_config=None, lifespan="off", access_log=False
        )
        self._server = _ProbeServer(config)
        self._task: asyncio.Task[None] | None = None
        self.port = port

    async def start(self) -> None:
        """Serve the probes; `HealthServerNotStarted` (one line with the cause
        and the fix) when the port cannot be bound."""
        self._task = asyncio.create_task(self._serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise HealthServerNotStarted(self._failure())
            await asyncio.sleep(0.01)
        log.info("health probes on http://%s:%d/ready and /live", self._server.config.host, self.port)

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit:
            # uvicorn exits the process when it cannot bind (after logging why,
            # a line `connect.logs` leaves out); the worker decides instead.
            raise HealthServerNotStarted(self._failure()) from None

    def _failure(self) -> str:
        return bind_failure("the health probes", "--health-port", self._server.config.host, self.port)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
