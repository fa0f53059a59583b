"""Steps the executor carries out: sleep, wait_for_event, invoke, and send_event (§5.4)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import httpx
import pytest

from connect.sdk import Client, Context, Event, FunctionConfigError, Step, StepSync, TriggerEvent
from connect.sdk.durations import to_duration_string, to_iso_utc
from protocol.payloads import STATUS_DONE, STATUS_NOT_COMPLETED, hash_step_id

pytestmark = pytest.mark.anyio


@pytest.fixture
def client() -> Client:
    def events_api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ids": [f"evt-{e['name']}" for e in json.loads(request.content)]})

    return Client("app", http_transport=httpx.MockTransport(events_api))


def op_of(outcome: Any) -> dict[str, Any]:
    assert outcome.status == STATUS_NOT_COMPLETED, outcome
    [op] = json.loads(outcome.body)
    return op  # type: ignore[no-any-return]


async def test_probe_run_greet_nap_emit(client: Client, executor: Any) -> None:
    """The four-request run of protocol notes §1."""

    @client.create_function(fn_id="hello", trigger=TriggerEvent(event="probe/hello"))
    async def hello(ctx: Context, step: Step) -> dict[str, Any]:
        greeting = await step.run("greet", lambda: f"hi {ctx.event.data['who']}")
        await step.sleep("nap", datetime.timedelta(seconds=2))
        sent = await step.send_event("emit", Event(name="probe/sent", data={"g": greeting}))
        return {"greeting": greeting, "sent": sent}

    ex = executor(client, hello)
    final = await ex.run()
    assert final.outcome.status == STATUS_DONE
    assert final.body == {"greeting": "hi world", "sent": ["evt-probe/sent"]}
    assert [c.ops for c in ex.calls] == [["StepRun"], ["Sleep"], ["StepRun"], []]
    nap = ex.calls[1].body[0]
    assert nap["id"] == "c2640f79b4ed481b838ce4ad75330aa3f825d4d9"
    assert nap["displayName"] == "nap"
    assert nap["opts"] is None
    wake = datetime.datetime.strptime(nap["name"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    assert abs(wake - datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=2)) < datetime.timedelta(
        seconds=2
    )
    assert ex.calls[2].body[0]["id"] == "2e96e89125f4c1aef797410a4bfdb32c0632ef0c"


async def test_sleep_until(client: Client, invoke: Any) -> None:
    until = datetime.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.UTC)

    @client.create_function(fn_id="s", trigger=TriggerEvent(event="e"))
    def fn(ctx: Context, step: StepSync) -> str:
        step.sleep_until("zz", until)
        return "woke"

    op = op_of(await invoke(client, fn))
    assert (op["op"], op["name"], op["data"]) == ("Sleep", "2030-01-02T03:04:05.678Z", None)
    done = await invoke(client, fn, steps={hash_step_id("zz"): None})
    assert done.body == b'"woke"'


async def test_wait_for_event(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="w", trigger=TriggerEvent(event="e"))
    async def fn(ctx: Context, step: Step) -> Any:
        got = await step.wait_for_event(
            "w", event="a/approve", if_exp="async.data.id == event.data.id", timeout=3600000
        )
        return None if got is None else {"name": got.name, "data": got.data}

    op = op_of(await invoke(client, fn))
    assert op["op"] == "WaitForEvent"
    assert op["name"] == "a/approve"
    assert op["opts"] == {"if": "async.data.id == event.data.id", "timeout": "1h"}
    assert op["id"] == "aff024fe4ab0fece4091de044c58c9ae4233383a"

    matched = {"name": "a/approve", "data": {"id": 1}, "id": "x", "ts": 5, "user": {}, "v": "1"}
    done = await invoke(client, fn, steps={op["id"]: matched})
    assert json.loads(done.body) == {"name": "a/approve", "data": {"id": 1}}
    timed_out = await invoke(client, fn, steps={op["id"]: None})
    assert timed_out.body == b"null"


async def test_invoke(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="child", trigger=TriggerEvent(event="never"))
    async def child(ctx: Context, step: Step) -> None:
        return None

    @client.create_function(fn_id="parent", trigger=TriggerEvent(event="e"))
    async def parent(ctx: Context, step: Step) -> Any:
        return await step.invoke("inv", function=child, data={"q": 1}, timeout=datetime.timedelta(minutes=5))

    op = op_of(await invoke(client, parent))
    assert op["op"] == "InvokeFunction"
    assert op["name"] == "inv"
    assert op["opts"] == {"function_id": "app-child", "payload": {"data": {"q": 1}, "v": None}, "timeout": "5m"}
    assert op["id"] == "a22c81f9e58d3e183314100cda7df50c66582b16"
    done = await invoke(client, parent, steps={op["id"]: {"data": {"answer": 42}}})
    assert json.loads(done.body) == {"answer": 42}
    failed = await invoke(client, parent, steps={op["id"]: {"error": {"name": "Error", "message": "child failed"}}})
    assert json.loads(failed.body)["code"] == "step_errored"
    assert failed.no_retry is True


async def test_invoke_by_id_other_app(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="p", trigger=TriggerEvent(event="e"))
    def fn(ctx: Context, step: StepSync) -> Any:
        return step.invoke_by_id("i", app_id="billing", function_id="charge")

    op = op_of(await invoke(client, fn))
    assert op["opts"] == {"function_id": "billing-charge", "payload": {"data": None, "v": None}, "timeout": None}


async def test_sync_send_event(client: Client, executor: Any) -> None:
    @client.create_function(fn_id="emit", trigger=TriggerEvent(event="e"))
    def fn(ctx: Context, step: StepSync) -> list[str]:
        return step.send_event("emit", [Event(name="a"), Event(name="b")])

    final = await executor(client, fn).run()
    assert final.body == ["evt-a", "evt-b"]


async def test_targeting_applies_to_reported_steps(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="t", trigger=TriggerEvent(event="e"))
    async def fn(ctx: Context, step: Step) -> None:
        await step.sleep("nap", 1000)

    outcome = await invoke(client, fn, step_id=hash_step_id("other"))
    assert json.loads(outcome.body)["code"] == "step_unexpected"


async def test_bad_wait_timeout_fails_the_request(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="t", trigger=TriggerEvent(event="e"))
    async def fn(ctx: Context, step: Step) -> None:
        await step.wait_for_event("w", event="x", timeout=1500)

    body = json.loads((await invoke(client, fn)).body)
    assert body["code"] == "function_config_invalid"


async def test_a_wait_whose_if_is_not_cel_fails_the_request_naming_it(client: Client, invoke: Any) -> None:
    @client.create_function(fn_id="t", trigger=TriggerEvent(event="e"))
    async def fn(ctx: Context, step: Step) -> None:
        await step.wait_for_event("w", event="x", if_exp="async.data.id = event.data.id", timeout=60000)

    body = json.loads((await invoke(client, fn)).body)
    assert body["code"] == "function_config_invalid"
    assert body["message"] == (
        "step.wait_for_event 'w': if_exp: is not a valid CEL expression (syntax error at character 15),"
        " got 'async.data.id = event.data.id'"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1000, "1s"),
        (90000, "90s"),
        (60000, "1m"),
        (3600000, "1h"),
        (datetime.timedelta(days=1), "1d"),
        (datetime.timedelta(days=7), "1w"),
        (datetime.timedelta(days=8), "8d"),
        (datetime.timedelta(minutes=90), "90m"),
    ],
)
def test_duration_strings(value: int | datetime.timedelta, expected: str) -> None:
    assert to_duration_string(value) == expected


@pytest.mark.parametrize("value", [0, 999, 1500, datetime.timedelta(seconds=1.5), -1000, True])
def test_bad_durations(value: Any) -> None:
    with pytest.raises(FunctionConfigError):
        to_duration_string(value)


def test_iso_utc() -> None:
    tz = datetime.timezone(datetime.timedelta(hours=2))
    assert to_iso_utc(datetime.datetime(2026, 11, 23, 10, 25, 22, 638999, tzinfo=tz)) == "2026-11-23T08:25:22.638Z"
