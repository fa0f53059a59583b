"""GatewaySession driven directly: no sockets, time injected."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codes, frames, ids
from protocol import connect_pb2 as pb
from protocol import gateway_session as gs
from tests.fuzz_settings import fuzz

T0 = 1_000.0


def make_session(**kw: object) -> gs.GatewaySession:
    config = gs.GatewaySessionConfig(authenticate=lambda token: token == "good", **kw)  # type: ignore[arg-type]
    return gs.GatewaySession(config, T0)


def fn_config(app: str = "app", fn: str = "f") -> dict[str, object]:
    fq = f"{app}-{fn}"
    return {
        "id": fq,
        "name": fn,
        "triggers": [{"event": "demo/x"}],
        "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "ws", "url": f"wss://connect?fnId={fq}"}}},
    }


def hello(**overrides: object) -> pb.WorkerConnectRequestData:
    msg = pb.WorkerConnectRequestData(
        connection_id=ids.new_ulid(),
        instance_id="host-1",
        auth_data=pb.AuthData(session_token="good", sync_token="sync"),
        capabilities=b'{"connect":"v1"}',
        sdk_language="py",
        sdk_version="1.0",
        framework="connect",
    )
    msg.apps.add(app_name="app", functions=json.dumps([fn_config()]).encode())
    for key, value in overrides.items():
        if key == "apps":
            del msg.apps[:]
            for app in value:  # type: ignore[attr-defined]
                msg.apps.add(**app)
        else:
            setattr(msg, key, value)
    return msg


def connect_frame(**overrides: object) -> bytes:
    return frames.encode(pb.WORKER_CONNECT, hello(**overrides))


def ready_session(manual: bool = False) -> gs.GatewaySession:
    s = make_session()
    s.data_to_send()
    events = s.receive(connect_frame(worker_manual_readiness_ack=manual), T0 + 0.1)
    assert isinstance(events[0], gs.HelloAccepted)
    s.connection_ready(T0 + 0.2)
    s.data_to_send()
    return s


def closes_with(events: list[gs.Event], code: int | None, reason: str) -> None:
    close = [e for e in events if isinstance(e, gs.Close)]
    assert close, f"expected a Close, got {events}"
    assert close[0].code == code
    assert close[0].reason == reason


def test_hello_is_sent_first() -> None:
    s = make_session()
    out = s.data_to_send()
    assert [frames.decode(f)[0] for f in out] == [pb.GATEWAY_HELLO]


def test_valid_handshake_reports_worker_and_ready_intervals() -> None:
    s = make_session(heartbeat_interval=10.0, extend_lease_interval=30.0)
    s.data_to_send()
    (event,) = s.receive(connect_frame(max_worker_concurrency=3), T0 + 1)
    assert isinstance(event, gs.HelloAccepted)
    assert event.hello.instance_id == "host-1"
    assert event.hello.max_worker_concurrency == 3
    assert [f.id for f in event.hello.apps[0].functions] == ["app-f"]
    assert s.phase is gs.Phase.AUTHENTICATED and not s.routable
    assert s.connection_ready(T0 + 1) == [gs.Ready()]
    kind, payload = frames.decode(s.data_to_send()[0])
    assert kind == pb.GATEWAY_CONNECTION_READY
    ready = frames.parse_payload(pb.GatewayConnectionReadyData, payload)
    assert (ready.heartbeat_interval, ready.extend_lease_interval, ready.status_interval) == ("10s", "30s", "0s")
    assert s.routable


def test_handshake_timeout() -> None:
    s = make_session()
    assert s.tick(T0 + 4.9) == []
    closes_with(s.tick(T0 + 5.0), codes.CloseCode.POLICY_VIOLATION, codes.HELLO_TIMEOUT)


def test_first_frame_must_be_worker_connect() -> None:
    s = make_session()
    closes_with(
        s.receive(frames.encode(pb.WORKER_HEARTBEAT), T0), codes.CloseCode.POLICY_VIOLATION, codes.HELLO_INVALID_MSG
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"connection_id": "not-a-ulid"},
        {"instance_id": ""},
        {"apps": []},
    ],
)
def test_invalid_hello_payload(overrides: dict[str, object]) -> None:
    s = make_session()
    closes_with(
        s.receive(connect_frame(**overrides), T0), codes.CloseCode.POLICY_VIOLATION, codes.HELLO_INVALID_PAYLOAD
    )


def test_undecodable_hello_payload() -> None:
    s = make_session()
    frame = frames.encode(pb.WORKER_CONNECT, b"\xff\xff\xff\xff")
    closes_with(s.receive(frame, T0), codes.CloseCode.POLICY_VIOLATION, codes.HELLO_INVALID_PAYLOAD)


def test_bad_session_token() -> None:
    s = make_session()
    bad = hello()
    bad.auth_data.session_token = "forged"
    frame = frames.encode(pb.WORKER_CONNECT, bad)
    closes_with(s.receive(frame, T0), codes.CloseCode.POLICY_VIOLATION, codes.AUTHENTICATION_FAILED)


def test_too_many_apps() -> None:
    s = make_session(apps_per_connection=2)
    apps = [{"app_name": f"a{i}", "functions": b"[]"} for i in range(3)]
    closes_with(s.receive(connect_frame(apps=apps), T0), codes.CloseCode.POLICY_VIOLATION, codes.TOO_MANY_APPS)


def test_bad_function_config() -> None:
    s = make_session()
    apps = [{"app_name": "a", "functions": b'[{"id": 5}]'}]
    closes_with(
        s.receive(connect_frame(apps=apps), T0), codes.CloseCode.POLICY_VIOLATION, codes.INVALID_FUNCTION_CONFIG
    )


def test_garbage_frame_closes_1007() -> None:
    s = make_session()
    closes_with(s.receive(b"\xff\xff\xff", T0), codes.CloseCode.INVALID_PAYLOAD, codes.PROTOBUF_UNMARSHAL_FAILED)


def test_heartbeats_answered_and_watchdog() -> None:
    s = ready_session()
    (event,) = s.receive(frames.encode(pb.WORKER_HEARTBEAT), T0 + 10)
    assert isinstance(event, gs.Heartbeat)
    assert [frames.decode(f)[0] for f in s.data_to_send()] == [pb.GATEWAY_HEARTBEAT]
    assert s.tick(T0 + 59) == []
    events = s.tick(T0 + 60)
    closes_with(events, None, "")
    assert s.disconnect_reason == codes.DisconnectReason.CONSECUTIVE_HEARTBEATS_MISSED


def test_manual_readiness_waits_for_worker_ready() -> None:
    s = ready_session(manual=True)
    assert not s.routable
    s.receive(frames.encode(pb.WORKER_HEARTBEAT), T0 + 1)
    assert s.data_to_send() == []  # no heartbeat replies before readiness
    assert s.receive(frames.encode(pb.WORKER_READY), T0 + 1) == [gs.Ready()]
    assert s.routable


def executor_request(rid: str = "r1") -> pb.GatewayExecutorRequestData:
    return pb.GatewayExecutorRequestData(request_id=rid, app_name="app", function_slug="app-f", lease_id="x")


def test_request_ack_and_timeout() -> None:
    s = ready_session()
    s.send_request(executor_request("r1"), T0)
    s.send_request(executor_request("r2"), T0)
    assert s.pending_acks == 2
    ack = frames.encode(pb.WORKER_REQUEST_ACK, pb.WorkerRequestAckData(request_id="r1"))
    assert s.receive(ack, T0 + 1) == [gs.RequestAcked("r1")]
    s.receive(frames.encode(pb.WORKER_HEARTBEAT), T0 + 120)
    assert s.tick(T0 + 125.1) == [gs.AckFailed("r2")]


def test_pause_fails_pending_and_stops_routing_but_keeps_heartbeats() -> None:
    s = ready_session()
    s.send_request(executor_request("r1"), T0)
    events = s.receive(frames.encode(pb.WORKER_PAUSE), T0 + 1)
    assert events == [gs.Paused(), gs.AckFailed("r1")]
    assert not s.routable
    with pytest.raises(gs.ProtocolViolation):
        s.send_request(executor_request("r2"), T0 + 2)
    s.data_to_send()
    s.receive(frames.encode(pb.WORKER_HEARTBEAT), T0 + 3)
    assert [frames.decode(f)[0] for f in s.data_to_send()] == [pb.GATEWAY_HEARTBEAT]
    # A heartbeat or WORKER_READY never undoes the pause.
    s.receive(frames.encode(pb.WORKER_READY), T0 + 4)
    assert not s.routable


def test_drain_sends_closing_and_rejects_worker_ready() -> None:
    s = ready_session(manual=True)
    events = s.drain()
    closes_with(events, codes.CloseCode.GOING_AWAY, codes.GATEWAY_CLOSING)  # not ready yet: closed at once
    s2 = ready_session()
    assert s2.drain() == []
    assert [frames.decode(f)[0] for f in s2.data_to_send()] == [pb.GATEWAY_CLOSING]
    closes_with(s2.receive(frames.encode(pb.WORKER_READY), T0 + 1), codes.CloseCode.GOING_AWAY, codes.GATEWAY_CLOSING)


def test_extend_lease_requires_ulid() -> None:
    s = ready_session()
    ext = pb.WorkerRequestExtendLeaseData(request_id="r1", lease_id="nope")
    closes_with(
        s.receive(frames.encode(pb.WORKER_REQUEST_EXTEND_LEASE, ext), T0),
        codes.CloseCode.POLICY_VIOLATION,
        codes.EXTEND_LEASE_INVALID_PAYLOAD,
    )
    s2 = ready_session()
    good = pb.WorkerRequestExtendLeaseData(request_id="r1", lease_id=ids.new_ulid())
    (event,) = s2.receive(frames.encode(pb.WORKER_REQUEST_EXTEND_LEASE, good), T0)
    assert isinstance(event, gs.LeaseExtension)
    s2.lease_ack(event.data, None)
    kind, payload = frames.decode(s2.data_to_send()[0])
    nack = frames.parse_payload(pb.WorkerRequestExtendLeaseAckData, payload)
    assert kind == pb.WORKER_REQUEST_EXTEND_LEASE_ACK and not nack.HasField("new_lease_id")


def test_invalid_request_ack_payload() -> None:
    s = ready_session()
    closes_with(
        s.receive(frames.encode(pb.WORKER_REQUEST_ACK, b"\xff\xff"), T0),
        codes.CloseCode.POLICY_VIOLATION,
        codes.REQUEST_ACK_INVALID_PAYLOAD,
    )


def test_reply_is_reported() -> None:
    s = ready_session()
    resp = pb.SDKResponse(request_id="r1", status=pb.DONE, body=b'"ok"')
    (event,) = s.receive(frames.encode(pb.WORKER_REPLY, resp), T0)
    assert isinstance(event, gs.ReplyReceived)
    assert event.response.request_id == "r1"


def test_close_classification() -> None:
    assert codes.classify_worker_close(1000, "WORKER_SHUTDOWN") == codes.DisconnectReason.WORKER_SHUTDOWN
    assert codes.classify_worker_close(1006, "") == codes.DisconnectReason.UNEXPECTED
    assert codes.classify_worker_close(1009, "") == codes.DisconnectReason.MESSAGE_TOO_LARGE
    assert codes.classify_worker_close(4001, "custom") == "custom"


@fuzz
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_frames_never_crash(chunks: list[bytes]) -> None:
    s = make_session()
    for i, chunk in enumerate(chunks):
        events = s.receive(chunk, T0 + i)
        for event in events:
            if isinstance(event, gs.Close):
                assert event.code in (1007, 1008, 1011, None)
        if s.phase is gs.Phase.AUTHENTICATED:
            s.connection_ready(T0 + i)
    s.tick(T0 + 1_000)


@fuzz
@given(st.integers(min_value=0, max_value=20), st.binary(max_size=128))
def test_random_kinds_after_ready_never_crash(kind: int, payload: bytes) -> None:
    s = ready_session()
    s.receive(frames.encode(kind, payload), T0 + 1)
    s.tick(T0 + 2)


@fuzz
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=20), st.binary(max_size=96)), max_size=12))
def test_mutated_frames_after_handshake_keep_state_bounded(frames_in: list[tuple[int, bytes]]) -> None:
    s = ready_session()
    for i, (kind, payload) in enumerate(frames_in):
        for event in s.receive(frames.encode(kind, payload), T0 + i):
            if isinstance(event, gs.Close):
                assert event.reason in {
                    codes.REQUEST_ACK_INVALID_PAYLOAD,
                    codes.EXTEND_LEASE_INVALID_PAYLOAD,
                    codes.INTERNAL_ERROR,
                    codes.GATEWAY_CLOSING,
                }
        assert s.pending_acks == 0  # nothing a worker sends creates gateway state
        assert len(s.data_to_send()) <= 1
