"""LoggerMiddleware: run, function and step on each record; nothing logged twice across replays."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from connect.logs import JsonFormatter
from connect.sdk import Client, Context, Step, StepSync, TriggerEvent
from connect.sdk.execution import Invocation, execute
from connect.sdk.log_middleware import LoggerMiddleware
from protocol.payloads import hash_step_id
from tests.sdk.conftest import make_payload

pytestmark = pytest.mark.anyio


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Any:
    logger = logging.getLogger("test.log_middleware")
    logger.setLevel(logging.INFO)
    handler = Records()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_fields_on_each_record_and_no_line_twice(records: Any, sync: bool) -> None:
    logger, handler = records
    client = Client("app", logger=logger, middleware=[LoggerMiddleware])

    if sync:

        @client.create_function(fn_id="f", trigger=TriggerEvent(event="test/go"))
        def fn(ctx: Context, step: StepSync) -> Any:
            ctx.logger.info("start")
            a = step.run("a", lambda: ctx.logger.info("in a", extra={"mine": 1}) or 1)
            ctx.logger.info("between")
            return step.run("b", lambda: a + 1)

    else:

        @client.create_function(fn_id="f", trigger=TriggerEvent(event="test/go"))
        async def fn(ctx: Context, step: Step) -> Any:  # type: ignore[misc]
            ctx.logger.info("start")
            a = await step.run("a", lambda: ctx.logger.info("in a", extra={"mine": 1}) or 1)
            ctx.logger.info("between")
            return await step.run("b", lambda: a + 1)

    fns = {"app-f": fn}
    await execute(client, fns, Invocation(make_payload(run_id="R1"), "app-f", "step"))
    steps = {hash_step_id("a"): {"data": 1}}
    await execute(client, fns, Invocation(make_payload(run_id="R1", steps=steps), "app-f", "step"))
    steps[hash_step_id("b")] = {"data": 2}
    await execute(client, fns, Invocation(make_payload(run_id="R1", steps=steps), "app-f", "step"))

    seen = [
        (r.getMessage(), r.run_id, r.function_id, r.step_id, getattr(r, "mine", None))  # type: ignore[attr-defined]
        for r in handler.records
    ]
    # "start" only in the first request (later ones replay it), "between" once (after the
    # last stored result of request 2), and the step body's line with its step id.
    assert seen == [
        ("start", "R1", "app-f", None, None),
        ("in a", "R1", "app-f", "a", 1),
        ("between", "R1", "app-f", None, None),
    ]
    line = json.loads(JsonFormatter().format(handler.records[1]))
    assert (line["run_id"], line["function_id"], line["step_id"]) == ("R1", "app-f", "a")


async def test_without_the_middleware_the_logger_is_the_clients(records: Any) -> None:
    logger, handler = records
    client = Client("app", logger=logger)

    @client.create_function(fn_id="f", trigger=TriggerEvent(event="test/go"))
    async def fn(ctx: Context, step: Step) -> Any:
        assert ctx.logger is logger
        ctx.logger.info("plain")
        return 1

    await execute(client, {"app-f": fn}, Invocation(make_payload(), "app-f", "step"))
    assert [r.getMessage() for r in handler.records] == ["plain"]
    assert not hasattr(handler.records[0], "run_id")
