"""Step checkpoints, executor side: a discovery request that offers them
(`StepRequest.offers_checkpoints`) lets the worker store each step and go on in the
same request; refused checkpoints end the request with the step.

`CheckpointingWorker` plays a worker that supports them, over a real
executor and a real SQLite store.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from connect.dispatch import (
    CheckpointDecided,
    CheckpointJoined,
    CheckpointOffered,
    CheckpointReceiver,
    ExecutorMessage,
    StepReply,
    StepRequest,
    WorkerStoppedResponding,
)
from connect.executor import Executor
from connect.executor import service as executor_service
from connect.store import SqliteStore
from protocol.limits import MAX_CHECKPOINTS_PER_REQUEST
from protocol.payloads import STATUS_DONE, STATUS_NOT_COMPLETED
from tests.executor.harness import Harness
from tests.executor.scripted_worker import Ctx, ScriptedWorker, Step, h

pytestmark = pytest.mark.anyio

Hook = Callable[[StepRequest, StepReply], Awaitable[None]]


@dataclass
class CheckpointingWorker(ScriptedWorker):
    """`ScriptedWorker` as a worker that supports checkpoints.

    When a request offers them, each step the function runs is offered to
    the request's receiver as the one-op reply it would otherwise end the
    request with; once stored, the function replays with that memo (attempt
    0 again) and goes on in the same request. A refused step ends the
    request with it, as without checkpoints.
    """

    #: Every request dispatched, in order.
    received: list[StepRequest] = field(default_factory=list)
    #: What each checkpoint of a step returned, in order.
    answers: list[bool] = field(default_factory=list)
    #: Awaited before each step's checkpoint; may send checkpoints of its own, or raise.
    before_checkpoint: Hook | None = None
    #: Return right after the last step, as our worker does: its reply is
    #: offered with the checkpoint (`joinable`) and follows it at once.
    reply_behind_last: bool = False
    #: The commit outcomes each joined step was told, in order.
    joined: list[bool] = field(default_factory=list)
    #: The receiver of the request being dispatched (see `offer`).
    receiver: CheckpointReceiver | None = None
    _joining: set[str] = field(default_factory=set)
    _decided: dict[str, bool] = field(default_factory=dict)

    def send(self, message: ExecutorMessage) -> None:
        super().send(message)
        rid = message.request_id
        if isinstance(message, CheckpointJoined):
            self._joining.add(rid)
        elif isinstance(message, CheckpointDecided):
            if rid in self._joining:
                self._joining.discard(rid)
                self.joined.append(message.stored)
            else:
                self._decided[rid] = message.stored

    async def offer(self, reply: StepReply, *, joinable: bool = False) -> bool:
        """Offer `reply` as a checkpoint of the request being dispatched; its
        answer (True for a joined one: the answer comes with the commit)."""
        assert self.receiver is not None
        await self.receiver.checkpoint_offered(CheckpointOffered(reply.request_id, reply, joinable))
        if joinable and reply.request_id in self._joining:
            return True
        return self._decided.pop(reply.request_id, False)  # no answer: refused

    async def dispatch(self, request: StepRequest, receiver: CheckpointReceiver | None = None) -> StepReply:
        self.received.append(request)
        if self.failures:
            raise self.failures.pop(0)
        body = json.loads(request.payload)
        while True:
            reply = self._run(msgspec.structs.replace(request, payload=json.dumps(body).encode()))
            self.receiver = receiver
            if receiver is None or not _one_step_run(reply):
                return reply
            if self.before_checkpoint is not None:
                await self.before_checkpoint(request, reply)
            [op] = json.loads(reply.body)
            after = json.loads(json.dumps(body))
            after["steps"][op["id"]] = {"data": op["data"]}
            after["ctx"]["attempt"] = 0
            final = None
            if self.reply_behind_last:
                final = self._run(msgspec.structs.replace(request, payload=json.dumps(after).encode()))
                if final.status != STATUS_DONE:
                    final = None
            if final is not None:
                # The gateway hands the reply over once the step is joined to it.
                await self.offer(reply, joinable=True)
                return final
            stored = await self.offer(reply)
            self.answers.append(stored)
            if not stored:
                return reply
            body = after


def _one_step_run(reply: StepReply) -> bool:
    if reply.status != STATUS_NOT_COMPLETED:
        return False
    ops = json.loads(reply.body)
    return len(ops) == 1 and ops[0]["op"] == "StepRun"


class CheckpointHarness(Harness):
    worker: CheckpointingWorker

    async def open(self, **executor_options: Any) -> None:
        self.store = await SqliteStore.open(self.path)
        self.worker = CheckpointingWorker(self.store)
        self.worker.worker_ready.set()
        options: dict[str, Any] = {"backoff_base": 0.001, "backoff_max": 0.01, **executor_options}
        self.executor = Executor(self.store, self.worker, **options)
        await self.executor.start()

    async def run_to_end(self, fn: Callable[[Step, Ctx], Any]) -> dict[str, Any]:
        await self.deploy("fn", "shop/go", fn)
        return await self.finished((await self.only_run(await self.send("shop/go")))["run_id"])

    async def memos(self, run_id: str) -> dict[str, Any]:
        return {m.step_hash: json.loads(m.result) for m in await self.store.get_memos(run_id)}


@pytest.fixture
async def hs(tmp_path: Path) -> AsyncIterator[CheckpointHarness]:
    harness = CheckpointHarness(tmp_path / "connect.db")
    await harness.open()
    try:
        yield harness
    finally:
        await harness.close()


def three_steps(step: Step, ctx: Ctx) -> Any:
    a = step.run("a", lambda _: 1)
    b = step.run("b", lambda _: a + 1)
    c = step.run("c", lambda _: b + 1)
    return [a, b, c]


def step_run_reply(request: StepRequest, step_id: str, data: Any, status: int = STATUS_NOT_COMPLETED) -> StepReply:
    op = {"op": "StepRun", "id": h(step_id), "name": step_id, "displayName": step_id, "data": data}
    return StepReply(request.request_id, status, json.dumps([op]).encode(), request_version=2)


def payload(request: StepRequest) -> dict[str, Any]:
    return json.loads(request.payload)


async def test_every_step_is_stored_and_the_run_ends_in_one_request(hs: CheckpointHarness) -> None:
    run = await hs.run_to_end(three_steps)
    assert run["status"] == "Completed" and run["output"] == [1, 2, 3]
    [request] = hs.worker.received
    assert request.offers_checkpoints and payload(request)["ctx"]["checkpoint_steps"] is True
    assert hs.worker.answers == [True, True, True]
    assert await hs.memos(run["run_id"]) == {h("a"): {"data": 1}, h("b"): {"data": 2}, h("c"): {"data": 3}}
    assert hs.worker.executions == {"a": 1, "b": 1, "c": 1}


async def test_the_last_step_joined_to_the_reply_behind_it_is_stored_by_the_runs_last_commit(
    tmp_path: Path,
) -> None:
    commits: dict[bool, int] = {}
    for behind in (False, True):
        harness = CheckpointHarness(tmp_path / f"behind-{behind}.db")
        await harness.open()
        try:
            harness.worker.reply_behind_last = behind
            await harness.deploy("fn", "shop/go", three_steps)
            event_id = await harness.send("shop/go")
            before = harness.store.commits
            with anyio.fail_after(10):  # no reads meanwhile: every commit counted is the run's
                while harness.executor.active_runs:
                    await anyio.sleep(0.005)
            commits[behind] = harness.store.commits - before
            run = await harness.finished((await harness.only_run(event_id))["run_id"])
            assert run["status"] == "Completed" and run["output"] == [1, 2, 3]
            assert await harness.memos(run["run_id"]) == {h("a"): {"data": 1}, h("b"): {"data": 2}, h("c"): {"data": 3}}
            assert len(harness.worker.received) == 1
            assert harness.worker.answers == ([True, True] if behind else [True, True, True])
            # Told once, after the commit that stored it with the run's end.
            assert harness.worker.joined == ([True] if behind else [])
        finally:
            await harness.close()
    assert commits[True] == commits[False] - 1, commits


async def test_checkpoints_past_the_limit_are_refused_and_the_next_request_goes_on(hs: CheckpointHarness) -> None:
    count = MAX_CHECKPOINTS_PER_REQUEST + 1

    def many(step: Step, ctx: Ctx) -> Any:
        return sum(step.run(f"s{i}", lambda _, i=i: i) for i in range(count))

    run = await hs.run_to_end(many)
    assert hs.worker.answers == [True] * MAX_CHECKPOINTS_PER_REQUEST + [False]
    assert run["status"] == "Completed" and run["output"] == sum(range(count))
    # The refused step ended the first request; its memo came from that reply.
    first, second = hs.worker.received
    assert payload(first)["steps"] == {} and len(payload(second)["steps"]) == count
    assert second.offers_checkpoints  # a new request: a new allowance
    assert len(await hs.memos(run["run_id"])) == count
    assert all(n == 1 for n in hs.worker.executions.values())


async def test_malformed_checkpoints_are_refused_and_harm_nothing(hs: CheckpointHarness) -> None:
    refused: dict[str, bool] = {}

    async def malformed(request: StepRequest, reply: StepReply) -> None:
        if json.loads(reply.body)[0]["id"] != h("b"):
            return  # only once, before b: by then a has its memo
        assert request.offers_checkpoints
        two_ops = json.dumps(json.loads(step_run_reply(request, "x", 1).body) * 2).encode()
        sleep = [{"op": "Sleep", "id": h("nap"), "name": "2030-01-01T00:00:00.000Z", "data": None}]
        cases = {
            "two ops": msgspec.structs.replace(reply, body=two_ops),
            "a sleep": msgspec.structs.replace(reply, body=json.dumps(sleep).encode()),
            "status DONE": step_run_reply(request, "x", 1, status=STATUS_DONE),
            "garbage": msgspec.structs.replace(reply, body=b"\x00not json"),
            "already stored": step_run_reply(request, "a", "changed"),
        }
        for name, bad in cases.items():
            refused[name] = await hs.worker.offer(bad)

    hs.worker.before_checkpoint = malformed

    def fn(step: Step, ctx: Ctx) -> Any:
        a = step.run("a", lambda _: "first")
        return [a, step.run("b", lambda _: "second")]

    run = await hs.run_to_end(fn)
    assert refused == {
        "two ops": False,
        "a sleep": False,
        "status DONE": False,
        "garbage": False,
        "already stored": False,
    }
    assert hs.worker.answers == [True, True]  # a and b, in the one request
    assert run["status"] == "Completed" and run["output"] == ["first", "second"]
    assert len(hs.worker.received) == 1
    assert await hs.memos(run["run_id"]) == {h("a"): {"data": "first"}, h("b"): {"data": "second"}}


async def test_a_cancelled_run_refuses_the_next_checkpoint(
    hs: CheckpointHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `cancel_run` waits for the run to stop, which it cannot while this request runs.
    monkeypatch.setattr(executor_service, "CANCEL_WAIT", 0.01)

    async def cancel_before_b(request: StepRequest, reply: StepReply) -> None:
        if json.loads(reply.body)[0]["id"] == h("b"):
            view = await hs.executor.cancel_run(request.run_id)
            assert view is not None and view["status"] == "Running"

    hs.worker.before_checkpoint = cancel_before_b
    run = await hs.run_to_end(three_steps)
    assert hs.worker.answers == [True, False]
    assert run["status"] == "Cancelled"
    assert len(hs.worker.received) == 1
    assert "c" not in hs.worker.executions


async def test_switched_off_no_checkpoint_is_offered(tmp_path: Path) -> None:
    hs = CheckpointHarness(tmp_path / "connect.db")
    await hs.open(checkpoint_steps=False)
    try:
        run = await hs.run_to_end(three_steps)
    finally:
        await hs.close()
    assert run["status"] == "Completed" and run["output"] == [1, 2, 3]
    assert len(hs.worker.received) == 4  # one request per step, then the return
    for request in hs.worker.received:
        assert not request.offers_checkpoints
        assert payload(request)["ctx"]["checkpoint_steps"] is False
    assert hs.worker.answers == []


async def test_a_lost_worker_after_checkpoints_resumes_from_them_spending_no_attempt(tmp_path: Path) -> None:
    hs = CheckpointHarness(tmp_path / "connect.db")
    # One lost worker per step is allowed: the checkpoints start the count over.
    await hs.open(max_lease_lapses=1)

    async def stop_after_two(request: StepRequest, reply: StepReply) -> None:
        if len(hs.worker.received) == 2 and len(hs.worker.answers) == 2:
            raise WorkerStoppedResponding("the worker went away")

    hs.worker.failures = [WorkerStoppedResponding("the first attempt is lost")]
    hs.worker.before_checkpoint = stop_after_two
    try:
        run = await hs.run_to_end(three_steps)
    finally:
        await hs.close()
    assert run["status"] == "Completed" and run["output"] == [1, 2, 3]
    first, again, after = hs.worker.received
    # The same request each time, and no attempt spent on the lost workers.
    assert first.request_id == again.request_id == after.request_id
    assert [payload(r)["ctx"]["attempt"] for r in (first, again, after)] == [0, 0, 0]
    assert payload(after)["steps"] == {h("a"): {"data": 1}, h("b"): {"data": 2}}
    assert hs.worker.answers == [True, True, True]
