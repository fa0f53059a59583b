"""How a stored reply reads back: the store keeps what the worker sent, the
protobuf `SDKResponse`, so a reply reads the same in the gateway that stored
it and in an executor in another process."""

from __future__ import annotations

from connect.dispatch.messages import StepReply
from protocol import connect_pb2 as pb


def reply_from_bytes(raw: bytes) -> StepReply:
    msg = pb.SDKResponse()
    msg.ParseFromString(raw)
    return reply_from_message(msg)


def reply_from_message(msg: pb.SDKResponse) -> StepReply:
    return StepReply(
        request_id=msg.request_id,
        status=int(msg.status),
        body=msg.body,
        no_retry=msg.no_retry,
        retry_after=msg.retry_after if msg.HasField("retry_after") else None,
        sdk_version=msg.sdk_version,
        request_version=msg.request_version,
    )
