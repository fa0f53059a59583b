"""Differential check: our engine and the official SDK answer the same requests alike.

Each scenario body is written once against the step API both SDKs share and
run through both engines with identical request payloads. Replies are
compared after normalizing what legitimately differs (traceback text, the
`name` of the nested-step error).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from connect.sdk import Client, Context, NonRetriableError, RetryAfterError, Step, StepError, StepSync, TriggerEvent
from connect.sdk.execution import Invocation, execute
from protocol.payloads import STATUS_DONE, STATUS_ERROR, STATUS_NOT_COMPLETED, hash_step_id

inngest = pytest.importorskip("inngest")
comm_lib = pytest.importorskip("inngest._internal.comm_lib")
server_lib = pytest.importorskip("inngest._internal.server_lib")

pytestmark = pytest.mark.anyio

APP = "app"
WAKE = datetime.datetime(2031, 5, 6, 7, 8, 9, 123000, tzinfo=datetime.UTC)
RETRY_AT = datetime.datetime(2031, 1, 1, tzinfo=datetime.UTC)
H = hash_step_id


class Kit:
    """The error classes of one SDK, so a scenario raises and catches that SDK's own."""

    def __init__(self, non_retriable: Any, retry_after: Any, step_error: Any) -> None:
        self.NonRetriableError = non_retriable
        self.RetryAfterError = retry_after
        self.StepError = step_error


OURS = Kit(NonRetriableError, RetryAfterError, StepError)
THEIRS = Kit(inngest.NonRetriableError, inngest.RetryAfterError, inngest.StepError)
Body = Callable[[Any, Kit], Awaitable[Any]]


def _boom() -> None:
    raise ValueError("boom")


# --- scenarios: (body, requests); a request is make_payload kwargs plus `step_id` ------------


async def three_steps(step: Any, kit: Kit) -> Any:
    a = await step.run("a", lambda: 1)
    b = await step.run("b", lambda x: x + 1, a)
    c = await step.run("c", lambda: {"sum": a + b})
    return [a, b, c]


async def repeated(step: Any, kit: Kit) -> Any:
    return [await step.run("s", lambda i=i: i) for i in range(3)]


async def failing(step: Any, kit: Kit) -> Any:
    await step.run("bad", _boom)


async def catches_error(step: Any, kit: Kit) -> Any:
    try:
        await step.run("bad", _boom)
    except kit.StepError as err:
        return f"caught {err.name}: {err.message}"


async def non_retriable(step: Any, kit: Kit) -> Any:
    await step.run("a", lambda: 1)
    raise kit.NonRetriableError("hard")


async def non_retriable_in_step(step: Any, kit: Kit) -> Any:
    def fail() -> None:
        raise kit.NonRetriableError("hard")

    await step.run("a", fail)


async def retry_after(step: Any, kit: Kit) -> Any:
    def fail() -> None:
        raise kit.RetryAfterError("later", RETRY_AT)

    await step.run("a", fail)


async def plain_error(step: Any, kit: Kit) -> Any:
    raise KeyError("nope")


async def executor_steps(step: Any, kit: Kit) -> Any:
    await step.sleep_until("nap", WAKE)
    got = await step.wait_for_event("w", event="a/approve", if_exp="async.data.x == 1", timeout=90000)
    child = await step.invoke_by_id("inv", app_id="other", function_id="child", data={"q": 1}, timeout=600000)
    return [None if got is None else got.name, child]


async def nested(step: Any, kit: Kit) -> Any:
    sync_step = getattr(step, "raw", None)
    if sync_step is not None:

        def outer() -> Any:
            return sync_step.run("inner", lambda: 1)

        await step.run("outer", outer)
    else:

        async def outer_async() -> Any:
            return await step.run("inner", lambda: 1)

        await step.run("outer", outer_async)


async def unserializable(step: Any, kit: Kit) -> Any:
    return object()


async def unserializable_step(step: Any, kit: Kit) -> Any:
    await step.run("odd", object)


