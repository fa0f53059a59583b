"""Client configuration: arguments, then CONNECT_*, then INNGEST_*, then defaults; the two modes."""

from __future__ import annotations

import datetime
import json
from typing import Any

import httpx
import pytest

from connect.sdk import Client, Event, FunctionConfigError, Inngest, SendEventsError
from connect.sdk.settings import ClientSettings, resolve

KEY_A = "signkey-prod-" + "ab" * 16
KEY_B = "signkey-prod-" + "cd" * 16
KEY_C = "signkey-prod-" + "ef" * 16

ALL_VARIABLES = (
    "CONNECT_API_URL",
    "CONNECT_SIGNING_KEY",
    "CONNECT_SIGNING_KEY_FALLBACK",
    "CONNECT_EVENT_KEY",
    "INNGEST_DEV",
    "INNGEST_BASE_URL",
    "INNGEST_API_BASE_URL",
    "INNGEST_EVENT_API_BASE_URL",
    "INNGEST_EVENT_KEY",
    "INNGEST_SIGNING_KEY",
    "INNGEST_SIGNING_KEY_FALLBACK",
    "INNGEST_ENV",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def settings(environ: dict[str, str] | None = None, **arguments: Any) -> ClientSettings:
    given: dict[str, Any] = {
        "app_id": "app",
        "is_production": None,
        "api_base_url": None,
        "event_api_base_url": None,
        "signing_key": None,
        "event_key": None,
        "env": None,
        "app_version": None,
    }
    given.update(arguments)
    return resolve(environ=environ or {}, **given)


def test_nothing_given_means_a_local_connect_dev() -> None:
    s = settings()
    assert (s.is_production, s.api_base_url, s.event_api_base_url) == (
        False,
        "http://127.0.0.1:8288",
        "http://127.0.0.1:8288",
    )
    assert (s.signing_key, s.signing_key_fallback, s.event_key, s.env) == (None, None, "dev", None)


@pytest.mark.parametrize(
    ("arguments", "environ", "expected"),
    [
        # api_base_url: argument > CONNECT_API_URL > INNGEST_API_BASE_URL > INNGEST_BASE_URL > INNGEST_DEV (URL)
        (
            {"api_base_url": "http://arg:1"},
            {"CONNECT_API_URL": "http://ours:2", "INNGEST_BASE_URL": "http://theirs:3"},
            "http://arg:1",
        ),
        ({}, {"CONNECT_API_URL": "http://ours:2", "INNGEST_API_BASE_URL": "http://theirs:3"}, "http://ours:2"),
        ({}, {"INNGEST_API_BASE_URL": "http://api:3", "INNGEST_BASE_URL": "http://base:4"}, "http://api:3"),
        ({}, {"INNGEST_BASE_URL": "http://base:4", "INNGEST_DEV": "http://dev:5"}, "http://base:4"),
        ({}, {"INNGEST_DEV": "http://dev:5"}, "http://dev:5"),
        ({}, {"INNGEST_DEV": "dev.internal:5"}, "http://dev.internal:5"),  # no scheme: http in development
        ({}, {"INNGEST_DEV": "1"}, "http://127.0.0.1:8288"),
    ],
)
def test_the_api_url_precedence(arguments: dict[str, Any], environ: dict[str, str], expected: str) -> None:
    assert settings(environ, **arguments).api_base_url == expected


def test_events_go_to_the_event_url_else_to_the_api_url() -> None:
    assert settings({"INNGEST_BASE_URL": "http://base:4"}).event_api_base_url == "http://base:4"
    assert settings({"CONNECT_API_URL": "http://ours:2"}).event_api_base_url == "http://ours:2"
    both = {"CONNECT_API_URL": "http://ours:2", "INNGEST_EVENT_API_BASE_URL": "http://events:6"}
    assert settings(both).event_api_base_url == "http://events:6"
    assert settings(both, event_api_base_url="http://arg:7").event_api_base_url == "http://arg:7"


def test_keys_and_env_precedence() -> None:
    environ = {
        "CONNECT_SIGNING_KEY": KEY_A,
        "INNGEST_SIGNING_KEY": KEY_B,
        "INNGEST_SIGNING_KEY_FALLBACK": KEY_C,
        "CONNECT_EVENT_KEY": "ours",
        "INNGEST_EVENT_KEY": "theirs",
        "INNGEST_ENV": "branch-1",
    }
    s = settings(environ)
    assert (s.signing_key, s.signing_key_fallback, s.event_key, s.env) == (KEY_A, KEY_C, "ours", "branch-1")
    theirs = settings({k: v for k, v in environ.items() if k.startswith("INNGEST_")})
    assert (theirs.signing_key, theirs.event_key) == (KEY_B, "theirs")
    ours_fallback = settings({**environ, "CONNECT_SIGNING_KEY_FALLBACK": KEY_B})
    assert ours_fallback.signing_key_fallback == KEY_B
    explicit = settings(environ, signing_key=KEY_C, event_key="arg", env="arg-env")
    assert (explicit.signing_key, explicit.event_key, explicit.env) == (KEY_C, "arg", "arg-env")


@pytest.mark.parametrize(
    ("value", "production"), [("0", True), ("false", True), ("FALSE", True), ("1", False), ("true", False), ("", False)]
)
def test_inngest_dev_decides_the_mode_when_is_production_is_not_given(value: str, production: bool) -> None:
    environ = {"INNGEST_DEV": value, "INNGEST_BASE_URL": "https://platform.example", "INNGEST_SIGNING_KEY": KEY_A}
    assert settings(environ).is_production is production
    assert settings(environ, is_production=not production).is_production is (not production)


def test_production_needs_a_url_and_a_signing_key_and_names_where_to_give_them() -> None:
    with pytest.raises(
        FunctionConfigError,
        match=r"^Client: api_base_url: production needs the platform's URL: .*CONNECT_API_URL or INNGEST_BASE_URL",
    ):
        settings({"INNGEST_SIGNING_KEY": KEY_A}, is_production=True)
    with pytest.raises(
        FunctionConfigError,
        match=r"^Client: signing_key: production needs a signing key: .*CONNECT_SIGNING_KEY or INNGEST_SIGNING_KEY",
    ):
        settings({"INNGEST_BASE_URL": "platform.example"}, is_production=True)
    s = settings({"INNGEST_BASE_URL": "platform.example:8288", "INNGEST_SIGNING_KEY": KEY_A}, is_production=True)
    assert (s.api_base_url, s.event_key) == ("https://platform.example:8288", None)  # no scheme: https in production


@pytest.mark.parametrize(
    ("environ", "arguments", "named"),
    [
        ({"INNGEST_BASE_URL": "nowhere"}, {}, "INNGEST_BASE_URL"),
        ({"INNGEST_API_BASE_URL": "http://"}, {}, "INNGEST_API_BASE_URL"),
        ({"INNGEST_EVENT_API_BASE_URL": "ftp://x.example"}, {}, "INNGEST_EVENT_API_BASE_URL"),
        ({"INNGEST_DEV": "http://"}, {}, "INNGEST_DEV"),
        ({"CONNECT_API_URL": "localhost:8288"}, {}, "CONNECT_API_URL"),
        ({"INNGEST_SIGNING_KEY": "not-a-key"}, {}, "INNGEST_SIGNING_KEY"),
        ({"CONNECT_SIGNING_KEY_FALLBACK": "signkey-prod-zz"}, {}, "CONNECT_SIGNING_KEY_FALLBACK"),
        ({"INNGEST_SIGNING_KEY_FALLBACK": "1234"}, {}, "INNGEST_SIGNING_KEY_FALLBACK"),
        ({}, {"signing_key": "abc"}, "signing_key"),
        ({}, {"event_api_base_url": "events"}, "event_api_base_url"),
        ({}, {"is_production": "yes"}, "is_production"),
        ({}, {"env": ""}, "env"),
    ],
)
def test_a_bad_value_raises_naming_where_it_came_from(
    environ: dict[str, str], arguments: dict[str, Any], named: str
) -> None:
    with pytest.raises(FunctionConfigError, match=f"^Client: {named}: "):
        settings(environ, **arguments)


def test_the_client_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INNGEST_DEV", "http://127.0.0.1:9999")
    monkeypatch.setenv("INNGEST_EVENT_KEY", "evt")
    monkeypatch.setenv("INNGEST_SIGNING_KEY_FALLBACK", KEY_C)
    client = Inngest(app_id="app")
    assert client.__class__ is Client
    assert (client.is_production, client.api_base_url, client.event_key) == (False, "http://127.0.0.1:9999", "evt")
    assert client.signing_key_fallback == KEY_C
    assert client.event_url == "http://127.0.0.1:9999/e/evt"


@pytest.mark.anyio
async def test_send_goes_to_the_event_api_with_the_env_header() -> None:
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"ids": ["a"], "status": 200})

    client = Client(
        "app",
        api_base_url="http://api:1",
        event_api_base_url="http://events:2",
        event_key="k",
        env="branch-7",
        http_transport=httpx.MockTransport(answer),
    )
    assert await client.send(Event(name="x/y", data={})) == ["a"]
    [request] = requests
    assert str(request.url) == "http://events:2/e/k"
    assert request.headers["x-inngest-env"] == "branch-7"
    assert json.loads(request.content)[0]["name"] == "x/y"


