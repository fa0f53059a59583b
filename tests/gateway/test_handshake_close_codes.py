"""Every 1008 handshake rejection, triggered over a real socket against `connect dev`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from protocol import codes, frames, ids
from protocol import connect_pb2 as pb
from tests.e2e.harness import DevServer


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("handshake")).start()
    yield server
    server.stop()


def start(dev: DevServer) -> pb.StartResponse:
    resp = httpx.post(f"{dev.url}/v0/connect/start", content=pb.StartRequest().SerializeToString())
    assert resp.status_code == 200
    out = pb.StartResponse()
    out.ParseFromString(resp.content)
    return out


def hello(started: pb.StartResponse, **overrides: object) -> pb.WorkerConnectRequestData:
    fn = {
        "id": "hs-f",
        "name": "f",
        "triggers": [{"event": "hs/x"}],
        "steps": {"step": {"id": "step", "name": "step", "runtime": {"type": "ws", "url": "wss://connect?fnId=hs-f"}}},
    }
    msg = pb.WorkerConnectRequestData(
        connection_id=started.connection_id,
        instance_id="hs-instance",
        auth_data=pb.AuthData(session_token=started.session_token, sync_token=started.sync_token),
        capabilities=b'{"connect":"v1"}',
        sdk_language="py",
        sdk_version="test",
    )
    msg.apps.add(app_name="hs", functions=json.dumps([fn]).encode())
    for key, value in overrides.items():
        if key == "n_apps":
            del msg.apps[:]
            for i in range(int(value)):  # type: ignore[call-overload]
                msg.apps.add(app_name=f"hs{i}", functions=b"[]")
        elif key == "token":
            msg.auth_data.session_token = str(value)
        elif key == "functions":
            msg.apps[0].functions = value  # type: ignore[assignment]
        else:
            setattr(msg, key, value)
    return msg


async def handshake(dev: DevServer, first_frame: bytes | None) -> tuple[int | None, str, list[int]]:
    """Open a socket, send `first_frame` after HELLO (or nothing), return the close code/reason."""
    started = start(dev)
    seen: list[int] = []
    async with connect(started.gateway_endpoint, subprotocols=["v0.connect.inngest.com"]) as ws:  # type: ignore[list-item]
        seen.append(frames.decode(await ws.recv())[0])  # type: ignore[arg-type]
        if first_frame is not None:
            await ws.send(first_frame)
        try:
            while True:
                seen.append(frames.decode(await asyncio.wait_for(ws.recv(), 10))[0])  # type: ignore[arg-type]
        except ConnectionClosed:
            pass
        assert ws.close_code is not None
        return ws.close_code, ws.close_reason or "", seen


def run(coro: object) -> tuple[int | None, str, list[int]]:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_hello_timeout(dev: DevServer) -> None:
    code, reason, seen = run(handshake(dev, None))
    assert seen == [pb.GATEWAY_HELLO]
    assert (code, reason) == (1008, codes.HELLO_TIMEOUT)


def test_first_frame_not_worker_connect(dev: DevServer) -> None:
    code, reason, _ = run(handshake(dev, frames.encode(pb.WORKER_HEARTBEAT)))
    assert (code, reason) == (1008, codes.HELLO_INVALID_MSG)


@pytest.mark.parametrize("override", [{"connection_id": "nope"}, {"instance_id": ""}, {"n_apps": 0}])
def test_invalid_payload(dev: DevServer, override: dict[str, object]) -> None:
    frame = frames.encode(pb.WORKER_CONNECT, hello(start(dev), **override))
    code, reason, _ = run(handshake(dev, frame))
    assert (code, reason) == (1008, codes.HELLO_INVALID_PAYLOAD)


def test_undecodable_payload(dev: DevServer) -> None:
    code, reason, _ = run(handshake(dev, frames.encode(pb.WORKER_CONNECT, b"\xff\xff\xff")))
    assert (code, reason) == (1008, codes.HELLO_INVALID_PAYLOAD)


def test_forged_session_token(dev: DevServer) -> None:
    frame = frames.encode(pb.WORKER_CONNECT, hello(start(dev), token="eyJhbGciOiJIUzI1NiJ9.e30.forged"))
    code, reason, _ = run(handshake(dev, frame))
    assert (code, reason) == (1008, codes.AUTHENTICATION_FAILED)


def test_too_many_apps(dev: DevServer) -> None:
    frame = frames.encode(pb.WORKER_CONNECT, hello(start(dev), n_apps=11))
    code, reason, _ = run(handshake(dev, frame))
    assert (code, reason) == (1008, codes.TOO_MANY_APPS)


def test_invalid_function_config(dev: DevServer) -> None:
    frame = frames.encode(pb.WORKER_CONNECT, hello(start(dev), functions=b'[{"id": 1}]'))
    code, reason, _ = run(handshake(dev, frame))
    assert (code, reason) == (1008, codes.INVALID_FUNCTION_CONFIG)


def test_garbage_frame_closes_1007(dev: DevServer) -> None:
    code, reason, _ = run(handshake(dev, b"\xff\xff\xff\xff"))
    assert (code, reason) == (1007, codes.PROTOBUF_UNMARSHAL_FAILED)


def test_valid_handshake_gets_ready_and_other_sockets_unharmed(dev: DevServer) -> None:
    async def scenario() -> list[int]:
        started = start(dev)
        async with connect(started.gateway_endpoint, subprotocols=["v0.connect.inngest.com"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "v0.connect.inngest.com"
            assert frames.decode(await ws.recv())[0] == pb.GATEWAY_HELLO  # type: ignore[arg-type]
            await ws.send(frames.encode(pb.WORKER_CONNECT, hello(started)))
            kind, payload = frames.decode(await ws.recv())  # type: ignore[arg-type]
            ready = frames.parse_payload(pb.GatewayConnectionReadyData, payload)
            # A bad neighbour does not disturb this connection.
            await handshake(dev, b"\x00garbage")
            await ws.send(frames.encode(pb.WORKER_HEARTBEAT))
            beat = frames.decode(await asyncio.wait_for(ws.recv(), 5))[0]  # type: ignore[arg-type]
            assert (ready.heartbeat_interval, ready.extend_lease_interval) == ("10s", "30s")
            return [kind, beat]

    assert asyncio.run(scenario()) == [pb.GATEWAY_CONNECTION_READY, pb.GATEWAY_HEARTBEAT]


def test_ready_endpoint_and_unknown_path(dev: DevServer) -> None:
    base = f"http://127.0.0.1:{dev.gateway_port}"
    assert httpx.get(f"{base}/ready").status_code == 200
    assert httpx.get(f"{base}/nope").status_code == 404
    assert ids.is_ulid(start(dev).connection_id)
