"""What a worker keeps across sockets: requests in flight and unacknowledged replies.

Sans-I/O with injected time, like the sessions. A reply stays here until the
gateway acknowledges it (WORKER_REPLY_ACK) or `/v0/connect/flush` accepts it.

A step never runs twice at once here. A request is known by its request id,
and also by the step it runs, `(run_id, step_id)`: after a lease lapses the
executor dispatches the same step again under a new request id (and lease).
Such a re-dispatch of a step running here is not run: it is adopted by the
running copy, whose lease extensions and reply then carry the newest
request's id and lease, since that is the dispatch the executor awaits (the
older one lapsed). Only steps in flight are matched this way: once a reply
is handed back, a new request for the same step (the next discovery of the
run, a retry) is new work, whatever replies are still unacknowledged.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from protocol import connect_pb2 as pb
from protocol import frames, limits

StepKey = tuple[str, str]


@dataclass
class InFlight:
    """A request running here, keyed in `WorkerLedger.in_flight` by the id it
    runs under; `request` is the newest dispatch of its step (that id, or a
    re-dispatch's), whose lease is extended and whose id its reply carries."""

    request: pb.GatewayExecutorRequestData
    lease_id: str
    next_extension: float


def step_key(request: pb.GatewayExecutorRequestData) -> StepKey | None:
    """The step a request runs, if it names one: what a re-dispatch shares with the lapsed request."""
    if not request.run_id or not request.HasField("step_id"):
        return None
    return (request.run_id, request.step_id)


def answering(response: bytes, request_id: str) -> bytes:
    """`response` (a serialized `SDKResponse`) as the answer to `request_id`."""
    msg = pb.SDKResponse()
    try:
        msg.ParseFromString(response)
    except DecodeError:
        return response  # not ours to fix: delivered as it is
    if msg.request_id == request_id:
        return response
    msg.request_id = request_id
    return msg.SerializeToString()


class Admission(enum.Enum):
    """What to do with a request the gateway sent (see `WorkerLedger.accept`)."""

    RUN = "run"
    """New here: run it."""
    RUNNING = "running"
    """Already running here (a restarted gateway, or one whose lease lapsed, sent
    it again): its new lease is adopted and its reply will answer both."""
    REDISPATCHED = "redispatched"
    """A new request id for a step running here under another (its lease lapsed
    and the executor dispatched the step again): not run a second time; the
    running copy answers it, under its id and lease."""
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
        # The running request id of each step in flight, and of each re-dispatch it adopted.
        self._by_step: dict[StepKey, str] = {}
        self._adopted: dict[str, str] = {}
        # Running id -> the id its reply is held under, when a re-dispatch changed it.
        self._held_as: dict[str, str] = {}

    def accept(self, request: pb.GatewayExecutorRequestData, now: float, interval: float) -> Admission:
        """Take a request; a request id already known here, or a new one for a
        step running here, is never run twice."""
        rid = request.request_id
        running = self._running(rid)
        admission = Admission.RUNNING
        if running is None:
            held = self.replies.get(rid)
            if held is not None:
                held.sent_at = None
                return Admission.REPLIED
            key = step_key(request)
            running_id = self._by_step.get(key) if key is not None else None
            if running_id is None:
                self.in_flight[rid] = InFlight(request, request.lease_id, now + interval)
                if key is not None:
                    self._by_step[key] = rid
                return Admission.RUN
            self._adopted[rid] = running_id
            running = self.in_flight[running_id]
            admission = Admission.REDISPATCHED
        running.request = request
        running.lease_id = request.lease_id
        running.next_extension = now + interval  # extending again, should a lost lease have stopped it
        return admission

    def running_id(self, request_id: str) -> str | None:
        """The id under which the request (or the step it re-dispatches) runs here, if it does."""
        rid = self._adopted.get(request_id, request_id)
        return rid if rid in self.in_flight else None

    def held_id(self, request_id: str) -> str:
        """The id the reply of request `request_id` (as it runs here) is held under."""
        return self._held_as.get(request_id, request_id)

    def _running(self, request_id: str) -> InFlight | None:
        rid = self.running_id(request_id)
        return None if rid is None else self.in_flight[rid]

    def _current(self, request_id: str) -> InFlight | None:
        """The running entry whose newest dispatch is `request_id`: answers
        about an older dispatch of a step (its lease lapsed) change nothing."""
        item = self._running(request_id)
        return item if item is not None and item.request.request_id == request_id else None

    def drop(self, request_id: str) -> None:
        """Forget a request that will not run here after all (its lease lets it run elsewhere)."""
        item = self.in_flight.pop(request_id, None)
        if item is not None:
            self._unindex(request_id, item)

    def abandon(self) -> int:
        """Forget everything (the drain deadline passed); how many requests and replies that was."""
        count = len(self.in_flight) + len(self.replies)
        self.in_flight.clear()
        self.replies.clear()
        self._by_step.clear()
        self._adopted.clear()
        self._held_as.clear()
        self._buffer_bytes = 0
        return count

    def _unindex(self, request_id: str, item: InFlight) -> None:
        key = step_key(item.request)
        if key is not None and self._by_step.get(key) == request_id:
            del self._by_step[key]
        for newer in [n for n, r in self._adopted.items() if r == request_id]:
            del self._adopted[newer]

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
        """Record an extension answer; False means the lease is lost. An
        answer about a dispatch a newer one replaced is ignored."""
        item = self._current(request_id)
        if item is None:
            return True
        if new_lease_id is None:
            return False
        item.lease_id = new_lease_id
        return True

    def complete(self, request_id: str, response: bytes) -> list[str]:
        """The request finished: hold its reply until acknowledged, as the
        answer to the newest dispatch of its step (`held_id`). Returns the
        ids of replies evicted to stay within the bound."""
        item = self.in_flight.pop(request_id, None)
        reply_id = request_id
        if item is not None:
            self._unindex(request_id, item)
            reply_id = item.request.request_id
            if reply_id != request_id:
                self._held_as[request_id] = reply_id
                response = answering(response, reply_id)
        evicted: list[str] = []
        while self.replies and self._buffer_bytes + len(response) > self.max_buffer_bytes:
            rid, old = self.replies.popitem(last=False)
            self._buffer_bytes -= len(old.response)
            self._release(rid)
            evicted.append(rid)
        self.replies[reply_id] = PendingReply(response, None)
        self._buffer_bytes += len(response)
        return evicted

    def _release(self, reply_id: str) -> None:
        for running in [r for r, held in self._held_as.items() if held == reply_id]:
            del self._held_as[running]

    def replace(self, request_id: str, response: bytes) -> bool:
        """Deliver `response` instead of the unacknowledged reply held for the
        request (kept in its place, as sent or not); False if none is held."""
        reply_id = self.held_id(request_id)
        pending = self.replies.get(reply_id)
        if pending is None:
            return False
        response = answering(response, reply_id) if reply_id != request_id else response
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
            self._release(request_id)

    def mark_unsent(self, request_id: str) -> None:
        """Delivery failed: send it again on the next socket."""
        pending = self.replies.get(request_id)
        if pending is not None:
            pending.sent_at = None

    def forget(self, request_id: str) -> None:
        """Stop extending a request whose lease was lost (its code keeps running)."""
        item = self._current(request_id)
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

    @property
    def buffered_bytes(self) -> int:
        """The size of the replies held until acknowledged (bounded by `max_buffer_bytes`)."""
        return self._buffer_bytes
