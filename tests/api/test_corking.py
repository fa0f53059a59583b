"""`CorkedTransport` behind the guard: an answer's status line and headers leave
in the same write as its body; a body that is not ready in the same turn of
the event loop does not hold the headers back.

A real uvicorn server on a real socket, served with the protocol `connect
dev` uses; the writes each connection makes are recorded on their way to the
real transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from connect.api import corking
from connect.api.framing import HttpLimits
from tests.api.guarded_server import guarded_server

pytestmark = pytest.mark.anyio

RELEASE = asyncio.Event()


async def answer(request: Request) -> Response:
    return JSONResponse({"ids": ["a", "b"], "status": 200})


async def stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        await RELEASE.wait()
        yield b"later"

    return StreamingResponse(chunks(), media_type="text/plain")


APP = Starlette(routes=[Route("/answer", answer, methods=["GET", "POST"]), Route("/stream", stream)])


class Recording:
    """Passes every call to the real transport; keeps the bytes of each write."""

    def __init__(self, transport: Any, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, list[bytes]]]:
    writes: list[bytes] = []
    original = corking.CorkedTransport.__init__

    def recording(self: corking.CorkedTransport, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        original(self, Recording(transport, writes), loop)

    monkeypatch.setattr(corking.CorkedTransport, "__init__", recording)
    RELEASE.clear()
    async with guarded_server(APP, HttpLimits()) as port:
        try:
            yield f"http://127.0.0.1:{port}", writes
        finally:
            RELEASE.set()  # a stream still waiting ends before the server stops


async def test_an_answer_leaves_in_one_write(server: tuple[str, list[bytes]]) -> None:
    url, writes = server
    async with httpx.AsyncClient(base_url=url) as client:  # one keep-alive connection
        for method in ("GET", "POST", "GET"):
            writes.clear()
            resp = await client.request(method, "/answer", content=b"{}" if method == "POST" else None)
            assert (resp.status_code, resp.json()) == (200, {"ids": ["a", "b"], "status": 200})
            [write] = writes
            assert write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(b'{"ids":["a","b"],"status":200}')


async def test_headers_of_a_body_that_waits_are_not_held(server: tuple[str, list[bytes]]) -> None:
    url, writes = server
    async with httpx.AsyncClient(base_url=url) as client, client.stream("GET", "/stream") as resp:
        # The headers came while the body waits (for RELEASE): held for one turn of the loop at most.
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        assert not RELEASE.is_set()
        RELEASE.set()
        body = b"".join([chunk async for chunk in resp.aiter_bytes()])
    assert body == b"later"
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n")
    assert b"later" in writes[1]


async def test_a_client_that_leaves_while_the_body_waits_harms_nothing(server: tuple[str, list[bytes]]) -> None:
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    writer.close()
    await writer.wait_closed()
    RELEASE.set()
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/answer")).status_code == 200
