"""A refused function is listed with its reason and never started: by an
event matching its trigger or by an invoke."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.payloads import RefusedFunction
from tests.executor.harness import APP, Harness, config
from tests.executor.scripted_worker import Ctx, Step

pytestmark = pytest.mark.anyio


async def test_a_refused_function_is_listed_and_never_started(harness: Harness) -> None:
    def parent(step: Step, ctx: Ctx) -> Any:
        try:
            step.invoke("call", f"{APP}-broken", {})
        except Exception as exc:
            return str(exc)
        return "invoked"

    harness.worker.functions[f"{APP}-parent"] = parent
    refused = RefusedFunction(f"{APP}-broken", "invalid config: Expected `int` - at `$.concurrency`", "broken")
    await harness.executor.sync_app(APP, "v1", [config("parent", "shop/parent")], [refused])

    assert await harness.executor.runs_for_event(await harness.send("shop/broken")) == []
    run = await harness.finished((await harness.only_run(await harness.send("shop/parent")))["run_id"])
    assert run["output"] == (
        f"function '{APP}-broken' was refused at registration: invalid config: Expected `int` - at `$.concurrency`"
    )
    listed = {f["id"]: f for f in harness.executor.registered_functions()}
    assert listed[f"{APP}-broken"] == {
        "id": f"{APP}-broken",
        "app": APP,
        "name": "broken",
        "triggers": [],
        "status": "refused",
        "reason": "invalid config: Expected `int` - at `$.concurrency`",
        "not_honoured": {},
        "options": {},
    }
    assert listed[f"{APP}-parent"]["status"] == "active"


async def test_a_function_refused_at_a_later_sync_stops_starting(harness: Harness) -> None:
    harness.worker.functions[f"{APP}-fn"] = lambda step, ctx: "ran"
    await harness.executor.sync_app(APP, "v1", [config("fn", "shop/fn")])
    first = await harness.finished((await harness.only_run(await harness.send("shop/fn")))["run_id"])
    assert first["output"] == "ran"
    await harness.executor.sync_app(APP, "v2", [], [RefusedFunction(f"{APP}-fn", "invalid config: bad")])
    assert await harness.executor.runs_for_event(await harness.send("shop/fn")) == []
