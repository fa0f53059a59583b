"""The replay engine, driven one call request at a time (protocol notes §5, §6, §7)."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import threading
import time
from typing import Any

import anyio
import pytest

from connect.sdk import (
    Client,
    Context,
    NonRetriableError,
    RetryAfterError,
    Step,
    StepError,
    StepSync,
    TriggerEvent,
)
from connect.sdk.durations import to_iso_utc
from connect.sdk.execution import SDK_VERSION, Invocation, Outcome, execute
from protocol.payloads import STATUS_DONE, STATUS_ERROR, STATUS_NOT_COMPLETED, hash_step_id

pytestmark = pytest.mark.anyio

OPCODE_KEYS = {"id", "name", "displayName", "op", "opts", "userland", "data"}


@pytest.fixture
def client() -> Client:
    return Client("app", api_base_url="http://127.0.0.1:9")


def only_op(outcome: Outcome) -> dict[str, Any]:
    assert outcome.status == STATUS_NOT_COMPLETED, outcome
    [op] = json.loads(outcome.body)
    return op  # type: ignore[no-any-return]


def error_body(outcome: Outcome) -> dict[str, Any]:
    assert outcome.status == STATUS_ERROR, outcome
    return json.loads(outcome.body)  # type: ignore[no-any-return]


# --- a whole run ----------------------------------------------------------------


async def test_three_steps_run_to_done(client: Client, executor: Any) -> None:
    executed: list[str] = []

    async def fetch(name: str) -> str:
        executed.append("fetch")
        return f"hi {name}"

    def shout(text: str) -> str:
        executed.append("shout")
        return text.upper()

    @client.create_function(fn_id="three", trigger=TriggerEvent(event="test/go"))
    async def three(ctx: Context, step: Step) -> dict[str, Any]:
        greeting = await step.run("fetch", fetch, ctx.event.data["who"])
        loud = await step.run("shout", shout, greeting)
        length = await step.run("count", lambda: len(loud))
        return {"greeting": greeting, "loud": loud, "length": length}

    ex = executor(client, three)
    final = await ex.run()
    assert final.outcome.status == STATUS_DONE
    assert final.body == {"greeting": "hi world", "loud": "HI WORLD", "length": 8}
    assert [c.ops for c in ex.calls] == [["StepRun"], ["StepRun"], ["StepRun"], []]
    assert executed == ["fetch", "shout"]  # each body ran once
    assert set(ex.steps) == {hash_step_id("fetch"), hash_step_id("shout"), hash_step_id("count")}
    assert all(c.outcome.request_version == 2 for c in ex.calls)


async def test_first_request_reports_the_first_step(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="hello", trigger=TriggerEvent(event="test/go"))
    async def hello(ctx: Context, step: Step) -> str:
        greeting = await step.run("greet", lambda: f"hi {ctx.event.data['who']}")
        raise AssertionError(f"not reached on the first request: {greeting}")

    before_ns = time.time_ns()
    op = only_op(await invoke(client, hello))
    # When the body ran, as the TypeScript SDK reports it: start and duration in ns.
    timing = op.pop("timing")
    assert before_ns <= timing["a"] <= time.time_ns() and 0 <= timing["b"] < 10**9
    assert set(op) == OPCODE_KEYS  # no `error` key on a success op
    assert op == {
        "id": "35ff71782def36154c8c5bb550a28b4665c227e0",
        "name": "greet",
        "displayName": "greet",
        "op": "StepRun",
        "opts": None,
        "userland": {"id": "greet", "index": None},
        "data": "hi world",
    }


async def test_repeated_step_ids(client: Client, executor: Any) -> None:
    @client.create_function(fn_id="loop", trigger=TriggerEvent(event="test/go"))
    async def loop(ctx: Context, step: Step) -> list[int]:
        return [await step.run("s", lambda i=i: i * 10) for i in range(3)]

    ex = executor(client, loop)
    final = await ex.run()
    assert final.body == [0, 10, 20]
    ops = [c.body[0] for c in ex.calls[:3]]
    assert [op["id"] for op in ops] == [hash_step_id("s"), hash_step_id("s:1"), hash_step_id("s:2")]
    assert [op["userland"] for op in ops] == [
        {"id": "s", "index": None},
        {"id": "s", "index": 1},
        {"id": "s", "index": 2},
    ]
    assert all(op["name"] == op["displayName"] == "s" for op in ops)


async def test_context_fields(client: Client, payload: Any) -> None:
    seen: dict[str, Any] = {}

    @client.create_function(fn_id="ctx", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        seen.update(
            run_id=ctx.run_id,
            attempt=ctx.attempt,
            request_id=ctx.request_id,
            job_id=ctx.job_id,
            event=ctx.event.name,
            events=len(ctx.events),
            logger=ctx.logger,
        )

    outcome = await execute(
        client,
        {"app-ctx": fn},
        Invocation(payload(attempt=2, run_id="r9"), "app-ctx", "step", request_id="q1", job_id="j1"),
    )
    assert outcome == Outcome(status=STATUS_DONE, body=b"null")
    assert seen == {
        "run_id": "r9",
        "attempt": 2,
        "request_id": "q1",
        "job_id": "j1",
        "event": "test/go",
        "events": 1,
        "logger": client.logger,
    }


# --- memos ------------------------------------------------------------------------


async def test_memo_shapes(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="memos", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> list[Any]:
        return [await step.run(f"m{i}", lambda: "fresh") for i in range(5)]

    steps = {
        hash_step_id("m0"): {"data": {"x": 1}},
        hash_step_id("m1"): None,  # e.g. a sleep: the raw value is the data
        hash_step_id("m2"): {"data": 1, "extra": True},  # not the {data, error} shape: taken whole
        hash_step_id("m3"): {},  # fits the shape: no data
        hash_step_id("m4"): [1, 2],
    }
    outcome = await invoke(client, fn, steps=steps)
    assert json.loads(outcome.body) == [{"x": 1}, None, {"data": 1, "extra": True}, None, [1, 2]]


async def test_error_memo_raises_step_error_that_user_code_can_catch(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="catch", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> dict[str, Any]:
        try:
            await step.run("flaky", lambda: "never runs")
        except StepError as err:
            return {"message": err.message, "name": err.name, "stack": err.stack}
        return {}

    memo = {"error": {"name": "ValueError", "message": "bad input", "stack": "tb...", "noRetry": True}}
    outcome = await invoke(client, fn, steps={hash_step_id("flaky"): memo})
    assert outcome.status == STATUS_DONE
    assert json.loads(outcome.body) == {"message": "bad input", "name": "ValueError", "stack": "tb..."}


async def test_uncaught_step_error_fails_without_retry(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="uncaught", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        await step.run("flaky", lambda: None)

    memo = {"error": {"name": "Error", "message": "child failed", "stack": "st"}}
    outcome = await invoke(client, fn, steps={hash_step_id("flaky"): memo})
    assert error_body(outcome) == {"code": "step_errored", "message": "child failed", "name": "Error", "stack": "st"}
    assert outcome.no_retry is True


# --- step errors -------------------------------------------------------------------


def _failing_function(client: Client) -> Any:
    def explode() -> None:
        raise KeyError("missing thing")

    @client.create_function(fn_id="boom", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        await step.run("explode", explode)

    return fn


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "expected"),
    [(0, 4, "StepError"), (2, 4, "StepError"), (3, 4, "StepFailed"), (5, 4, "StepFailed"), (9, None, "StepError")],
)
async def test_step_error_or_failed(
    client: Client, invoke: Any, attempt: int, max_attempts: int | None, expected: str
) -> None:
    outcome = await invoke(client, _failing_function(client), attempt=attempt, max_attempts=max_attempts)
    op = only_op(outcome)
    assert op["op"] == expected
    assert outcome.no_retry is False
    assert set(op) == OPCODE_KEYS | {"error", "timing"}
    error = op["error"]
    assert set(error) == {"code", "name", "message", "stack"}
    assert (error["code"], error["name"], error["message"]) == ("unknown", "KeyError", "'missing thing'")
    assert "in explode" in error["stack"]
    assert "connect/sdk" not in error["stack"]  # SDK frames are not the user's concern


async def test_step_errors_retry_then_fail_then_raise(client: Client, executor: Any) -> None:
    ex = executor(client, _failing_function(client), max_attempts=3)
    final = await ex.run()
    assert [c.ops for c in ex.calls] == [["StepError"], ["StepError"], ["StepFailed"], []]
    assert [c.attempt for c in ex.calls] == [0, 1, 2, 0]
    # The replay after StepFailed raises StepError, which fails the run for good.
    assert final.outcome.status == STATUS_ERROR
    assert final.outcome.no_retry is True
    assert final.body["code"] == "step_errored"
    assert final.body["name"] == "KeyError"


async def test_step_output_must_be_serializable(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="odd", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        await step.run("odd", object)

    body = error_body(await invoke(client, fn))
    assert body["code"] == "output_unserializable"
    assert '"odd"' in body["message"]


# --- function-level errors -----------------------------------------------------------


async def test_plain_exception_is_retriable(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="plain", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        raise RuntimeError("transient")

    outcome = await invoke(client, fn)
    body = error_body(outcome)
    assert (body["code"], body["name"], body["message"]) == ("unknown", "RuntimeError", "transient")
    assert "raise RuntimeError" in body["stack"]
    assert outcome.no_retry is False
    assert outcome.retry_after is None


@pytest.mark.parametrize("inside_step", [False, True])
async def test_non_retriable_error(client: Client, invoke: Any, inside_step: bool) -> None:
    def fail() -> None:
        raise NonRetriableError("card declined")

    @client.create_function(fn_id="nr", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        if inside_step:
            await step.run("charge", fail)  # escapes the step: not a StepError op
        else:
            fail()

    outcome = await invoke(client, fn)
    body = error_body(outcome)
    assert (body["code"], body["name"], body["message"]) == (
        "non_retriable_error",
        "NonRetriableError",
        "card declined",
    )
    assert outcome.no_retry is True


@pytest.mark.parametrize("inside_step", [False, True])
async def test_retry_after_error(client: Client, invoke: Any, inside_step: bool) -> None:
    at = datetime.datetime(2026, 11, 23, 8, 23, 33, 642123, tzinfo=datetime.UTC)

    def fail() -> None:
        raise RetryAfterError("rate limited", at)

    @client.create_function(fn_id="ra", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        if inside_step:
            await step.run("call", fail)
        else:
            fail()

    outcome = await invoke(client, fn)
    assert error_body(outcome)["code"] == "retry_after_error"
    assert outcome.retry_after == "2026-11-23T08:23:33.642Z"
    assert outcome.no_retry is False


def test_retry_after_relative_forms() -> None:
    before = datetime.datetime.now(datetime.UTC)
    by_ms = RetryAfterError("x", 5000).retry_after
    by_delta = RetryAfterError("x", datetime.timedelta(minutes=1)).retry_after
    assert datetime.timedelta(seconds=4.9) < by_ms - before < datetime.timedelta(seconds=6)
    assert datetime.timedelta(seconds=59) < by_delta - before < datetime.timedelta(seconds=61)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", to_iso_utc(by_ms))


async def test_unserializable_output(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="out", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> object:
        return object()

    outcome = await invoke(client, fn)
    assert error_body(outcome)["code"] == "output_unserializable"
    assert outcome.no_retry is False


# --- sync handlers ----------------------------------------------------------------------


async def test_sync_handler_runs_in_a_thread(client: Client, executor: Any) -> None:
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    @client.create_function(fn_id="sync", trigger=TriggerEvent(event="test/go"))
    def fn(ctx: Context, step: StepSync) -> dict[str, Any]:
        threads.add(threading.get_ident())
        a = step.run("a", lambda: 2)
        b = step.run("b", lambda x: x + 1, a)
        return {"a": a, "b": b}

    assert fn.is_async is False
    ex = executor(client, fn)
    final = await ex.run()
    assert final.body == {"a": 2, "b": 3}
    assert [c.ops for c in ex.calls] == [["StepRun"], ["StepRun"], []]
    assert loop_thread not in threads


async def test_sync_handler_errors(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="sync-err", trigger=TriggerEvent(event="test/go"))
    def fn(ctx: Context, step: StepSync) -> None:
        step.run("a", lambda: 1 / 0)

    op = only_op(await invoke(client, fn, max_attempts=1))
    assert (op["op"], op["error"]["name"]) == ("StepFailed", "ZeroDivisionError")


async def test_async_step_accepts_sync_and_async_callables(client: Client, executor: Any) -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    @client.create_function(fn_id="mixed", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> list[int]:
        x = await step.run("async", add, 1, 2)
        y = await step.run("sync", max, x, 10)
        return [x, y]

    assert (await executor(client, fn).run()).body == [3, 10]


# --- planning and targeting ----------------------------------------------------------------


async def test_disable_immediate_execution_plans_the_step(client: Client, invoke: Any) -> None:
    ran: list[str] = []

    @client.create_function(fn_id="plan", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        await step.run("first", lambda: ran.append("first"))
        await step.run("second", lambda: ran.append("second"))

    outcome = await invoke(client, fn, disable_immediate_execution=True, steps={hash_step_id("first"): {"data": None}})
    op = only_op(outcome)
    assert (op["op"], op["id"], op["data"]) == ("StepPlanned", hash_step_id("second"), None)
    assert ran == []


async def test_targeted_request_runs_only_the_target(client: Client, invoke: Any) -> None:
    ran: list[str] = []

    @client.create_function(fn_id="target", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        await step.run("a", lambda: ran.append("a"))
        await step.run("b", lambda: ran.append("b") or "b done")

    memo_a = {hash_step_id("a"): {"data": None}}
    op = only_op(await invoke(client, fn, step_id=hash_step_id("b"), steps=memo_a, disable_immediate_execution=True))
    assert (op["op"], op["data"]) == ("StepRun", "b done")
    assert ran == ["b"]

    # Reaching a new step that is not the target ends with step_unexpected.
    outcome = await invoke(client, fn, step_id=hash_step_id("b"))
    body = error_body(outcome)
    assert body["code"] == "step_unexpected"
    assert body["stack"] is None
    assert ran == ["b"]


async def test_executor_follows_planned_steps(client: Client, executor: Any) -> None:
    @client.create_function(fn_id="planned", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> int:
        return await step.run("one", lambda: 1) + await step.run("two", lambda: 2)

    ex = executor(client, fn)
    first = await ex.call("step", disable=True)
    assert first.ops == ["StepPlanned"]
    second = await ex.call(first.body[0]["id"], disable=True)
    assert second.ops == ["StepRun"]


# --- nesting and misuse ----------------------------------------------------------------------


async def test_nested_step_fails_the_outer_step(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="nested", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        async def outer_body() -> None:
            await step.run("inner", lambda: 1)

        await step.run("outer", outer_body)

    outcome = await invoke(client, fn)
    op = only_op(outcome)
    assert (op["op"], op["id"], op["error"]["code"]) == ("StepError", hash_step_id("outer"), "step_nested")
    assert op["error"]["message"] == "Nested steps are not supported."
    assert outcome.no_retry is True


async def test_nested_step_is_detected_even_if_swallowed(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="nested-sync", trigger=TriggerEvent(event="test/go"))
    def fn(ctx: Context, step: StepSync) -> None:
        def outer_body() -> str:
            try:
                step.sleep("inner", 1000)
            except BaseException:
                pass
            return "looks fine"

        step.run("outer", outer_body)

    op = only_op(await invoke(client, fn))
    assert op["error"]["code"] == "step_nested"


async def test_swallowed_control_flow_still_reports_the_step(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="swallow", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> str:
        try:
            await step.run("a", lambda: "A")
        except BaseException:
            pass
        try:
            await step.run("b", lambda: "B")  # must not run: the request already ended
        except BaseException:
            pass
        return "wrong"

    op = only_op(await invoke(client, fn))
    assert (op["op"], op["data"]) == ("StepRun", "A")


async def test_user_except_exception_does_not_catch_the_interrupt(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="catchall", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> str:
        try:
            await step.run("a", lambda: "A")
        except Exception:
            return "caught"
        return "after"

    assert only_op(await invoke(client, fn))["data"] == "A"


# --- request-level errors ----------------------------------------------------------------------


async def test_unknown_function(client: Client, payload: Any) -> None:
    outcome = await execute(client, {}, Invocation(payload(), "app-missing", "step"))
    body = error_body(outcome)
    assert body["code"] == "function_not_found"
    assert "app-missing" in body["message"]
    assert "stack" not in body


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"event": {"name": "x"}, "events": [], "steps": null, "ctx": {"run_id": "r", "attempt": 0}}',
        # ts must be an integer
        b'{"event": {"name": "x", "ts": 1.5}, "events": [], "steps": {}, "ctx": {"run_id": "r", "attempt": 0}}',
    ],
)
async def test_bad_payload(client: Client, body: bytes) -> None:
    @client.create_function(fn_id="f", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        raise AssertionError("must not run")

    outcome = await execute(client, {"app-f": fn}, Invocation(body, "app-f", "step"))
    body = error_body(outcome)
    assert body["code"] == "body_invalid"
    assert body["message"].startswith("invalid request payload")
    assert "stack" not in body


async def test_empty_step_id_means_discovery(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="f", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> str:
        return await step.run("a", lambda: "A")

    assert only_op(await invoke(client, fn, step_id=""))["op"] == "StepRun"


def test_sdk_version() -> None:
    assert SDK_VERSION == "connect-py:v0.1.0"


async def test_concurrent_steps_are_refused(client: Client, invoke: Any) -> None:
    ran: list[str] = []

    async def slow(name: str) -> str:
        ran.append(name)
        await anyio.sleep(0.01)
        return name

    @client.create_function(fn_id="gather", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        await asyncio.gather(step.run("a", slow, "a"), step.run("b", slow, "b"))

    outcome = await invoke(client, fn)
    body = error_body(outcome)
    assert body["name"] == "ConcurrentStepsError"
    assert outcome.no_retry is True
    assert ran == ["a"]  # the second body never started
