"""A `Dispatcher` that plays a worker for executor tests.

Functions are plain Python callables `fn(step, ctx) -> result` that replay
from the top on every request, like SDK handlers: `step.run(id, body)`
returns a memo or runs the body (at most one per request) and reports it,
`step.sleep(id, seconds)` reports a Sleep, `step.wait_for_event(...)` and
`step.invoke(...)` report theirs, `step.parallel([...])` reports planned
steps and `step.group([callables])` collects whatever its callables report,
as the official SDK's `group.parallel` does. Replies are kept in the real store (`put_reply`/`get_reply`),
as the gateway does, so a reply stored before an executor restart is
returned to the restarted executor without running the step again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from connect.dispatch import (
    AtCapacity,
    CheckpointReceiver,
    ExecutorMessage,
    NoWorker,
    StepReply,
    StepRequest,
    WorkerStoppedResponding,
)
from connect.store import ReplyStore
from protocol.payloads import STATUS_DONE, STATUS_ERROR, STATUS_NOT_COMPLETED

#: When each (user) step id last executed, for ordering assertions.
EXECUTED_AT: dict[str, float] = {}


def h(step_id: str) -> str:
    return hashlib.sha1(step_id.encode()).hexdigest()


class NonRetriable(Exception):
    pass


class RetryAfter(Exception):
    def __init__(self, message: str, retry_after: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StepErrorRaised(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.error = error


class _Report(BaseException):
    def __init__(self, ops: list[dict[str, Any]]) -> None:
        self.ops = ops


class _Skip(BaseException):
    pass


def _op(op: str, step_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "op": op,
        "id": h(step_id),
        "name": step_id,
        "displayName": step_id,
        "opts": None,
        "userland": {"id": step_id, "index": None},
        "data": None,
        **extra,
    }


@dataclass
class Ctx:
    attempt: int
    event: dict[str, Any]
    run_id: str
    events: list[dict[str, Any]] = field(default_factory=list)


class Step:
    def __init__(self, request: dict[str, Any], target: str, executions: Counter[str]) -> None:
        self._memos: dict[str, Any] = request["steps"]
        self._target = target
        self._ctx = request["ctx"]
        self._executions = executions
        self._in_group = False

    def _report(self, op: dict[str, Any]) -> Any:
        if self._in_group and self._target != "step" and self._target != op["id"]:
            raise _Skip
        raise _Report([op])

    def _memo(self, step_id: str) -> tuple[bool, Any]:
        key = h(step_id)
        if key not in self._memos:
            return False, None
        memo = self._memos[key]
        # As the SDKs read memos: only an object with no keys but data/error is a wrapper.
        wrapped = isinstance(memo, dict) and memo and set(memo) <= {"data", "error"}
        if wrapped and "error" in memo:
            raise StepErrorRaised(memo["error"])
        if wrapped:
            return True, memo.get("data")
        return True, memo

    def _execute(self, step_id: str, body: Callable[[int], Any]) -> dict[str, Any]:
        self._executions[step_id] += 1
        EXECUTED_AT[step_id] = time.monotonic()
        attempt = self._ctx["attempt"]
        try:
            return _op("StepRun", step_id, data=body(attempt))
        except Exception as exc:
            last = attempt + 1 >= self._ctx["max_attempts"]
            err = {"name": type(exc).__name__, "message": str(exc), "stack": "tb", "code": "step_errored"}
            return _op("StepFailed" if last else "StepError", step_id, error=err)

    def run(self, step_id: str, body: Callable[[int], Any]) -> Any:
        found, value = self._memo(step_id)
        if found:
            return value
        if self._target != "step" and self._target != h(step_id):
            if self._in_group:
                raise _Skip
            raise RuntimeError(f"step {step_id} reached while targeting {self._target}")
        if self._target == "step" and (self._ctx["disable_immediate_execution"] or self._in_group):
            raise _Report([_op("StepPlanned", step_id)])
        raise _Report([self._execute(step_id, body)])

    def sleep(self, step_id: str, seconds: float) -> None:
        found, _ = self._memo(step_id)
        if found:
            return
        wake = datetime.now(UTC) + timedelta(seconds=seconds)
        wake += timedelta(microseconds=-wake.microsecond % 1000)  # whole milliseconds, rounded up
        self._report(_op("Sleep", step_id, name=wake.isoformat(timespec="milliseconds").replace("+00:00", "Z")))

    def wait_for_event(self, step_id: str, event: str, if_exp: str | None = None, timeout: str = "1h") -> Any:
        found, value = self._memo(step_id)
        if found:
            return value
        return self._report(_op("WaitForEvent", step_id, name=event, opts={"if": if_exp, "timeout": timeout}))

    def invoke(self, step_id: str, function_id: str, data: Any = None, timeout: str | None = None) -> Any:
        found, value = self._memo(step_id)
        if found:
            return value
        opts = {"function_id": function_id, "payload": {"data": data, "v": None}, "timeout": timeout}
        return self._report(_op("InvokeFunction", step_id, opts=opts))

    def group(self, callables: list[Callable[[], Any]], mode: str = "wait") -> list[Any]:
        """The official SDK's `group.parallel`: collect every callable's report."""
        self._in_group = True
        results: list[Any] = []
        ops: list[dict[str, Any]] = []
        try:
            for cb in callables:
                try:
                    results.append(cb())
                except _Report as report:
                    ops.extend(report.ops)
                except _Skip:
                    pass
        finally:
            self._in_group = False
        if ops:
            if mode == "race":
                for op in ops:
                    op["opts"] = {**(op["opts"] or {}), "parallelMode": "race"}
            raise _Report(ops)
        return results

    def parallel(self, steps: list[tuple[str, Callable[[int], Any]]]) -> list[Any]:
        results: list[Any] = []
        planned: list[dict[str, Any]] = []
        for step_id, body in steps:
            found, value = self._memo(step_id)
            if found:
                results.append(value)
            elif self._target == h(step_id):
                raise _Report([self._execute(step_id, body)])
            elif self._target == "step":
                planned.append(_op("StepPlanned", step_id))
        if planned:
            raise _Report(planned)
        if len(results) < len(steps):
            raise RuntimeError("a targeted step is not in this group")
        return results


Function = Callable[[Step, Ctx], Any]


@dataclass
class ScriptedWorker:
    """Plays a connected worker. Knobs let tests inject dispatch failures."""

    store: ReplyStore
    functions: dict[str, Function] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    executions: Counter[str] = field(default_factory=Counter)
    #: Raise these (in order) instead of delivering, one per dispatch call.
    failures: list[Exception] = field(default_factory=list)
    #: Dispatches of a step id (hashed or "step") in this set hang forever, after
    #: storing the reply if `store_before_hang` (a worker that answered, then the
    #: executor died before reading the reply).
    hang_on: set[str] = field(default_factory=set)
    store_before_hang: bool = False
    worker_ready: asyncio.Event = field(default_factory=asyncio.Event)
    wait_calls: int = 0
    dispatch_calls: int = 0
    #: Seconds a request targeting this (user) step id takes, to observe concurrency.
    step_delays: dict[str, float] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    #: Requests carrying a memo of one of these (user) step ids wait this many
    #: seconds before running (inf: forever): a run held at the step after it.
    delay_after: dict[str, float] = field(default_factory=dict)

    #: What the executor sent through `send` (settlements, checkpoint answers), in order.
    sent: list[ExecutorMessage] = field(default_factory=list)

    def send(self, message: ExecutorMessage) -> None:
        # Replies are stored here before `dispatch` returns them: a settlement changes nothing.
        self.sent.append(message)

    async def dispatch(self, request: StepRequest, receiver: CheckpointReceiver | None = None) -> StepReply:
        self.dispatch_calls += 1
        self.request_ids.append(request.request_id)
        stored = await self.store.get_reply(request.request_id)
        if stored is not None:
            return msgspec.json.decode(stored, type=StepReply)
        if self.failures:
            raise self.failures.pop(0)
        hang = request.step_id in self.hang_on
        if hang and not self.store_before_hang:
            await asyncio.Event().wait()
        delay = next((d for step, d in self.step_delays.items() if h(step) == request.step_id), 0.0)
        if self.delay_after:
            memos = json.loads(request.payload).get("steps") or {}
            delay += max((d for step, d in self.delay_after.items() if h(step) in memos), default=0.0)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if delay == float("inf"):
                await asyncio.Event().wait()
            elif delay:
                await asyncio.sleep(delay)
            reply = self._run(request)
        finally:
            self.in_flight -= 1
        await self.store.put_reply(request.request_id, msgspec.json.encode(reply))
        if hang:
            await asyncio.Event().wait()
        return reply

    async def wait_for_worker(self, app_name: str, function_slug: str, timeout: float) -> None:
        self.wait_calls += 1
        try:
            await asyncio.wait_for(self.worker_ready.wait(), timeout)
        except TimeoutError:
            pass

    def _run(self, request: StepRequest) -> StepReply:
        body = json.loads(request.payload)
        self.requests.append({"step_id": request.step_id, "request_id": request.request_id, **body})
        fn = self.functions[request.function_slug]
        step = Step(body, request.step_id, self.executions)
        ctx = Ctx(
            attempt=body["ctx"]["attempt"], event=body["event"], run_id=body["ctx"]["run_id"], events=body["events"]
        )
        rid = request.request_id
        try:
            result = fn(step, ctx)
        except _Report as report:
            return StepReply(rid, STATUS_NOT_COMPLETED, json.dumps(report.ops).encode(), request_version=2)
        except NonRetriable as exc:
            err = {"name": "NonRetriableError", "message": str(exc), "stack": "tb", "code": "non_retriable_error"}
            return StepReply(rid, STATUS_ERROR, json.dumps(err).encode(), no_retry=True, request_version=2)
        except StepErrorRaised as exc:
            err = {**exc.error, "code": "step_errored"}
            return StepReply(rid, STATUS_ERROR, json.dumps(err).encode(), no_retry=True, request_version=2)
        except RetryAfter as exc:
            err = {"name": "RetryAfterError", "message": str(exc), "stack": "tb", "code": "retry_after_error"}
            return StepReply(
                rid, STATUS_ERROR, json.dumps(err).encode(), retry_after=exc.retry_after, request_version=2
            )
        except Exception as exc:
            err = {"name": type(exc).__name__, "message": str(exc), "stack": "tb", "code": "unknown"}
            return StepReply(rid, STATUS_ERROR, json.dumps(err).encode(), request_version=2)
        return StepReply(rid, STATUS_DONE, json.dumps(result).encode(), request_version=2)


__all__ = [
    "AtCapacity",
    "Ctx",
    "NoWorker",
    "NonRetriable",
    "RetryAfter",
    "ScriptedWorker",
    "Step",
    "WorkerStoppedResponding",
    "h",
]
