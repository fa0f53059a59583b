"""The worker's side of one gateway connection, as a sans-I/O state machine.

One `WorkerSession` lives as long as one WebSocket. What outlives a socket
(requests in flight, their leases, replies not yet acknowledged) is kept in
`WorkerLedger`, so a reconnect or a gateway drain loses nothing.

Phases::

    AWAIT_HELLO -> AWAIT_READY -> ACTIVE -> CLOSED

While ACTIVE the session may be `paused` (WORKER_PAUSE sent): it takes no
new requests but keeps heartbeats, lease extensions and replies flowing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from protocol import connect_pb2 as pb
from protocol import frames, limits
from protocol.durations import parse_interval


class WorkerPhase(IntEnum):
    AWAIT_HELLO = 1
    AWAIT_READY = 2
    ACTIVE = 3
    CLOSED = 4


@dataclass(frozen=True)
class Connected:
    """GATEWAY_CONNECTION_READY arrived; the connection is usable."""

    heartbeat_interval: float
    extend_lease_interval: float
    status_interval: float


@dataclass(frozen=True)
class Execute:
    """Run this request (already ACKed to the gateway)."""

    request: pb.GatewayExecutorRequestData


@dataclass(frozen=True)
class Ignored:
    """An executor request we did not ACK (not ACTIVE, paused, or unknown app)."""

    request_id: str
    why: str


@dataclass(frozen=True)
class ReplyAcked:
    request_id: str


@dataclass(frozen=True)
class CheckpointAnswer:
    """WORKER_CHECKPOINT_ACK: whether the checkpointed step was stored."""

    request_id: str
    stored: bool


@dataclass(frozen=True)
class LeaseAnswer:
    request_id: str
    new_lease_id: str | None  # None: the lease is lost (NACK)


@dataclass(frozen=True)
class GatewayClosing:
    """The gateway drains: open a replacement, then close this socket."""


@dataclass(frozen=True)
class SyncFailed:
    code: str
    message: str


@dataclass(frozen=True)
class Dead:
    """The connection must be considered lost (handshake timeout, missed heartbeats)."""

    why: str


WorkerEvent = (
    Connected | Execute | Ignored | ReplyAcked | CheckpointAnswer | LeaseAnswer | GatewayClosing | SyncFailed | Dead
)


class WorkerSession:
    def __init__(
        self,
        hello: pb.WorkerConnectRequestData,
        app_names: frozenset[str],
        now: float,
        *,
        paused: bool = False,
        handshake_timeout: float = 10.0,
        heartbeat_interval: float | None = None,
    ) -> None:
        self.phase = WorkerPhase.AWAIT_HELLO
        self.paused = paused
        self._hello = hello
        self._apps = app_names
        self._out: list[bytes] = []
        self._acks: list[bytes] = []  # sent ahead of `_out`; the worker may hold them back
        self._handshake_deadline = now + handshake_timeout
        self._heartbeat_override = heartbeat_interval
        self.heartbeat_interval = heartbeat_interval or limits.HEARTBEAT_INTERVAL
        self.extend_lease_interval = limits.LEASE_EXTEND_INTERVAL
        self._next_heartbeat = float("inf")
        self._outstanding_heartbeats = 0

    def data_to_send(self) -> list[bytes]:
        """Every queued frame, request ACKs first (a reply never comes before
        its request's ACK)."""
        out, self._out = self._out, []
        if self._acks:
            out[:0] = self._acks
            self._acks = []
        return out

    @property
    def more_than_acks(self) -> bool:
        """Something besides request ACKs is queued: a write now would not
        just carry ACKs the worker holds back for their replies."""
        return bool(self._out)

    @property
    def accepting(self) -> bool:
        return self.phase is WorkerPhase.ACTIVE and not self.paused

    def next_deadline(self) -> float | None:
        if self.phase is WorkerPhase.CLOSED:
            return None
        if self.phase is WorkerPhase.ACTIVE:
            return self._next_heartbeat
        return self._handshake_deadline

    def receive(self, data: bytes, now: float) -> list[WorkerEvent]:
        if self.phase is WorkerPhase.CLOSED:
            return []
        try:
            kind, payload = frames.decode(data)
        except frames.FrameError:
            return []  # a garbled frame from the gateway is ignored, not fatal
        if self.phase is WorkerPhase.AWAIT_HELLO:
            if kind == pb.GATEWAY_HELLO:
                self._out.append(frames.encode(pb.WORKER_CONNECT, self._hello))
                self.phase = WorkerPhase.AWAIT_READY
            return []
        if self.phase is WorkerPhase.AWAIT_READY:
            if kind == pb.GATEWAY_CONNECTION_READY:
                return self._connection_ready(payload, now)
            if kind == pb.SYNC_FAILED:
                return self._sync_failed(payload)
            return []
        if kind == pb.GATEWAY_EXECUTOR_REQUEST:
            return self._executor_request(payload)
        if kind == pb.WORKER_REPLY_ACK:
            try:
                ack = frames.parse_payload(pb.WorkerReplyAckData, payload)
            except frames.FrameError:
                return []
            return [ReplyAcked(ack.request_id)]
        if kind == pb.WORKER_CHECKPOINT_ACK:
            try:
                cack = frames.parse_payload(pb.WorkerCheckpointAckData, payload)
            except frames.FrameError:
                return []  # the worker's wait times out and the request ends with the step
            return [CheckpointAnswer(cack.request_id, cack.stored)]
        if kind == pb.WORKER_REQUEST_EXTEND_LEASE_ACK:
            try:
                lack = frames.parse_payload(pb.WorkerRequestExtendLeaseAckData, payload)
            except frames.FrameError:
                return []
            new = lack.new_lease_id if lack.HasField("new_lease_id") else None
            return [LeaseAnswer(lack.request_id, new)]
        if kind == pb.GATEWAY_HEARTBEAT:
            self._outstanding_heartbeats = 0
            return []
        if kind == pb.GATEWAY_CLOSING:
            return [GatewayClosing()]
        if kind == pb.SYNC_FAILED:
            return self._sync_failed(payload)
        return []

    def tick(self, now: float) -> list[WorkerEvent]:
        if self.phase is WorkerPhase.CLOSED:
            return []
        if self.phase is not WorkerPhase.ACTIVE:
            if now >= self._handshake_deadline:
                self.phase = WorkerPhase.CLOSED
                return [Dead("handshake timed out")]
            return []
        if now < self._next_heartbeat:
            return []
        if self._outstanding_heartbeats >= limits.WORKER_HEARTBEATS_OUTSTANDING_LIMIT:
            self.phase = WorkerPhase.CLOSED
            return [Dead("gateway heartbeats missed")]
        self._out.append(frames.encode(pb.WORKER_HEARTBEAT))
        self._outstanding_heartbeats += 1
        self._next_heartbeat = now + self.heartbeat_interval
        return []

    def pause(self) -> None:
        """Stop receiving new work (graceful shutdown)."""
        if self.paused:
            return
        self.paused = True
        if self.phase is WorkerPhase.ACTIVE:
            self._out.append(frames.encode(pb.WORKER_PAUSE))

    def send_reply(self, response: pb.SDKResponse) -> bool:
        if self.phase is not WorkerPhase.ACTIVE:
            return False
        self._out.append(frames.encode(pb.WORKER_REPLY, response))
        return True

    def send_reply_bytes(self, response: bytes) -> bool:
        if self.phase is not WorkerPhase.ACTIVE:
            return False
        self._out.append(frames.encode(pb.WORKER_REPLY, response))
        return True

    def send_checkpoint(self, response: bytes) -> bool:
        """Queue WORKER_CHECKPOINT (an `SDKResponse` with one StepRun op)."""
        if self.phase is not WorkerPhase.ACTIVE:
            return False
        self._out.append(frames.encode(pb.WORKER_CHECKPOINT, response))
        return True

    def extend_lease(self, data: pb.WorkerRequestExtendLeaseData) -> bool:
        if self.phase is not WorkerPhase.ACTIVE:
            return False
        self._out.append(frames.encode(pb.WORKER_REQUEST_EXTEND_LEASE, data))
        return True

    def connection_lost(self) -> None:
        self.phase = WorkerPhase.CLOSED

    # --- handlers ------------------------------------------------------------

    def _connection_ready(self, payload: bytes, now: float) -> list[WorkerEvent]:
        try:
            ready = frames.parse_payload(pb.GatewayConnectionReadyData, payload)
        except frames.FrameError:
            ready = pb.GatewayConnectionReadyData()
        if self._heartbeat_override is None:
            self.heartbeat_interval = parse_interval(ready.heartbeat_interval, limits.HEARTBEAT_INTERVAL)
        self.extend_lease_interval = parse_interval(ready.extend_lease_interval, limits.LEASE_EXTEND_INTERVAL)
        status = parse_interval(ready.status_interval, 0.0)
        self.phase = WorkerPhase.ACTIVE
        # Readiness is confirmed by us (manual readiness), so a worker that is
        # already shutting down is never routed new work on this socket.
        if self._hello.worker_manual_readiness_ack:
            self._out.append(frames.encode(pb.WORKER_PAUSE if self.paused else pb.WORKER_READY))
        self._out.append(frames.encode(pb.WORKER_HEARTBEAT))
        self._outstanding_heartbeats = 1
        self._next_heartbeat = now + self.heartbeat_interval
        return [Connected(self.heartbeat_interval, self.extend_lease_interval, status)]

    def _sync_failed(self, payload: bytes) -> list[WorkerEvent]:
        try:
            err = frames.parse_payload(pb.SystemError, payload)
        except frames.FrameError:
            err = pb.SystemError(code="sync_failed")
        return [SyncFailed(err.code, err.message)]

    def _executor_request(self, payload: bytes) -> list[WorkerEvent]:
        try:
            req = frames.parse_payload(pb.GatewayExecutorRequestData, payload)
        except frames.FrameError:
            return []
        if not self.accepting:
            return [Ignored(req.request_id, "paused" if self.paused else "not active")]
        if req.app_name not in self._apps:
            return [Ignored(req.request_id, f"unknown app {req.app_name!r}")]
        ack = frames.echo_request(pb.WorkerRequestAckData, req)
        self._acks.append(frames.encode(pb.WORKER_REQUEST_ACK, ack))
        return [Execute(req)]
