"""Fixtures for SDK tests: an anyio backend and a small in-memory executor.

The executor drives one run request by request the way the real executor
does (§12 of the protocol notes): it stores `{"data"}` for StepRun, targets
StepPlanned ops, retries StepError until attempts run out, stores `{"error"}`
for StepFailed, and stores `null` for sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from connect.sdk import Client, Function
from connect.sdk.execution import Invocation, Outcome, execute
from protocol.payloads import STATUS_DONE, STATUS_ERROR, STATUS_NOT_COMPLETED


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_payload(
    *,
    steps: dict[str, Any] | None = None,
    attempt: int = 0,
    max_attempts: int | None = None,
    disable_immediate_execution: bool = False,
    event: dict[str, Any] | None = None,
    run_id: str = "run-1",
) -> bytes:
    evt = event or {"name": "test/go", "data": {"who": "world"}, "id": "evt-1", "ts": 1767225600000, "user": {}}
    ctx: dict[str, Any] = {
        "run_id": run_id,
        "attempt": attempt,
        "disable_immediate_execution": disable_immediate_execution,
        "use_api": False,
        "stack": {"stack": list((steps or {}).keys()), "current": len(steps or {})},
        "fn_id": "uuid-fn",
        "step_id": "step",
        "env": "",
    }
    if max_attempts is not None:
        ctx["max_attempts"] = max_attempts
    return json.dumps(
        {"event": evt, "events": [evt], "steps": steps or {}, "ctx": ctx, "use_api": False, "version": 2}
    ).encode()


@dataclass
class Call:
    step_id: str
    attempt: int
    outcome: Outcome

    @property
    def body(self) -> Any:
        return json.loads(self.outcome.body)

    @property
    def ops(self) -> list[str]:
        return [op["op"] for op in self.body] if self.outcome.status == STATUS_NOT_COMPLETED else []


@dataclass
class FakeExecutor:
    client: Client
    fn: Function
    max_attempts: int = 5
    wait_results: dict[str, Any] = field(default_factory=dict)  # user step id -> stored value
    steps: dict[str, Any] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    async def call(self, step_id: str = "step", attempt: int = 0, disable: bool = False) -> Call:
        payload = make_payload(
            steps=dict(self.steps),
            attempt=attempt,
            max_attempts=self.max_attempts,
            disable_immediate_execution=disable,
        )
        slug = self.fn.fully_qualified_id(self.client.app_id)
        outcome = await execute(
            self.client,
            {slug: self.fn},
            Invocation(payload, slug, step_id, request_id=f"req-{len(self.calls)}", job_id="job-1"),
        )
        call = Call(step_id, attempt, outcome)
        self.calls.append(call)
        return call

    async def run(self, limit: int = 30) -> Call:
        """Drive the run until DONE, or until an ERROR that may not be retried."""
        target, attempt, disable = "step", 0, False
        for _ in range(limit):
            call = await self.call(target, attempt, disable)
            outcome = call.outcome
            if outcome.status == STATUS_DONE:
                return call
            if outcome.status == STATUS_ERROR:
                if outcome.no_retry or attempt + 1 >= self.max_attempts:
                    return call
                attempt += 1
                continue
            [op] = call.body
            kind = op["op"]
            if kind == "StepRun":
                self.steps[op["id"]] = {"data": op["data"]}
                target, attempt = "step", 0
            elif kind == "StepPlanned":
                target, attempt = op["id"], 0
            elif kind == "StepError" and not outcome.no_retry and attempt + 1 < self.max_attempts:
                attempt += 1
            elif kind in ("StepError", "StepFailed"):
                err = op["error"]
                self.steps[op["id"]] = {"error": {k: err[k] for k in ("name", "message", "stack")}}
                target, attempt = "step", 0
            elif kind in ("Sleep", "WaitForEvent", "InvokeFunction"):
                self.steps[op["id"]] = self.wait_results.get(op["userland"]["id"])
                target, attempt = "step", 0
            else:
                raise AssertionError(f"unexpected op {op}")
        raise AssertionError("run did not finish")


@pytest.fixture
def executor() -> Callable[..., FakeExecutor]:
    def build(client: Client, fn: Function, **kwargs: Any) -> FakeExecutor:
        return FakeExecutor(client, fn, **kwargs)

    return build


@pytest.fixture
def payload() -> Callable[..., bytes]:
    """`make_payload`: build an executor request body."""
    return make_payload


@pytest.fixture
def invoke() -> Callable[..., Awaitable[Outcome]]:
    """Execute one request for `fn` with a payload built by `make_payload(**kwargs)`."""

    async def call(client: Client, fn: Function, *, step_id: str = "step", **kwargs: Any) -> Outcome:
        slug = fn.fully_qualified_id(client.app_id)
        return await execute(client, {slug: fn}, Invocation(make_payload(**kwargs), slug, step_id))

    return call
