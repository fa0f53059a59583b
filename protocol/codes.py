"""Close codes, close reasons (syscodes) and disconnect reasons.

A close reason is always one of these short constant strings (never dynamic
text), so SDKs and operators can match on it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


GATEWAY_CLOSING: Final = "connect_gateway_closing"
HELLO_TIMEOUT: Final = "connect_worker_hello_timeout"
HELLO_INVALID_MSG: Final = "connect_worker_hello_invalid_msg"
HELLO_INVALID_PAYLOAD: Final = "connect_worker_hello_invalid_payload"
AUTHENTICATION_FAILED: Final = "connect_authentication_failed"
TOO_MANY_APPS: Final = "connect_too_many_apps_per_connection"
INVALID_FUNCTION_CONFIG: Final = "connect_invalid_function_config"
REQUEST_ACK_INVALID_PAYLOAD: Final = "connect_worker_request_ack_invalid_payload"
EXTEND_LEASE_INVALID_PAYLOAD: Final = "connect_worker_request_extend_lease_invalid_payload"
INTERNAL_ERROR: Final = "connect_internal_error"
TOO_MANY_CONNECTIONS: Final = "connect_too_many_connections"
TOO_MANY_CONNECTIONS_PER_INSTANCE: Final = "connect_too_many_connections_per_instance"
SLOW_READER: Final = "connect_slow_reader"
PROTOBUF_UNMARSHAL_FAILED: Final = "failed to unmarshal Protobuf"
WORKER_SHUTDOWN: Final = "WORKER_SHUTDOWN"


class DisconnectReason(IntEnum):
    """Why a connection ended, as recorded by the gateway (proto enum values)."""

    WORKER_SHUTDOWN = 0
    UNEXPECTED = 1
    GATEWAY_DRAINING = 2
    CONSECUTIVE_HEARTBEATS_MISSED = 3
    MESSAGE_TOO_LARGE = 4


def classify_worker_close(code: int | None, reason: str) -> DisconnectReason | str:
    """Map a close received from a worker to the recorded disconnect reason.

    An empty reason is UNEXPECTED; 1000/WORKER_SHUTDOWN is the documented
    graceful close; 1001/connect_gateway_closing is a drain; any other
    reason is kept verbatim.
    """
    if code == CloseCode.MESSAGE_TOO_BIG:
        return DisconnectReason.MESSAGE_TOO_LARGE
    if not reason:
        return DisconnectReason.UNEXPECTED
    if code == CloseCode.NORMAL and reason == WORKER_SHUTDOWN:
        return DisconnectReason.WORKER_SHUTDOWN
    if code == CloseCode.GOING_AWAY and reason == GATEWAY_CLOSING:
        return DisconnectReason.GATEWAY_DRAINING
    return reason
