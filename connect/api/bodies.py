"""Reading a request body within a route's limit.

A body is refused by its `Content-Length` before any of it is read, and a
body without one (chunked) is read only up to the limit: memory per request
is the limit, whatever the client sends. A 413 closes the connection, so
the rest of a refused body is never read.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse


class BodyRefused(Exception):
    """The body cannot be read; `response` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.response = JSONResponse(
            {"status": status, "error": message}, status_code=status, headers={"connection": "close"}
        )


async def read_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """The request's body; `BodyRefused` past `limit` bytes (413) or if the
    connection ends before the body does (the guard's body deadline, or the client left)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyRefused(413, f"{what} is {int(declared)} bytes; the limit is {limit}")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BodyRefused(413, f"{what} is larger than the limit of {limit} bytes")
    except ClientDisconnect:
        raise BodyRefused(400, f"the connection ended before the {what} was complete") from None
    return bytes(body)
