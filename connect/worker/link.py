"""One WebSocket to a gateway: opening it, its hello, and its per-connection state.

A `Link` pairs the socket with its sans-I/O `WorkerSession` (which decides
what may happen on it) and the flags the connection acts on: confirmed by
the gateway, ended, asked to leave (draining), paused for a stall, retired.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import websockets
from google.protobuf.timestamp_pb2 import Timestamp
from websockets.typing import Subprotocol

from connect.sdk.client import Client
from connect.sdk.execution import SDK_VERSION
from connect.sdk.function import Function, functions_json
from connect.websocket import BatchingConnection
from connect.worker.masking import MaskedClientConnection
from protocol import connect_pb2 as pb
from protocol import limits
from protocol import worker_session as ws_

SDK_LANGUAGE = "py"


class WorkerWebSocket(BatchingConnection, MaskedClientConnection):
    """The worker's client connection: masking keys from a buffer, queued frames in one write."""


@dataclass(eq=False)
class Link:
    ws: WorkerWebSocket
    session: ws_.WorkerSession
    gateway_group: str
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    draining: bool = False
    # Paused because the user's loop stalled; replaced by a new connection once
    # it recovers (a pause cannot be undone on one connection: the gateway keeps it draining).
    stall_paused: bool = False
    retired: bool = False
    session_end_reason: str = ""
    # The flush of ACKs held back for a reply to share their write (`connect.worker.sending`).
    ack_flush: asyncio.TimerHandle | None = None


async def open_websocket(endpoint: str) -> WorkerWebSocket:
    """The socket, opened; the connect handshake is the session's."""
    ws = await websockets.connect(
        endpoint,
        subprotocols=[Subprotocol(limits.SUBPROTOCOL)],
        max_size=limits.MAX_WORKER_MESSAGE_BYTES,
        open_timeout=10,
        ping_interval=None,
        compression=None,
        max_queue=64,
        create_connection=WorkerWebSocket,
    )
    assert isinstance(ws, WorkerWebSocket)
    return ws


def hello(
    resp: pb.StartResponse,
    apps: Mapping[str, tuple[Client, Mapping[str, Function]]],
    *,
    instance_id: str,
    max_worker_concurrency: int | None,
    started_at: float,
) -> pb.WorkerConnectRequestData:
    """WORKER_CONNECT for the connection `/v0/connect/start` answered with `resp`."""
    started = Timestamp()
    started.FromNanoseconds(int(started_at * 1e9))
    msg = pb.WorkerConnectRequestData(
        connection_id=resp.connection_id,
        instance_id=instance_id,
        auth_data=pb.AuthData(session_token=resp.session_token, sync_token=resp.sync_token),
        capabilities=b'{"connect":"v1","trust_probe":"v1"}',
        worker_manual_readiness_ack=True,
        system_attributes=pb.SystemAttributes(
            cpu_cores=os.cpu_count() or 1, mem_bytes=_memory_bytes(), os=os.uname().sysname.lower()
        ),
        framework="connect",
        sdk_version=SDK_VERSION.split(":v", 1)[-1],
        sdk_language=SDK_LANGUAGE,
        started_at=started,
    )
    for app_id, (client, fns) in apps.items():
        app = msg.apps.add(app_name=app_id, functions=functions_json(app_id, list(fns.values())))
        if client.app_version:
            app.app_version = client.app_version
    if max_worker_concurrency:
        msg.max_worker_concurrency = max_worker_concurrency
    env = next((client.env for client, _ in apps.values() if client.env), None)
    if env:
        msg.environment = env  # the client's env= / INNGEST_ENV, as the official SDK sends it
    return msg


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover
        return 0
