"""`GET /v1/workers`: the worker connections, newest heartbeat first.

Each is `{"connection_id", "instance_id", "gateway", "apps", "functions",
"state", "in_flight", "capacity", "last_heartbeat"}`: `gateway` the gateway
process holding it, `functions` the function ids it serves, `in_flight` the
requests its instance runs now against its `capacity` (null: unlimited),
`last_heartbeat` an ISO-8601 UTC time. Under `connect dev` and `serve` they
come from the gateway in the process (`LiveWorkers`: the heartbeat as
heard); with split roles from the store's registry (`StoredWorkers`: each
gateway's last report, written every third of `--process-ttl` and soon
after a change, so `last_heartbeat` is the time of that report).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connect.api.errors import error
from connect.executor.views import rfc3339
from connect.gateway.dispatcher import GatewayDispatcher
from connect.gateway.registry import connection_record
from connect.store.base import ConnectionRecord

#: Answers why a request is refused (401), or None to serve it.
Guard = Callable[[Request], Response | None]


class WorkerList(Protocol):
    async def workers(self) -> list[dict[str, Any]]: ...


class ConnectionSource(Protocol):
    async def list_connections(self, now_ms: int) -> list[ConnectionRecord]: ...


def worker_view(record: ConnectionRecord) -> dict[str, Any]:
    return {
        "connection_id": record.connection_id,
        "instance_id": record.instance_id,
        "gateway": record.gateway_id,
        "apps": record.apps,
        "functions": record.functions,
        "state": record.state,
        "in_flight": record.in_flight,
        "capacity": record.capacity,
        "last_heartbeat": rfc3339(record.last_heartbeat_ms),
    }


def _newest_first(records: list[ConnectionRecord]) -> list[dict[str, Any]]:
    ordered = sorted(records, key=lambda r: (r.last_heartbeat_ms, r.connection_id), reverse=True)
    return [worker_view(r) for r in ordered]


class LiveWorkers:
    """The ready connections of the gateway in this process."""

    def __init__(self, dispatcher: GatewayDispatcher, gateway_id: str) -> None:
        self._dispatcher = dispatcher
        self._gateway_id = gateway_id

    async def workers(self) -> list[dict[str, Any]]:
        records = [
            connection_record(
                conn, self._dispatcher, self._gateway_id, int(conn.session.last_heartbeat * 1000), expires_ms=0
            )
            for conn in self._dispatcher.router.ready_connections()
        ]
        return _newest_first(records)


class StoredWorkers:
    """The connections every gateway reported to the store's registry, not expired."""

    def __init__(self, store: ConnectionSource, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def workers(self) -> list[dict[str, Any]]:
        return _newest_first(await self._store.list_connections(int(self._clock() * 1000)))


def routes(workers: WorkerList | None, guard: Guard) -> list[Route]:
    async def list_workers(request: Request) -> Response:
        if (denied := guard(request)) is not None:
            return denied
        if workers is None:
            return error(503, "this process does not know the workers: ask an API process")
        return JSONResponse({"data": await workers.workers()})

    return [Route("/v1/workers", list_workers, methods=["GET"])]
