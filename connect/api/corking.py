"""A transport that sends an answer's head together with its body.

uvicorn writes an answer's status line and headers, then its body: two
syscalls, two TCP segments, and a client woken for the headers only to wait
for the body. Given this transport, a write that is a response head (it
starts with `HTTP/` and ends with the blank line) is held until the next
write, which carries it, or until the end of the loop's turn if no body
follows in that turn (a stream waiting for data). Every other write goes
out at once, so nothing waits longer than one turn. It needs nothing of
the protocol but the `asyncio.Transport` interface.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CorkedTransport:
    """Wraps `transport`; `close` and `write_eof` write a held head first."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held + bytes(data))
        elif data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n":
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Write a held head, if any (and the connection is still open)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
