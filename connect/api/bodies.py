"""Reading a request body within a route's limit.

A body is refused by its `Content-Length` before any of it is read, and a
body without one (chunked) is read only up to the limit: memory per request
is the limit, whatever the client sends. The refusal closes the connection,
so the rest of a refused body is never read.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse


class BodyTooLarge(Exception):
    """The body is larger than the route accepts; `response` is its 413."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.response = JSONResponse(
            {"status": 413, "error": message}, status_code=413, headers={"connection": "close"}
        )


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """The request's body; `BodyTooLarge` past `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"{what} is {int(declared)} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"{what} is larger than the limit of {limit} bytes")
    return bytes(body)
