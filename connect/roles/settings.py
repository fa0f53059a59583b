"""What the platform's roles are built from: one set of settings for every role.

`connect dev` and `connect serve` fill it from their flags; each role reads
the fields that concern it, and every field is read by some role (an option
that nothing reads would be accepted and ignored).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Final

from connect import polling
from connect.executor.ownership import DEFAULT_OWNER_LEASE
from connect.executor.retention import DEFAULT_RETENTION
from connect.executor.runner import MAX_LEASE_LAPSES
from connect.gateway.admission import MAX_HANDSHAKES, MAX_HANDSHAKES_PER_PEER
from connect.gateway.auth import Keys
from connect.metrics import PlatformMetrics
from connect.store.open import DEFAULT_POOL_SIZE
from protocol import limits

#: The roles a process can run; `all` is every one of them in one process.
ROLES: Final = ("api", "gateway", "executor")
ALL_ROLES: Final = frozenset(ROLES)

#: Seconds a process's registry entry (and its gateway's connections) lives without a heartbeat.
DEFAULT_PROCESS_TTL: Final = 15.0


def default_process_id() -> str:
    """The host name and the process id: unique among processes on one host,
    and new for every start (a restarted gateway is a new gateway to workers)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def parse_roles(values: list[str]) -> frozenset[str]:
    """`--role` values (each may be a comma-separated list): the set of roles
    to run; `all` is every role. Raises ValueError naming an unknown one."""
    roles: set[str] = set()
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if not name:
                continue
            if name == "all":
                roles |= ALL_ROLES
            elif name in ROLES:
                roles.add(name)
            else:
                raise ValueError(f"unknown role {name!r}: choose from api, gateway, executor, all")
    if not roles:
        raise ValueError("no role given: choose from api, gateway, executor, all")
    return frozenset(roles)


@dataclass
class PlatformSettings:
    #: Interface the API and the gateway listen on (port 0: any free port).
    host: str = "127.0.0.1"
    #: API port.
    port: int = 8288
    gateway_port: int = 8289
    #: The store (see `connect.roles.store`): SQLite at `db`, unless `database_url`
    #: (postgresql://) names a PostgreSQL database; then `db` is not used.
    db: str = "connect-dev.db"
    database_url: str | None = None
    #: PostgreSQL connections: one writer, the rest for reads (see `connect.store.pg_writer`).
    database_pool_size: int = DEFAULT_POOL_SIZE
    #: Gateway: how long a worker holds a request without extending its lease.
    lease_duration: float = limits.LEASE_DURATION
    extend_lease_interval: float = limits.LEASE_EXTEND_INTERVAL
    #: Executor: re-dispatches of one request after lost workers before its run fails.
    max_lease_lapses: int = MAX_LEASE_LAPSES
    heartbeat_interval: float = limits.HEARTBEAT_INTERVAL
    #: The longest a stopping process waits for its workers to leave, in seconds.
    drain_timeout: float = 25.0
    #: Open mode (no keys) unless signing keys are set; see `connect serve`.
    keys: Keys = field(default_factory=Keys)
    max_message_bytes: int = limits.MAX_WORKER_MESSAGE_BYTES
    #: API: one event, and one `/e/` request body.
    max_event_bytes: int = 512 * 1024
    max_request_bytes: int = 3 * 1024 * 1024
    apps_per_connection: int = limits.APPS_PER_CONNECTION
    max_connections: int = limits.MAX_CONNECTIONS
    max_connections_per_instance: int = limits.MAX_CONNECTIONS_PER_INSTANCE
    #: Connections not yet authenticated, at once, in all and from one peer address.
    max_handshakes: int = MAX_HANDSHAKES
    max_handshakes_per_peer: int = MAX_HANDSHAKES_PER_PEER
    handshake_timeout: float = limits.HANDSHAKE_TIMEOUT
    #: Executor: let workers that support it store each step and go on in the same request.
    checkpoint_steps: bool = True
    #: Gateway: the longest the loop keeps polling after step traffic, in seconds (0: off; see `connect.polling`).
    poll_window: float = polling.DEFAULT_WINDOW
    #: The name of the process in its log lines.
    name: str = "connect dev"
    #: Executor: the owner name of the runs it drives (default: the host name; see `connect.executor.ownership`).
    executor_id: str | None = None
    #: Executor: seconds its heartbeat keeps its runs its own; past it other executors claim them.
    owner_lease: float = DEFAULT_OWNER_LEASE
    #: Executor: seconds ended runs are kept (`--history-retention`); None keeps everything.
    history_retention: float | None = DEFAULT_RETENTION
    #: The roles this process runs; every one of them (the default) is today's single process,
    #: any other set shares its work with other processes through PostgreSQL.
    roles: frozenset[str] = ALL_ROLES
    #: Gateway: the ws:// URL workers dial to reach it, advertised in the process registry
    #: (None: ws://host:gateway_port/v0/connect).
    gateway_url: str | None = None
    #: This process's name in the process registry (None: `default_process_id()`).
    process_id: str | None = None
    #: Seconds a registry entry lives without a heartbeat; heartbeats come every third of it.
    process_ttl: float = DEFAULT_PROCESS_TTL
    #: The process's Prometheus registry and metrics, served on `/metrics` of the
    #: API and gateway ports (one per settings object, so one per process).
    #: A port of its own for `/metrics` (`--metrics-port`; None: only the API and gateway ports serve it).
    metrics_port: int | None = None
    metrics: PlatformMetrics = field(default_factory=PlatformMetrics, repr=False, compare=False)

    @property
    def split(self) -> bool:
        """Whether the roles are shared with other processes (not all of them here)."""
        return self.roles != ALL_ROLES
