"""Events as users write them, and the event API's request and reply shapes.

``Event`` is the shared wire struct: ``Event(name="shop/order.placed", data={...})``;
``id`` and ``ts`` are optional (``""`` and ``0`` mean "let the server choose").
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import msgspec
from ulid import ULID

from connect.sdk.errors import SendEventsError
from connect.sdk.serializer import json_default
from protocol.payloads import Event

__all__ = ["Event", "derived_event_id", "encode_events", "event_id_seed", "parse_send_reply"]


class _OutgoingEvent(msgspec.Struct, omit_defaults=True):
    # `data` has no default so it is always sent, even when empty.
    name: str
    data: dict[str, Any]
    ts: int
    id: str = ""
    user: dict[str, Any] = msgspec.field(default_factory=dict)


class _SendReply(msgspec.Struct):
    ids: list[str] = msgspec.field(default_factory=list)
    status: int | None = None
    error: str | None = None
    message: str | None = None


_reply_decoder = msgspec.json.Decoder(_SendReply)


def normalize(events: Event | Sequence[Event]) -> list[Event]:
    items = [events] if isinstance(events, Event) else list(events)
    for item in items:
        if not isinstance(item, Event):
            raise TypeError(f"expected Event objects, got {type(item).__name__}")
        if not item.name:
            raise ValueError("every event needs a non-empty name")
    return items


def encode_events(events: Sequence[Event], now_ms: int) -> bytes:
    """The JSON array posted to ``/e/{key}``; a zero ``ts`` becomes ``now_ms``, an empty ``id`` is left out.

    ``data`` may be (or hold) pydantic models: they are sent as JSON-mode dumps
    (``connect.sdk.serializer.json_default``); a handler reads them back with
    ``Model.model_validate(ctx.event.data)``."""
    return msgspec.json.encode(
        [_OutgoingEvent(name=e.name, data=e.data, ts=e.ts or now_ms, id=e.id, user=e.user) for e in events],
        enc_hook=json_default,
    )


def derived_event_id(run_id: str, step_hash: str, index: int) -> str:
    """The id of the ``index``-th event a ``send_event`` step sends: a ULID that
    depends only on the run, the step and the position, with the run's time.
    """
    try:
        millis = ULID.from_str(run_id).milliseconds
    except (ValueError, TypeError):
        millis = 0
    digest = hashlib.sha256(f"{run_id}\x1f{step_hash}\x1f{index}".encode()).digest()
    return str(ULID.from_bytes(millis.to_bytes(6, "big") + digest[:10]))


def event_id_seed(now_ms: int) -> str:
    """``x-inngest-event-id-seed``: lets the server derive stable ULIDs for this batch."""
    return f"{now_ms},{base64.b64encode(os.urandom(10)).decode()}"


def parse_send_reply(status: int, body: bytes) -> list[str]:
    """The accepted event ids, or ``SendEventsError`` carrying the server's message."""
    try:
        reply: _SendReply | None = _reply_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        reply = None
    ok = 200 <= status < 300
    if reply is None:
        if ok:
            raise SendEventsError(f"event API answered {status} with an unreadable body: {body[:200]!r}")
        raise SendEventsError(f"event API answered {status}: {body[:200].decode(errors='replace')}")
    if not ok or reply.error:
        message = reply.error or reply.message or f"event API answered {status}"
        raise SendEventsError(message, reply.ids)
    return reply.ids
