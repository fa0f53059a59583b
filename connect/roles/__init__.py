"""One composition root per role, each built from `PlatformSettings`.

- `api`: the HTTP API (events in, connect start/flush, checkpoints, run REST);
- `gateway`: the dispatcher and the WebSocket server workers connect to
  (and `StandaloneGateway`: the gateway with its store and the worker-facing
  API, without an executor);
- `executor`: durable runs over the store;
- `dev`: all of them in one process (`connect dev`, `connect serve`);
- `split`: some of them (`connect serve --role ...`), sharing PostgreSQL with
  the processes that run the others.

Each root owns its start order and its stop (drain) order; the CLI, the
benchmarks and the tests build the platform through these and nothing else.
"""

from connect.roles.api import ApiNotStarted, ApiRole, RunsElsewhere
from connect.roles.dev import EXIT_DRAINED_ON_REQUEST, DevServer
from connect.roles.executor import ExecutorRole
from connect.roles.gateway import GatewayRole, StandaloneGateway, gateway_dispatcher, start_standalone_gateway
from connect.roles.settings import PlatformSettings
from connect.roles.split import RolesServer
from connect.roles.store import open_store

__all__ = [
    "EXIT_DRAINED_ON_REQUEST",
    "ApiNotStarted",
    "ApiRole",
    "DevServer",
    "ExecutorRole",
    "GatewayRole",
    "PlatformSettings",
    "RolesServer",
    "RunsElsewhere",
    "StandaloneGateway",
    "gateway_dispatcher",
    "open_store",
    "start_standalone_gateway",
]
