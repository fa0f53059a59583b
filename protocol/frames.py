"""Encoding and decoding of connect frames.

A frame is one binary WebSocket message holding one protobuf
`ConnectMessage{kind, payload}`. Note that kind 0 is GATEWAY_HELLO, so an
empty or defaulted message decodes as HELLO.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from protocol import connect_pb2 as pb

Kind = pb.GatewayMessageType
M = TypeVar("M", bound=Message)


class FrameError(ValueError):
    """The bytes are not a ConnectMessage."""


def encode(kind: int, payload: Message | bytes | None = None) -> bytes:
    if payload is None:
        body = b""
    elif isinstance(payload, bytes):
        body = payload
    else:
        body = payload.SerializeToString()
    return pb.ConnectMessage(kind=kind, payload=body).SerializeToString()  # type: ignore[arg-type]


def decode(data: bytes) -> tuple[int, bytes]:
    """Return `(kind, payload bytes)`; raise FrameError on malformed input."""
    msg = pb.ConnectMessage()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise FrameError(str(exc)) from exc
    return int(msg.kind), msg.payload


def parse_payload(cls: type[M], payload: bytes) -> M:
    """Decode a kind-specific payload; raise FrameError on malformed input."""
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise FrameError(str(exc)) from exc
    return msg


E = TypeVar("E", pb.WorkerRequestAckData, pb.WorkerRequestExtendLeaseData)


def echo_request(cls: type[E], req: pb.GatewayExecutorRequestData) -> E:
    """A worker message that echoes a request's identity (ACK, lease extension)."""
    msg = cls(
        request_id=req.request_id,
        account_id=req.account_id,
        env_id=req.env_id,
        app_id=req.app_id,
        function_slug=req.function_slug,
        system_trace_ctx=req.system_trace_ctx,
        user_trace_ctx=req.user_trace_ctx,
        run_id=req.run_id,
    )
    if req.HasField("step_id"):
        msg.step_id = req.step_id
    return msg
