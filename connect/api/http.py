"""uvicorn's HTTP protocol, with each response's status line and headers
written together with its first body bytes.

uvicorn writes a response's status line and headers as soon as the app
starts the response, then the body in a second write: two syscalls, two TCP
segments, and a client that wakes for the headers only to wait for the body.
Here the headers are held back until the body's first bytes and leave with
them in one write. A response whose body does not follow in the same turn of
the event loop (a stream that waits for data) gets its headers at the end of
that turn, so holding them never delays anything by more than one turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class OneWriteHttpProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` whose responses write their headers with the body."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = getattr(self, "cycle", None)
        if cycle is not None and not isinstance(cycle.transport, HeldHeaders):
            cycle.transport = HeldHeaders(cycle.transport, self.loop)


class HeldHeaders:
    """A transport for one response: its first write (the status line and
    headers) waits for the next one, or for the end of the loop's turn."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        if self._first:
            self._first = False
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        held, self._held = self._held, None
        self._transport.write(held + data if held is not None else data)

    def flush(self) -> None:
        """Write the held headers, if they are still held."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
