"""Protocol constants and limits. Every limit here is documented in the README."""

from __future__ import annotations

from typing import Final

SUBPROTOCOL: Final = "v0.connect.inngest.com"
CONNECT_PATH: Final = "/v0/connect"

#: Largest frame a worker may send (4 MiB step output + 4 MiB step input).
MAX_WORKER_MESSAGE_BYTES: Final = 8 * 1024 * 1024
#: Largest request payload the executor sends to a worker.
MAX_REQUEST_PAYLOAD_BYTES: Final = 4 * 1024 * 1024
#: Seconds a new connection has to send WORKER_CONNECT after GATEWAY_HELLO.
HANDSHAKE_TIMEOUT: Final = 5.0
#: Apps one connection may register.
APPS_PER_CONNECTION: Final = 10
#: Live connections one gateway process accepts (each costs a file descriptor).
MAX_CONNECTIONS: Final = 16_384
#: Live connections sharing one instance id (a drain briefly needs two).
MAX_CONNECTIONS_PER_INSTANCE: Final = 16
#: Largest step output a worker sends back (the rest of a frame is headroom).
MAX_STEP_OUTPUT_BYTES: Final = 4 * 1024 * 1024

HEARTBEAT_INTERVAL: Final = 10.0
#: The gateway closes a connection silent for this many heartbeat intervals.
HEARTBEAT_MISSES_BEFORE_CLOSE: Final = 5
#: The worker declares a connection dead when this many heartbeats are unanswered.
WORKER_HEARTBEATS_OUTSTANDING_LIMIT: Final = 2

LEASE_DURATION: Final = 120.0
LEASE_EXTEND_INTERVAL: Final = 30.0
#: How long the gateway waits for WORKER_REQUEST_ACK after writing a request.
REQUEST_ACK_TIMEOUT: Final = LEASE_DURATION + 5.0
#: How long a worker holds the WORKER_REQUEST_ACKs of new requests back, so
#: that a step finishing sooner sends its ACK and its reply in one write.
ACK_COALESCE_WINDOW: Final = 0.002
#: How long a worker waits for WORKER_REPLY_ACK before falling back to /flush.
REPLY_ACK_TIMEOUT: Final = 5.0

SESSION_TOKEN_TTL: Final = 300.0
DEV_JWT_SECRET: Final = "this-does-not-need-to-be-secret"  # noqa: S105 - public dev secret by design
JWT_ISSUER: Final = "connect.inngest.com"
JWT_AUDIENCE: Final = "gateway.connect.inngest.com"

#: Steps one request may checkpoint (WORKER_CHECKPOINT) before the executor
#: answers "not stored", which ends the request; the next request goes on.
MAX_CHECKPOINTS_PER_REQUEST: Final = 100
#: How long a worker waits for WORKER_CHECKPOINT_ACK before ending the request
#: with the step (as if the checkpoint was refused).
CHECKPOINT_ACK_TIMEOUT: Final = 10.0
