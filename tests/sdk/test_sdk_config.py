"""Function configs as registered in WORKER_CONNECT (protocol notes §3.1, §3.2, §3.7)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connect.sdk import (
    Client,
    Context,
    FunctionConfigError,
    Step,
    StepSync,
    TriggerCron,
    TriggerEvent,
    functions_json,
)
from connect.sdk.function import Function


async def handler(ctx: Context, step: Step) -> None:
    return None


def sync_handler(ctx: Context, step: StepSync) -> None:
    return None


def test_config_shape_matches_protocol() -> None:
    client = Client("shop")
    fn = client.create_function(
        fn_id="charge",
        name="Charge card",
        retries=3,
        trigger=[
            TriggerEvent(event="shop/order.placed", expression="event.data.total > 0"),
            TriggerCron(cron="TZ=UTC 0 * * * *"),
        ],
    )(handler)
    assert fn.id == "charge"
    assert fn.fully_qualified_id("shop") == "shop-charge"
    [config] = json.loads(functions_json("shop", [fn]))
    assert config == {
        "id": "shop-charge",
        "name": "Charge card",
        "triggers": [
            {"event": "shop/order.placed", "expression": "event.data.total > 0"},
            {"cron": "TZ=UTC 0 * * * *"},
        ],
        "steps": {
            "step": {
                "id": "step",
                "name": "step",
                "retries": {"attempts": 3},
                "runtime": {"type": "ws", "url": "wss://connect?fnId=shop-charge&stepId=step"},
            }
        },
    }
    assert fn.config("shop").retries == 3


def test_defaults_omit_nulls() -> None:
    fn = Client("app").create_function(fn_id="hello", trigger=TriggerEvent(event="a/b"))(sync_handler)
    raw = functions_json("app", [fn])
    assert b"null" not in raw
    [config] = json.loads(raw)
    assert config["name"] == "hello"
    assert config["triggers"] == [{"event": "a/b"}]
    assert "retries" not in config["steps"]["step"]
    assert fn.is_async is False


def test_functions_json_is_an_array_of_all_functions() -> None:
    client = Client("app")
    fns = [client.create_function(fn_id=f"f{i}", trigger=TriggerEvent(event="e"))(handler) for i in range(3)]
    assert [c["id"] for c in json.loads(functions_json("app", fns))] == ["app-f0", "app-f1", "app-f2"]
    assert json.loads(functions_json("app", [])) == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"fn_id": ""}, "fn_id"),
        ({"fn_id": "   "}, "fn_id"),
        ({"retries": -1}, "retries"),
        ({"retries": 21}, "retries"),
        ({"retries": True}, "retries"),
        ({"retries": 2.0}, "retries"),
        ({"trigger": []}, "trigger"),
        ({"trigger": ["a/b"]}, "TriggerEvent"),
        ({"name": ""}, "name"),
    ],
)
def test_invalid_options_are_rejected(kwargs: dict[str, Any], fragment: str) -> None:
    options: dict[str, Any] = {"fn_id": "f", "trigger": TriggerEvent(event="e"), **kwargs}
    with pytest.raises(FunctionConfigError, match=fragment):
        Client("app").create_function(**options)(handler)


def test_config_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="retries"):
        Function(fn_id="f", handler=handler, trigger=TriggerEvent(event="e"), retries=99)


def test_retries_bounds_are_inclusive() -> None:
    for retries in (0, 20):
        fn = Client("app").create_function(fn_id="f", trigger=TriggerEvent(event="e"), retries=retries)(handler)
        assert fn.retries == retries


def test_duplicate_function_id_is_rejected() -> None:
    client = Client("app")
    client.create_function(fn_id="f", trigger=TriggerEvent(event="e"))(handler)
    with pytest.raises(FunctionConfigError, match="already has a function"):
        client.create_function(fn_id="f", trigger=TriggerEvent(event="e"))(handler)
    assert [f.id for f in client.functions] == ["f"]


def test_handler_must_take_ctx_or_ctx_and_step() -> None:
    async def three_args(ctx: Context, step: object, extra: object) -> None:
        return None

    with pytest.raises(FunctionConfigError, match=r"one positional argument \(ctx\) or two \(ctx, step\)"):
        Client("app").create_function(fn_id="f", trigger=TriggerEvent(event="e"))(three_args)  # type: ignore[arg-type]
    with pytest.raises(FunctionConfigError, match="callable"):
        Client("app").create_function(fn_id="f", trigger=TriggerEvent(event="e"))("nope")  # type: ignore[arg-type]


def test_triggers_validate() -> None:
    with pytest.raises(FunctionConfigError):
        TriggerEvent(event="")
    with pytest.raises(FunctionConfigError):
        TriggerCron(cron=" ")
    assert TriggerCron(cron="* * * * *", jitter="10s").to_wire().jitter == "10s"


def test_official_sdk_produces_the_same_config() -> None:
    inngest = pytest.importorskip("inngest")
    official = inngest.Inngest(app_id="shop", is_production=False)

    @official.create_function(
        fn_id="charge",
        name="Charge card",
        retries=3,
        trigger=[
            inngest.TriggerEvent(event="shop/order.placed", expression="event.data.total > 0"),
            inngest.TriggerCron(cron="TZ=UTC 0 * * * *"),
        ],
    )
    async def official_fn(ctx: Any) -> None:
        return None

    theirs = official_fn.get_config("wss://connect").main.to_dict()
    ours = Client("shop").create_function(
        fn_id="charge",
        name="Charge card",
        retries=3,
        trigger=[
            TriggerEvent(event="shop/order.placed", expression="event.data.total > 0"),
            TriggerCron(cron="TZ=UTC 0 * * * *"),
        ],
    )(handler)
    [mine] = json.loads(functions_json("shop", [ours]))
    # The official SDK strips nulls when sending; it also sends empty feature
    # lists (cancel, concurrency) that we do not model.
    assert _strip(json.loads(json.dumps(theirs))) == mine


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not None and v != []}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value