async def raw_memos(step: Any, kit: Kit) -> Any:
    return [await step.run(f"m{i}", lambda: "fresh") for i in range(4)]


async def parallel_then_step(step: Any, kit: Kit) -> Any:
    results = await step.parallel((lambda: step.run("p1", lambda: 1), lambda: step.run("p2", lambda: 2)))
    after = await step.run("after", lambda: sum(results))
    return [list(results), after]


async def parallel_mixed(step: Any, kit: Kit) -> Any:
    results = await step.parallel(
        (
            lambda: step.run("p1", lambda: "one"),
            lambda: step.sleep_until("nap", WAKE),
            lambda: step.wait_for_event("w", event="a/approve", if_exp="async.data.x == event.data.x", timeout=60000),
            lambda: step.invoke_by_id("inv", app_id="other", function_id="child", data={"q": 1}),
        )
    )
    return [None if r is not None and hasattr(r, "name") else r for r in results]


async def parallel_race(step: Any, kit: Kit) -> Any:
    results = await step.parallel(
        (lambda: step.run("p1", lambda: 1), lambda: step.run("p2", _boom), lambda: step.sleep_until("nap", WAKE)),
        "race",
    )
    return list(results)


async def parallel_caught(step: Any, kit: Kit) -> Any:
    try:
        await step.parallel((lambda: step.run("p1", lambda: 1), lambda: step.run("bad", _boom)))
    except kit.StepError as err:
        return f"caught {err.message}"
    return "no"


FAIL_MEMO = {"error": {"name": "ValueError", "message": "boom", "stack": "Traceback..."}}
EVENT = {"name": "a/approve", "data": {"x": 1}, "id": "e2", "ts": 7, "user": {}}

