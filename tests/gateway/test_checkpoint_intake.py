"""`GatewayDispatcher.accept_checkpoint`: which checkpoints reach the caller.

Real pieces, as in test_reply_handover: the gateway and its dispatcher over
a real SQLite file, our worker connected over a real socket. The test plays
the executor: it dispatches requests and answers their checkpoints.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from connect import Client, Context, Step, TriggerEvent
from connect.dispatch import (
    CheckpointDecided,
    CheckpointJoined,
    CheckpointOffered,
    Port,
    ReplySettled,
    StepReply,
    StepRequest,
)
from connect.gateway import connection
from connect.roles import StandaloneGateway
from connect.worker.connection import WorkerConnection
from protocol import connect_pb2 as pb
from protocol.ids import new_ulid
from protocol.payloads import (
    STATUS_DONE,
    STATUS_NOT_COMPLETED,
)
from tests.gateway.requests import discovery_request
from tests.gateway.stack import gateway_with_worker

pytestmark = pytest.mark.anyio

INSTANCE = "intake"
client = Client(app_id="intake")


@dataclass
class Hold:
    """Keeps `held` running (its request in flight) until released."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)


HOLDS: list[Hold] = []


@client.create_function(fn_id="held", trigger=TriggerEvent(event="intake/held"))
async def held(ctx: Context, step: Step) -> Any:
    hold = HOLDS[-1]
    hold.started.set()
    await hold.released.wait()
    return "released"


@client.create_function(fn_id="two", trigger=TriggerEvent(event="intake/two"))
async def two(ctx: Context, step: Step) -> Any:
    a = await step.run("a", lambda: 1)
    b = await step.run("b", lambda: a + 1)
    return [a, b]


@client.create_function(fn_id="last", trigger=TriggerEvent(event="intake/last"))
async def last(ctx: Context, step: Step) -> Any:
    a = await step.run("a", lambda: 1)
    return a + 1  # returns without waiting for the checkpoint's answer


@dataclass
class Checkpoints:
    """A request's checkpoint receiver: records what it is offered and
    answers `answer`. With `joins`, a checkpoint offered with the reply
    behind it is joined to that reply; the test then tells the commit's
    outcome with `tell`."""

    answer: bool = True
    gate: asyncio.Event | None = None
    joins: bool = False
    got: list[StepReply] = field(default_factory=list)
    offered_join: list[bool] = field(default_factory=list)
    joined: list[str] = field(default_factory=list)
    port: Port | None = None

    async def checkpoint_offered(self, offer: CheckpointOffered) -> None:
        assert self.port is not None
        self.got.append(offer.reply)
        self.offered_join.append(offer.joinable)
        if self.joins and offer.joinable:
            self.joined.append(offer.request_id)
            self.port.send(CheckpointJoined(offer.request_id))
            return
        if self.gate is not None:
            await self.gate.wait()
        self.port.send(CheckpointDecided(offer.request_id, self.answer))

    def tell(self, stored: bool) -> None:
        """The outcome of the commit that carried the joined step."""
        assert self.port is not None
        [request_id] = self.joined
        self.port.send(CheckpointDecided(request_id, stored))


@dataclass
class Stack:
    gw: StandaloneGateway
    worker: WorkerConnection

    receivers: dict[str, Checkpoints] = field(default_factory=dict)

    def request(self, fn: str, checkpoint: Checkpoints | None, *, offer: bool, takes_over: bool = False) -> StepRequest:
        """A discovery request for `fn`; `offer` sets `ctx.checkpoint_steps`
        (whether the worker sends checkpoints), `checkpoint` receives them."""
        request = discovery_request(
            "intake",
            f"intake-{fn}",
            f"intake/{fn}",
            offer_checkpoints=offer,
            offers_checkpoints=checkpoint is not None,
            takes_over=takes_over,
        )
        if checkpoint is not None:
            checkpoint.port = self.gw.dispatcher
            self.receivers[request.request_id] = checkpoint
        return request

    def dispatch(self, request: StepRequest) -> Coroutine[Any, Any, StepReply]:
        return self.gw.dispatcher.dispatch(request, self.receivers.get(request.request_id))

    async def hold(self, checkpoint: Checkpoints | None) -> tuple[StepRequest, asyncio.Task[StepReply]]:
        """Dispatch `held` (its payload offers no checkpoints, so the worker
        sends none) and return once the worker runs it."""
        hold = Hold()
        HOLDS.append(hold)
        request = self.request("held", checkpoint, offer=False)
        task = asyncio.create_task(self.dispatch(request))
        async with asyncio.timeout(10):
            await hold.started.wait()
        return request, task

    async def release(self, task: asyncio.Task[StepReply]) -> StepReply:
        HOLDS[-1].released.set()
        async with asyncio.timeout(10):
            return await task


