"""What arrives in a runner's inbox: replies, dispatch outcomes, wake-ups,
cancellations. The runner handles them one at a time (see `connect.executor.runner`)."""

from __future__ import annotations

from dataclasses import dataclass

from connect.dispatch import DispatchError, StepReply


@dataclass(frozen=True, slots=True)
class Resolved:
    """A waiting step's memo is stored (by a timer, an event or a finished child)."""

    step: str
    memo: bytes


@dataclass(frozen=True, slots=True)
class CancelRequested:
    reason: str


@dataclass(frozen=True, slots=True)
class Replied:
    request_id: str
    reply: StepReply
    #: `time.perf_counter()` when the request was dispatched (the step duration's start).
    sent_at: float = 0.0


@dataclass(frozen=True, slots=True)
class DispatchFailed:
    request_id: str
    error: DispatchError


@dataclass(frozen=True, slots=True)
class Oversized:
    request_id: str
    size: int


@dataclass(frozen=True, slots=True)
class StartTimedOut:
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class TaskCrashed:
    error: BaseException


Message = Resolved | CancelRequested | Replied | DispatchFailed | Oversized | StartTimedOut | TaskCrashed
