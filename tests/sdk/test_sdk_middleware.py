"""Middleware against the official SDK: one middleware source, two import lines, the same calls and replies.

The recording middleware below is written once against the official SDK's
middleware API and loaded twice, with only its imports changed: once from
``inngest``, once from ``connect.sdk``. Both engines then run the same
requests (the client's middleware ``A`` and ``B``, the function's ``C``), and
the hook calls each records, in order and with what each hook saw, must be
the same, as must the replies.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from connect.sdk import Client, Context, Step, StepSync, TriggerEvent
from connect.sdk.execution import Invocation, execute
from protocol.payloads import STATUS_DONE, STATUS_ERROR, STATUS_NOT_COMPLETED, hash_step_id
from tests.sdk.test_sdk_differential import (
    _run_sync_body,
    _WithGroup,
    normalize,
    official_reply,
)

inngest = pytest.importorskip("inngest")
comm_lib = pytest.importorskip("inngest._internal.comm_lib")
server_lib = pytest.importorskip("inngest._internal.server_lib")

pytestmark = pytest.mark.anyio

H = hash_step_id
WAKE = datetime.datetime(2031, 5, 6, 7, 8, 9, 123000, tzinfo=datetime.UTC)

# The middleware a user wrote for the official SDK. `{imports}` is the only difference.
RECORDER = """
{imports}


def recorder(base, label, log, faults):
    class Recorder(base):
        def __init__(self, client, raw_request):
            super().__init__(client, raw_request)
            log.append(("init", label))

        def _note(self, hook, *seen):
            log.append((hook, label, *seen))
            if faults.get((hook, label)):
                raise ValueError(f"{{label}} failed in {{hook}}")

        def transform_input(self, ctx, function, steps):
            memos = sorted(repr(m.data) for m in steps.values())
            self._note("transform_input", ctx.run_id, ctx.event.name, memos)
            for memo in steps.values():
                if isinstance(memo.data, int):
                    memo.data = memo.data * 10

        def before_execution(self):
            self._note("before_execution")

        def after_execution(self):
            self._note("after_execution")

        def transform_output(self, result):
            step = None if result.step is None else (result.step.id, result.step.op.value)
            error = None if result.error is None else type(result.error).__name__
            output = result.output if result.has_output() else "<none>"
            self._note("transform_output", step, error, output)
            if isinstance(result.output, int) and label == "A":
                result.output = result.output + 1

        def before_response(self):
            self._note("before_response")

    if base.__name__ == "Middleware":
        # The async flavour: the same hooks as coroutines.
        class AsyncRecorder(Recorder):
            pass

        for hook in ("transform_input", "before_execution", "after_execution", "transform_output", "before_response"):
            plain = getattr(Recorder, hook)

            async def call(self, *args, _plain=plain):
                return _plain(self, *args)

            setattr(AsyncRecorder, hook, call)
        return AsyncRecorder
    return Recorder
