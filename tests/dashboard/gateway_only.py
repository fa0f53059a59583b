"""A gateway on its own (`StandaloneGateway`) for the browser tests: run on an
event loop in a thread of its own, since the browser is driven synchronously."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from connect.roles import start_standalone_gateway
from tests.gateway.stack import gateway_settings

T = TypeVar("T")


@contextmanager
def gateway_only(db: Path, database_url: str | None) -> Iterator[str]:
    """A standalone gateway over `database_url` (else SQLite at `db`); yields its API port's URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="gateway-only", daemon=True)
    thread.start()

    def call(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    try:
        gw = call(start_standalone_gateway(gateway_settings(db, database_url=database_url)))
        try:
            yield gw.api_url
        finally:
            call(gw.close())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
