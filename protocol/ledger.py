"""What a worker keeps across sockets: requests in flight and unacknowledged replies.

Sans-I/O with injected time, like the sessions. A reply stays here until the
gateway acknowledges it (WORKER_REPLY_ACK) or `/v0/connect/flush` accepts it.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

from protocol import connect_pb2 as pb
from protocol import frames, limits


@dataclass
class InFlight:
    request: pb.GatewayExecutorRequestData
    lease_id: str
    next_extension: float


class Admission(enum.Enum):
    """What to do with a request the gateway sent (see `WorkerLedger.accept`)."""

    RUN = "run"
    """New here: run it."""
    RUNNING = "running"
    """Already running here (a restarted gateway, or one whose lease lapsed, sent
    it again): its new lease is adopted and its reply will answer both."""
    REPLIED = "replied"
    """Already finished here, the reply not yet acknowledged: send that reply again."""


@dataclass
class PendingReply:
    response: bytes
    sent_at: float | None  # None: not sent on any socket yet


class WorkerLedger:
    """Requests in flight and replies not yet acknowledged, across reconnects.

    The reply buffer is bounded by `max_buffer_bytes`; when a new reply does
    not fit, the oldest unacknowledged replies are evicted (and returned to
    the caller to log), never the new one: a lost old reply is re-run by its
    lease lapsing, which is safe, while the buffer can never grow without bound.
    """

    def __init__(
        self, *, max_buffer_bytes: int = 500 * 1024 * 1024, ack_timeout: float = limits.REPLY_ACK_TIMEOUT
    ) -> None:
        self.in_flight: dict[str, InFlight] = {}
        self.replies: OrderedDict[str, PendingReply] = OrderedDict()
        self.max_buffer_bytes = max_buffer_bytes
        self.ack_timeout = ack_timeout
        self._buffer_bytes = 0

    def accept(self, request: pb.GatewayExecutorRequestData, now: float, interval: float) -> Admission:
        """Take a request; a request id already known here is never run twice."""
        rid = request.request_id
        running = self.in_flight.get(rid)
        if running is not None:
            running.request = request
            running.lease_id = request.lease_id
            running.next_extension = now + interval  # extending again, should a lost lease have stopped it
            return Admission.RUNNING
        held = self.replies.get(rid)
        if held is not None:
            held.sent_at = None
            return Admission.REPLIED
        self.in_flight[rid] = InFlight(request, request.lease_id, now + interval)
        return Admission.RUN

    def due_extensions(self, now: float, interval: float) -> list[pb.WorkerRequestExtendLeaseData]:
        due: list[pb.WorkerRequestExtendLeaseData] = []
        for item in self.in_flight.values():
            if item.next_extension <= now:
                item.next_extension = now + interval
                ext = frames.echo_request(pb.WorkerRequestExtendLeaseData, item.request)
                ext.lease_id = item.lease_id
                due.append(ext)
        return due

    def next_extension(self) -> float | None:
        return min((i.next_extension for i in self.in_flight.values()), default=None)

    def lease_answer(self, request_id: str, new_lease_id: str | None) -> bool:
        """Record an extension answer; False means the lease is lost."""
        item = self.in_flight.get(request_id)
        if item is None:
            return True
        if new_lease_id is None:
            return False
        item.lease_id = new_lease_id
        return True

    def complete(self, request_id: str, response: bytes) -> list[str]:
        """The request finished: hold its reply until acknowledged.
        Returns the ids of replies evicted to stay within the bound."""
        self.in_flight.pop(request_id, None)
        evicted: list[str] = []
        while self.replies and self._buffer_bytes + len(response) > self.max_buffer_bytes:
            rid, old = self.replies.popitem(last=False)
            self._buffer_bytes -= len(old.response)
            evicted.append(rid)
        self.replies[request_id] = PendingReply(response, None)
        self._buffer_bytes += len(response)
        return evicted

    def replace(self, request_id: str, response: bytes) -> bool:
        """Deliver `response` instead of the unacknowledged reply held for the
        request (kept in its place, as sent or not); False if none is held."""
        pending = self.replies.get(request_id)
        if pending is None:
            return False
        self._buffer_bytes += len(response) - len(pending.response)
        pending.response = response
        return True

    def mark_sent(self, request_id: str, now: float) -> None:
        pending = self.replies.get(request_id)
        if pending is not None:
            pending.sent_at = now

    def acknowledged(self, request_id: str) -> None:
        pending = self.replies.pop(request_id, None)
        if pending is not None:
            self._buffer_bytes -= len(pending.response)

    def mark_unsent(self, request_id: str) -> None:
        """Delivery failed: send it again on the next socket."""
        pending = self.replies.get(request_id)
        if pending is not None:
            pending.sent_at = None

    def forget(self, request_id: str) -> None:
        """Stop extending a request whose lease was lost (its code keeps running)."""
        item = self.in_flight.get(request_id)
        if item is not None:
            item.next_extension = float("inf")

    def unsent(self) -> list[tuple[str, bytes]]:
        return [(rid, p.response) for rid, p in self.replies.items() if p.sent_at is None]

    def overdue(self, now: float) -> list[tuple[str, bytes]]:
        """Replies sent but not acknowledged within `ack_timeout`: flush them over HTTP."""
        return [
            (rid, p.response)
            for rid, p in self.replies.items()
            if p.sent_at is not None and now - p.sent_at >= self.ack_timeout
        ]

    @property
    def idle(self) -> bool:
        return not self.in_flight and not self.replies
