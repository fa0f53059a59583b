"""Reading what a worker answered, and the JSON the executor stores from it.

Errors are kept in the one shape SDKs read back from memos and the REST API
shows: `{"name", "message", "stack"}`, with `stack` left out when there is
none (the TypeScript SDK reads a `null` stack as a malformed error and shows
"Unknown error").
"""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.payloads import ErrorInfo, Opcode

_ops_decoder = msgspec.json.Decoder(list[Opcode] | Opcode)
_error_decoder = msgspec.json.Decoder(ErrorInfo)
_encode = msgspec.json.Encoder().encode


class UnreadableReply(ValueError):
    """A reply body that is not what its status promises."""


def parse_ops(body: bytes) -> list[Opcode]:
    """The opcodes of a NOT_COMPLETED body: an array, or (older SDKs) one object."""
    try:
        decoded = _ops_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise UnreadableReply(f"the worker's step report could not be read: {exc}") from exc
    return decoded if isinstance(decoded, list) else [decoded]


def result_json(body: bytes) -> bytes:
    """A DONE body, checked to be JSON (an empty body is `null`)."""
    if not body.strip():
        return b"null"
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise UnreadableReply(f"the worker's result is not valid JSON: {exc}") from exc
    return body


def error(name: str, message: str, stack: str | None = None) -> dict[str, Any]:
    if stack is None:
        return {"name": name, "message": message}
    return {"name": name, "message": message, "stack": stack}


def error_from_body(body: bytes) -> dict[str, Any]:
    """The error object of an ERROR body; a body that is not one becomes the message."""
    try:
        info = _error_decoder.decode(body)
    except msgspec.DecodeError:
        text = body.decode("utf-8", errors="replace").strip()
        return error("Error", text or "the worker reported an error without details")
    return error(info.name, info.message, info.stack)


def error_from_op(op: Opcode) -> dict[str, Any]:
    if op.error is None:
        return error("Error", f"step {op.name or op.id} failed without error details")
    return error(op.error.name, op.error.message, op.error.stack)


def data_memo(op: Opcode) -> bytes:
    """`{"data": ...}` for a step result.

    The legacy `Step` opcode may carry a result that is already wrapped
    (`{"data": ...}` or `{"error": ...}`); it is stored as sent.
    """
    data = op.data
    if op.op == "Step" and isinstance(data, dict) and data and set(data) <= {"data", "error"}:
        return _encode(data)
    return _encode({"data": data})


def error_memo(err: dict[str, Any]) -> bytes:
    return _encode({"error": err})


def encode(value: Any) -> bytes:
    return _encode(value)
