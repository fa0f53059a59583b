"""Function options (cancel, timeouts, on_failure, cron) and send_event ids."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from connect.sdk import (
    Cancel,
    Client,
    Context,
    Event,
    FunctionConfigError,
    Step,
    StepSync,
    Timeouts,
    TriggerCron,
    TriggerEvent,
    functions_json,
)
from connect.sdk.events import derived_event_id
from connect.sdk.execution import Invocation, execute
from protocol.payloads import STATUS_DONE, STATUS_NOT_COMPLETED, hash_step_id

inngest = pytest.importorskip("inngest")

pytestmark = pytest.mark.anyio


async def handler(ctx: Context, step: Step) -> str:
    return "main"


async def failure_handler(ctx: Context, step: Step) -> dict[str, Any]:
    return {"failed": ctx.event.data["function_id"], "error": ctx.event.data["error"]["message"]}


def test_cancel_timeouts_and_on_failure_register_as_the_official_sdk_does() -> None:
    client = Client("shop")
    fn = client.create_function(
        fn_id="charge",
        trigger=[TriggerEvent(event="shop/order.placed"), TriggerCron(cron="TZ=Europe/Paris 0 9 * * 1-5")],
        cancel=[
            Cancel(event="shop/order.cancelled", if_exp="async.data.id == event.data.id", timeout=3600_000),
            Cancel(event="shop/all.stop"),
        ],
        timeouts=Timeouts(start=datetime.timedelta(minutes=1), finish=86_400_000),
        on_failure=failure_handler,
    )(handler)
    mine = json.loads(functions_json("shop", [fn]))

    official = inngest.Inngest(app_id="shop", is_production=False)

    async def official_failure(ctx: Any) -> None:
        return None

    @official.create_function(
        fn_id="charge",
        trigger=[
            inngest.TriggerEvent(event="shop/order.placed"),
            inngest.TriggerCron(cron="TZ=Europe/Paris 0 9 * * 1-5"),
        ],
        cancel=[
            inngest.Cancel(event="shop/order.cancelled", if_exp="async.data.id == event.data.id", timeout=3600_000),
            inngest.Cancel(event="shop/all.stop"),
        ],
        timeouts=inngest.Timeouts(start=datetime.timedelta(minutes=1), finish=86_400_000),
        on_failure=official_failure,
    )
    async def charge(ctx: Any) -> None:
        return None

    config = charge.get_config("wss://connect")
    theirs = [
        json.loads(c.to_dict_json() if hasattr(c, "to_dict_json") else json.dumps(_dump(c)))
        for c in (config.main, config.on_failure)
    ]
    for ours, reference in zip(mine, theirs, strict=True):
        for key in ("id", "name", "triggers", "cancel", "timeouts"):
            assert ours.get(key) == reference.get(key), key
        assert ours["steps"]["step"].get("retries") == reference["steps"]["step"].get("retries")
    assert mine[1]["triggers"] == [
        {"event": "inngest/function.failed", "expression": "event.data.function_id == 'shop-charge'"}
    ]


def _dump(model: Any) -> Any:
    return _drop_nulls(model.model_dump(mode="json", by_alias=True))


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


@pytest.mark.parametrize(
    "make",
    [
        lambda: Cancel(event=""),
        lambda: Cancel(event="a", timeout=1500),
        lambda: Cancel(event="a", if_exp=""),
        lambda: Timeouts(start=500),
        lambda: TriggerCron(cron="not a cron"),
        lambda: TriggerCron(cron="TZ=Nowhere/City * * * * *"),
    ],
)
def test_bad_options_are_refused_at_definition(make: Any) -> None:
    with pytest.raises(FunctionConfigError):
        make()


def test_cancel_must_be_cancel_objects() -> None:
    with pytest.raises(FunctionConfigError, match="Cancel"):
        Client("a").create_function(fn_id="f", trigger=TriggerEvent(event="e"), cancel=["x"])(handler)  # type: ignore[list-item]


async def test_the_failure_companion_runs_the_on_failure_handler(payload: Any) -> None:
    client = Client("shop")
    fn = client.create_function(fn_id="charge", trigger=TriggerEvent(event="e"), on_failure=failure_handler)(handler)
    assert fn.on_failure is not None and fn.on_failure.fully_qualified_id("shop") == "shop-charge-failure"
    event = {
        "name": "inngest/function.failed",
        "data": {"function_id": "shop-charge", "error": {"name": "E", "message": "boom"}},
        "id": "r1",
        "ts": 1,
        "user": {},
    }
    outcome = await execute(
        client, {"shop-charge": fn}, Invocation(payload(event=event), "shop-charge-failure", "step")
    )
    assert outcome.status == STATUS_DONE
    assert json.loads(outcome.body) == {"failed": "shop-charge", "error": "boom"}
    plain = await execute(client, {"shop-charge": fn}, Invocation(payload(), "shop-charge", "step"))
    assert json.loads(plain.body) == "main"
    missing = await execute(client, {"shop-charge": fn}, Invocation(payload(), "shop-other-failure", "step"))
    assert json.loads(missing.body)["code"] == "function_not_found"


async def test_send_event_gives_events_stable_ids_per_run_and_step(payload: Any) -> None:
    sent: list[list[dict[str, Any]]] = []

    def events_api(request: httpx.Request) -> httpx.Response:
        batch = json.loads(request.content)
        sent.append(batch)
        return httpx.Response(200, json={"ids": [e["id"] for e in batch]})

    client = Client("app", http_transport=httpx.MockTransport(events_api))

    @client.create_function(fn_id="emit", trigger=TriggerEvent(event="go"))
    async def emit(ctx: Context, step: Step) -> list[str]:
        return await step.send_event("out", [Event(name="a"), Event(name="b", id="mine")])

    @client.create_function(fn_id="emit-sync", trigger=TriggerEvent(event="go"))
    def emit_sync(ctx: Context, step: StepSync) -> list[str]:
        return step.send_event("out", [Event(name="a"), Event(name="b", id="mine")])

    run_id = "01KAAAAAAAAAAAAAAAAAAAAAAA"
    for fn in (emit, emit, emit_sync):  # the same step twice: a retry after a lost reply
        outcome = await execute(client, {"app-emit": fn}, Invocation(payload(run_id=run_id), "app-emit", "step"))
        assert outcome.status == STATUS_NOT_COMPLETED
    expected = [derived_event_id(run_id, hash_step_id("out"), 0), "mine"]
    assert [[e["id"] for e in batch] for batch in sent] == [expected] * 3
    assert derived_event_id(run_id, hash_step_id("out"), 0) != derived_event_id("other", hash_step_id("out"), 0)
    assert expected[0][:10] == run_id[:10]  # same time part as the run


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: TriggerEvent(event="a/b", expression="event.data.x =="),
            "TriggerEvent.expression: is not a valid CEL expression (syntax error at character 14),"
            " got 'event.data.x =='",
        ),
        (
            lambda: Cancel(event="a/stop", if_exp="async.data.id = event.data.id"),
            "Cancel.if_exp: is not a valid CEL expression (syntax error at character 15),"
            " got 'async.data.id = event.data.id'",
        ),
    ],
)
def test_an_expression_that_is_not_cel_is_refused_when_the_function_is_defined(
    make: Callable[[], object], message: str
) -> None:
    with pytest.raises(FunctionConfigError) as raised:
        make()
    assert str(raised.value) == message
