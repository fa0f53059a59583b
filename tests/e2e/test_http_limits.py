"""HTTP input limits of a real `connect dev` / `connect serve` process, with real
sockets: heads, bodies, deadlines and event shapes. Memory is read from the
process's peak resident size (VmHWM), so a transient spike counts too."""

from __future__ import annotations

import json
import select
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connect.api.events import MAX_EVENT_DEPTH
from connect.gateway.auth import hash_signing_key
from tests.e2e.harness import DevServer, start_worker, wait_for_log

MiB = 1024 * 1024
#: What one attack may add to the platform's peak memory (it added 170 to 700 MiB when input was read whole).
FLAT = 16 * MiB
SIGNING_KEY = "signkey-test-00112233445566778899aabbccddeeff"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("http-limits")).start()
    yield server
    server.stop()


def peak_rss(server: DevServer) -> int:
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def answer_of(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Read one answer up to the end of its body (the refusals close the connection)."""
    sock.settimeout(30)
    raw = b""
    while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < _length(raw):
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body[: _length(raw)])


def _length(raw: bytes) -> int:
    for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def offer(server: DevServer, first: bytes, filler: bytes, total: int, last: bytes) -> tuple[int, dict[str, Any], int]:
    """Send `first`, then `filler` up to `total` bytes, then `last`, stopping as soon
    as the server answers; return the answer and how many bytes went out."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sent = 0
    try:
        sock.sendall(first)
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # answered: a client reads its answer instead of sending on
            try:
                sock.sendall(filler)
            except OSError:
                break
            sent += len(filler)
        else:
            sock.sendall(last)
        status, body = answer_of(sock)
        return status, body, sent
    finally:
        sock.close()


def test_a_100_mib_header_is_431_and_memory_stays_flat(dev: DevServer) -> None:
    before = peak_rss(dev)
    status, body, sent = offer(dev, b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: ", b"a" * MiB, 100 * MiB, b"\r\n\r\n")
    assert (status, body) == (431, {"status": 431, "error": "request head larger than 16384 bytes"})
    assert sent < 100 * MiB
    assert peak_rss(dev) - before < FLAT
    assert httpx.get(f"{dev.url}/health").status_code == 200


def test_a_300_mib_body_is_413_by_its_length_or_as_it_streams_and_memory_stays_flat(dev: DevServer) -> None:
    before = peak_rss(dev)
    head = b"POST /e/dev HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    # Declared: refused from the head alone, before a byte of the body is read.
    status, body, _ = offer(dev, head + b"content-length: %d\r\n\r\n" % (300 * MiB), b"", 0, b"")
    assert (status, body["error"]) == (413, f"request body is {300 * MiB} bytes; the limit is {3 * MiB}")

    # Streamed (chunked), four at once: each is read up to the limit only.
    chunk = b"%x\r\n%s\r\n" % (MiB, b"a" * MiB)
    results: list[tuple[int, dict[str, Any], int]] = []

    def stream() -> None:
        results.append(offer(dev, head + b"transfer-encoding: chunked\r\n\r\n", chunk, 150 * MiB, b"0\r\n\r\n"))

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [(status, body["error"]) for status, body, _ in results] == [
        (413, f"request body larger than {3 * MiB} bytes")
    ] * 4
    assert all(sent < 150 * MiB for _, _, sent in results)
    assert peak_rss(dev) - before < FLAT


def test_silent_and_trickling_connections_are_closed_after_the_header_deadline(dev: DevServer) -> None:
    before = peak_rss(dev)
    silent = [socket.create_connection(("127.0.0.1", dev.port)) for _ in range(1000)]
    tricklers = [socket.create_connection(("127.0.0.1", dev.port)) for _ in range(200)]
    line = b"GET /health HTTP/1.1\r\nhost: x\r\n" + b"x-slow: 1\r\n" * 20
    open_ones = set(silent + tricklers)
    watch = selectors.DefaultSelector()  # select() cannot watch descriptors past 1023
    for sock in open_ones:
        watch.register(sock, selectors.EVENT_READ)
    answers: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + 60
    sent = 0
    while open_ones and time.monotonic() < deadline:
        for sock in tricklers:
            if sock in open_ones:
                try:
                    sock.send(line[sent : sent + 1])
                except OSError:
                    pass
        sent += 1
        for key, _ in watch.select(0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            answers[sock] = answers.get(sock, b"") + data
            if not data:
                open_ones.discard(sock)
                watch.unregister(sock)
        # The platform keeps serving others meanwhile.
        assert httpx.get(f"{dev.url}/health", timeout=30).status_code == 200
    watch.close()
    for sock in silent + tricklers:
        sock.close()
    assert not open_ones, f"{len(open_ones)} connections still open after 60 s"
    assert {answers[s].split(b"\r\n", 1)[0] for s in silent + tricklers} == {b"HTTP/1.1 408 Request Timeout"}
    assert all(b"no complete request within 10 s" in answers[s] for s in silent)
    assert all(b"no complete request head within 10 s" in answers[s] for s in tricklers)
    assert peak_rss(dev) - before < FLAT


TOO_DEEP = f"nested deeper than {MAX_EVENT_DEPTH} levels"


def nested(depth: int) -> str:
    return "[" * (depth - 1) + "{}" + "]" * (depth - 1)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('{"name": "e2e/deep", "data": {"a": ' + nested(9000) + "}}", TOO_DEEP),
        ('{"name": "e2e/deep", "data": {"a": ' + nested(MAX_EVENT_DEPTH) + "}}", TOO_DEEP),
        ('{"name": "e2e/deep", "ts": 18446744073709551616}', "ts 18446744073709551616 is not milliseconds"),
        ('{"name": "e2e/deep", "ts": -1}', "ts -1 is not milliseconds"),
        ('{"name": "e2e/deep", "data": {"n": 18446744073709551616}}', "outside the 64-bit range"),
        ('{"name": "e2e/deep", "data": {"n": -9223372036854775809}}', "outside the 64-bit range"),
    ],
)
def test_events_no_worker_could_decode_are_400_with_the_reason(dev: DevServer, body: str, error: str) -> None:
    resp = httpx.post(f"{dev.url}/e/dev", content=body, timeout=30)
    assert resp.status_code == 400 and resp.headers["content-type"] == "application/json"
    assert error in resp.json()["error"]


def test_the_deepest_event_accepted_runs_to_completion_on_a_worker(dev: DevServer, tmp_path: Path) -> None:
    worker = start_worker(dev, tmp_path, target="tests.e2e.deep_app:client")
    try:
        wait_for_log(worker, "worker state ACTIVE")
        data = {"a": json.loads(nested(MAX_EVENT_DEPTH - 1)), "big": 2**64 - 1, "small": -(2**63)}
        resp = httpx.post(f"{dev.url}/e/dev", json={"name": "e2e/deep", "data": data, "ts": 2**53 - 1}, timeout=30)
        assert resp.status_code == 200, resp.text
        [run] = dev.wait_runs(resp.json()["ids"])
        assert (run["status"], run["output"]) == ("Completed", data)
    finally:
        worker.stop()


def test_under_serve_a_200_mib_header_without_credentials_is_431_before_auth(tmp_path: Path) -> None:
    server = DevServer(
        tmp_path, command="serve", extra=["--signing-key", SIGNING_KEY, "--event-key", "ek"], event_key="ek"
    ).start()
    try:
        before = peak_rss(server)
        head = b"GET /v1/runs/x HTTP/1.1\r\nhost: x\r\nx: "
        status, body, _ = offer(server, head, b"a" * MiB, 200 * MiB, b"\r\n\r\n")
        assert (status, body["error"]) == (431, "request head larger than 16384 bytes")
        assert peak_rss(server) - before < FLAT
        # Within the limits, auth decides as before.
        assert httpx.get(f"{server.url}/v1/runs/x").status_code == 401
        bearer = {"Authorization": f"Bearer {hash_signing_key(SIGNING_KEY)}"}
        assert httpx.get(f"{server.url}/v1/runs/x", headers=bearer).status_code == 404
    finally:
        server.stop()
