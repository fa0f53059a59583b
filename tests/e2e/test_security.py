"""Keys, limits and hostile input against real `connect serve` / `connect dev` processes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets.exceptions
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from connect.gateway.auth import Keys, TokenIssuer, hash_signing_key
from protocol import codes, frames, ids
from protocol import connect_pb2 as pb
from tests.e2e.apps import client as e2e_client
from tests.e2e.harness import ROOT, DevServer, start_worker, wait_for_log, wait_until

SIGNING_KEY = "signkey-test-00112233445566778899aabbccddeeff"
FALLBACK_KEY = "signkey-test-ffeeddccbbaa99887766554433221100"
EVENT_KEY = "ek-good"
BEARER = {"Authorization": f"Bearer {hash_signing_key(SIGNING_KEY)}"}
SUBPROTOCOLS = ["v0.connect.inngest.com"]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    tmp = tmp_path_factory.mktemp("serve")
    server = DevServer(
        tmp,
        command="serve",
        extra=["--signing-key", SIGNING_KEY, "--signing-key-fallback", FALLBACK_KEY, "--event-key", EVENT_KEY],
        headers={"Authorization": f"Bearer {SIGNING_KEY}"},
        event_key=EVENT_KEY,
    ).start()
    yield server
    server.stop()


def start_call(server: DevServer, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}/v0/connect/start", content=b"", headers=headers)


def started(server: DevServer) -> pb.StartResponse:
    resp = start_call(server, BEARER)
    assert resp.status_code == 200, resp.text
    out = pb.StartResponse()
    out.ParseFromString(resp.content)
    return out


def hello_frame(token: str, instance: str = "sec", app: str = "sec-app", functions: bytes = b"[]") -> bytes:
    msg = pb.WorkerConnectRequestData(
        connection_id=ids.new_ulid(),
        instance_id=instance,
        auth_data=pb.AuthData(session_token=token),
        sdk_language="py",
        sdk_version="test",
    )
    msg.apps.add(app_name=app, functions=functions)
    return frames.encode(pb.WORKER_CONNECT, msg)


async def close_of(endpoint: str, first: bytes | None, *, then: list[bytes] = ()) -> tuple[int | None, str]:  # type: ignore[assignment]
    async with connect(endpoint, subprotocols=SUBPROTOCOLS, max_size=None) as ws:  # type: ignore[arg-type]
        await ws.recv()
        if first is not None:
            await ws.send(first)
        for frame in then:
            await asyncio.sleep(0.2)
            await ws.send(frame)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 15)
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason or ""


# --- keys -------------------------------------------------------------------------------


def test_serve_refuses_to_start_without_keys(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "connect", "serve", "--db", str(tmp_path / "x.db"), "--port", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    no_key = subprocess.run(base, env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert no_key.returncode == 2 and "signing key is required" in no_key.stderr
    no_events = subprocess.run(
        [*base, "--signing-key", SIGNING_KEY], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert no_events.returncode == 2 and "event key is required" in no_events.stderr
    bad_key = subprocess.run(
        [*base, "--signing-key", "signkey-prod-not-hex-at-all-zzzz", "--event-key", "k"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad_key.returncode == 2 and "hexadecimal" in bad_key.stderr


def test_serve_says_it_is_in_production_mode(serve: DevServer) -> None:
    assert serve.proc is not None
    assert "production mode" in serve.proc.output()


def test_start_and_flush_need_the_hashed_signing_key(serve: DevServer) -> None:
    assert start_call(serve, {}).status_code == 401
    assert start_call(serve, {"Authorization": "Bearer " + "0" * 64}).status_code == 401
    assert start_call(serve, {"Authorization": "Basic abc"}).status_code == 401
    assert start_call(serve, BEARER).status_code == 200
    fallback = {"Authorization": f"Bearer {hash_signing_key(FALLBACK_KEY)}"}
    assert start_call(serve, fallback).status_code == 200  # rotation
    flush = httpx.post(f"{serve.url}/v0/connect/flush", content=b"\x0a\x01x")
    assert flush.status_code == 401


def test_event_keys_and_environment(serve: DevServer) -> None:
    event = {"name": "sec/x"}
    assert httpx.post(f"{serve.url}/e/wrong", json=event).status_code == 401
    assert httpx.post(f"{serve.url}/e/{EVENT_KEY}", json=event).status_code == 200
    other_env = httpx.post(f"{serve.url}/e/{EVENT_KEY}", json=event, headers={"X-Inngest-Env": "staging"})
    assert other_env.status_code == 401


def test_checkpoints_need_the_signing_key(serve: DevServer) -> None:
    run_id = ids.new_ulid()
    body = {"run_id": run_id, "request_id": ids.new_ulid(), "steps": [{"op": "StepRun", "id": "a", "data": 1}]}
    url = f"{serve.url}/v1/checkpoint/{run_id}/async"
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(f"{serve.url}/v1/checkpoint", json=body).status_code == 401
    # With the hashed key, as the TypeScript SDK sends it: the request is not in flight.
    assert httpx.post(url, json=body, headers=BEARER).status_code == 409


def test_rest_needs_the_signing_key(serve: DevServer) -> None:
    assert httpx.get(f"{serve.url}/v1/runs/{ids.new_ulid()}").status_code == 401
    authorized = httpx.get(f"{serve.url}/v1/runs/{ids.new_ulid()}", headers={"Authorization": f"Bearer {SIGNING_KEY}"})
    assert authorized.status_code == 404
    for path in ["/v1/runs", "/v1/runs?status=Failed"]:
        refused = httpx.get(f"{serve.url}{path}")
        assert refused.status_code == 401 and "Bearer" in refused.json()["error"]
        answered = httpx.get(f"{serve.url}{path}", headers=BEARER)
        assert answered.status_code == 200 and answered.json()["cursor"] is None
    unknown = ids.new_ulid()
    for method, path, known in [
        ("GET", f"/v1/runs/{unknown}/steps", 404),
        ("GET", "/v1/events", 200),
        ("GET", f"/v1/events/{unknown}", 404),
        ("POST", f"/v1/events/{unknown}/replay", 404),
        ("POST", "/v1/cancellations", 200),
        ("POST", f"/v1/runs/{unknown}/rerun", 404),
        ("GET", "/v1/apps", 200),
        ("GET", "/v1/workers", 200),
        ("GET", "/openapi.json", 200),
    ]:
        body = {"function_id": "nothing"} if path == "/v1/cancellations" else None
        assert httpx.request(method, f"{serve.url}{path}", json=body).status_code == 401, path
        assert httpx.request(method, f"{serve.url}{path}", json=body, headers=BEARER).status_code == known, path


@pytest.mark.parametrize(
    "issuer",
    [
        TokenIssuer(),  # the public dev secret
        Keys.production(SIGNING_KEY, None, ["k"]).token_issuer(ttl=-30),  # expired
        Keys.production(SIGNING_KEY, None, ["k"], env="staging").token_issuer(),  # other environment
        Keys.production("signkey-test-0123456789abcdef0123", None, ["k"]).token_issuer(),  # forged
    ],
    ids=["dev-secret", "expired", "other-env", "forged"],
)
def test_bad_session_tokens_fail_the_handshake(serve: DevServer, issuer: TokenIssuer) -> None:
    endpoint = started(serve).gateway_endpoint
    code, reason = asyncio.run(close_of(endpoint, hello_frame(issuer.issue())))
    assert (code, reason) == (1008, codes.AUTHENTICATION_FAILED)


def test_worker_with_the_key_runs_functions_and_fallback_rotation(serve: DevServer, tmp_path: Path) -> None:
    env = {"CONNECT_SIGNING_KEY": "signkey-test-0000000000000000", "CONNECT_SIGNING_KEY_FALLBACK": SIGNING_KEY}
    worker = start_worker(serve, tmp_path, env=env)
    try:
        wait_for_log(worker, "worker state ACTIVE")
        assert "trying the fallback key" in worker.output()
        (eid,) = serve.send([{"name": "e2e/three", "data": {"n": 1}}])
        (run,) = serve.wait_runs([eid], timeout=60)
        assert run["status"] == "Completed" and run["output"] == {"n": 1, "result": 7}
    finally:
        worker.stop()
    rejected = start_worker(serve, tmp_path, name="rejected", env={"CONNECT_SIGNING_KEY": FALLBACK_KEY[:-4] + "abcd"})
    try:
        assert rejected.wait(30) != 0  # a wrong key is fatal, not retried forever
        assert f"{serve.url}/v0/connect/start refused the signing key (401" in rejected.output()
        assert "CONNECT_SIGNING_KEY" in rejected.output()
    finally:
        rejected.stop()


# --- limits -----------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Iterator[DevServer]:
    server = DevServer(
        tmp_path,
        extra=[
            "--max-message-bytes",
            "65536",
            "--max-connections-per-instance",
            "1",
            "--max-event-bytes",
            "1024",
            "--max-request-bytes",
            "4096",
        ],
    ).start()
    yield server
    server.stop()


def dev_start(server: DevServer, instance: str | None = None) -> httpx.Response:
    headers = {"X-Connect-Instance-Id": instance} if instance else {}
    return httpx.post(f"{server.url}/v0/connect/start", content=b"", headers=headers)


def test_event_size_limits(small: DevServer) -> None:
    assert small.proc is not None and "open mode: no keys required" in small.proc.output()
    big_event = {"name": "x/y", "data": {"blob": "a" * 2000}}
    resp = httpx.post(f"{small.url}/e/k", json=big_event)
    assert resp.status_code == 413 and "limit is 1024" in resp.json()["error"]
    many = [{"name": "x/y", "data": {"blob": "a" * 500}} for _ in range(10)]
    resp = httpx.post(f"{small.url}/e/k", json=many)
    assert resp.status_code == 413 and "limit is 4096" in resp.json()["error"]
    assert httpx.post(f"{small.url}/e/k", json={"name": "x/y"}).status_code == 200


def test_oversized_message_closes_1009_and_is_recorded(small: DevServer) -> None:
    async def scenario() -> tuple[int | None, str]:
        start = pb.StartResponse()
        start.ParseFromString(dev_start(small).content)
        async with connect(start.gateway_endpoint, subprotocols=SUBPROTOCOLS) as ws:  # type: ignore[list-item]
            await ws.recv()
            await ws.send(hello_frame(start.session_token, instance="big"))
            await ws.recv()  # GATEWAY_CONNECTION_READY
            await ws.send(frames.encode(pb.WORKER_HEARTBEAT, b"x" * 100_000))
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed:
                pass
            return ws.close_code, ws.close_reason or ""

    code, _ = asyncio.run(scenario())
    assert code == 1009
    assert small.proc is not None
    wait_until(lambda: "reason=MESSAGE_TOO_LARGE" in small.proc.output(), 10, "the disconnect to be recorded")  # type: ignore[union-attr]


def test_connections_per_instance(small: DevServer) -> None:
    async def scenario() -> tuple[int, tuple[int | None, str]]:
        start = pb.StartResponse()
        start.ParseFromString(dev_start(small, "solo").content)
        async with connect(start.gateway_endpoint, subprotocols=SUBPROTOCOLS) as ws:  # type: ignore[list-item]
            await ws.recv()
            await ws.send(hello_frame(start.session_token, instance="solo"))
            await ws.recv()
            refused = dev_start(small, "solo").status_code
            second = await close_of(start.gateway_endpoint, hello_frame(start.session_token, instance="solo"))
            return refused, second

    refused, second = asyncio.run(scenario())
    assert refused == 429
    assert second == (1008, codes.TOO_MANY_CONNECTIONS_PER_INSTANCE)
    assert dev_start(small, "solo").status_code == 200  # the slot is free again


def test_total_connection_limit_counts_authenticated_connections(tmp_path: Path) -> None:
    server = DevServer(tmp_path, extra=["--max-connections", "2"]).start()

    async def scenario() -> tuple[int, int, tuple[int | None, str]]:
        start = pb.StartResponse.FromString(dev_start(server).content)
        endpoint, token = start.gateway_endpoint, start.session_token
        async with (
            connect(endpoint, subprotocols=SUBPROTOCOLS) as a,  # type: ignore[list-item]
            connect(endpoint, subprotocols=SUBPROTOCOLS) as b,  # type: ignore[list-item]
        ):
            await a.recv()
            await b.recv()
            silent = dev_start(server).status_code  # two sockets in the handshake take no place
            for ws, instance in ((a, "a"), (b, "b")):
                await ws.send(hello_frame(token, instance=instance))
                await ws.recv()  # GATEWAY_CONNECTION_READY
            refused = dev_start(server).status_code
            async with connect(endpoint, subprotocols=SUBPROTOCOLS) as c:  # type: ignore[list-item]
                await c.recv()
                await c.send(hello_frame(token, instance="c"))
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(c.recv(), 10)
                return silent, refused, (c.close_code, c.close_reason or "")

    try:
        silent, refused, third = asyncio.run(scenario())
        assert silent == 200
        assert refused == 429
        assert third == (1013, codes.TOO_MANY_CONNECTIONS)
    finally:
        server.stop()


# --- sockets that never authenticate ---------------------------------------------------------


class SilentCrowd:
    """`size` WebSocket upgrades from `host` that never send WORKER_CONNECT, each
    replaced by a new one as soon as the gateway closes it, until stopped."""

    def __init__(self, endpoint: str, size: int, host: str = "127.0.0.2") -> None:
        self.endpoint, self.size, self.host = endpoint, size, host
        self.opened = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> SilentCrowd:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        await asyncio.gather(*(self._one() for _ in range(self.size)))

    async def _one(self) -> None:
        while not self._stop.is_set():
            try:
                async with connect(
                    self.endpoint,
                    subprotocols=SUBPROTOCOLS,  # type: ignore[arg-type]
                    local_addr=(self.host, 0),
                    open_timeout=10,
                ) as ws:
                    await ws.recv()  # GATEWAY_HELLO
                    self.opened += 1
                    while not self._stop.is_set():
                        try:
                            await asyncio.wait_for(ws.recv(), 0.2)
                        except TimeoutError:
                            continue
            except (ConnectionClosed, OSError, websockets.exceptions.InvalidHandshake, TimeoutError, EOFError):
                self.refused += 1
                await asyncio.sleep(0.05)


def test_silent_upgrades_cannot_keep_a_real_worker_out(tmp_path: Path) -> None:
    """20 upgrades that never authenticate, renewed as the handshake timeout
    closes them, with --max-connections 20: a real worker connects and works."""
    server = DevServer(tmp_path, extra=["--max-connections", "20", "--handshake-timeout", "4"]).start()
    endpoint = pb.StartResponse.FromString(dev_start(server).content).gateway_endpoint
    worker = None
    try:
        with SilentCrowd(endpoint, 20) as crowd:
            wait_until(lambda: crowd.opened >= 20, 30, "the silent crowd to be in")
            assert dev_start(server).status_code == 200
            worker = start_worker(server, tmp_path)
            wait_for_log(worker, "worker state ACTIVE", timeout=60)
            (run,) = server.wait_runs(server.send([{"name": "e2e/three", "data": {"n": 3}}]), timeout=60)
            assert run["status"] == "Completed"
            assert crowd.opened >= 20
    finally:
        if worker is not None:
            worker.stop()
        server.stop()


async def _hello_from(endpoint: str, host: str) -> str:
    """'hello' when the gateway greets a new connection from `host`, else 'dropped'."""
    try:
        async with connect(endpoint, subprotocols=SUBPROTOCOLS, local_addr=(host, 0), open_timeout=10) as ws:  # type: ignore[arg-type]
            await asyncio.wait_for(ws.recv(), 10)
            return "hello"
    except (ConnectionClosed, OSError, websockets.exceptions.InvalidHandshake, EOFError):
        return "dropped"


def test_handshake_budget_per_peer_and_in_all(tmp_path: Path) -> None:
    server = DevServer(
        tmp_path,
        extra=["--max-handshakes", "12", "--max-handshakes-per-peer", "5", "--handshake-timeout", "60"],
    ).start()
    assert server.proc is not None
    start = pb.StartResponse.FromString(dev_start(server).content)
    endpoint = start.gateway_endpoint

    async def scenario() -> dict[str, object]:
        out: dict[str, object] = {}
        held = []
        for _ in range(5):
            ws = await connect(endpoint, subprotocols=SUBPROTOCOLS, local_addr=("127.0.0.2", 0))  # type: ignore[arg-type]
            await ws.recv()
            held.append(ws)
        out["sixth from the same peer"] = await _hello_from(endpoint, "127.0.0.2")
        out["another peer"] = await _hello_from(endpoint, "127.0.0.3")
        # An authenticated connection leaves the budget: it is not a handshake any more.
        worker = await connect(endpoint, subprotocols=SUBPROTOCOLS, local_addr=("127.0.0.4", 0))  # type: ignore[arg-type]
        await worker.recv()
        await worker.send(hello_frame(start.session_token, instance="real"))
        await worker.recv()  # GATEWAY_CONNECTION_READY
        for host in ("127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.4", "127.0.0.5", "127.0.0.5", "127.0.0.5"):
            ws = await connect(endpoint, subprotocols=SUBPROTOCOLS, local_addr=(host, 0))  # type: ignore[arg-type]
            await ws.recv()
            held.append(ws)
        out["past the budget in all"] = await _hello_from(endpoint, "127.0.0.6")
        await held[0].close()
        await asyncio.sleep(0.5)
        out["after one left"] = await _hello_from(endpoint, "127.0.0.2")
        await worker.send(frames.encode(pb.WORKER_HEARTBEAT))
        out["worker still served"] = frames.decode(await asyncio.wait_for(worker.recv(), 10))[0]  # type: ignore[arg-type]
        for ws in [*held, worker]:
            await ws.close()
        return out

    try:
        out = asyncio.run(scenario())
        assert out == {
            "sixth from the same peer": "dropped",
            "another peer": "hello",
            "past the budget in all": "dropped",
            "after one left": "hello",
            "worker still served": pb.GATEWAY_HEARTBEAT,
        }
        wait_until(
            lambda: "connections in the handshake from 127.0.0.2 (limit 5)" in server.proc.output(),  # type: ignore[union-attr]
            10,
            "the refusal to be logged",
        )
    finally:
        server.stop()


@pytest.mark.parametrize("flag", ["--max-handshakes", "--max-handshakes-per-peer"])
def test_a_handshake_budget_below_one_stops_the_command(flag: str, tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    args = [sys.executable, "-m", "connect", "dev", "--db", str(db), "--port", "0", "--gateway-port", "0", flag, "0"]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and f"{flag} must be positive" in out.stderr
    assert not db.exists()  # refused before anything started


def test_a_silent_tcp_connection_holds_its_place_until_the_upgrade_timeout(tmp_path: Path) -> None:
    """Before any byte of the upgrade, a socket already counts; the gateway
    closes it after UPGRADE_TIMEOUT (10 s) and its place is free again."""
    server = DevServer(tmp_path, extra=["--max-handshakes-per-peer", "1"]).start()
    endpoint = pb.StartResponse.FromString(dev_start(server).content).gateway_endpoint
    silent = socket.socket()
    try:
        silent.bind(("127.0.0.7", 0))
        silent.connect(("127.0.0.1", server.gateway_port))
        silent.settimeout(60)
        wait_until(
            lambda: asyncio.run(_hello_from(endpoint, "127.0.0.7")) == "dropped", 10, "the peer's one place to be held"
        )
        t0 = time.monotonic()
        assert silent.recv(1) == b""  # closed by the gateway, without a word
        assert 5.0 <= time.monotonic() - t0 < 30.0
        assert asyncio.run(_hello_from(endpoint, "127.0.0.7")) == "hello"
    finally:
        silent.close()
        server.stop()


# --- the drain route ---------------------------------------------------------------------------


def test_drain_under_serve_needs_the_signing_key(tmp_path: Path) -> None:
    server = DevServer(
        tmp_path,
        command="serve",
        extra=["--signing-key", SIGNING_KEY, "--event-key", EVENT_KEY],
        headers={"Authorization": f"Bearer {SIGNING_KEY}"},
        event_key=EVENT_KEY,
    ).start()
    gateway = f"http://127.0.0.1:{server.gateway_port}"
    try:
        assert server.proc is not None
        for headers in ({}, {"Authorization": "Bearer " + "0" * 64}, {"Authorization": f"Bearer {EVENT_KEY}"}):
            resp = httpx.post(f"{gateway}/v0/connect/drain", headers=headers)
            assert resp.status_code == 401, resp.text
            assert resp.json() == {
                "status": 401,
                "error": "draining the gateway needs Authorization: Bearer <signing key>, as /v1 does",
            }
        assert httpx.get(f"{gateway}/ready").status_code == 200  # not draining
        assert started(server).gateway_endpoint  # still admitting workers
        assert server.proc.popen.poll() is None
        assert httpx.post(f"{gateway}/v0/connect/drain", headers=BEARER).status_code == 200
        # Stopped on request: neither 0 (a supervisor restarting on failure would
        # leave it down) nor 1 (a crash).
        assert server.proc.wait(60) == 75
        assert "drain requested over HTTP" in server.proc.output()
    finally:
        server.stop()


def test_drain_by_request_in_open_mode_exits_75(tmp_path: Path) -> None:
    server = DevServer(tmp_path).start()
    try:
        assert server.proc is not None
        resp = httpx.post(f"http://127.0.0.1:{server.gateway_port}/v0/connect/drain")
        assert resp.status_code == 200
        assert server.proc.wait(60) == 75
    finally:
        server.stop()


def test_slow_reader_is_dropped_without_harming_others(tmp_path: Path) -> None:
    """A connection that stops reading is dropped; its requests go to a real worker."""
    server = DevServer(tmp_path).start()
    three = next(f for f in e2e_client.functions if f.id == "three-steps")
    fn_json = json.dumps([_config(three)]).encode()
    stop = threading.Event()

    async def slow_reader() -> None:
        start = pb.StartResponse.FromString(dev_start(server).content)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.gateway_port))
        async with connect(start.gateway_endpoint, sock=sock, subprotocols=SUBPROTOCOLS, max_queue=1) as ws:  # type: ignore[list-item]
            await ws.recv()
            await ws.send(hello_frame(start.session_token, instance="slow", app="e2e-app", functions=fn_json))
            await ws.recv()  # ready; from now on it never reads again
            while not stop.is_set():
                await asyncio.sleep(0.1)

    reader = threading.Thread(target=lambda: asyncio.run(slow_reader()), daemon=True)
    worker = None
    try:
        reader.start()
        assert server.proc is not None
        wait_for_log(server.proc, "worker ready: connection=", timeout=10)
        blob = "z" * 450_000
        ids_: list[str] = []
        for batch in range(4):
            ids_ += server.send([{"name": "e2e/three", "data": {"n": batch * 5 + i, "pad": blob}} for i in range(5)])
        wait_until(lambda: "reason=connect_slow_reader" in server.proc.output(), 30, "the slow reader to be dropped")  # type: ignore[union-attr]
        worker = start_worker(server, tmp_path, instance_id="real")
        runs = server.wait_runs(ids_, timeout=90)
        assert [r["status"] for r in runs] == ["Completed"] * 20
    finally:
        stop.set()
        if worker is not None:
            worker.stop()
        server.stop()


def _config(fn: object) -> object:
    import msgspec

    return msgspec.to_builtins(fn.config(e2e_client.app_id))  # type: ignore[attr-defined]


def test_hostile_crowd_does_not_disturb_real_work(tmp_path: Path) -> None:
    """500 connections that never say WORKER_CONNECT and 200 that send garbage,
    while two real workers run 100 runs. The crowd comes from four addresses,
    each within the handshake budget per peer (256), all of them within the
    gateway's (1024): every one of its sockets gets in."""
    server = DevServer(tmp_path).start()
    workers = [start_worker(server, tmp_path, name=f"w{i}", instance_id=f"w{i}") for i in range(2)]
    try:
        for w in workers:
            wait_for_log(w, "worker state ACTIVE")
        endpoint = pb.StartResponse.FromString(dev_start(server).content).gateway_endpoint

        def source(i: int) -> tuple[str, int]:
            return (f"127.0.0.{2 + i % 4}", 0)

        async def idle(i: int) -> tuple[int | None, float]:
            t0 = time.monotonic()
            async with connect(endpoint, subprotocols=SUBPROTOCOLS, open_timeout=30, local_addr=source(i)) as ws:  # type: ignore[arg-type]
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 30)
                except ConnectionClosed:
                    pass
                return ws.close_code, time.monotonic() - t0

        async def garbage(i: int) -> int | None:
            async with connect(endpoint, subprotocols=SUBPROTOCOLS, open_timeout=30, local_addr=source(i)) as ws:  # type: ignore[arg-type]
                await ws.recv()
                await ws.send(os.urandom(16 + i % 64) if i % 2 else b"\x08\x05" + os.urandom(i % 32))
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 30)
                except ConnectionClosed:
                    pass
                return ws.close_code

        async def crowd() -> tuple[list[tuple[int | None, float]], list[int | None]]:
            idles = [asyncio.create_task(idle(i)) for i in range(500)]
            bad = [asyncio.create_task(garbage(i)) for i in range(200)]
            return await asyncio.gather(*idles), await asyncio.gather(*bad)

        result: dict[str, object] = {}
        t = threading.Thread(target=lambda: result.setdefault("r", asyncio.run(crowd())), daemon=True)
        t.start()
        ids_ = server.send([{"name": "e2e/three", "data": {"n": i}} for i in range(100)])
        runs = server.wait_runs(ids_, timeout=120)
        assert [r["status"] for r in runs] == ["Completed"] * 100
        t.join(90)
        idles, bad = result["r"]  # type: ignore[misc]
        assert {code for code, _ in idles} == {1008}  # connect_worker_hello_timeout
        assert all(4.0 <= elapsed < 20.0 for _, elapsed in idles)
        assert set(bad) <= {1007, 1008}
    finally:
        for w in workers:
            w.stop()
        server.stop()


def test_step_output_over_the_limit_fails_the_step_not_the_connection(tmp_path: Path) -> None:
    server = DevServer(tmp_path).start()
    worker = start_worker(server, tmp_path)
    try:
        wait_for_log(worker, "worker state ACTIVE")
        (eid,) = server.send([{"name": "e2e/huge", "data": {"bytes": 5 * 1024 * 1024}}])
        (run,) = server.wait_runs([eid], timeout=60)
        assert run["status"] == "Failed"
        assert "output_too_large" in json.dumps(run["output"]) or "the limit is" in json.dumps(run["output"])
        (ok,) = server.wait_runs(server.send([{"name": "e2e/three", "data": {"n": 2}}]), timeout=60)
        assert ok["status"] == "Completed"
        assert worker.output().count("worker connected:") == 1  # the connection survived
    finally:
        worker.stop()
        server.stop()
