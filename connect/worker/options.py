"""What a worker connection is configured with, and the states it goes through."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from connect import polling
from connect.sdk.client import Client
from connect.sdk.function import Function
from connect.worker import stall
from connect.worker.clock import SYSTEM_CLOCK, Clock


class ConnectionState(enum.Enum):
    """CONNECTING -> ACTIVE <-> RECONNECTING -> CLOSING -> CLOSED; never back from CLOSING."""

    CONNECTING = "CONNECTING"
    ACTIVE = "ACTIVE"
    RECONNECTING = "RECONNECTING"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"


AppSpec = tuple[Client, Sequence[Function]]


@dataclass
class WorkerOptions:
    instance_id: str
    max_worker_concurrency: int | None
    drain_timeout: float | None = 600.0
    reply_buffer_bytes: int = 500 * 1024 * 1024
    reconnect_initial: float = 0.5
    reconnect_max: float = 10.0
    heartbeat_interval: float | None = None
    health_port: int | None = None
    health_host: str = "0.0.0.0"
    gateway_url: str | None = None
    poll_window: float = polling.WORKER_DEFAULT_WINDOW
    stall_threshold: float | None = stall.DEFAULT_THRESHOLD
    clock: Clock = field(default=SYSTEM_CLOCK)
