"""Client settings and the event API (protocol notes §9)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from connect.sdk import Client, Event, FunctionConfigError, SendEventsError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONNECT_API_URL", "CONNECT_SIGNING_KEY", "CONNECT_EVENT_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    client = Client("app")
    assert client.app_id == "app"
    assert client.api_base_url == "http://127.0.0.1:8288"
    assert client.signing_key is None
    assert client.event_key == "dev"
    assert client.app_version is None
    assert client.event_url == "http://127.0.0.1:8288/e/dev"


def test_environment_then_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECT_API_URL", "http://env:1/")
    monkeypatch.setenv("CONNECT_SIGNING_KEY", "signkey-env-0123456789abcdef")
    monkeypatch.setenv("CONNECT_EVENT_KEY", "env-key")
    from_env = Client("app")
    assert (from_env.api_base_url, from_env.signing_key, from_env.event_key) == (
        "http://env:1",
        "signkey-env-0123456789abcdef",
        "env-key",
    )
    explicit = Client(
        "app", api_base_url="https://arg:2//", signing_key="00ff00ff00ff00ff", event_key="e", app_version="1.2"
    )
    assert (explicit.api_base_url, explicit.signing_key, explicit.event_key, explicit.app_version) == (
        "https://arg:2",
        "00ff00ff00ff00ff",
        "e",
        "1.2",
    )


def test_app_id_required() -> None:
    with pytest.raises(FunctionConfigError):
        Client("")


class Recorder:
    def __init__(self, status: int = 200, reply: Any = None) -> None:
        self.requests: list[httpx.Request] = []
        self.status = status
        self.reply = reply

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        count = len(json.loads(request.content))
        reply = self.reply if self.reply is not None else {"ids": [f"id{i}" for i in range(count)], "status": 200}
        return httpx.Response(self.status, json=reply)


@pytest.mark.anyio
async def test_send_posts_a_json_array() -> None:
    recorder = Recorder()
    client = Client("app", api_base_url="http://api:1", event_key="k", http_transport=httpx.MockTransport(recorder))
    before = time.time_ns() // 1_000_000
    ids = await client.send(Event(name="shop/placed", data={"n": 1}))
    assert ids == ["id0"]
    [request] = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == "http://api:1/e/k"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-inngest-event-id-seed"].count(",") == 1
    [sent] = json.loads(request.content)
    assert sent["name"] == "shop/placed"
    assert sent["data"] == {"n": 1}
    assert sent["ts"] >= before  # a zero ts becomes "now"
    assert "id" not in sent and "user" not in sent


def test_send_sync_keeps_ids_and_timestamps() -> None:
    recorder = Recorder()
    client = Client("app", http_transport=httpx.MockTransport(recorder))
    ids = client.send_sync([Event(name="a", id="evt-a", ts=123), Event(name="b")])
    assert ids == ["id0", "id1"]
    sent = json.loads(recorder.requests[0].content)
    assert sent[0] == {"name": "a", "data": {}, "id": "evt-a", "ts": 123}
    assert sent[1]["name"] == "b" and sent[1]["data"] == {}


def test_send_nothing_makes_no_request() -> None:
    recorder = Recorder()
    assert Client("app", http_transport=httpx.MockTransport(recorder)).send_sync([]) == []
    assert recorder.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "reply", "message"),
    [
        (401, {"status": 401, "message": "", "error": "Event key not found"}, "Event key not found"),
        (400, {"ids": ["a"], "status": 400, "error": "bad event"}, "bad event"),
        (200, {"ids": [], "status": 200, "error": "partial"}, "partial"),
        (503, "unavailable", "503"),
    ],
)
async def test_send_errors(status: int, reply: Any, message: str) -> None:
    client = Client("app", http_transport=httpx.MockTransport(Recorder(status, reply)))
    with pytest.raises(SendEventsError, match=message) as info:
        await client.send(Event(name="a"))
    if isinstance(reply, dict):
        assert info.value.ids == reply.get("ids", [])


def test_send_network_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = Client("app", http_transport=httpx.MockTransport(refuse))
    with pytest.raises(SendEventsError, match="could not reach"):
        client.send_sync(Event(name="a"))


def test_send_rejects_non_events() -> None:
    with pytest.raises(TypeError):
        Client("app").send_sync([{"name": "a"}])  # type: ignore[list-item]
