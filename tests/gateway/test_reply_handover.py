"""Replies handed to a caller that makes them durable itself (`StepRequest.takes_over`),
which then tells the dispatcher `ReplySettled`.

Real pieces throughout: the gateway, its dispatcher and HTTP start endpoint
over a real SQLite file (the composition the gateway-only benchmark runs),
and our worker connected to it over a real socket. The test plays the
executor: it dispatches, then says whether its own commit holds the reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connect import Client, Context, Step, TriggerEvent
from connect.dispatch import ReplySettled, StepRequest
from connect.roles import StandaloneGateway
from connect.worker.connection import WorkerConnection
from protocol.payloads import STATUS_DONE
from tests.gateway.requests import discovery_request
from tests.gateway.stack import gateway_with_worker

pytestmark = pytest.mark.anyio

client = Client(app_id="handover")


@client.create_function(fn_id="answer", trigger=TriggerEvent(event="handover/x"))
async def answer(ctx: Context, step: Step) -> Any:
    return {"n": ctx.event.data["n"]}


@dataclass
class Stack:
    gw: StandaloneGateway
    worker: WorkerConnection

    def request(self, n: int, *, takes_over: bool) -> StepRequest:
        return discovery_request("handover", "handover-answer", "handover/x", data={"n": n}, takes_over=takes_over)

    def worker_holds(self, request_id: str) -> bool:
        """Whether the worker still keeps the reply (no WORKER_REPLY_ACK yet)."""
        return request_id in self.worker._ledger.replies

    async def until(self, what: str, check: Any) -> None:
        for _ in range(500):
            if await check():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with gateway_with_worker(tmp_path / "gw.db", client, [answer], "handover") as (gw, worker):
        yield Stack(gw, worker)


async def test_the_worker_is_acknowledged_only_after_the_callers_commit(stack: Stack) -> None:
    request = stack.request(1, takes_over=True)
    reply = await stack.gw.dispatcher.dispatch(request)
    assert reply.status == STATUS_DONE and reply.body == b'{"n":1}'
    await asyncio.sleep(0.3)
    assert await stack.gw.store.get_reply(request.request_id) is None  # the caller's commit will hold it
    assert stack.worker_holds(request.request_id)  # so the worker must not be acknowledged yet

    stack.gw.dispatcher.send(ReplySettled(request.request_id, committed=True))

    async def acked() -> bool:
        return not stack.worker_holds(request.request_id)

    await stack.until("the worker's reply to be acknowledged", acked)
    assert await stack.gw.store.get_reply(request.request_id) is None


async def test_a_reply_the_caller_did_not_commit_is_stored_before_the_ack(stack: Stack) -> None:
    request = stack.request(2, takes_over=True)
    await stack.gw.dispatcher.dispatch(request)
    await asyncio.sleep(0.3)
    assert stack.worker_holds(request.request_id)

    stack.gw.dispatcher.send(ReplySettled(request.request_id, committed=False))
    stack.gw.dispatcher.send(ReplySettled(request.request_id, committed=True))  # later ones change nothing

    async def stored_and_acked() -> bool:
        stored = await stack.gw.store.get_reply(request.request_id)
        return stored is not None and not stack.worker_holds(request.request_id)

    await stack.until("the reply to be stored and acknowledged", stored_and_acked)


async def test_without_takes_over_the_reply_is_stored_before_dispatch_returns(stack: Stack) -> None:
    request = stack.request(3, takes_over=False)
    reply = await stack.gw.dispatcher.dispatch(request)
    assert reply.body == b'{"n":3}'
    assert await stack.gw.store.get_reply(request.request_id) is not None
