"""`ctx.events`: the events of the run, read from the request's `events` as the
official Python SDK reads them (a batch's events in order; `ctx.event` is the
request's `event`, the first of them)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connect.sdk import Batch, Client, Context, Step, StepSync, TriggerEvent
from connect.sdk.execution import Invocation, execute
from protocol.payloads import STATUS_DONE, STATUS_ERROR

inngest = pytest.importorskip("inngest")
comm_lib = pytest.importorskip("inngest._internal.comm_lib")
server_lib = pytest.importorskip("inngest._internal.server_lib")

pytestmark = pytest.mark.anyio

BATCH = [
    {"name": "shop/item", "data": {"n": i, "sku": f"s{i}"}, "id": f"evt-{i}", "ts": 1767225600000 + i, "user": {}}
    for i in range(3)
]


def request(events: list[dict[str, Any]] | None, event: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {
        "event": event or (events or BATCH)[0],
        "steps": {},
        "ctx": {
            "run_id": "01KBATCHAAAAAAAAAAAAAAAAAA",
            "attempt": 0,
            "disable_immediate_execution": False,
            "use_api": False,
            "stack": {"stack": [], "current": 0},
        },
        "use_api": False,
        "version": 2,
    }
    if events is not None:
        body["events"] = events
    return json.dumps(body).encode()


def seen(ctx: Any) -> dict[str, Any]:
    return {
        "event": ctx.event.id,
        "events": [{"id": e.id, "name": e.name, "data": dict(e.data), "ts": e.ts} for e in ctx.events],
    }


def ours(sync: bool) -> tuple[Client, Any]:
    client = Client("shop")
    options: dict[str, Any] = {"fn_id": "f", "trigger": TriggerEvent(event="shop/item")}
    options["batch_events"] = Batch(max_size=3, timeout=5000)
    if sync:

        def sync_handler(ctx: Context, step: StepSync) -> Any:
            return seen(ctx)

        return client, client.create_function(**options)(sync_handler)

    async def async_handler(ctx: Context, step: Step) -> Any:
        return seen(ctx)

    return client, client.create_function(**options)(async_handler)


def official(sync: bool) -> Any:
    client = inngest.Inngest(app_id="shop", is_production=False)
    options: dict[str, Any] = {"fn_id": "f", "trigger": inngest.TriggerEvent(event="shop/item")}
    options["batch_events"] = inngest.Batch(max_size=3, timeout=5000)
    if sync:

        def sync_fn(ctx: Any) -> Any:
            return seen(ctx)

        fn = client.create_function(**options)(sync_fn)
    else:

        async def async_fn(ctx: Any) -> Any:
            return seen(ctx)

        fn = client.create_function(**options)(async_fn)
    return comm_lib.CommHandler(
        client=client, enable_unauthed_sync=None, framework=server_lib.Framework.CONNECT, functions=[fn], streaming=None
    )


async def both(payload: bytes, sync: bool) -> tuple[tuple[int, Any], tuple[int, Any]]:
    client, fn = ours(sync)
    mine = await execute(client, {"shop-f": fn}, Invocation(payload, "shop-f", "step"))
    res = await official(sync).post(
        comm_lib.CommRequest(
            body=payload,
            headers={},
            is_connect=True,
            public_path=None,
            query_params={"fnId": "shop-f", "stepId": "step"},
            raw_request=None,
            request_url="",
            serve_origin=None,
            serve_path=None,
        )
    )
    status = {200: STATUS_DONE, 500: STATUS_ERROR}.get(res.status_code, res.status_code)
    return (mine.status, json.loads(mine.body)), (status, json.loads(res.body_bytes()))


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_batched_run_sees_all_its_events_in_order(sync: bool) -> None:
    mine, theirs = await both(request(BATCH), sync)
    assert mine == theirs
    status, body = mine
    assert status == STATUS_DONE
    assert body["event"] == "evt-0"
    assert body["events"] == [{k: e[k] for k in ("id", "name", "data", "ts")} for e in BATCH]


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_run_of_one_event_sees_it_alone(sync: bool) -> None:
    mine, theirs = await both(request(BATCH[1:2]), sync)
    assert mine == theirs
    assert mine[1] == {"event": "evt-1", "events": [{k: BATCH[1][k] for k in ("id", "name", "data", "ts")}]}


async def test_a_request_without_events_is_an_error_in_both_sdks() -> None:
    (status, body), (their_status, _) = await both(request(None, BATCH[0]), sync=False)
    assert status == their_status == STATUS_ERROR
    assert "events" in body["message"]
