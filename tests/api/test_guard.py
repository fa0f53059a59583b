"""`guarded_http`: a real uvicorn server on a real socket, held to small limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connect.api.framing import HttpLimits
from tests.api.guarded_server import guarded_server

pytestmark = pytest.mark.anyio

LIMITS = HttpLimits(
    max_header_bytes=4096,
    max_body_bytes=10_000,
    header_timeout=1.0,
    body_timeout=1.0,
    keep_alive_timeout=1,
    max_connections=4,
    linger=1.0,
)


async def echo(request: Request) -> Response:
    return JSONResponse({"bytes": len(await request.body())})


APP = Starlette(routes=[Route("/echo", echo, methods=["GET", "POST"])])


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async with guarded_server(APP, LIMITS) as port:
        yield port


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], dict[str, object]]:
    """Status, headers and JSON body of one answer; the connection must then be closed."""
    async with asyncio.timeout(30):
        raw = await reader.read(-1)  # up to EOF: a refusal closes the connection
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


async def test_requests_within_the_limits_pass_on_one_connection(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for size in (0, 10, 10_000):
            resp = await client.post("/echo", content=b"a" * size)
            assert resp.json() == {"bytes": size}

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"b" * 1000

        resp = await client.post("/echo", content=chunks())
        assert resp.json() == {"bytes": 10_000}


async def test_a_head_past_the_limit_is_answered_431_and_the_rest_is_never_parsed(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /echo HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 1_000_000)
    status, headers, body = await answer(reader)
    assert status == 431 and headers["connection"] == "close"
    assert body == {"status": 431, "error": "request head larger than 4096 bytes"}
    writer.close()


async def test_bodies_past_the_limit_are_413_declared_or_chunked(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 314572800\r\n\r\n")
    status, _, body = await answer(reader)
    assert (status, body["error"]) == (413, "request body is 314572800 bytes; the limit is 10000")
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
    for _ in range(20):
        writer.write(b"3e8\r\n" + b"c" * 1000 + b"\r\n")
    status, _, body = await answer(reader)
    assert (status, body["error"]) == (413, "request body larger than 10000 bytes")
    writer.close()


async def test_slow_heads_bodies_and_silent_connections_are_closed_at_their_deadline(port: int) -> None:
    silent = await asyncio.open_connection("127.0.0.1", port)
    trickle = await asyncio.open_connection("127.0.0.1", port)
    slow_body = await asyncio.open_connection("127.0.0.1", port)
    slow_body[1].write(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
    # The trickle's first byte goes out with the others' at once, so on a loaded
    # machine it is still a slow head, never a silent connection.
    trickle[1].write(b"G")

    async def trickling() -> None:
        for byte in b"ET /echo HTTP/1.1\r\nhost: x\r\n" * 10:
            if trickle[1].is_closing():
                return
            trickle[1].write(bytes([byte]))
            await asyncio.sleep(0.05)

    feeding = asyncio.create_task(trickling())
    assert (await answer(silent[0]))[2] == {"status": 408, "error": "no complete request within 1 s"}
    assert (await answer(trickle[0]))[2] == {"status": 408, "error": "no complete request head within 1 s"}
    assert (await answer(slow_body[0]))[2] == {
        "status": 408,
        "error": "request body not complete within 1 s of its head",
    }
    feeding.cancel()
    for _, writer in (silent, trickle, slow_body):
        writer.close()


async def test_connections_past_the_cap_are_answered_503_and_a_slot_frees_when_one_closes(port: int) -> None:
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMITS.max_connections)]
    # The server has accepted them all once each answers a request.
    for reader, writer in held:
        writer.write(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
        async with asyncio.timeout(30):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    status, _, body = await answer(reader)
    assert (status, body["error"]) == (503, "too many open connections (the limit is 4)")
    writer.close()
    held[0][1].close()
    async with asyncio.timeout(30):
        while True:
            async with httpx.AsyncClient() as client:
                try:
                    resp = await client.get(f"http://127.0.0.1:{port}/echo")
                except httpx.TransportError:
                    resp = None
            if resp is not None and resp.status_code == 200:
                break
            await asyncio.sleep(0.05)
    for _, w in held[1:]:
        w.close()


async def test_an_idle_keep_alive_connection_is_closed(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /echo HTTP/1.1\r\nhost: x\r\n\r\n")
    async with asyncio.timeout(30):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await reader.readexactly(len(b'{"bytes":0}'))
        assert await reader.read(-1) == b""  # closed by the server, with nothing more said
    writer.close()
