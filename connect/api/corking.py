"""A transport that joins the writes of one turn of the event loop into one.

uvicorn writes an answer's status line and headers, then its body: two
syscalls, two TCP segments, and a client woken for the headers only to wait
for the body. Given this transport, everything a protocol writes during one
turn of the loop leaves in one write at the end of that turn, so an answer
whose body is ready leaves whole, and nothing waits longer than the turn.
It needs nothing of the protocol but the `asyncio.Transport` interface.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CorkedTransport:
    """Wraps `transport`; `write` holds data until the end of the loop's turn,
    and `close` / `write_eof` write what is held first."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Write what is held, if anything (and the connection is still open)."""
        if not self._held:
            return
        held = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held = []
        if not self._transport.is_closing():
            self._transport.write(held)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