"""

THEIR_IMPORTS = "from inngest import Middleware, MiddlewareSync"
OUR_IMPORTS = "from connect.sdk import Middleware, MiddlewareSync"


def _load(imports: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(RECORDER.format(imports=imports), namespace)
    return namespace


def _chain(imports: str, flavour: str, log: list[Any], faults: dict[Any, bool]) -> tuple[list[Any], list[Any]]:
    ns = _load(imports)
    base = ns[flavour]
    make = ns["recorder"]
    client_mw = [make(base, "A", log, faults), make(base, "B", log, faults)]
    fn_mw = [make(base, "C", log, faults)]
    return client_mw, fn_mw


# --- scenarios: a body and its requests (make_payload kwargs plus `step_id`) -------------------


async def two_steps(step: Any) -> Any:
    a = await step.run("a", lambda: 1)
    b = await step.run("b", lambda: a + 1)
    return b


async def sleeps(step: Any) -> Any:
    await step.run("a", lambda: 1)
    await step.sleep_until("nap", WAKE)
    return "woke"


async def fails(step: Any) -> Any:
    await step.run("a", lambda: 1)
    raise KeyError("nope")


def _boom() -> None:
    raise ValueError("boom")


async def step_fails(step: Any) -> Any:
    await step.run("bad", _boom)


async def parallel(step: Any) -> Any:
    return await step.parallel([lambda: step.run("p1", lambda: 1), lambda: step.run("p2", lambda: 2)])


SCENARIOS: dict[str, tuple[Any, list[dict[str, Any]]]] = {
    "two_steps": (
        two_steps,
        [
            {},
            {"steps": {H("a"): {"data": 1}}},
            {"steps": {H("a"): {"data": 1}, H("b"): {"data": 11}}},
        ],
    ),
    "sleeps": (sleeps, [{"steps": {H("a"): {"data": 1}}}, {"steps": {H("a"): {"data": 1}, H("nap"): None}}]),
    "fails": (fails, [{"steps": {H("a"): {"data": 1}}}]),
    "step_fails": (step_fails, [{}, {"max_attempts": 1}]),
    "parallel": (
        parallel,
        [
            {},
            {"step_id": H("p1"), "disable_immediate_execution": True},
            {"steps": {H("p1"): {"data": 1}, H("p2"): {"data": 2}}},
        ],
    ),
}

FAULTS: dict[str, dict[Any, bool]] = {
    "none": {},
    "transform_input": {("transform_input", "B"): True},
    "before_execution": {("before_execution", "A"): True},
    "after_execution": {("after_execution", "C"): True},
    "transform_output": {("transform_output", "B"): True},
    "before_response": {("before_response", "A"): True},
}


def ours(body: Any, sync: bool, client_mw: list[Any], fn_mw: list[Any]) -> tuple[Client, Any]:
    client = Client("app", middleware=client_mw)
    if sync:

        @client.create_function(fn_id="f", trigger=TriggerEvent(event="test/go"), middleware=fn_mw)
        def sync_fn(ctx: Context, step: StepSync) -> Any:
            return _run_sync_body(lambda s, kit: body(s), step, None)  # type: ignore[arg-type]

        return client, sync_fn

    @client.create_function(fn_id="f", trigger=TriggerEvent(event="test/go"), middleware=fn_mw)
    async def fn(ctx: Context, step: Step) -> Any:
        return await body(step)

    return client, fn


def official(body: Any, sync: bool, client_mw: list[Any], fn_mw: list[Any]) -> Any:
    client = inngest.Inngest(app_id="app", is_production=False, middleware=client_mw)
    if sync:

        @client.create_function(fn_id="f", trigger=inngest.TriggerEvent(event="test/go"), middleware=fn_mw)
        def sync_fn(ctx: Any) -> Any:
            return _run_sync_body(lambda s, kit: body(s), _WithGroup(ctx.step, ctx.group), None)  # type: ignore[arg-type]

        fn = sync_fn
    else:

        @client.create_function(fn_id="f", trigger=inngest.TriggerEvent(event="test/go"), middleware=fn_mw)
        async def async_fn(ctx: Any) -> Any:
            return await body(_WithGroup(ctx.step, ctx.group))

        fn = async_fn
    return comm_lib.CommHandler(
        client=client, enable_unauthed_sync=None, framework=server_lib.Framework.CONNECT, functions=[fn], streaming=None
    )


STATUS = {200: STATUS_DONE, 206: STATUS_NOT_COMPLETED, 500: STATUS_ERROR}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("flavour", ["Middleware", "MiddlewareSync"])
@pytest.mark.parametrize("sync", [False, True], ids=["async-fn", "sync-fn"])
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_same_hook_calls_and_replies_as_official_sdk(
    name: str, sync: bool, flavour: str, fault: str, payload: Any
) -> None:
    body, requests = SCENARIOS[name]
    for request in requests:
        options = dict(request)
        step_id = options.pop("step_id", "step")
        data = payload(**options)

        mine_log: list[Any] = []
        theirs_log: list[Any] = []
        client, fn = ours(body, sync, *_chain(OUR_IMPORTS, flavour, mine_log, FAULTS[fault]))
        handler = official(body, sync, *_chain(THEIR_IMPORTS, flavour, theirs_log, FAULTS[fault]))

        mine = await execute(client, {"app-f": fn}, Invocation(data, "app-f", step_id))
        theirs = await official_reply(handler, data, step_id)
        assert mine_log == theirs_log, request
        assert normalize(mine.status, mine.body, mine.no_retry, mine.retry_after) == theirs, request


async def test_the_recorded_order_on_a_first_request() -> None:
    """The order itself, spelled out: construction and `before_*` hooks in chain
    order (client's, then function's), `after_*` and `transform_output` reversed."""
    log: list[Any] = []
    client, fn = ours(two_steps, False, *_chain(OUR_IMPORTS, "MiddlewareSync", log, {}))
    from tests.sdk.conftest import make_payload

    outcome = await execute(client, {"app-f": fn}, Invocation(make_payload(), "app-f", "step"))
    assert [(entry[0], entry[1]) for entry in log] == [
        ("init", "A"),
        ("init", "B"),
        ("init", "C"),
        ("transform_input", "A"),
        ("transform_input", "B"),
        ("transform_input", "C"),
        ("before_execution", "A"),
        ("before_execution", "B"),
        ("before_execution", "C"),
        ("after_execution", "C"),
        ("after_execution", "B"),
        ("after_execution", "A"),
        ("transform_output", "C"),
        ("transform_output", "B"),
        ("transform_output", "A"),
        ("before_response", "A"),
        ("before_response", "B"),
        ("before_response", "C"),
    ]
    [op] = json.loads(outcome.body)
    assert op["op"] == "StepRun" and op["data"] == 2  # A added one to the step's output 1