def checkpoint_bytes(request_id: str, step_id: str = "a", data: Any = 1) -> bytes:
    """A WORKER_CHECKPOINT payload: an SDKResponse with one StepRun op."""
    op = {"op": "StepRun", "id": step_id, "name": step_id, "displayName": step_id, "data": data}
    response = pb.SDKResponse(
        request_id=request_id, status=pb.NOT_COMPLETED, body=json.dumps([op]).encode(), request_version=2
    )
    return response.SerializeToString()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with gateway_with_worker(tmp_path / "gw.db", client, [held, two, last], INSTANCE) as (gw, worker):
        try:
            yield Stack(gw, worker)
        finally:
            for hold in HOLDS:
                hold.released.set()
            HOLDS.clear()


async def test_a_checkpoint_is_handed_to_the_request_parsed(stack: Stack) -> None:
    checkpoints = Checkpoints()
    request, task = await stack.hold(checkpoints)
    rid = request.request_id
    assert await stack.gw.dispatcher.accept_checkpoint(checkpoint_bytes(rid, "a", {"k": 1}), rid, INSTANCE) is True
    [reply] = checkpoints.got
    assert (reply.request_id, reply.status, reply.request_version) == (rid, STATUS_NOT_COMPLETED, 2)
    assert json.loads(reply.body) == [{"op": "StepRun", "id": "a", "name": "a", "displayName": "a", "data": {"k": 1}}]
    assert (await stack.release(task)).status == STATUS_DONE


async def test_the_callables_answer_is_returned(stack: Stack) -> None:
    checkpoints = Checkpoints(answer=False)
    request, task = await stack.hold(checkpoints)
    rid = request.request_id
    assert await stack.gw.dispatcher.accept_checkpoint(checkpoint_bytes(rid), rid, INSTANCE) is False
    assert len(checkpoints.got) == 1
    await stack.release(task)


async def test_a_checkpoint_from_another_instance_is_refused(stack: Stack) -> None:
    checkpoints = Checkpoints()
    request, task = await stack.hold(checkpoints)
    rid = request.request_id
    assert await stack.gw.dispatcher.accept_checkpoint(checkpoint_bytes(rid), rid, "someone-else") is False
    assert checkpoints.got == []
    await stack.release(task)


async def test_a_request_that_offers_no_checkpoints_refuses_them(stack: Stack) -> None:
    request, task = await stack.hold(None)
    rid = request.request_id
    assert await stack.gw.dispatcher.accept_checkpoint(checkpoint_bytes(rid), rid, INSTANCE) is False
    await stack.release(task)


async def test_a_request_not_in_flight_refuses_checkpoints(stack: Stack) -> None:
    checkpoints = Checkpoints()
    request, task = await stack.hold(checkpoints)
    rid = request.request_id
    await stack.release(task)
    assert await stack.gw.dispatcher.accept_checkpoint(checkpoint_bytes(rid), rid, INSTANCE) is False
    unknown = new_ulid()
    assert await stack.gw.dispatcher.accept_checkpoint(checkpoint_bytes(unknown), unknown, INSTANCE) is False
    assert checkpoints.got == []


