"""The gateway's side of one worker connection, as a sans-I/O state machine.

Feed it received frames (`receive`) and the passing of time (`tick`); it
returns events and queues frames to send (`data_to_send`). It owns the
handshake order and validation, the connection phase, heartbeat deadlines
and the requests waiting for WORKER_REQUEST_ACK. It does no I/O: the asyncio
shell in `connect.gateway` moves bytes and acts on the events.

Phases only move forward::

    HANDSHAKING -> AUTHENTICATED -> READY -> DRAINING -> CLOSED

`AUTHENTICATED` means WORKER_CONNECT was valid and the shell is syncing the
apps; `READY` is the only phase that receives new executor requests;
`DRAINING` (worker paused, or gateway draining) still carries heartbeats,
lease extensions and replies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgspec

from protocol import codes, frames, ids, limits
from protocol import connect_pb2 as pb
from protocol.durations import format_interval
from protocol.payloads import FunctionConfig, FunctionsUnreadable, RefusedFunction, decode_functions


class Phase(IntEnum):
    HANDSHAKING = 1
    AUTHENTICATED = 2
    READY = 3
    DRAINING = 4
    CLOSED = 5


class ProtocolViolation(Exception):
    """An operation that the current phase does not allow (a shell bug)."""


# --- what the session reports ------------------------------------------------


@dataclass(frozen=True)
class AppInfo:
    """One app of a WORKER_CONNECT: the functions it serves, and those it
    registered that were refused (with the reason)."""

    app_name: str
    app_version: str | None
    functions: list[FunctionConfig]
    refused: list[RefusedFunction] = field(default_factory=list)
    #: Per function id, top-level config fields no known SDK sends (kept out).
    unknown_fields: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerHello:
    """A validated WORKER_CONNECT."""

    connection_id: str
    instance_id: str
    apps: list[AppInfo]
    manual_readiness: bool
    max_worker_concurrency: int | None
    sdk_language: str
    sdk_version: str
    framework: str
    environment: str | None
    sync_token: str
    capabilities: dict[str, Any]
    cpu_cores: int = 0
    mem_bytes: int = 0
    os: str = ""


@dataclass(frozen=True)
class HelloAccepted:
    """Handshake valid: sync the apps, then call `connection_ready`."""

    hello: WorkerHello


@dataclass(frozen=True)
class Ready:
    """The connection may now receive executor requests."""


@dataclass(frozen=True)
class RequestAcked:
    request_id: str


@dataclass(frozen=True)
class AckFailed:
    """A forwarded request will never be ACKed on this connection (the
    worker paused, or the ACK timed out): re-route it."""

    request_id: str


@dataclass(frozen=True)
class AckLost:
    """The connection ended before the worker ACKed a forwarded request.

    The frame may have reached the worker (sent just before a network cut, or
    before the worker's close crossed it), and then the worker runs it and
    extends its lease over another connection; so it is not re-routed at
    once, which could run the step twice: its lease decides (see
    `connect.gateway.dispatcher`)."""

    request_id: str


@dataclass(frozen=True)
class ReplyReceived:
    response: pb.SDKResponse
    raw: bytes


@dataclass(frozen=True)
class CheckpointReceived:
    """WORKER_CHECKPOINT: a step of a request still running, to store before
    the worker goes on (answer with `ack_checkpoint`)."""

    response: pb.SDKResponse
    raw: bytes


@dataclass(frozen=True)
class LeaseExtension:
    data: pb.WorkerRequestExtendLeaseData


@dataclass(frozen=True)
class Paused:
    """WORKER_PAUSE: no new work; the socket stays for replies and leases."""


@dataclass(frozen=True)
class Heartbeat:
    pass


@dataclass(frozen=True)
class StatusReport:
    in_flight_request_ids: list[str]
    shutdown_requested: bool


@dataclass(frozen=True)
class Close:
    """Close the connection. `code` None means drop it without a close frame."""

    code: int | None
    reason: str
    disconnect_reason: codes.DisconnectReason | str


Event = (
    HelloAccepted
    | Ready
    | RequestAcked
    | AckFailed
    | AckLost
    | ReplyReceived
    | CheckpointReceived
    | LeaseExtension
    | Paused
    | Heartbeat
    | StatusReport
    | Close
)


@dataclass
class GatewaySessionConfig:
    heartbeat_interval: float = limits.HEARTBEAT_INTERVAL
    heartbeat_misses: int = limits.HEARTBEAT_MISSES_BEFORE_CLOSE
    extend_lease_interval: float = limits.LEASE_EXTEND_INTERVAL
    status_interval: float = 0.0
    handshake_timeout: float = limits.HANDSHAKE_TIMEOUT
    ack_timeout: float = limits.REQUEST_ACK_TIMEOUT
    apps_per_connection: int = limits.APPS_PER_CONNECTION
    #: Decides whether a session token is valid (pure: no I/O).
    authenticate: Callable[[str], bool] = field(default=lambda _token: True)
    #: Why a CEL expression in a function config is invalid, or None; a
    #: function with one is refused (see `decode_functions`). None: unchecked.
    expression_problem: Callable[[str], str | None] | None = None


_STATUS_MIN_GAP = 2.0
#: Requests sent on one connection whose reply did not come back on it, kept
#: to judge its close (see `connection_lost`). A reply that travels another way
#: (`/v0/connect/flush`, another connection) leaves its id here, so the oldest
#: are forgotten past this bound: memory stays bounded on a connection that
#: lives for months.
MAX_UNANSWERED_TRACKED = 10_000


class GatewaySession:
    def __init__(self, config: GatewaySessionConfig, now: float) -> None:
        self.config = config
        self.phase = Phase.HANDSHAKING
        self.hello: WorkerHello | None = None
        self.gateway_draining = False
        self._out: list[bytes] = [frames.encode(pb.GATEWAY_HELLO)]
        self._handshake_deadline = now + config.handshake_timeout
        self._last_heartbeat = now
        self._pending_acks: dict[str, float] = {}
        self._last_status = float("-inf")
        self.disconnect_reason: codes.DisconnectReason | str | None = None
        #: (app, function) refused when the whole connection was (nothing valid remained).
        self.refused_functions: list[tuple[str, RefusedFunction]] = []
        #: WORKER_PAUSE came: the worker is leaving (see `connection_lost`).
        self.paused = False
        #: Requests sent here whose reply has not come back here (an ordered set).
        self._unanswered: dict[str, None] = {}

    # --- output -----------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    @property
    def routable(self) -> bool:
        return self.phase is Phase.READY

    @property
    def pending_acks(self) -> int:
        return len(self._pending_acks)

    @property
    def unanswered_requests(self) -> list[str]:
        """Requests sent on this connection that it has not answered (yet)."""
        return list(self._unanswered)

    @property
    def last_heartbeat(self) -> float:
        """When the worker was last heard from (its last heartbeat, or the handshake step before it)."""
        return self._last_heartbeat

    @property
    def silent_close_at(self) -> float:
        """When `tick` closes the connection as silent, unless a heartbeat
        comes first (after the close: when it would have)."""
        return self._last_heartbeat + self._heartbeat_limit()

    def next_deadline(self) -> float | None:
        """The earliest time `tick` has something to do."""
        if self.phase is Phase.CLOSED:
            return None
        if self.phase is Phase.HANDSHAKING:
            return self._handshake_deadline
        deadline = self._last_heartbeat + self._heartbeat_limit()
        if self._pending_acks:
            deadline = min(deadline, min(self._pending_acks.values()))
        return deadline

    def _heartbeat_limit(self) -> float:
        return self.config.heartbeat_interval * self.config.heartbeat_misses

    # --- input --------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Event]:
        if self.phase is Phase.CLOSED:
            return []
        try:
            kind, payload = frames.decode(data)
        except frames.FrameError:
            return self._close(codes.CloseCode.INVALID_PAYLOAD, codes.PROTOBUF_UNMARSHAL_FAILED)
        if self.phase is Phase.HANDSHAKING:
            return self._receive_hello(kind, payload, now)
        if kind == pb.WORKER_HEARTBEAT:
            return self._heartbeat(now)
        if kind == pb.WORKER_REPLY:
            return self._response(payload, ReplyReceived)
        if kind == pb.WORKER_REQUEST_ACK:
            return self._request_ack(payload)
        if kind == pb.WORKER_CHECKPOINT:
            return self._response(payload, CheckpointReceived)
        if kind == pb.WORKER_REQUEST_EXTEND_LEASE:
            return self._extend_lease(payload)
        if kind == pb.WORKER_READY:
            return self._worker_ready()
        if kind == pb.WORKER_PAUSE:
            return self._pause()
        if kind == pb.WORKER_STATUS:
            return self._status(payload, now)
        return []  # unknown or out-of-place kinds are ignored, as the protocol says

    def tick(self, now: float) -> list[Event]:
        if self.phase is Phase.CLOSED:
            return []
        if self.phase is Phase.HANDSHAKING:
            if now >= self._handshake_deadline:
                return self._close(codes.CloseCode.POLICY_VIOLATION, codes.HELLO_TIMEOUT)
            return []
        if now - self._last_heartbeat >= self._heartbeat_limit():
            return self.abort(codes.DisconnectReason.CONSECUTIVE_HEARTBEATS_MISSED)
        expired = [rid for rid, deadline in self._pending_acks.items() if deadline <= now]
        for rid in expired:
            del self._pending_acks[rid]
            self._unanswered.pop(rid, None)  # re-routed: not this worker's any more
        return [AckFailed(rid) for rid in expired]

    # --- handshake ----------------------------------------------------------------

    def _receive_hello(self, kind: int, payload: bytes, now: float) -> list[Event]:
        policy = codes.CloseCode.POLICY_VIOLATION
        if kind != pb.WORKER_CONNECT:
            return self._close(policy, codes.HELLO_INVALID_MSG)
        try:
            msg = frames.parse_payload(pb.WorkerConnectRequestData, payload)
        except frames.FrameError:
            return self._close(policy, codes.HELLO_INVALID_PAYLOAD)
        if not ids.is_ulid(msg.connection_id) or not msg.instance_id:
            return self._close(policy, codes.HELLO_INVALID_PAYLOAD)
        if not self.config.authenticate(msg.auth_data.session_token):
            return self._close(policy, codes.AUTHENTICATION_FAILED)
        if not msg.apps:
            return self._close(policy, codes.HELLO_INVALID_PAYLOAD)
        if len(msg.apps) > self.config.apps_per_connection:
            return self._close(policy, codes.TOO_MANY_APPS)
        try:
            capabilities = msgspec.json.decode(msg.capabilities) if msg.capabilities else {}
            if not isinstance(capabilities, dict):
                raise msgspec.ValidationError("capabilities must be a JSON object")
        except (msgspec.DecodeError, msgspec.ValidationError):
            return self._close(policy, codes.HELLO_INVALID_PAYLOAD)
        apps: list[AppInfo] = []
        for app in msg.apps:
            if not app.app_name:
                return self._close(policy, codes.HELLO_INVALID_PAYLOAD)
            try:
                # Function by function: one the platform cannot use is refused
                # and the others are served (see `decode_functions`).
                decoded = decode_functions(app.functions, self.config.expression_problem)
            except FunctionsUnreadable:
                return self._close(policy, codes.INVALID_FUNCTION_CONFIG)
            apps.append(
                AppInfo(
                    app_name=app.app_name,
                    app_version=app.app_version if app.HasField("app_version") else None,
                    functions=decoded.functions,
                    refused=decoded.refused,
                    unknown_fields=decoded.unknown_fields,
                )
            )
        refused = [(app.app_name, fn) for app in apps for fn in app.refused]
        if refused and not any(app.functions for app in apps):
            # Nothing left to serve: say why, as a failed sync does.
            self.refused_functions = refused
            reasons = "; ".join(f"{app} {fn.id}: {fn.reason}" for app, fn in refused)
            return self.sync_failed(codes.INVALID_FUNCTION_CONFIG, f"every function was refused: {reasons}")
        self.hello = WorkerHello(
            connection_id=msg.connection_id,
            instance_id=msg.instance_id,
            apps=apps,
            manual_readiness=msg.worker_manual_readiness_ack,
            max_worker_concurrency=(
                msg.max_worker_concurrency
                if msg.HasField("max_worker_concurrency") and msg.max_worker_concurrency > 0
                else None
            ),
            sdk_language=msg.sdk_language,
            sdk_version=msg.sdk_version,
            framework=msg.framework,
            environment=msg.environment if msg.HasField("environment") else None,
            sync_token=msg.auth_data.sync_token,
            capabilities=capabilities,
            cpu_cores=msg.system_attributes.cpu_cores,
            mem_bytes=msg.system_attributes.mem_bytes,
            os=msg.system_attributes.os,
        )
        self.phase = Phase.AUTHENTICATED
        self._last_heartbeat = now
        return [HelloAccepted(self.hello)]

    def connection_ready(self, now: float) -> list[Event]:
        """Apps are synced: send GATEWAY_CONNECTION_READY (and become READY
        unless the worker asked to confirm readiness itself)."""
        if self.phase is not Phase.AUTHENTICATED or self.hello is None:
            raise ProtocolViolation(f"connection_ready in phase {self.phase.name}")
        ready = pb.GatewayConnectionReadyData(
            heartbeat_interval=format_interval(self.config.heartbeat_interval),
            extend_lease_interval=format_interval(self.config.extend_lease_interval),
            status_interval=format_interval(self.config.status_interval),
        )
        self._out.append(frames.encode(pb.GATEWAY_CONNECTION_READY, ready))
        self._last_heartbeat = now
        if self.hello.manual_readiness:
            return []
        self.phase = Phase.READY
        return [Ready()]

    def refuse(self, code: int, reason: str) -> list[Event]:
        """The shell rejects an otherwise valid handshake (e.g. a limit)."""
        return self._close(code, reason)

    def sync_failed(self, code: str, message: str) -> list[Event]:
        """App sync was rejected: tell the worker why, then close 1008 with the code."""
        err = pb.SystemError(code=code, message=message)
        self._out.append(frames.encode(pb.SYNC_FAILED, err))
        return self._close(codes.CloseCode.POLICY_VIOLATION, code)

    # --- steady state -----------------------------------------------------------------

    def _heartbeat(self, now: float) -> list[Event]:
        self._last_heartbeat = now
        if self.phase in (Phase.READY, Phase.DRAINING):
            self._out.append(frames.encode(pb.GATEWAY_HEARTBEAT))
        return [Heartbeat()]

    def _worker_ready(self) -> list[Event]:
        if self.gateway_draining:
            return self._close(codes.CloseCode.GOING_AWAY, codes.GATEWAY_CLOSING)
        if self.phase is not Phase.AUTHENTICATED:
            return []  # already ready, or draining: never undo a drain
        self.phase = Phase.READY
        return [Ready()]

    def _pause(self) -> list[Event]:
        self.paused = True  # also while the gateway drains: the worker is leaving either way
        if self.phase not in (Phase.AUTHENTICATED, Phase.READY):
            return []
        self.phase = Phase.DRAINING
        return [Paused(), *self._fail_pending()]

    def _request_ack(self, payload: bytes) -> list[Event]:
        try:
            msg = frames.parse_payload(pb.WorkerRequestAckData, payload)
        except frames.FrameError:
            return self._close(codes.CloseCode.POLICY_VIOLATION, codes.REQUEST_ACK_INVALID_PAYLOAD)
        if self._pending_acks.pop(msg.request_id, None) is None:
            return []  # late or unknown ACK: harmless
        return [RequestAcked(msg.request_id)]

    def _extend_lease(self, payload: bytes) -> list[Event]:
        try:
            msg = frames.parse_payload(pb.WorkerRequestExtendLeaseData, payload)
        except frames.FrameError:
            return self._close(codes.CloseCode.POLICY_VIOLATION, codes.EXTEND_LEASE_INVALID_PAYLOAD)
        if not ids.is_ulid(msg.lease_id):
            return self._close(codes.CloseCode.POLICY_VIOLATION, codes.EXTEND_LEASE_INVALID_PAYLOAD)
        return [LeaseExtension(msg)]

    def _response(self, payload: bytes, event: type[ReplyReceived | CheckpointReceived]) -> list[Event]:
        """WORKER_REPLY or WORKER_CHECKPOINT: an `SDKResponse` naming its request."""
        try:
            msg = frames.parse_payload(pb.SDKResponse, payload)
        except frames.FrameError:
            return self._close(codes.CloseCode.INTERNAL_ERROR, codes.INTERNAL_ERROR)
        if not msg.request_id:
            return self._close(codes.CloseCode.INTERNAL_ERROR, codes.INTERNAL_ERROR)
        if event is ReplyReceived:
            self._unanswered.pop(msg.request_id, None)
        return [event(msg, payload)]

    def _status(self, payload: bytes, now: float) -> list[Event]:
        if now - self._last_status < _STATUS_MIN_GAP:
            return []
        try:
            msg = frames.parse_payload(pb.WorkerStatusData, payload)
        except frames.FrameError:
            return []  # observability only: a bad status is ignored
        self._last_status = now
        return [StatusReport(list(msg.in_flight_request_ids), msg.shutdown_requested)]

    # --- gateway-initiated ------------------------------------------------------------------

    def send_request(self, request: pb.GatewayExecutorRequestData, now: float) -> int:
        """Queue GATEWAY_EXECUTOR_REQUEST; returns the frame's size. The ACK
        waiter is registered before the frame leaves, so an instant ACK is
        never missed."""
        if self.phase is not Phase.READY:
            raise ProtocolViolation(f"executor request in phase {self.phase.name}")
        self._pending_acks[request.request_id] = now + self.config.ack_timeout
        self._unanswered[request.request_id] = None
        if len(self._unanswered) > MAX_UNANSWERED_TRACKED:
            del self._unanswered[next(iter(self._unanswered))]
        frame = frames.encode(pb.GATEWAY_EXECUTOR_REQUEST, request)
        self._out.append(frame)
        return len(frame)

    def ack_reply(self, request_id: str) -> None:
        if self.phase is Phase.CLOSED:
            return
        self._out.append(frames.encode(pb.WORKER_REPLY_ACK, pb.WorkerReplyAckData(request_id=request_id)))

    def ack_checkpoint(self, request_id: str, stored: bool) -> None:
        if self.phase is Phase.CLOSED:
            return
        ack = pb.WorkerCheckpointAckData(request_id=request_id, stored=stored)
        self._out.append(frames.encode(pb.WORKER_CHECKPOINT_ACK, ack))

    def lease_ack(self, data: pb.WorkerRequestExtendLeaseData, new_lease_id: str | None) -> None:
        """Answer an extension; `new_lease_id` None is a NACK."""
        if self.phase not in (Phase.READY, Phase.DRAINING):
            return
        ack = pb.WorkerRequestExtendLeaseAckData(
            request_id=data.request_id,
            account_id=data.account_id,
            env_id=data.env_id,
            app_id=data.app_id,
            function_slug=data.function_slug,
        )
        if new_lease_id is not None:
            ack.new_lease_id = new_lease_id
        self._out.append(frames.encode(pb.WORKER_REQUEST_EXTEND_LEASE_ACK, ack))

    def close_drained(self) -> list[Event]:
        """The gateway drains and the shell found nothing left in flight on
        this connection: close it now (1001) rather than when the drain ends.
        A worker with nowhere else to go learns at once that this gateway is
        gone, and retries from its first, shortest backoff."""
        if not self.gateway_draining or self.phase is Phase.CLOSED:
            return []
        return self._close(codes.CloseCode.GOING_AWAY, codes.GATEWAY_CLOSING)

    def drain(self) -> list[Event]:
        """The gateway is draining: tell the worker to reconnect elsewhere."""
        self.gateway_draining = True
        if self.phase in (Phase.HANDSHAKING, Phase.AUTHENTICATED):
            return self._close(codes.CloseCode.GOING_AWAY, codes.GATEWAY_CLOSING)
        if self.phase is Phase.CLOSED:
            return []
        self._out.append(frames.encode(pb.GATEWAY_CLOSING))
        self.disconnect_reason = codes.DisconnectReason.GATEWAY_DRAINING
        if self.phase is Phase.READY:
            # Requests sent before GATEWAY_CLOSING stay this worker's: it ACKs
            # and runs them, and the connection stays open until they are
            # answered (re-routing one not ACKed yet could run it twice).
            self.phase = Phase.DRAINING
        return []

    def abort(self, reason: codes.DisconnectReason | str) -> list[Event]:
        """Drop the connection without a close frame (watchdog)."""
        if self.phase is Phase.CLOSED:
            return []
        self._record(reason)
        failed = self._fail_pending(lost=True)
        self.phase = Phase.CLOSED
        return [*failed, Close(None, "", reason)]

    def connection_lost(self, code: int | None, reason: str, *, work_left: bool = True) -> list[Event]:
        """The socket ended (peer close or error).

        `work_left`: whether the worker's instance still holds leased work
        (the shell knows its leases). Neither official SDK names a reason
        when it closes after its drain (TypeScript sends no close code,
        Python 1000 with no reason), so a worker that sent WORKER_PAUSE,
        then closed (with a close frame) once nothing leased to it was left
        has shut down cleanly, whatever its close said: it is recorded as
        WORKER_SHUTDOWN. One that closed with work still leased is not."""
        if self.phase is Phase.CLOSED:
            return []
        reason_seen = codes.classify_worker_close(code, reason)
        if reason_seen == codes.DisconnectReason.UNEXPECTED and self.paused and code is not None and not work_left:
            reason_seen = codes.DisconnectReason.WORKER_SHUTDOWN
        self._record(reason_seen)
        failed = self._fail_pending(lost=True)
        self.phase = Phase.CLOSED
        return failed

    # --- helpers ----------------------------------------------------------------------------

    def _record(self, reason: codes.DisconnectReason | str) -> None:
        # The first specific reason sticks; UNEXPECTED only fills a blank.
        if self.disconnect_reason in (None, codes.DisconnectReason.UNEXPECTED):
            self.disconnect_reason = reason

    def _fail_pending(self, *, lost: bool = False) -> list[Event]:
        """Every request still waiting for its ACK: `AckLost` when the
        connection ends (`lost`), else `AckFailed`."""
        failed: list[Event] = [AckLost(rid) if lost else AckFailed(rid) for rid in self._pending_acks]
        for rid in self._pending_acks:
            self._unanswered.pop(rid, None)  # re-routed: not this worker's any more
        self._pending_acks.clear()
        return failed

    def _close(self, code: int, reason: str) -> list[Event]:
        if self.phase is Phase.CLOSED:
            return []
        failed = self._fail_pending(lost=True)
        self.phase = Phase.CLOSED
        self._record(reason)
        return [*failed, Close(code, reason, reason)]
