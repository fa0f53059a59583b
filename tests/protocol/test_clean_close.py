"""How `GatewaySession` records a worker's close: neither official SDK names
a reason after its drain, so WORKER_PAUSE, then a close with nothing leased
left, is a clean shutdown."""

from __future__ import annotations

import pytest

from protocol import codes, frames, ids
from protocol import connect_pb2 as pb
from protocol import gateway_session as gs
from tests.protocol.test_gateway_session import T0, ready_session

Reason = codes.DisconnectReason


def paused_session() -> gs.GatewaySession:
    s = ready_session()
    events = s.receive(frames.encode(pb.WORKER_PAUSE), T0 + 1)
    assert any(isinstance(e, gs.Paused) for e in events)
    return s


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1005, ""),  # TypeScript: `ws.close()` with no code
        (1000, ""),  # Python
        (1000, "WORKER_SHUTDOWN"),  # ours
    ],
)
def test_paused_then_closed_with_nothing_leased_is_a_clean_shutdown(code: int, reason: str) -> None:
    s = paused_session()
    s.connection_lost(code, reason, work_left=False)
    assert s.disconnect_reason == Reason.WORKER_SHUTDOWN


def test_paused_then_closed_with_work_still_leased_is_not_clean() -> None:
    s = paused_session()
    s.connection_lost(1000, "", work_left=True)
    assert s.disconnect_reason == Reason.UNEXPECTED


def test_closed_without_a_pause_is_not_clean() -> None:
    s = ready_session()
    s.connection_lost(1000, "", work_left=False)
    assert s.disconnect_reason == Reason.UNEXPECTED


def test_a_socket_that_ends_without_a_close_frame_is_not_clean() -> None:
    s = paused_session()
    s.connection_lost(None, "", work_left=False)
    assert s.disconnect_reason == Reason.UNEXPECTED


def test_a_specific_close_reason_is_kept() -> None:
    s = paused_session()
    s.connection_lost(4001, "UNEXPECTED", work_left=False)
    assert s.disconnect_reason == "UNEXPECTED"
    s = paused_session()
    s.connection_lost(1009, "", work_left=False)
    assert s.disconnect_reason == Reason.MESSAGE_TOO_LARGE


def request(rid: str) -> pb.GatewayExecutorRequestData:
    return pb.GatewayExecutorRequestData(request_id=rid, lease_id=ids.new_ulid())


def reply(rid: str) -> bytes:
    return frames.encode(pb.WORKER_REPLY, pb.SDKResponse(request_id=rid, status=pb.DONE))


def test_requests_sent_are_unanswered_until_their_reply_comes_back() -> None:
    s = ready_session()
    a, b = ids.new_ulid(), ids.new_ulid()
    s.send_request(request(a), T0 + 1)
    s.send_request(request(b), T0 + 1)
    s.receive(frames.encode(pb.WORKER_REQUEST_ACK, pb.WorkerRequestAckData(request_id=a)), T0 + 1.1)
    assert s.unanswered_requests == [a, b]
    s.receive(reply(a), T0 + 2)
    assert s.unanswered_requests == [b]


def test_a_request_never_acked_is_not_the_workers_any_more() -> None:
    s = ready_session()
    rid = ids.new_ulid()
    s.send_request(request(rid), T0 + 1)
    s.receive(frames.encode(pb.WORKER_PAUSE), T0 + 1.1)  # re-routed: AckFailed
    assert s.unanswered_requests == []
    s = ready_session()
    s.send_request(request(rid), T0 + 1)
    due = T0 + 1 + s.config.ack_timeout
    s.receive(frames.encode(pb.WORKER_HEARTBEAT), due - 1)  # alive, but no ACK
    assert gs.AckFailed(rid) in s.tick(due)
    assert s.unanswered_requests == []


def test_a_request_not_acked_before_the_connection_ends_is_left_to_its_lease() -> None:
    """The frame may have reached the worker: the gateway must not run it
    elsewhere at once (`AckLost`, not `AckFailed`)."""
    for end in ("abort", "lost", "violation"):
        s = ready_session()
        rid = ids.new_ulid()
        s.send_request(request(rid), T0 + 1)
        if end == "abort":
            events = s.abort("test")
        elif end == "lost":
            events = s.connection_lost(None, "")
        else:
            events = s.receive(b"\xff not a frame", T0 + 2)
        assert gs.AckLost(rid) in events, end
        assert not any(isinstance(e, gs.AckFailed) for e in events), end


def test_a_draining_gateway_keeps_the_requests_it_sent_the_workers() -> None:
    s = ready_session()
    rid = ids.new_ulid()
    s.send_request(request(rid), T0 + 1)
    assert s.drain() == []
    assert s.unanswered_requests == [rid]
    assert s.receive(frames.encode(pb.WORKER_REQUEST_ACK, pb.WorkerRequestAckData(request_id=rid)), T0 + 2) == [
        gs.RequestAcked(rid)
    ]


def test_unanswered_requests_are_bounded() -> None:
    s = ready_session()
    first = ids.new_ulid()
    s.send_request(request(first), T0)
    for _ in range(gs.MAX_UNANSWERED_TRACKED):
        s.send_request(request(ids.new_ulid()), T0)
    assert len(s.unanswered_requests) == gs.MAX_UNANSWERED_TRACKED
    assert first not in s.unanswered_requests
