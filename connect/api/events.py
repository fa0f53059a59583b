"""What `POST /e/{key}` accepts: the body decoded and checked, so that every
event stored can be delivered to any worker.

- Nesting: `data` and `user` may nest objects and arrays `MAX_EVENT_DEPTH`
  levels deep (the object itself is level 1). JSON decoders recurse per
  level, and a worker decodes the event inside its request, in a thread
  that already holds frames of its own: msgspec and Python's json (ours and
  the official Python SDK) fail near Python's recursion limit of 1,000
  levels. The limit stays far below that.
- Integers in `data` and `user` fit in 64 bits (signed or unsigned), as the
  stores and the Go and TypeScript SDKs need; `ts` is milliseconds since
  the epoch, 0 to 2**53 - 1 (what a JavaScript number holds exactly).

Every refusal is an `EventRejected` with the status and the reason.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from protocol.payloads import IncomingEvent

MAX_EVENT_DEPTH: Final = 100
MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**64 - 1
MAX_TS: Final = 2**53 - 1

_decoder = msgspec.json.Decoder(list[IncomingEvent] | IncomingEvent)
# An integer outside 64 bits has at least 19 digits; a body without such a run needs no walk for them.
_LONG_DIGITS = re.compile(rb"\d{19,}")


class EventRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_events(body: bytes, max_event_bytes: int) -> list[IncomingEvent]:
    """The events of a `/e/` body, each checked; `EventRejected` for the first that is not acceptable."""
    if not body.strip():
        raise EventRejected(400, "empty body: send a JSON event object or an array of events")
    try:
        decoded = _decoder.decode(body)
    except RecursionError:
        raise EventRejected(400, f"event data nested deeper than {MAX_EVENT_DEPTH} levels") from None
    except msgspec.ValidationError as exc:
        raise EventRejected(400, f"invalid event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise EventRejected(400, f"malformed JSON: {exc}") from None
    events = decoded if isinstance(decoded, list) else [decoded]
    # Cheap filters on the raw bytes (brackets inside strings count too): most
    # bodies cannot nest too deep nor hold a long integer, and skip the walk.
    walk = body.count(b"{") + body.count(b"[") > MAX_EVENT_DEPTH or _LONG_DIGITS.search(body) is not None
    for i, event in enumerate(events):
        if not event.name:
            raise EventRejected(400, f"event {i} has an empty name")
        if event.ts is not None and not 0 <= event.ts <= MAX_TS:
            raise EventRejected(400, f"event {i}: ts {event.ts} is not milliseconds since the epoch (0 to 2**53 - 1)")
        if walk:
            for field in ("data", "user"):
                problem = _check_value(getattr(event, field), field)
                if problem is not None:
                    raise EventRejected(400, f"event {i}: {problem}")
        size = len(msgspec.json.encode(event))
        if size > max_event_bytes:
            raise EventRejected(413, f"event {i} is {size} bytes; the limit is {max_event_bytes}")
    return events


def _check_value(value: Any, field: str) -> str | None:
    """Why `value` cannot be delivered, or None; iterative, so any depth is safe to walk."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_EVENT_DEPTH:
                return f"{field} is nested deeper than {MAX_EVENT_DEPTH} levels"
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, int) and not isinstance(item, bool) and not MIN_INT <= item <= MAX_INT:
            return f"{field} holds the integer {item}, outside the 64-bit range"
    return None
