"""The asyncio shell that holds an HTTP listener to its `HttpLimits`.

`guarded_http(limits)` returns a protocol class for `uvicorn.Config(http=...)`.
Each connection's bytes go through a `RequestFraming` machine before they
reach uvicorn's own protocol (httptools), which parses them and runs the
application as usual; a request head reaches it only once complete. A
connection that breaks a limit is answered with a JSON error and
`Connection: close`, uvicorn sees none of its bytes after that, and what the
client still sends is read and discarded for `limits.linger` seconds (so the
client can read the answer instead of getting a reset) before the connection
closes. Memory per connection is bounded by one request head, whatever the
client sends.

uvicorn's protocol is used only through what uvicorn asks of any class
given as `Config(http=...)`: it is built with the keyword arguments uvicorn
passes to that class (`config`, `server_state`, `app_state`) and driven
through the `asyncio.Protocol` methods.
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from connect.api.corking import CorkedTransport
from connect.api.framing import HttpLimits, Refusal, RequestFraming


def refusal_response(refusal: Refusal) -> bytes:
    """The JSON error the application would answer, closing the connection."""
    body = json.dumps({"status": refusal.status, "error": refusal.message}).encode()
    return (
        f"HTTP/1.1 {refusal.status} {HTTPStatus(refusal.status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def guarded_http(limits: HttpLimits, inner: type[asyncio.Protocol] = HttpToolsProtocol) -> type[asyncio.Protocol]:
    """A protocol class for `uvicorn.Config(http=...)` that enforces `limits`
    on every connection of one listener (they share `max_connections`)."""
    open_connections: set[GuardedHttp] = set()

    class GuardedHttp(asyncio.Protocol):
        def __init__(self, **uvicorn_arguments: Any) -> None:
            self._inner = inner(**uvicorn_arguments)
            self._loop = asyncio.get_running_loop()
            self._transport: asyncio.Transport | None = None
            self._framing = RequestFraming(limits, self._loop.time())
            self._timer: asyncio.TimerHandle | None = None
            self._timer_at: float | None = None
            self._refused = False
            self._admitted = False
            self._corked: CorkedTransport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # uvloop's transports are not subclasses of asyncio.Transport, but implement it.
            self._transport = cast(asyncio.Transport, transport)
            if len(open_connections) >= limits.max_connections:
                self._refuse(Refusal(503, f"too many open connections (the limit is {limits.max_connections})"))
                return
            self._admitted = True
            open_connections.add(self)
            # uvicorn gets a corked transport: each answer leaves in one write.
            self._corked = CorkedTransport(self._transport, self._loop)
            self._inner.connection_made(cast(asyncio.Transport, self._corked))
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            passed = self._framing.receive(data, self._loop.time())
            if isinstance(passed, Refusal):
                self._refuse(passed)
                return
            if passed:
                self._inner.data_received(passed)
            self._arm()

        def eof_received(self) -> bool | None:
            if self._refused:
                return None  # close now: the client has read what it will read
            return self._inner.eof_received()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timer()
            if self._admitted:
                open_connections.discard(self)
                self._inner.connection_lost(exc)

        def pause_writing(self) -> None:
            if self._admitted:
                self._inner.pause_writing()

        def resume_writing(self) -> None:
            if self._admitted:
                self._inner.resume_writing()

        def _arm(self) -> None:
            deadline = self._framing.deadline
            if deadline == self._timer_at:
                return
            self._cancel_timer()
            if deadline is not None:
                self._timer = self._loop.call_at(deadline, self._on_deadline)
                self._timer_at = deadline

        def _cancel_timer(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._timer_at = None

        def _on_deadline(self) -> None:
            self._timer = self._timer_at = None
            refusal = self._framing.expired(self._loop.time())
            if refusal is not None:
                self._refuse(refusal)
            else:
                self._arm()

        def _refuse(self, refusal: Refusal) -> None:
            transport = self._transport
            assert transport is not None
            self._refused = True
            self._cancel_timer()
            if self._corked is not None:
                self._corked.flush()  # what uvicorn wrote so far goes first
            if transport.is_closing():
                return
            transport.write(refusal_response(refusal))
            if not transport.is_reading():
                transport.resume_reading()  # uvicorn may have paused it; the rest is discarded
            # Closing at once, with the client's bytes unread, would reset the
            # connection and could destroy the answer before the client reads it.
            self._timer = self._loop.call_later(limits.linger, transport.close)

    return GuardedHttp
