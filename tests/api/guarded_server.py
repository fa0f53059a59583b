"""A real uvicorn server on a real socket, behind the guard, as `connect dev` serves its API."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from connect.api.framing import HttpLimits
from connect.api.guard import guarded_http


@contextlib.asynccontextmanager
async def guarded_server(app: Any, limits: HttpLimits) -> AsyncIterator[int]:
    """Serve `app` held to `limits` until the block ends; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        http=guarded_http(limits),
        ws="none",
        timeout_keep_alive=limits.keep_alive_timeout,
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not srv.started:
            await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        srv.should_exit = True
        await task
