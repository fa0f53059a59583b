"""The ops a worker reports that the executor carries out itself: sleeps,
waits for events, invokes; and the rules on what may be reported together.

An op that cannot be carried out raises `RunFails`, which fails the run with
the error it names (never a retry: the same code would report it again).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from connect.executor import replies
from connect.executor.expressions import compiled
from connect.executor.sleeps import MAX_SLEEP, wake_time
from connect.executor.system_events import FUNCTION_FINISHED, correlation_id, invoked_event
from connect.executor.triggers import FunctionInfo, Target
from connect.store.base import WAIT_EVENT, WAIT_INVOKE, WAIT_SLEEP, RunRecord, StepInfo, StepMemo, Waiting
from protocol.durations import parse_duration
from protocol.payloads import OP_RUN_COMPLETE, OP_STEP, OP_STEP_PLANNED, OP_STEP_RUN, Event, Opcode

#: How long a wait or an invoke without a timeout lasts (as the reference executor).
DEFAULT_WAIT: float = MAX_SLEEP


class RunFails(Exception):
    """Processing a reply found that the run cannot go on (an invalid op)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.error = replies.error(name, message)


class Functions(Protocol):
    """Where an invoke looks up the function it names."""

    def lookup(self, function_id: str) -> FunctionInfo | None: ...
    def refusal(self, function_id: str) -> str | None: ...


def steps_before_run_complete(
    ops: list[Opcode], known: Mapping[str, object], describe: Callable[[Opcode], StepInfo]
) -> list[StepMemo]:
    """The new step results reported before `RunComplete`, which must be
    the last op and follow nothing but step results (`RunFails` otherwise);
    `describe` gives each its `StepInfo`."""
    if ops[-1].op != OP_RUN_COMPLETE:
        raise RunFails("UnsupportedOpcode", f"RunComplete must be the last op, not followed by {ops[-1].op}")
    memos: list[StepMemo] = []
    for op in ops[:-1]:
        if op.op in (OP_STEP_RUN, OP_STEP):
            if op.id not in known:
                memos.append(StepMemo(op.id, replies.data_memo(op), describe(op)))
        elif op.op != OP_STEP_PLANNED:
            raise RunFails("UnsupportedOpcode", f"opcode {op.op} reported together with RunComplete")
    return memos


def invoke(
    op: Opcode, run: RunRecord, functions: Functions, now_ms: int
) -> tuple[Waiting | None, StepMemo | None, tuple[Event, Target] | None]:
    opts = op.opts or {}
    function_id = opts.get("function_id")
    if not isinstance(function_id, str) or not function_id:
        raise RunFails("InvalidInvoke", f"invoke {op.name or op.id}: opts.function_id is missing")
    payload = opts.get("payload") or {}
    data = payload.get("data") if isinstance(payload, dict) else None
    if data is not None and not isinstance(data, dict):
        raise RunFails("InvalidInvoke", f"invoke {op.name or op.id}: payload.data must be an object")
    timeout = duration(opts.get("timeout"), f"invoke {op.name or op.id}: timeout")
    info = functions.lookup(function_id)
    if info is None:
        refused = functions.refusal(function_id)
        err = replies.error(
            "FunctionNotFoundError",
            f"no registered function has the id {function_id!r}; a worker serving it must connect first"
            if refused is None
            else f"function {function_id!r} was refused at registration: {refused}",
        )
        ended = StepInfo(name=op.displayName, kind=WAIT_INVOKE, started_ms=now_ms, ended_ms=now_ms)
        return None, StepMemo(op.id, replies.error_memo(err), ended), None
    expire_ms = now_ms + int(timeout * 1000)
    child = invoked_event(
        parent_run_id=run.run_id,
        parent_function_id=run.function_id,
        parent_app=run.app_name,
        step_hash=op.id,
        function_id=function_id,
        data=data,
        expire_ms=expire_ms,
        now_ms=now_ms,
    )
    item = Waiting(
        kind=WAIT_INVOKE,
        step=op.id,
        due_ms=expire_ms,
        event=FUNCTION_FINISHED,
        correlation_id=correlation_id(run.run_id, op.id),
        name=op.displayName,
        since_ms=now_ms,
    )
    return item, None, (child, info.target)


def sleep_entry(op: Opcode, now: float) -> Waiting:
    try:
        wake = wake_time(op, now)
    except ValueError as exc:
        raise RunFails("InvalidSleep", str(exc)) from exc
    # Rounded up (less a float's error on a whole millisecond): a sleep never wakes early.
    due_ms = math.ceil(wake * 1000 - 1e-3)
    return Waiting(kind=WAIT_SLEEP, step=op.id, due_ms=due_ms, name=op.displayName, since_ms=int(now * 1000))


def wait_entry(op: Opcode, now_ms: int) -> Waiting:
    opts = op.opts or {}
    # The Python SDK names the event in `name`; others send `opts.event`.
    event = opts.get("event") or op.name
    if not isinstance(event, str) or not event:
        raise RunFails("InvalidWait", f"wait {op.id}: no event name")
    expression = opts.get("if") or None
    if expression is not None and not isinstance(expression, str):
        raise RunFails("InvalidWait", f"wait {op.id}: `if` must be a string")
    if expression is not None:
        try:
            compiled(expression)
        except ValueError as exc:
            raise RunFails("InvalidWaitExpression", str(exc)) from exc
    timeout = duration(opts.get("timeout"), f"wait {op.id}: timeout")
    return Waiting(
        kind=WAIT_EVENT,
        step=op.id,
        due_ms=now_ms + int(timeout * 1000),
        event=event,
        expression=expression,
        name=op.displayName,
        since_ms=now_ms,
    )


def duration(value: Any, what: str) -> float:
    if value is None:
        return DEFAULT_WAIT
    seconds = parse_duration(value) if isinstance(value, str) else None
    if seconds is None:
        raise RunFails("InvalidDuration", f"{what} {value!r} is not a duration such as '30s'")
    return min(seconds, DEFAULT_WAIT)
