"""A bad function option or client setting is refused where it is written, with an error naming it."""

from __future__ import annotations

import re
from typing import Any

import pytest

from connect.sdk import Cancel, Client, Context, FunctionConfigError, Step, Timeouts, TriggerEvent


async def handler(ctx: Context, step: Step) -> None:
    return None


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONNECT_API_URL", "CONNECT_SIGNING_KEY", "CONNECT_EVENT_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": 25}, "greet: retries: input should be less than or equal to 20, got 25"),
        ({"retries": -1}, "greet: retries: input should be greater than or equal to 0, got -1"),
        ({"retries": True}, "greet: retries: input should be a valid integer, got True"),
        ({"retries": "3"}, "greet: retries: input should be a valid integer, got '3'"),
        ({"name": " "}, "greet: name: must be a non-empty string, got ' '"),
        ({"trigger": []}, "greet: trigger: at least one trigger is required, got []"),
        ({"trigger": "shop/order"}, "greet: trigger: must be a TriggerEvent, a TriggerCron or a list of them, got str"),
        (
            {"trigger": [TriggerEvent(event="a"), "b"]},
            "greet: trigger[1]: must be a TriggerEvent or TriggerCron, got str",
        ),
        ({"cancel": [Cancel(event="a"), {"event": "b"}]}, "greet: cancel[1]: must be a Cancel, got dict"),
        ({"timeouts": 30}, "greet: timeouts: must be a Timeouts, got int"),
        ({"fn_id": ""}, "function: fn_id: must be a non-empty string, got ''"),
    ],
)
def test_a_bad_function_option_raises_an_error_naming_it(options: dict[str, Any], message: str) -> None:
    kwargs: dict[str, Any] = {"fn_id": "greet", "trigger": TriggerEvent(event="shop/order"), **options}
    with pytest.raises(FunctionConfigError, match=f"^{re.escape(message)}$"):
        Client("shop").create_function(**kwargs)(handler)


def test_every_bad_option_is_named_at_once() -> None:
    with pytest.raises(FunctionConfigError) as info:
        Client("shop").create_function(fn_id="greet", trigger=[], retries=99, timeouts=1)(handler)  # type: ignore[arg-type]
    assert str(info.value) == (
        "greet: trigger: at least one trigger is required, got []; "
        "retries: input should be less than or equal to 20, got 99; "
        "timeouts: must be a Timeouts, got int"
    )


def test_good_options_are_kept_as_given() -> None:
    trigger, cancel, timeouts = TriggerEvent(event="e"), Cancel(event="c"), Timeouts(finish=60_000)
    fn = Client("shop").create_function(fn_id="greet", trigger=trigger, retries=0, cancel=(cancel,), timeouts=timeouts)(
        handler
    )
    assert (fn.triggers, fn.retries, fn.cancel, fn.timeouts) == ((trigger,), 0, (cancel,), timeouts)


_NOT_A_URL = "must be an http:// or https:// URL with a host"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"api_base_url": "localhost:8288"}, f"api_base_url: {_NOT_A_URL}, got 'localhost:8288'"),
        ({"api_base_url": "ftp://files.example"}, f"api_base_url: {_NOT_A_URL}, got 'ftp://files.example'"),
        ({"api_base_url": "http://"}, f"api_base_url: {_NOT_A_URL}, got 'http://'"),
        ({"app_version": ""}, "app_version: must be a non-empty string, got ''"),
        ({"event_key": 7}, "event_key: must be a string, got 7"),
    ],
)
def test_a_bad_client_setting_raises_an_error_naming_it(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(FunctionConfigError, match=f"^Client: {re.escape(message)}$"):
        Client("shop", **settings)


def test_a_bad_url_from_the_environment_is_named_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECT_API_URL", "127.0.0.1:8288")
    with pytest.raises(FunctionConfigError, match=r"^Client: CONNECT_API_URL: .* got '127\.0\.0\.1:8288'$"):
        Client("shop")
