"""Step checkpoints: with `ctx.checkpoint_steps`, an async handler's finished
steps are stored through `Invocation.checkpoint` and the request goes on; a
step waits for the previous checkpoint's answer before it starts, while a
handler that returns after its last step does not wait."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import pytest

from connect.sdk import Client, Context, Event, Function, Step, StepSync, TriggerEvent, replay
from connect.sdk.execution import Invocation, Outcome, execute
from protocol.payloads import STATUS_DONE, STATUS_ERROR, STATUS_NOT_COMPLETED, Opcode, hash_step_id

pytestmark = pytest.mark.anyio

Execute = Callable[..., Awaitable[Outcome]]


class Checkpoints:
    """Stands in for the transport: records each op (as sent on the wire) and
    answers `stored` a moment later, as over a socket (`answer=False`: never)."""

    def __init__(self, stored: bool = True, *, answer: bool = True, at_once: bool = False) -> None:
        self.stored = stored
        self.answer = answer
        self.at_once = at_once  # answered before the call returns (e.g. a worker shutting down)
        self.ops: list[dict[str, Any]] = []
        self.answers: list[asyncio.Future[bool]] = []

    def __call__(self, op: Opcode) -> asyncio.Future[bool]:
        self.ops.append(json.loads(msgspec.json.encode(op)))
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bool] = loop.create_future()
        if self.at_once:
            answer.set_result(self.stored)
        elif self.answer:
            loop.call_soon(answer.set_result, self.stored)
        self.answers.append(answer)
        return answer

    @property
    def sent(self) -> list[tuple[str, str, Any]]:
        return [(op["op"], op["id"], op["data"]) for op in self.ops]


@pytest.fixture
def client() -> Client:
    def events_api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ids": [f"evt-{e['name']}" for e in json.loads(request.content)]})

    return Client("app", http_transport=httpx.MockTransport(events_api))


@pytest.fixture
def run(client: Client, payload: Callable[..., bytes]) -> Execute:
    """Execute one request for `fn`; `offer` sets `ctx.checkpoint_steps`."""

    async def call(
        fn: Function, checkpoint: Checkpoints | None, *, offer: bool = True, step_id: str = "step", **kwargs: Any
    ) -> Outcome:
        request = json.loads(payload(**kwargs))
        request["ctx"]["checkpoint_steps"] = offer
        slug = fn.fully_qualified_id(client.app_id)
        invocation = Invocation(json.dumps(request).encode(), slug, step_id, checkpoint=checkpoint)
        return await execute(client, {slug: fn}, invocation)

    return call


def only_op(outcome: Outcome) -> dict[str, Any]:
    assert outcome.status == STATUS_NOT_COMPLETED, outcome
    [op] = json.loads(outcome.body)
    return op  # type: ignore[no-any-return]


def two_steps(client: Client, ran: list[str]) -> Function:
    def body(name: str) -> str:
        ran.append(name)
        return name.upper()

    @client.create_function(fn_id="two", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> str:
        await step.run("a", body, "a")
        return await step.run("b", body, "b")

    return fn


async def test_three_steps_finish_in_one_request(client: Client, run: Execute) -> None:
    @client.create_function(fn_id="three", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> list[Any]:
        greeting = await step.run("fetch", lambda: f"hi {ctx.event.data['who']}")
        loud = await step.run("shout", str.upper, greeting)
        length = await step.run("count", len, loud)
        return [greeting, loud, length]

    checkpoints = Checkpoints()
    outcome = await run(fn, checkpoints)
    assert (outcome.status, json.loads(outcome.body)) == (STATUS_DONE, ["hi world", "HI WORLD", 8])
    assert checkpoints.sent == [
        ("StepRun", hash_step_id("fetch"), "hi world"),
        ("StepRun", hash_step_id("shout"), "HI WORLD"),
        ("StepRun", hash_step_id("count"), 8),
    ]
    assert checkpoints.ops[0]["userland"] == {"id": "fetch", "index": None}


@pytest.mark.parametrize(("offer", "transport"), [(False, True), (True, False)], ids=["not-offered", "no-transport"])
async def test_without_an_offer_or_a_transport_the_step_ends_the_request(
    client: Client, run: Execute, offer: bool, transport: bool
) -> None:
    ran: list[str] = []
    checkpoints = Checkpoints()
    op = only_op(await run(two_steps(client, ran), checkpoints if transport else None, offer=offer))
    assert (op["op"], op["data"]) == ("StepRun", "A")
    assert ran == ["a"]
    assert checkpoints.ops == []


async def test_a_refused_checkpoint_ends_the_request_with_the_step(client: Client, run: Execute) -> None:
    ran: list[str] = []
    checkpoints = Checkpoints(stored=False)
    op = only_op(await run(two_steps(client, ran), checkpoints))
    assert (op["op"], op["id"], op["data"]) == ("StepRun", hash_step_id("a"), "A")
    assert checkpoints.sent == [("StepRun", hash_step_id("a"), "A")]
    assert ran == ["a"]


async def test_a_targeted_request_does_not_checkpoint(client: Client, run: Execute) -> None:
    ran: list[str] = []
    checkpoints = Checkpoints()
    targeted = {"step_id": hash_step_id("b"), "steps": {hash_step_id("a"): {"data": "A"}}}
    op = only_op(await run(two_steps(client, ran), checkpoints, **targeted))
    assert (op["op"], op["data"]) == ("StepRun", "B")
    assert (ran, checkpoints.ops) == (["b"], [])


async def test_disabled_immediate_execution_plans_instead_of_checkpointing(client: Client, run: Execute) -> None:
    ran: list[str] = []
    checkpoints = Checkpoints()
    outcome = await run(two_steps(client, ran), checkpoints, disable_immediate_execution=True)
    assert only_op(outcome)["op"] == "StepPlanned"
    assert (ran, checkpoints.ops) == ([], [])


async def test_a_parallel_group_is_planned_after_the_checkpointed_step(client: Client, run: Execute) -> None:
    @client.create_function(fn_id="fan", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        await step.run("before", lambda: 0)
        await step.parallel((lambda: step.run("p1", lambda: 1), lambda: step.run("p2", lambda: 2)))

    checkpoints = Checkpoints()
    outcome = await run(fn, checkpoints)
    assert outcome.status == STATUS_NOT_COMPLETED
    assert [(op["op"], op["id"]) for op in json.loads(outcome.body)] == [
        ("StepPlanned", hash_step_id("p1")),
        ("StepPlanned", hash_step_id("p2")),
    ]
    assert checkpoints.sent == [("StepRun", hash_step_id("before"), 0)]


async def test_a_sync_handler_does_not_checkpoint(client: Client, run: Execute) -> None:
    @client.create_function(fn_id="sync", trigger=TriggerEvent(event="test/go"))
    def fn(ctx: Context, step: StepSync) -> int:
        return step.run("a", lambda: 1) + step.run("b", lambda: 2)

    checkpoints = Checkpoints()
    op = only_op(await run(fn, checkpoints))
    assert (op["op"], op["id"]) == ("StepRun", hash_step_id("a"))
    assert checkpoints.ops == []


async def test_the_step_returns_its_value_as_a_replay_would(client: Client, run: Execute) -> None:
    @client.create_function(fn_id="tuple", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> str:
        pair = await step.run("pair", lambda: (1, "x"))
        return repr(pair)

    outcome = await run(fn, Checkpoints())
    assert (outcome.status, json.loads(outcome.body)) == (STATUS_DONE, "[1, 'x']")


async def test_attempts_start_over_after_a_checkpoint(client: Client, run: Execute) -> None:
    def explode() -> None:
        raise KeyError("missing")

    @client.create_function(fn_id="late-boom", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        await step.run("ok", lambda: "fine")
        await step.run("boom", explode)

    op = only_op(await run(fn, Checkpoints(), attempt=2, max_attempts=3))
    # Attempt 2 of 3 was for "ok"; "boom" is on its first attempt, so it may be retried.
    assert (op["op"], op["id"], op["error"]["name"]) == ("StepError", hash_step_id("boom"), "KeyError")


async def test_the_handler_replies_without_waiting_for_the_last_answer(client: Client, run: Execute) -> None:
    @client.create_function(fn_id="one", trigger=TriggerEvent(event="test/go"))
    async def one(ctx: Context, step: Step) -> str:
        return str(await step.run("only", lambda: "x"))

    checkpoints = Checkpoints(answer=False)
    outcome = await asyncio.wait_for(run(one, checkpoints), 5)
    assert (outcome.status, json.loads(outcome.body)) == (STATUS_DONE, "x")
    assert checkpoints.sent == [("StepRun", hash_step_id("only"), "x")]
    assert not checkpoints.answers[0].done()  # the reply goes right behind the checkpoint


async def test_a_checkpoint_refused_at_once_ends_the_request_even_after_the_last_step(
    client: Client, run: Execute
) -> None:
    @client.create_function(fn_id="last", trigger=TriggerEvent(event="test/go"))
    async def last(ctx: Context, step: Step) -> int:
        return len(await step.run("only", lambda: "xyz"))

    op = only_op(await run(last, Checkpoints(stored=False, at_once=True)))
    assert (op["op"], op["id"], op["data"]) == ("StepRun", hash_step_id("only"), "xyz")


async def test_a_step_waits_for_the_previous_answer_before_it_starts(client: Client, run: Execute) -> None:
    ran: list[str] = []
    checkpoints = Checkpoints(answer=False)
    task = asyncio.ensure_future(run(two_steps(client, ran), checkpoints))
    for _ in range(20):
        await asyncio.sleep(0)
    assert (ran, checkpoints.sent, task.done()) == (["a"], [("StepRun", hash_step_id("a"), "A")], False)
    checkpoints.answers[0].set_result(True)
    outcome = await asyncio.wait_for(task, 5)
    assert (outcome.status, json.loads(outcome.body), ran) == (STATUS_DONE, "B", ["a", "b"])


async def test_a_refusal_seen_by_the_next_step_ends_the_request_with_the_previous_one(
    client: Client, run: Execute
) -> None:
    ran: list[str] = []
    checkpoints = Checkpoints(answer=False)
    task = asyncio.ensure_future(run(two_steps(client, ran), checkpoints))
    for _ in range(20):
        await asyncio.sleep(0)
    checkpoints.answers[0].set_result(False)
    op = only_op(await asyncio.wait_for(task, 5))
    assert (op["op"], op["id"], op["data"], ran) == ("StepRun", hash_step_id("a"), "A", ["a"])


async def test_steps_gathered_run_one_after_the_other(client: Client, run: Execute) -> None:
    ran: list[str] = []

    @client.create_function(fn_id="gather", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        await asyncio.gather(step.run("a", ran.append, "a"), step.run("b", ran.append, "b"))

    checkpoints = Checkpoints()
    outcome = await run(fn, checkpoints)
    assert (outcome.status, ran) == (STATUS_DONE, ["a", "b"])
    assert [op[1] for op in checkpoints.sent] == [hash_step_id("a"), hash_step_id("b")]


async def test_a_step_started_during_another_steps_body_is_refused(client: Client, run: Execute) -> None:
    ran: list[str] = []

    async def slow(name: str) -> None:
        ran.append(name)
        await asyncio.sleep(0.01)

    @client.create_function(fn_id="overlap", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> None:
        await asyncio.gather(step.run("a", slow, "a"), step.run("b", slow, "b"))

    outcome = await run(fn, Checkpoints())
    assert outcome.status == STATUS_ERROR
    assert json.loads(outcome.body)["name"] == "ConcurrentStepsError"
    assert ran == ["a"]


async def test_send_event_is_checkpointed(client: Client, run: Execute) -> None:
    @client.create_function(fn_id="emit", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> list[str]:
        return await step.send_event("emit", Event(name="demo/sent"))

    checkpoints = Checkpoints()
    outcome = await run(fn, checkpoints)
    assert (outcome.status, json.loads(outcome.body)) == (STATUS_DONE, ["evt-demo/sent"])
    assert checkpoints.sent == [("StepRun", hash_step_id("emit"), ["evt-demo/sent"])]


async def test_no_answer_in_time_ends_the_request_with_the_step(
    client: Client, run: Execute, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(replay, "CHECKPOINT_ACK_TIMEOUT", 0.05)
    ran: list[str] = []
    checkpoints = Checkpoints(answer=False)
    with caplog.at_level(logging.WARNING, logger="connect.sdk"):
        op = only_op(await asyncio.wait_for(run(two_steps(client, ran), checkpoints), 5))
    assert (op["op"], op["id"], op["data"], ran) == ("StepRun", hash_step_id("a"), "A", ["a"])
    assert "no answer to the checkpoint of step 'a'" in caplog.text
    # An answer that comes after all changes nothing: the future was answered (False) by the timeout.
    assert checkpoints.answers[0].result() is False


async def test_an_answer_in_time_cancels_the_timeout(
    client: Client, run: Execute, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay, "CHECKPOINT_ACK_TIMEOUT", 0.2)
    ran: list[str] = []
    checkpoints = Checkpoints()
    outcome = await asyncio.wait_for(run(two_steps(client, ran), checkpoints), 5)
    assert (outcome.status, json.loads(outcome.body), ran) == (STATUS_DONE, "B", ["a", "b"])
    await asyncio.sleep(0.3)  # past the timeout: nothing fires late
    assert [a.result() for a in checkpoints.answers] == [True, True]
