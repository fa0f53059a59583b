"""What the run timeline shows of each step (`StepInfo`), decided when its result is stored.

Pure: every time is passed in. A step a worker ran started when its last
attempt's request was minted (a request id is a ULID, which carries its
time), or when that request was due if it waited for a retry backoff; it
ended when its result came. A sleep, wait or invoke started when the worker
reported it (`Waiting.since_ms`) and ended when its result was stored.
"""

from __future__ import annotations

from connect.store.base import STEP_RUN, PendingRequest, StepInfo, Waiting
from protocol.payloads import Opcode

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def author_name(op: Opcode) -> str:
    """The step's id as its author wrote it: `displayName` (both official SDKs
    and ours send it); a step op without one shows its `name`."""
    return op.displayName or op.name


def ran(op: Opcode, pending: PendingRequest | None, now_ms: int) -> StepInfo:
    """A step a worker ran, answered to `pending` (None: not known)."""
    if pending is None:
        return StepInfo(name=author_name(op), kind=STEP_RUN, ended_ms=now_ms)
    started = max(ulid_ms(pending.request_id), pending.wake_at_ms)
    return StepInfo(
        name=author_name(op), kind=STEP_RUN, attempts=pending.attempt + 1, started_ms=started, ended_ms=now_ms
    )


def waited(item: Waiting, now_ms: int) -> StepInfo:
    """A sleep, wait or invoke whose result is stored now."""
    return StepInfo(name=item.name, kind=item.kind, started_ms=item.since_ms, ended_ms=now_ms, due_ms=item.due_ms)


def ulid_ms(ulid: str) -> int:
    """The Unix ms a ULID was minted at (0 for an id that is not a ULID)."""
    value = 0
    for char in ulid[:10].upper():
        digit = _CROCKFORD.find(char)
        if digit < 0:
            return 0
        value = value * 32 + digit
    return value if len(ulid) == 26 else 0
