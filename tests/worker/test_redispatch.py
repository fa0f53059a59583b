"""A step dispatched again under a new request id while it runs here (its
lease lapsed) runs once: the running copy answers the new request.

Real pieces: the gateway and its dispatcher over a real SQLite file, our
worker connected over a real socket. The test plays the executor and sends
the same run's step twice, as the executor does after a lease lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import msgspec
import pytest

from connect import Client, Context, Step, TriggerEvent
from protocol.ids import new_ulid
from tests.gateway.requests import discovery_request
from tests.gateway.stack import gateway_with_worker

pytestmark = pytest.mark.anyio

client = Client(app_id="redispatch")
starts: list[str] = []
release = asyncio.Event()


@client.create_function(fn_id="long", trigger=TriggerEvent(event="redispatch/long"))
async def long_step(ctx: Context, step: Step) -> str:
    async def body() -> str:
        starts.append(ctx.run_id)
        await release.wait()  # runs until the test lets it finish
        return "done once"

    return await step.run("body", body)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _until(what: str, check: object) -> None:
    assert callable(check)
    for _ in range(3000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_step_dispatched_again_while_it_runs_runs_once_here(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connect.worker")
    starts.clear()
    release.clear()
    async with gateway_with_worker(tmp_path / "gw.db", client, [long_step], "redispatch") as (gw, worker):
        first = discovery_request("redispatch", "redispatch-long", "redispatch/long")
        lapsed = asyncio.create_task(gw.dispatcher.dispatch(first))
        try:
            await _until("the step to start", lambda: len(starts) == 1)
            again = msgspec.structs.replace(first, request_id=new_ulid())  # same run, same step
            redispatch = asyncio.create_task(gw.dispatcher.dispatch(again))
            await _until("the worker to take the second dispatch", lambda: "dispatches again step" in caplog.text)
            assert worker.in_flight == 1
            release.set()
            reply = await asyncio.wait_for(redispatch, 60)
            assert reply.request_id == again.request_id
            ((op,),) = [msgspec.json.decode(reply.body)]  # the step's result, as a discovery's reply carries it
            assert op["op"] == "StepRun" and op["data"] == "done once"
            assert starts == [first.run_id]  # one copy of the step ran in this process
        finally:
            release.set()  # whatever happened, let the worker drain
            lapsed.cancel()
            with contextlib.suppress(BaseException):
                await lapsed
