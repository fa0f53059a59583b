"""WorkerSession, WorkerLedger, LeaseTable and intervals, driven directly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocol import connect_pb2 as pb
from protocol import frames, ids, limits
from protocol import worker_session as ws
from protocol.durations import format_interval, parse_interval
from protocol.leases import LeaseTable
from protocol.ledger import Admission, WorkerLedger
from tests.fuzz_settings import fuzz

T0 = 5_000.0


def session(paused: bool = False) -> ws.WorkerSession:
    hello = pb.WorkerConnectRequestData(connection_id=ids.new_ulid(), instance_id="i", worker_manual_readiness_ack=True)
    return ws.WorkerSession(hello, frozenset({"app"}), T0, paused=paused)


def kinds(s: ws.WorkerSession) -> list[int]:
    return [frames.decode(f)[0] for f in s.data_to_send()]


def active(paused: bool = False) -> ws.WorkerSession:
    s = session(paused)
    s.receive(frames.encode(pb.GATEWAY_HELLO), T0)
    ready = pb.GatewayConnectionReadyData(heartbeat_interval="10s", extend_lease_interval="30s")
    events = s.receive(frames.encode(pb.GATEWAY_CONNECTION_READY, ready), T0)
    assert events == [ws.Connected(10.0, 30.0, 0.0)]
    return s


def test_handshake_order() -> None:
    s = session()
    assert s.data_to_send() == []  # nothing before HELLO
    s.receive(frames.encode(pb.GATEWAY_HELLO), T0)
    assert kinds(s) == [pb.WORKER_CONNECT]
    s.receive(frames.encode(pb.GATEWAY_CONNECTION_READY, pb.GatewayConnectionReadyData()), T0)
    assert kinds(s) == [pb.WORKER_READY, pb.WORKER_HEARTBEAT]
    assert s.accepting


def test_reconnect_while_shutting_down_pauses_instead_of_ready() -> None:
    s = active(paused=True)
    assert kinds(s) == [pb.WORKER_CONNECT, pb.WORKER_PAUSE, pb.WORKER_HEARTBEAT]
    req = pb.GatewayExecutorRequestData(request_id="r", app_name="app")
    assert s.receive(frames.encode(pb.GATEWAY_EXECUTOR_REQUEST, req), T0) == [ws.Ignored("r", "paused")]


def test_handshake_timeout() -> None:
    s = session()
    assert s.tick(T0 + 9) == []
    assert s.tick(T0 + 10) == [ws.Dead("handshake timed out")]


def test_request_is_acked_then_executed_and_unknown_app_ignored() -> None:
    s = active()
    s.data_to_send()
    req = pb.GatewayExecutorRequestData(request_id="r1", app_name="app", function_slug="app-f", step_id="step")
    (event,) = s.receive(frames.encode(pb.GATEWAY_EXECUTOR_REQUEST, req), T0)
    assert isinstance(event, ws.Execute)
    (frame,) = s.data_to_send()
    kind, payload = frames.decode(frame)
    ack = frames.parse_payload(pb.WorkerRequestAckData, payload)
    assert kind == pb.WORKER_REQUEST_ACK and ack.request_id == "r1" and ack.step_id == "step"
    other = pb.GatewayExecutorRequestData(request_id="r2", app_name="nope")
    assert s.receive(frames.encode(pb.GATEWAY_EXECUTOR_REQUEST, other), T0) == [ws.Ignored("r2", "unknown app 'nope'")]
    assert s.data_to_send() == []


def test_acks_leave_ahead_of_other_frames_and_are_told_apart() -> None:
    def request(rid: str) -> bytes:
        return frames.encode(pb.GATEWAY_EXECUTOR_REQUEST, pb.GatewayExecutorRequestData(request_id=rid, app_name="app"))

    s = active()
    s.data_to_send()
    s.receive(request("r1"), T0)
    assert not s.more_than_acks  # only an ACK queued: the worker may hold it back
    assert s.send_reply_bytes(b"reply-1")
    s.receive(request("r2"), T0)
    assert s.more_than_acks
    assert kinds(s) == [pb.WORKER_REQUEST_ACK, pb.WORKER_REQUEST_ACK, pb.WORKER_REPLY]
    assert not s.more_than_acks and s.data_to_send() == []


def test_heartbeat_schedule_and_dead_gateway() -> None:
    s = active()
    s.data_to_send()
    assert s.tick(T0 + 9.9) == []
    s.tick(T0 + 10)
    assert kinds(s) == [pb.WORKER_HEARTBEAT]  # 2 outstanding now
    assert s.tick(T0 + 20) == [ws.Dead("gateway heartbeats missed")]


def test_gateway_heartbeat_resets_outstanding() -> None:
    s = active()
    for i in range(1, 6):
        s.receive(frames.encode(pb.GATEWAY_HEARTBEAT), T0 + 10 * i - 1)
        assert s.tick(T0 + 10 * i) == []


def test_pause_sends_worker_pause_once() -> None:
    s = active()
    s.data_to_send()
    s.pause()
    s.pause()
    assert kinds(s) == [pb.WORKER_PAUSE]
    assert not s.accepting


def test_ledger_extensions_replies_and_bound() -> None:
    ledger = WorkerLedger(max_buffer_bytes=10, ack_timeout=5.0)
    req = pb.GatewayExecutorRequestData(request_id="r1", lease_id="L1", step_id="s")
    ledger.accept(req, T0, 30.0)
    assert ledger.due_extensions(T0 + 29, 30.0) == []
    (ext,) = ledger.due_extensions(T0 + 30, 30.0)
    assert ext.lease_id == "L1" and ext.step_id == "s"
    assert ledger.lease_answer("r1", "L2")
    (ext,) = ledger.due_extensions(T0 + 60, 30.0)
    assert ext.lease_id == "L2"
    assert not ledger.lease_answer("r1", None)
    assert ledger.complete("r1", b"123456") == []
    assert ledger.unsent() == [("r1", b"123456")]
    ledger.mark_sent("r1", T0)
    assert ledger.overdue(T0 + 4) == []
    assert ledger.overdue(T0 + 5) == [("r1", b"123456")]
    assert ledger.complete("r2", b"abcdef") == ["r1"]  # bounded: the oldest is evicted
    ledger.acknowledged("r2")
    assert ledger.idle


def test_ledger_replaces_an_unacknowledged_reply_in_place() -> None:
    ledger = WorkerLedger(max_buffer_bytes=100, ack_timeout=5.0)
    ledger.complete("r1", b"done")
    ledger.mark_sent("r1", T0)
    assert ledger.replace("r1", b"the-step")  # the checkpoint ahead of it was refused
    assert ledger.overdue(T0 + 5) == [("r1", b"the-step")]  # still sent at T0: flushed as the step
    ledger.acknowledged("r1")
    assert ledger.idle and not ledger.replace("r1", b"late")
    assert ledger.complete("r2", b"x" * 100) == []  # the buffer's count followed the replacement


def test_a_request_sent_again_is_never_run_twice() -> None:
    """A restarted gateway, or one whose lease on a request lapsed, may send a
    request this worker already runs or has finished."""
    ledger = WorkerLedger(ack_timeout=5.0)
    first = pb.GatewayExecutorRequestData(request_id="r1", lease_id="L1", step_id="s")
    assert ledger.accept(first, T0, 30.0) is Admission.RUN
    ledger.forget("r1")  # the first gateway NACKed an extension: extensions stopped
    assert ledger.due_extensions(T0 + 1000, 30.0) == []

    again = pb.GatewayExecutorRequestData(request_id="r1", lease_id="L9", step_id="s")
    assert ledger.accept(again, T0 + 40, 30.0) is Admission.RUNNING
    assert list(ledger.in_flight) == ["r1"]
    (ext,) = ledger.due_extensions(T0 + 70, 30.0)  # extended again, under the new lease
    assert ext.lease_id == "L9"

    ledger.complete("r1", b"reply")
    ledger.mark_sent("r1", T0 + 80)
    assert ledger.unsent() == []
    assert ledger.accept(again, T0 + 90, 30.0) is Admission.REPLIED
    assert ledger.unsent() == [("r1", b"reply")]  # goes out again instead of running again
    assert "r1" not in ledger.in_flight

    ledger.acknowledged("r1")
    assert ledger.idle
    assert ledger.accept(again, T0 + 100, 30.0) is Admission.RUN  # nothing held: a new execution


def test_lease_table_rotation_replay_and_expiry() -> None:
    table = LeaseTable(duration=120)
    lease = table.grant("r", "inst", T0)
    assert ids.lease_expiry(lease.lease_id) == T0 + 120
    first = lease.lease_id
    extended = table.extend("r", first, "inst", T0 + 30)
    assert extended is not None and extended.lease_id != first
    second = extended.lease_id
    replay = table.extend("r", first, "inst", T0 + 31)  # lost ACK: replay of the previous id
    assert replay is not None and replay.lease_id == second
    assert table.extend("r", second, "other-instance", T0 + 32) is None
    assert table.extend("r", "bogus", "inst", T0 + 33) is None
    assert table.extend("r", second, "inst", T0 + 30 + 121) is None  # lapsed
    assert table.extend("missing", second, "inst", T0) is None


def test_intervals() -> None:
    assert format_interval(limits.HEARTBEAT_INTERVAL) == "10s"
    assert format_interval(0.2) == "1s"
    assert parse_interval("30s", 1) == 30
    assert parse_interval("500ms", 1) == 0.5
    assert parse_interval("1m30s", 1) == 90
    assert parse_interval("", 7) == 7
    assert parse_interval("garbage", 7) == 7


@fuzz
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=20), st.binary(max_size=96)), max_size=12))
def test_worker_session_survives_random_gateway_frames(frames_in: list[tuple[int, bytes]]) -> None:
    s = session()
    for i, (kind, payload) in enumerate(frames_in):
        s.receive(frames.encode(kind, payload), T0 + i)
        s.receive(payload, T0 + i)  # raw bytes too
        s.tick(T0 + i)
        assert len(s.data_to_send()) <= 4


def _executor_request(rid: str, lease: str, run: str = "run-1", step: str = "step") -> pb.GatewayExecutorRequestData:
    return pb.GatewayExecutorRequestData(request_id=rid, lease_id=lease, app_name="app", run_id=run, step_id=step)


def test_a_redispatch_of_a_running_step_is_answered_by_the_running_copy() -> None:
    """After a lease lapses the executor sends the same run's step again under
    a new request id: it is acknowledged, not run; the running copy extends
    the new lease and answers under the new id."""
    s, ledger = active(), WorkerLedger(ack_timeout=5.0)
    s.data_to_send()
    events: list[ws.WorkerEvent] = []
    for req in (_executor_request("r1", "L1"), _executor_request("r2", "L2")):
        events += s.receive(frames.encode(pb.GATEWAY_EXECUTOR_REQUEST, req), T0)
    assert kinds(s) == [pb.WORKER_REQUEST_ACK, pb.WORKER_REQUEST_ACK]  # both dispatches are acknowledged
    admissions = [ledger.accept(e.request, T0, 30.0) for e in events if isinstance(e, ws.Execute)]
    assert admissions == [Admission.RUN, Admission.REDISPATCHED]  # one copy runs
    assert list(ledger.in_flight) == ["r1"] and ledger.running_id("r2") == "r1"

    # The lapsed lease's NACK does not stop the extensions of the new one.
    assert ledger.lease_answer("r1", None)
    (ext,) = ledger.due_extensions(T0 + 30, 30.0)
    assert (ext.request_id, ext.lease_id, ext.run_id, ext.step_id) == ("r2", "L2", "run-1", "step")
    assert ledger.lease_answer("r2", "L3")
    (ext,) = ledger.due_extensions(T0 + 60, 30.0)
    assert (ext.request_id, ext.lease_id) == ("r2", "L3")

    # The running copy's reply (made for r1) answers r2, the dispatch the executor awaits.
    reply = pb.SDKResponse(request_id="r1", run_id="run-1", status=pb.DONE, body=b'"done"')
    assert ledger.complete("r1", reply.SerializeToString()) == []
    assert ledger.held_id("r1") == "r2"
    ((held_id, raw),) = ledger.unsent()
    answer = pb.SDKResponse.FromString(raw)
    assert (held_id, answer.request_id, answer.run_id, answer.body) == ("r2", "r2", "run-1", b'"done"')
    # A checkpoint refused after the reply went out replaces it, still as r2's answer.
    assert ledger.replace("r1", pb.SDKResponse(request_id="r1", body=b"step").SerializeToString())
    ((_, raw),) = ledger.unsent()
    assert pb.SDKResponse.FromString(raw).request_id == "r2"
    assert ledger.accept(_executor_request("r2", "L4"), T0 + 70, 30.0) is Admission.REPLIED

    ledger.acknowledged("r2")
    assert ledger.idle
    # Once replied, the same step's next request (the run's next discovery, a retry) is new work.
    assert ledger.accept(_executor_request("r3", "L5"), T0 + 80, 30.0) is Admission.RUN


def test_only_the_same_step_of_the_same_run_is_a_redispatch() -> None:
    ledger = WorkerLedger(ack_timeout=5.0)
    assert ledger.accept(_executor_request("r1", "L1"), T0, 30.0) is Admission.RUN
    assert ledger.accept(_executor_request("r2", "L2", step="other"), T0, 30.0) is Admission.RUN  # a parallel step
    assert ledger.accept(_executor_request("r3", "L3", run="run-2"), T0, 30.0) is Admission.RUN
    no_step = pb.GatewayExecutorRequestData(request_id="r4", lease_id="L4", app_name="app", run_id="run-1")
    assert ledger.accept(no_step, T0, 30.0) is Admission.RUN  # names no step: known by its request id alone
    assert sorted(ledger.in_flight) == ["r1", "r2", "r3", "r4"]
    ledger.drop("r1")
    assert ledger.accept(_executor_request("r5", "L5"), T0, 30.0) is Admission.RUN  # r1 no longer runs here
    assert ledger.abandon() == 4 and ledger.idle
