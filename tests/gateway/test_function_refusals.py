"""One invalid function does not take the others down: real sockets against `connect dev`.

A raw protocol client registers an app whose functions are valid, invalid
and valid with options the executor does not honour; the connection stays
up, the valid ones are served (their events reach this very socket), the
invalid one starts nothing, and the API and the log say why.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from protocol import connect_pb2 as pb
from protocol import frames
from tests.e2e.harness import DevServer
from tests.gateway.test_handshake_close_codes import hello, start

APP = "mixed"


def fn(name: str, **options: Any) -> dict[str, Any]:
    fq = f"{APP}-{name}"
    return {
        "id": fq,
        "name": name,
        "triggers": [{"event": f"{APP}/{name}"}],
        "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "ws", "url": f"wss://connect?fnId={fq}"}}},
        **options,
    }


FUNCTIONS = [
    fn("good"),
    fn("bad", concurrency="five"),
    fn(
        "limited",
        concurrency=5,
        throttle={"limit": 1, "period": "1m"},
        # A cron that never fires during the test, with jitter (not honoured).
        triggers=[{"event": f"{APP}/limited"}, {"cron": "0 3 1 1 *", "jitter": "1m"}],
    ),
]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("refusals")).start()
    yield server
    server.stop()


async def open_worker(dev: DevServer, instance: str) -> ClientConnection:
    started = start(dev)
    msg = hello(started, instance_id=instance, functions=json.dumps(FUNCTIONS).encode())
    msg.apps[0].app_name = APP
    ws = await connect(started.gateway_endpoint, subprotocols=["v0.connect.inngest.com"])  # type: ignore[list-item]
    assert frames.decode(await ws.recv())[0] == pb.GATEWAY_HELLO  # type: ignore[arg-type]
    await ws.send(frames.encode(pb.WORKER_CONNECT, msg))
    kind, _ = frames.decode(await asyncio.wait_for(ws.recv(), 30))  # type: ignore[arg-type]
    assert kind == pb.GATEWAY_CONNECTION_READY
    return ws


async def next_request(ws: ClientConnection) -> pb.GatewayExecutorRequestData:
    while True:
        kind, payload = frames.decode(await asyncio.wait_for(ws.recv(), 60))  # type: ignore[arg-type]
        if kind == pb.GATEWAY_EXECUTOR_REQUEST:
            return frames.parse_payload(pb.GatewayExecutorRequestData, payload)


def functions(dev: DevServer) -> dict[str, dict[str, Any]]:
    resp = httpx.get(f"{dev.url}/v1/functions", timeout=30)
    assert resp.status_code == 200, resp.text
    return {f["id"]: f for f in resp.json()["data"]}


def test_one_invalid_function_does_not_take_the_others_down(dev: DevServer) -> None:
    async def scenario() -> None:
        # A fleet: two workers of the same app, registering the same functions.
        first, second = await open_worker(dev, "w1"), await open_worker(dev, "w2")
        await second.close()  # the app stays registered; `first` serves it
        try:
            bad, good, limited = dev.send([{"name": f"{APP}/bad"}, {"name": f"{APP}/good"}, {"name": f"{APP}/limited"}])
            got = {(await next_request(first)).function_slug for _ in range(2)}
            assert got == {f"{APP}-good", f"{APP}-limited"}
            # Events are taken in order: the runs of the later ones exist, so
            # the refused function's event was handled and started nothing.
            assert len(dev.runs(good)) == 1 and len(dev.runs(limited)) == 1
            assert dev.runs(bad) == []
        finally:
            await first.close()

    asyncio.run(scenario())
    listed = functions(dev)
    assert listed[f"{APP}-bad"]["status"] == "refused"
    assert listed[f"{APP}-bad"]["reason"].startswith("invalid config: Expected `int | object | array | null`")
    assert "`$.concurrency`" in listed[f"{APP}-bad"]["reason"]
    assert listed[f"{APP}-good"] == {
        "id": f"{APP}-good",
        "app": APP,
        "name": "good",
        "triggers": [{"event": f"{APP}/good"}],
        "status": "active",
        "reason": None,
        "not_honoured": {},
        "options": {},
    }
    assert listed[f"{APP}-limited"]["status"] == "active"
    # Concurrency and throttle are honoured: only the cron trigger's jitter is named.
    assert listed[f"{APP}-limited"]["not_honoured"] == {"triggers[1].jitter": "1m"}
    assert dev.proc is not None
    log = dev.proc.output()
    # Once per registration, not once per worker of the fleet.
    assert log.count(f"app {APP}, function {APP}-bad: refused, not served: invalid config") == 1, log
    assert log.count(f"app {APP}, function {APP}-limited: registered options") == 1, log
    assert log.count('runs without them): triggers[1].jitter="1m"\n') == 1, log


CEL_APP = "cel"


def cel_fn(name: str, **options: Any) -> dict[str, Any]:
    fq = f"{CEL_APP}-{name}"
    return {
        "id": fq,
        "name": name,
        "triggers": [{"event": f"{CEL_APP}/{name}"}],
        "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "ws", "url": f"wss://connect?fnId={fq}"}}},
        **options,
    }


def test_an_invalid_cel_expression_refuses_its_function_naming_where(dev: DevServer) -> None:
    """A trigger filter, a cancel condition or a flow-control key that is not
    CEL would never match (or never run); its function is refused at
    registration instead, with where and why, and the others are served."""
    registered = [
        cel_fn("trigger", triggers=[{"event": f"{CEL_APP}/trigger", "expression": "event.data.x =="}]),
        cel_fn("cancel", cancel=[{"event": f"{CEL_APP}/stop", "if": "async.data.id = event.data.id"}]),
        cel_fn("key", concurrency=[{"limit": 1, "key": "event.data.("}]),
        cel_fn("fine", triggers=[{"event": f"{CEL_APP}/fine", "expression": "event.data.x == 1"}]),
    ]

    async def scenario() -> None:
        started = start(dev)
        msg = hello(started, instance_id="cel-1", functions=json.dumps(registered).encode())
        msg.apps[0].app_name = CEL_APP
        ws = await connect(started.gateway_endpoint, subprotocols=["v0.connect.inngest.com"])  # type: ignore[list-item]
        try:
            assert frames.decode(await ws.recv())[0] == pb.GATEWAY_HELLO  # type: ignore[arg-type]
            await ws.send(frames.encode(pb.WORKER_CONNECT, msg))
            kind, _ = frames.decode(await asyncio.wait_for(ws.recv(), 30))  # type: ignore[arg-type]
            assert kind == pb.GATEWAY_CONNECTION_READY
            (fine,) = dev.send([{"name": f"{CEL_APP}/fine", "data": {"x": 1}}])
            assert (await next_request(ws)).function_slug == f"{CEL_APP}-fine"
            assert len(dev.runs(fine)) == 1
        finally:
            await ws.close()

    asyncio.run(scenario())
    listed = functions(dev)
    reasons = {name: listed[f"{CEL_APP}-{name}"]["reason"] for name in ("trigger", "cancel", "key")}
    assert reasons == {
        "trigger": "invalid config: `triggers[0].expression` is not a valid CEL expression"
        " (syntax error at character 14), got 'event.data.x =='",
        "cancel": "invalid config: `cancel[0].if` is not a valid CEL expression"
        " (syntax error at character 15), got 'async.data.id = event.data.id'",
        "key": "invalid config: `concurrency[0].key` is not a valid CEL expression"
        " (syntax error at character 12), got 'event.data.('",
    }
    assert {listed[f"{CEL_APP}-{n}"]["status"] for n in ("trigger", "cancel", "key")} == {"refused"}
    assert listed[f"{CEL_APP}-fine"]["status"] == "active"
