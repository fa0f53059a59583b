"""`read_body`: a route's limit, by the declared length or as the body streams,
and a connection that ends before its body does; driven through raw ASGI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connect.api.bodies import BodyRefused, read_body

pytestmark = pytest.mark.anyio


async def route(request: Request) -> Response:
    try:
        body = await read_body(request, 10, "test body")
    except BodyRefused as exc:
        return exc.response
    return JSONResponse({"bytes": len(body)})


APP = Starlette(routes=[Route("/", route, methods=["POST"])])


async def call(headers: list[tuple[bytes, bytes]], messages: list[dict[str, Any]]) -> tuple[int, dict[str, Any], dict]:
    sent: list[dict[str, Any]] = []
    pending = list(messages)
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    await APP(scope, receive, send)
    head = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], head, {"body": json.loads(sent[1]["body"]), "reads": received}


async def test_within_the_limit_the_body_is_read() -> None:
    status, _, out = await call([], [{"type": "http.request", "body": b"0123456789", "more_body": False}])
    assert (status, out["body"]) == (200, {"bytes": 10})


async def test_a_declared_length_past_the_limit_is_413_before_reading() -> None:
    status, head, out = await call([(b"content-length", b"11")], [])
    assert (status, out["body"]["error"], out["reads"]) == (413, "test body is 11 bytes; the limit is 10", 0)
    assert head["connection"] == "close"


async def test_a_streamed_body_is_read_up_to_the_limit_only() -> None:
    chunks = [{"type": "http.request", "body": b"123456", "more_body": True} for _ in range(100)]
    status, _, out = await call([], chunks)
    assert (status, out["body"]["error"], out["reads"]) == (413, "test body is larger than the limit of 10 bytes", 2)


async def test_a_connection_that_ends_before_its_body_is_400_not_an_error() -> None:
    status, _, out = await call([], [{"type": "http.request", "body": b"12", "more_body": True}])
    assert (status, out["body"]["error"]) == (400, "the connection ended before the test body was complete")
