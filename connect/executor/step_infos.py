"""What the run timeline shows of each step (`StepInfo`), decided when its result is stored.

Pure: every time is passed in.

A step a worker ran: its attempts are the attempts of the request that
reported it when it is the first step that request ran, and 1 for a step a
worker went on to run within the same request after storing the one before
it (a checkpoint): a step that fails ends its request, so any retry of it is
the first step of a request of its own. Its times come from the `timing` a
worker reports with the result (this platform's SDK and the TypeScript SDK
send it; see `Opcode.timing`), moved onto the platform's clock: the last step
a message reports is taken to have ended when the message arrived, and the
others keep their distance from it, so durations and gaps are the worker's
and a worker's clock being off does not show. Without `timing` (the official
Python SDK, which runs one step per request), the first step of a request
started when that request's last attempt was minted (a request id is a ULID,
which carries its time) or when it was due if it waited for a retry backoff,
and ended when its result came; a later step of the request has no start
time. A sleep, wait or invoke started when the worker reported it
(`Waiting.since_ms`) and ended when its result was stored, or when the run
ended while it was under way (`StepInfo.ended_by`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from connect.store.base import STEP_RUN, STEP_SEND_EVENT, PendingRequest, StepInfo, Waiting
from protocol.payloads import STEP_TYPE_SEND_EVENT, Opcode

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_NS_PER_MS: Final = 1_000_000

#: `StepInfo.ended_by` of a sleep, wait or invoke its run's end cut short.
ENDED_BY_CANCEL: Final = "cancelled"
ENDED_BY_RUN_END: Final = "run_ended"


def author_name(op: Opcode) -> str:
    """The step's id as its author wrote it: `displayName` (both official SDKs
    and ours send it); a step op without one shows its `name`."""
    return op.displayName or op.name


def kind_of(op: Opcode) -> str:
    """`STEP_SEND_EVENT` for a step that sent events (`opts.type`, as the
    TypeScript SDK and ours mark it; the official Python SDK's
    `step.send_event` is a plain `step.run` on the wire), else `STEP_RUN`."""
    opts = op.opts
    if opts is not None and opts.get("type") == STEP_TYPE_SEND_EVENT:
        return STEP_SEND_EVENT
    return STEP_RUN


def span_ms(op: Opcode) -> tuple[int, int] | None:
    """(start, duration) in ms on the worker's clock from `op.timing`, or None
    when it has none or it is not `{"a": Unix ns >= 0, "b": ns >= 0}`."""
    timing = op.timing
    if not isinstance(timing, dict):
        return None
    start, duration = timing.get("a"), timing.get("b")
    if not isinstance(start, int | float) or not isinstance(duration, int | float) or isinstance(start, bool):
        return None
    if start <= 0 or duration < 0:
        return None
    return int(start // _NS_PER_MS), int(duration // _NS_PER_MS)


def clock_offset(ops: Sequence[Opcode], now_ms: int) -> int | None:
    """What to add to a worker's times in `ops` (one message, which arrived at
    `now_ms`) to put them on the platform's clock: the last step reported
    ended when the message arrived. None when no op carries `timing`."""
    latest: int | None = None
    for op in ops:
        span = span_ms(op)
        if span is not None and (latest is None or span[0] + span[1] > latest):
            latest = span[0] + span[1]
    return None if latest is None else now_ms - latest


def ran(op: Opcode, pending: PendingRequest | None, now_ms: int, *, first: bool, offset: int | None) -> StepInfo:
    """A step a worker ran, reported in a message (arrived at `now_ms`, with
    `clock_offset` `offset`) answering `pending` (None: not known); `first`
    when it is the first step that request ran."""
    name, kind = author_name(op), kind_of(op)
    attempts = 0 if pending is None else (pending.attempt + 1 if first else 1)
    span = span_ms(op) if offset is not None else None
    if span is not None and offset is not None:
        started = span[0] + offset
        return StepInfo(name=name, kind=kind, attempts=attempts, started_ms=started, ended_ms=started + span[1])
    started = max(ulid_ms(pending.request_id), pending.wake_at_ms) if first and pending is not None else 0
    return StepInfo(name=name, kind=kind, attempts=attempts, started_ms=started, ended_ms=now_ms)


def waited(item: Waiting, now_ms: int, ended_by: str = "") -> StepInfo:
    """A sleep, wait or invoke whose result is stored now (`ended_by`: cut
    short by its run's end, `ENDED_BY_CANCEL` or `ENDED_BY_RUN_END`)."""
    return StepInfo(
        name=item.name, kind=item.kind, started_ms=item.since_ms, ended_ms=now_ms, due_ms=item.due_ms, ended_by=ended_by
    )


def ulid_ms(ulid: str) -> int:
    """The Unix ms a ULID was minted at (0 for an id that is not a ULID)."""
    value = 0
    for char in ulid[:10].upper():
        digit = _CROCKFORD.find(char)
        if digit < 0:
            return 0
        value = value * 32 + digit
    return value if len(ulid) == 26 else 0