SCENARIOS: dict[str, tuple[Body, list[dict[str, Any]]]] = {
    "three_steps": (
        three_steps,
        [
            {},
            {"steps": {H("a"): {"data": 1}}},
            {"steps": {H("a"): {"data": 1}, H("b"): {"data": 2}}},
            {"steps": {H("a"): {"data": 1}, H("b"): {"data": 2}, H("c"): {"data": {"sum": 3}}}},
            {"disable_immediate_execution": True, "steps": {H("a"): {"data": 1}}},
            {"step_id": H("b"), "steps": {H("a"): {"data": 1}}, "disable_immediate_execution": True},
            {"step_id": H("b")},
            {"step_id": H("b"), "steps": {H("a"): {"data": 1}, H("b"): {"data": 2}}},
        ],
    ),
    "repeated": (repeated, [{}, {"steps": {H("s"): {"data": 0}}}, {"steps": {H("s"): {"data": 0}, H("s:1"): 5}}]),
    "failing": (
        failing,
        [
            {},
            {"attempt": 2, "max_attempts": 4},
            {"attempt": 3, "max_attempts": 4},
            {"attempt": 7},
            {"steps": {H("bad"): FAIL_MEMO}},
        ],
    ),
    "catches_error": (catches_error, [{"steps": {H("bad"): FAIL_MEMO}}]),
    "non_retriable": (non_retriable, [{"steps": {H("a"): {"data": 1}}}]),
    "non_retriable_in_step": (non_retriable_in_step, [{}]),
    "retry_after": (retry_after, [{}]),
    "plain_error": (plain_error, [{}, {"attempt": 3, "max_attempts": 4}]),
    "executor_steps": (
        executor_steps,
        [
            {},
            {"steps": {H("nap"): None}},
            {"steps": {H("nap"): None, H("w"): EVENT}},
            {"steps": {H("nap"): None, H("w"): None, H("inv"): {"data": {"ok": True}}}},
            {"steps": {H("nap"): None, H("w"): EVENT, H("inv"): FAIL_MEMO}},
            {"step_id": H("zzz")},
        ],
    ),
    "nested": (nested, [{}]),
    "parallel_then_step": (
        parallel_then_step,
        [
            {},
            {"step_id": H("p1"), "disable_immediate_execution": True},
            {"step_id": H("p2"), "disable_immediate_execution": True, "steps": {H("p1"): {"data": 1}}},
            {"steps": {H("p1"): {"data": 1}}},
            {"disable_immediate_execution": True, "steps": {H("p1"): {"data": 1}, H("p2"): {"data": 2}}},
            {"steps": {H("p1"): {"data": 1}, H("p2"): {"data": 2}}},
            {
                "step_id": H("after"),
                "disable_immediate_execution": True,
                "steps": {H("p1"): {"data": 1}, H("p2"): {"data": 2}},
            },
            {"steps": {H("p1"): {"data": 1}, H("p2"): {"data": 2}, H("after"): {"data": 3}}},
            {"step_id": H("zzz"), "steps": {H("p1"): {"data": 1}, H("p2"): {"data": 2}}},
        ],
    ),
    "parallel_mixed": (
        parallel_mixed,
        [
            {},
            {"step_id": H("p1"), "disable_immediate_execution": True},
            {"steps": {H("p1"): {"data": "one"}, H("nap"): None}},
            {"steps": {H("p1"): {"data": "one"}, H("nap"): None, H("w"): EVENT, H("inv"): {"data": 5}}},
            {"steps": {H("p1"): {"data": "one"}, H("nap"): None, H("w"): None, H("inv"): FAIL_MEMO}},
        ],
    ),
    "parallel_race": (
        parallel_race,
        [
            {},
            {"step_id": H("p1"), "disable_immediate_execution": True},
            {"step_id": H("p2"), "disable_immediate_execution": True, "attempt": 1, "max_attempts": 3},
            {"step_id": H("p2"), "disable_immediate_execution": True, "attempt": 2, "max_attempts": 3},
            {"steps": {H("p1"): {"data": 1}}},
            {"steps": {H("p1"): {"data": 1}, H("p2"): FAIL_MEMO, H("nap"): None}},
        ],
    ),
    "parallel_caught": (
        parallel_caught,
        [{"steps": {H("p1"): {"data": 1}, H("bad"): FAIL_MEMO}}, {"steps": {H("bad"): FAIL_MEMO}}],
    ),
    "unserializable": (unserializable, [{}]),
    "unserializable_step": (unserializable_step, [{}]),
    "raw_memos": (
        raw_memos,
        [{"steps": {H("m0"): {"data": None}, H("m1"): [1], H("m2"): {"data": 1, "x": 2}, H("m3"): "s"}}],
    ),
}


# --- the two engines ---------------------------------------------------------------------------