@pytest.mark.anyio
async def test_production_without_an_event_key_refuses_to_send() -> None:
    client = Client("app", is_production=True, api_base_url="http://api:1", signing_key=KEY_A)
    with pytest.raises(
        SendEventsError, match="no event key: pass event_key, or set CONNECT_EVENT_KEY or INNGEST_EVENT_KEY"
    ):
        await client.send(Event(name="x/y"))


def test_the_worker_names_the_clients_env_in_worker_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    from connect.worker.link import hello
    from protocol import connect_pb2 as pb

    monkeypatch.setenv("INNGEST_ENV", "branch-9")
    client = Client("app")
    msg = hello(
        pb.StartResponse(connection_id="c1"),
        {"app": (client, {})},
        instance_id="i",
        max_worker_concurrency=None,
        started_at=0.0,
    )
    assert msg.HasField("environment") and msg.environment == "branch-9"
    monkeypatch.delenv("INNGEST_ENV")
    plain = hello(
        pb.StartResponse(connection_id="c1"),
        {"app": (Client("other"), {})},
        instance_id="i",
        max_worker_concurrency=None,
        started_at=0.0,
    )
    assert not plain.HasField("environment")


@pytest.mark.anyio
async def test_request_timeout_bounds_each_try_of_send() -> None:
    timeouts: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"]["read"])
        return httpx.Response(200, json={"ids": ["a"], "status": 200})

    for given, seconds in ((None, 30.0), (2500, 2.5), (datetime.timedelta(seconds=4), 4.0)):
        client = Client("app", request_timeout=given, http_transport=httpx.MockTransport(answer))
        await client.send(Event(name="x/y"))
        assert timeouts[-1] == seconds
    with pytest.raises(
        FunctionConfigError, match=r"^Client: request_timeout: must be a positive int \(ms\) or timedelta, got 0$"
    ):
        Client("app", request_timeout=0)