async def checkpoint_being_stored(
    stack: Stack, checkpoints: Checkpoints
) -> tuple[StepRequest, asyncio.Task[StepReply], asyncio.Task[bool]]:
    """Hold a request and start storing its checkpoint "a"; return once the
    executor's callable has it (and waits on `checkpoints.gate`)."""
    request, task = await stack.hold(checkpoints)
    rid = request.request_id
    first = asyncio.create_task(stack.gw.dispatcher.accept_checkpoint(checkpoint_bytes(rid, "a"), rid, INSTANCE))
    async with asyncio.timeout(10):
        while not checkpoints.got:
            await asyncio.sleep(0.005)
    return request, task, first


async def test_one_checkpoint_of_a_request_at_a_time(stack: Stack) -> None:
    checkpoints = Checkpoints(gate=asyncio.Event())
    request, task, first = await checkpoint_being_stored(stack, checkpoints)
    rid = request.request_id
    async with asyncio.timeout(10):  # a second one let through would wait on the gate too
        assert await stack.gw.dispatcher.accept_checkpoint(checkpoint_bytes(rid, "b"), rid, INSTANCE) is False
    assert checkpoints.gate is not None
    checkpoints.gate.set()
    async with asyncio.timeout(10):
        assert await first is True
    assert [json.loads(r.body)[0]["id"] for r in checkpoints.got] == ["a"]
    await stack.release(task)


async def test_our_worker_checkpoints_each_step_and_goes_on(stack: Stack) -> None:
    checkpoints = Checkpoints()
    request = stack.request("two", checkpoints, offer=True)
    async with asyncio.timeout(10):
        reply = await stack.dispatch(request)
    # Both checkpoints were stored, so the one request ran the function to its end.
    assert reply.status == STATUS_DONE and json.loads(reply.body) == [1, 2]
    ops = [json.loads(r.body) for r in checkpoints.got]
    assert [(op["op"], op["displayName"], op["data"]) for [op] in ops] == [("StepRun", "a", 1), ("StepRun", "b", 2)]
    assert {r.request_id for r in checkpoints.got} == {request.request_id}


def ops_of(reply: StepReply) -> list[tuple[str, str, Any]]:
    return [(op["op"], op["id"], op["data"]) for op in json.loads(reply.body)]


@pytest.mark.parametrize("refusal", ["executor", "other-instance"])
async def test_the_reply_after_a_refused_checkpoint_is_that_checkpoint(stack: Stack, refusal: str) -> None:
    checkpoints = Checkpoints(answer=False)
    request, task = await stack.hold(checkpoints)
    rid = request.request_id
    instance = INSTANCE if refusal == "executor" else "someone-else"
    assert await stack.gw.dispatcher.accept_checkpoint(checkpoint_bytes(rid, "a", 7), rid, instance) is False
    # The worker's own reply ("released", DONE) comes after the refusal: the
    # request ends with the refused step instead, as if the worker had waited.
    reply = await stack.release(task)
    assert (reply.status, ops_of(reply)) == (STATUS_NOT_COMPLETED, [("StepRun", "a", 7)])


@pytest.mark.parametrize("stored", [True, False])
async def test_a_reply_right_behind_a_checkpoint_waits_for_its_answer(stack: Stack, stored: bool) -> None:
    checkpoints = Checkpoints(answer=stored, gate=asyncio.Event())
    _, task, first = await checkpoint_being_stored(stack, checkpoints)
    HOLDS[-1].released.set()  # the worker's reply arrives while the checkpoint is being stored
    await asyncio.sleep(0.3)
    assert not task.done()
    assert checkpoints.gate is not None
    checkpoints.gate.set()
    async with asyncio.timeout(10):
        assert await first is stored
        reply = await task
    if stored:
        assert (reply.status, json.loads(reply.body)) == (STATUS_DONE, "released")
    else:
        assert (reply.status, ops_of(reply)) == (STATUS_NOT_COMPLETED, [("StepRun", "a", 1)])