def ours(body: Body, sync: bool) -> tuple[Client, Any]:
    client = Client(APP)
    if sync:

        @client.create_function(fn_id="f", trigger=TriggerEvent(event="test/go"))
        def sync_fn(ctx: Context, step: StepSync) -> Any:
            return _run_sync_body(body, step, OURS)

        return client, sync_fn

    @client.create_function(fn_id="f", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> Any:
        return await body(step, OURS)

    return client, fn


def official(body: Body, sync: bool) -> Any:
    client = inngest.Inngest(app_id=APP, is_production=False)
    if sync:

        @client.create_function(fn_id="f", trigger=inngest.TriggerEvent(event="test/go"))
        def sync_fn(ctx: Any) -> Any:
            return _run_sync_body(body, _WithGroup(ctx.step, ctx.group), THEIRS)

        fn = sync_fn
    else:

        @client.create_function(fn_id="f", trigger=inngest.TriggerEvent(event="test/go"))
        async def async_fn(ctx: Any) -> Any:
            return await body(_WithGroup(ctx.step, ctx.group), THEIRS)

        fn = async_fn
    return comm_lib.CommHandler(
        client=client,
        enable_unauthed_sync=None,
        framework=server_lib.Framework.CONNECT,
        functions=[fn],
        streaming=None,
    )


class _WithGroup:
    """The official SDK's step object plus `parallel` from its `ctx.group`, so
    scenario bodies write `step.parallel(...)` for both SDKs."""

    def __init__(self, step: Any, group: Any) -> None:
        self._step = step
        self._group = group

    def __getattr__(self, name: str) -> Any:
        return getattr(self._step, name)

    def parallel(self, callables: Any, mode: str = "wait") -> Any:
        return self._group.parallel(tuple(callables), parallel_mode=server_lib.ParallelMode(mode))


class _SyncAdapter:
    """Lets one async scenario body drive a synchronous step object."""

    def __init__(self, step: Any) -> None:
        self._step = step
        self.raw = getattr(step, "_step", step)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._step, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call

    async def parallel(self, callables: Any, mode: str = "wait") -> Any:
        # The sync SDKs call each callable and expect its result, not a coroutine.
        return self._step.parallel(tuple(lambda cb=cb: _drive(cb()) for cb in callables), mode)


def _drive(value: Any) -> Any:
    if not hasattr(value, "send"):
        return value
    try:
        value.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("scenario awaited something real")


def _run_sync_body(body: Body, step: Any, kit: Kit) -> Any:
    # The sync step never awaits, so the coroutine completes in one send().
    coro = body(_SyncAdapter(step), kit)
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("scenario awaited something real")


STATUS = {200: STATUS_DONE, 206: STATUS_NOT_COMPLETED, 500: STATUS_ERROR}


def without_typescript_additions(op: dict[str, Any]) -> dict[str, Any]:
    op = {key: value for key, value in op.items() if key != "timing"}
    if op.get("opts") == {"type": "step.sendEvent"}:
        op["opts"] = None
    return op


async def official_reply(handler: Any, data: bytes, step_id: str) -> dict[str, Any]:
    """The official SDK's reply to request `data` for function `app-f` over connect, normalized."""
    res = await handler.post(
        comm_lib.CommRequest(
            body=data,
            headers={},
            is_connect=True,
            public_path=None,
            query_params={"fnId": "app-f", "stepId": step_id},
            raw_request=None,
            request_url="",
            serve_origin=None,
            serve_path=None,
        )
    )
    return normalize(STATUS[res.status_code], res.body_bytes(), res.no_retry, res.retry_after)


def normalize(status: int, raw: bytes, no_retry: bool, retry_after: str | None) -> dict[str, Any]:
    body = json.loads(raw)

    def clean_error(err: dict[str, Any]) -> dict[str, Any]:
        err = dict(err)
        if "stack" in err:
            err["stack"] = "<stack>" if err["stack"] else err["stack"]
        if err.get("code") == "step_nested":
            # Same code, message and no-retry; the class name and stack are cosmetic.
            err["name"] = err["stack"] = "<nested>"
        if err.get("code") == "output_unserializable":
            err["message"] = "<unserializable>"
        return err

    if status == STATUS_NOT_COMPLETED:
        body = [{**op, "error": clean_error(op["error"])} if "error" in op else op for op in body]
        # Ours adds what the TypeScript SDK sends and the official Python SDK does not:
        # when a step body ran (`timing`), and that a step sent events (`opts.type`).
        body = [without_typescript_additions(op) for op in body]
    elif status == STATUS_ERROR:
        body = clean_error(body)
    return {"status": status, "body": body, "no_retry": no_retry, "retry_after": retry_after}


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_same_replies_as_official_sdk(name: str, sync: bool, payload: Any) -> None:
    body, requests = SCENARIOS[name]
    client, fn = ours(body, sync)
    handler = official(body, sync)
    for request in requests:
        options = dict(request)
        step_id = options.pop("step_id", "step")
        data = payload(**options)

        mine = await execute(client, {"app-f": fn}, Invocation(data, "app-f", step_id))
        theirs = await official_reply(handler, data, step_id)
        assert normalize(mine.status, mine.body, mine.no_retry, mine.retry_after) == theirs, request
