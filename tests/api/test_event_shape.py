"""`parse_events`: the nesting, integer and `ts` rules of `/e/`, at their edges."""

from __future__ import annotations

import json

import pytest

from connect.api.events import MAX_EVENT_DEPTH, MAX_INT, MAX_TS, MIN_INT, EventRejected, parse_events


def nested(depth: int) -> dict[str, object]:
    """An object `depth` levels deep: itself, arrays, and an empty object innermost."""
    value: object = {}
    for _ in range(depth - 2):
        value = [value]
    return {"a": value}


def body(**fields: object) -> bytes:
    return json.dumps({"name": "x/y", **fields}).encode()


def rejected(raw: bytes) -> tuple[int, str]:
    with pytest.raises(EventRejected) as caught:
        parse_events(raw, 10 * 1024 * 1024)
    return caught.value.status, caught.value.message


def test_the_edges_that_are_accepted() -> None:
    raw = body(data=nested(MAX_EVENT_DEPTH), user=nested(MAX_EVENT_DEPTH), ts=MAX_TS)
    [event] = parse_events(raw, 1024 * 1024)
    assert event.ts == MAX_TS
    [event] = parse_events(body(data={"hi": MAX_INT, "lo": MIN_INT}, ts=0), 1024)
    assert event.data == {"hi": MAX_INT, "lo": MIN_INT}
    # Brackets inside strings do not nest anything.
    [event] = parse_events(body(data={"s": "[{" * 5000}), 1024 * 1024)
    assert event.data == {"s": "[{" * 5000}


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (body(data=nested(MAX_EVENT_DEPTH + 1)), 400, f"event 0: data is nested deeper than {MAX_EVENT_DEPTH} levels"),
        (body(user=nested(MAX_EVENT_DEPTH + 1)), 400, f"event 0: user is nested deeper than {MAX_EVENT_DEPTH} levels"),
        (
            b'{"name": "x", "data": {"a": ' + b"[" * 9000 + b"]" * 9000 + b"}}",
            400,
            "event data nested deeper than 100 levels",
        ),
        (
            body(data={"n": MAX_INT + 1}),
            400,
            f"event 0: data holds the integer {MAX_INT + 1}, outside the 64-bit range",
        ),
        (
            body(data={"a": [[MIN_INT - 1]]}),
            400,
            f"event 0: data holds the integer {MIN_INT - 1}, outside the 64-bit range",
        ),
        (body(ts=MAX_TS + 1), 400, f"event 0: ts {MAX_TS + 1} is not milliseconds since the epoch (0 to 2**53 - 1)"),
        (b'[{"name": "a"}, {"name": "b", "ts": -1}]', 400, "event 1: ts -1 is not milliseconds since the epoch"),
        (b"  ", 400, "empty body: send a JSON event object or an array of events"),
        (b'{"name": ""}', 400, "event 0 has an empty name"),
    ],
)
def test_what_no_worker_could_decode_is_refused_with_the_reason(raw: bytes, status: int, message: str) -> None:
    got_status, got_message = rejected(raw)
    assert got_status == status and got_message.startswith(message)