@pytest.fixture
def gateway_writes(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The kinds of the frames of every write the gateway makes at once."""
    seen: list[list[int]] = []
    original = connection.Connection._send_now

    def recording(self: connection.Connection, frames: Sequence[bytes]) -> bool:
        sent = original(self, list(frames))
        if sent:
            seen.append([pb.ConnectMessage.FromString(f).kind for f in frames])
        return sent

    monkeypatch.setattr(connection.Connection, "_send_now", recording)
    return seen


async def test_the_answer_to_a_checkpoint_with_the_reply_behind_leaves_with_the_replys_ack(
    stack: Stack, gateway_writes: list[list[int]]
) -> None:
    checkpoints = Checkpoints(gate=asyncio.Event())
    request = stack.request("last", checkpoints, offer=True)
    task = asyncio.create_task(stack.dispatch(request))
    async with asyncio.timeout(10):
        while not stack.gw.dispatcher.reply_behind(request.request_id):
            await asyncio.sleep(0.005)  # the worker returned; its reply waits for the checkpoint
    assert checkpoints.gate is not None
    checkpoints.gate.set()
    async with asyncio.timeout(10):
        reply = await task
        while not any(pb.WORKER_REPLY_ACK in write for write in gateway_writes):
            await asyncio.sleep(0.005)
    assert (reply.status, json.loads(reply.body)) == (STATUS_DONE, 2)
    assert checkpoints.offered_join == [False]  # the dispatcher stores this request's reply itself
    # No write of its own: the worker waits for neither, so one write carries both.
    assert [pb.WORKER_CHECKPOINT_ACK, pb.WORKER_REPLY_ACK] in gateway_writes, gateway_writes
    assert not any(write == [pb.WORKER_CHECKPOINT_ACK] for write in gateway_writes), gateway_writes


@pytest.mark.parametrize("outcome", [True, False])
async def test_a_step_joined_to_the_reply_behind_it_is_answered_by_the_replys_commit(
    stack: Stack, gateway_writes: list[list[int]], outcome: bool
) -> None:
    checkpoints = Checkpoints(joins=True)
    request = stack.request("last", checkpoints, offer=True, takes_over=True)
    rid = request.request_id
    async with asyncio.timeout(10):
        # Handed over before the step is stored: the caller stores both at once.
        reply = await stack.dispatch(request)
    assert checkpoints.offered_join == [True]
    assert (reply.status, json.loads(reply.body)) == (STATUS_DONE, 2)
    await asyncio.sleep(0.2)
    assert not any(pb.WORKER_CHECKPOINT_ACK in write for write in gateway_writes), gateway_writes
    checkpoints.tell(outcome)  # the caller's commit, then it settles the reply
    stack.gw.dispatcher.send(ReplySettled(rid, outcome))
    async with asyncio.timeout(10):
        while not any(pb.WORKER_REPLY_ACK in write for write in gateway_writes):
            await asyncio.sleep(0.005)
    # The worker waits for neither: one write carries both answers.
    [write] = [w for w in gateway_writes if pb.WORKER_REPLY_ACK in w]
    assert sorted(write) == sorted([pb.WORKER_CHECKPOINT_ACK, pb.WORKER_REPLY_ACK]), gateway_writes
    stored = await stack.gw.store.get_reply(rid)
    if outcome:
        assert stored is None  # the caller's commit holds both
    else:
        # Not stored with the reply: the request answered with the step, as
        # after any refused checkpoint, and the dispatcher stored that.
        assert stored is not None
        response = pb.SDKResponse.FromString(stored)
        assert (response.status, [op["displayName"] for op in json.loads(response.body)]) == (pb.NOT_COMPLETED, ["a"])


async def test_a_checkpoint_not_joined_is_stored_before_the_reply_behind_it(stack: Stack) -> None:
    checkpoints = Checkpoints(gate=asyncio.Event())
    request = stack.request("last", checkpoints, offer=True, takes_over=True)
    task = asyncio.create_task(stack.dispatch(request))
    async with asyncio.timeout(10):
        while not checkpoints.got:
            await asyncio.sleep(0.005)
    assert checkpoints.offered_join == [True]  # offered, not taken: the reply waits
    await asyncio.sleep(0.2)
    assert not task.done()
    assert checkpoints.gate is not None
    checkpoints.gate.set()
    async with asyncio.timeout(10):
        reply = await task
    assert (reply.status, json.loads(reply.body)) == (STATUS_DONE, 2)
    # Not committed by the test: the dispatcher stores it.
    stack.gw.dispatcher.send(ReplySettled(request.request_id, committed=False))
