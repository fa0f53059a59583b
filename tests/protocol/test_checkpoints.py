"""WORKER_CHECKPOINT and its ACK, driven through both session machines directly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import codes, frames
from protocol import connect_pb2 as pb
from protocol import gateway_session as gs
from protocol import worker_session as ws
from tests.fuzz_settings import fuzz
from tests.protocol.test_gateway_session import T0, closes_with, ready_session
from tests.protocol.test_worker_side import T0 as WORKER_T0
from tests.protocol.test_worker_side import active, session

STEP_OP = b'[{"op": "StepRun", "id": "abc", "data": 1}]'


def checkpoint(request_id: str = "r1") -> bytes:
    return pb.SDKResponse(request_id=request_id, status=pb.NOT_COMPLETED, body=STEP_OP).SerializeToString()


# --- gateway side ------------------------------------------------------------------


def test_gateway_reports_a_checkpoint_with_its_raw_payload() -> None:
    s = ready_session()
    raw = checkpoint("r1")
    (event,) = s.receive(frames.encode(pb.WORKER_CHECKPOINT, raw), T0)
    assert isinstance(event, gs.CheckpointReceived)
    assert (event.response.request_id, event.response.body, event.raw) == ("r1", STEP_OP, raw)
    assert s.phase is gs.Phase.READY
    assert s.data_to_send() == []  # answered by the shell once stored, not by the session


@pytest.mark.parametrize("payload", [b"\xff\xff", checkpoint(request_id="")], ids=["undecodable", "no-request-id"])
def test_gateway_closes_on_a_malformed_checkpoint(payload: bytes) -> None:
    s = ready_session()
    closes_with(
        s.receive(frames.encode(pb.WORKER_CHECKPOINT, payload), T0),
        codes.CloseCode.INTERNAL_ERROR,
        codes.INTERNAL_ERROR,
    )
    assert s.phase is gs.Phase.CLOSED


@pytest.mark.parametrize("stored", [True, False])
def test_gateway_acks_a_checkpoint(stored: bool) -> None:
    s = ready_session()
    s.ack_checkpoint("r1", stored)
    (frame,) = s.data_to_send()
    kind, payload = frames.decode(frame)
    ack = frames.parse_payload(pb.WorkerCheckpointAckData, payload)
    assert (kind, ack.request_id, ack.stored) == (pb.WORKER_CHECKPOINT_ACK, "r1", stored)


def test_gateway_sends_no_checkpoint_ack_once_closed() -> None:
    s = ready_session()
    s.connection_lost(1006, "")
    s.ack_checkpoint("r1", True)
    assert s.data_to_send() == []


@fuzz
@given(st.binary(max_size=128))
def test_gateway_checkpoint_payloads_are_reported_or_close(payload: bytes) -> None:
    s = ready_session()
    for event in s.receive(frames.encode(pb.WORKER_CHECKPOINT, payload), T0):
        if isinstance(event, gs.CheckpointReceived):
            assert event.response.request_id and event.raw == payload
        else:
            assert event == gs.Close(codes.CloseCode.INTERNAL_ERROR, codes.INTERNAL_ERROR, codes.INTERNAL_ERROR)


# --- worker side ---------------------------------------------------------------------


def test_worker_sends_a_checkpoint_only_while_active() -> None:
    s = session()
    assert s.send_checkpoint(checkpoint()) is False  # still handshaking
    assert s.data_to_send() == []

    s = active(paused=True)  # paused: requests in flight still go on
    s.data_to_send()
    assert s.send_checkpoint(checkpoint()) is True
    (frame,) = s.data_to_send()
    assert frames.decode(frame) == (pb.WORKER_CHECKPOINT, checkpoint())

    s.connection_lost()
    assert s.send_checkpoint(checkpoint()) is False
    assert s.data_to_send() == []


@pytest.mark.parametrize("stored", [True, False])
def test_worker_turns_a_checkpoint_ack_into_an_answer(stored: bool) -> None:
    s = active()
    ack = pb.WorkerCheckpointAckData(request_id="r1", stored=stored)
    assert s.receive(frames.encode(pb.WORKER_CHECKPOINT_ACK, ack), WORKER_T0) == [ws.CheckpointAnswer("r1", stored)]


def test_worker_ignores_a_malformed_checkpoint_ack() -> None:
    s = active()
    s.data_to_send()
    assert s.receive(frames.encode(pb.WORKER_CHECKPOINT_ACK, b"\xff\xff"), WORKER_T0) == []
    assert s.phase is ws.WorkerPhase.ACTIVE
    assert s.data_to_send() == []


@fuzz
@given(st.binary(max_size=96))
def test_worker_checkpoint_acks_never_crash(payload: bytes) -> None:
    s = active()
    for event in s.receive(frames.encode(pb.WORKER_CHECKPOINT_ACK, payload), WORKER_T0):
        assert isinstance(event, ws.CheckpointAnswer)
    assert s.phase is ws.WorkerPhase.ACTIVE
