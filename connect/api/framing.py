"""Where each HTTP/1.1 request on a connection begins and ends, and what it may cost.

`RequestFraming` is a sans-I/O machine: it is fed the bytes a client sends
and the current time, and answers what to pass on to the parser, or why
the connection broke `HttpLimits`. It finds the end of each request head,
reads the body's framing from it (`Content-Length`, or `Transfer-Encoding:
chunked`, whose chunk sizes it follows) and so knows where the next request
starts, also when requests are pipelined. It keeps no more than one request
head (`max_header_bytes`, held back from the parser until complete) and one
chunk-size line; body bytes are counted, never kept. Parsing itself stays
the HTTP server's (uvicorn's httptools); this machine only decides what to
feed it.

Deadlines: a connection must complete a request head within
`header_timeout` of being opened, or of the first byte of its next request,
and a body within `body_timeout` of its head. Between requests (the
application at work, or an idle keep-alive connection) there is none here:
the server's keep-alive timeout closes idle connections.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, auto
from typing import NamedTuple

# Hex digits only (Python's int() would also take "0x", "_" and signs); 16 of them exceed any limit.
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")

#: The longest chunk-size line (size, extensions and CRLF) a chunked body may send.
MAX_CHUNK_LINE_BYTES = 4096


@dataclass(frozen=True)
class HttpLimits:
    """The bounds of one HTTP listener (see README, "Limits and defaults")."""

    #: Request line plus headers; past it 431.
    max_header_bytes: int = 16 * 1024
    #: Header lines in a request head; past it 431.
    max_header_fields: int = 100
    #: The largest body of a path `route_body_bytes` does not name; past it 413
    #: before the application sees the request.
    max_body_bytes: int = 64 * 1024
    #: Smaller limits for paths starting with a prefix (the first that matches): the
    #: guard answers those 413s itself, so the client can still read them.
    route_body_bytes: tuple[tuple[bytes, int], ...] = ()
    #: From the connection's opening, or the first byte of a request, to the end of its head; past it 408.
    header_timeout: float = 10.0
    #: From the end of a head to the end of its body; past it 408.
    body_timeout: float = 30.0
    #: An idle keep-alive connection is closed after this many seconds (uvicorn's `timeout_keep_alive`).
    keep_alive_timeout: int = 5
    #: Open connections on the listener; a new one past it is answered 503 and closed.
    max_connections: int = 4096
    #: How long a refused connection is still read (and discarded) so its client can read the answer.
    linger: float = 2.0


class Refusal(NamedTuple):
    """Why a connection is answered with an error and closed."""

    status: int
    message: str


class _Phase(Enum):
    HEAD = auto()
    LENGTH = auto()
    CHUNK_SIZE = auto()
    CHUNK_DATA = auto()
    CHUNK_END = auto()
    TRAILER = auto()


class RequestFraming:
    """The framing of the requests on one connection; see the module docstring.

    `receive` and `expired` return a `Refusal` once the connection broke a
    limit or the HTTP framing rules; the caller answers it and stops feeding
    the machine, whose state is then undefined. Memory: one request head
    (`max_header_bytes`) or one chunk-size line; body bytes are counted, never kept.
    """

    def __init__(self, limits: HttpLimits, now: float) -> None:
        self._limits = limits
        self._phase = _Phase.HEAD
        self._line = bytearray()  # the head, a chunk-size line or a trailer being received
        self._remaining = 0  # body bytes (LENGTH) or chunk bytes (CHUNK_DATA) still expected
        self._body_bytes = 0
        self._head_lines = 0  # line ends in the head being received
        self._max_body = limits.max_body_bytes
        self.deadline: float | None = now + limits.header_timeout
        self.requests = 0  # request heads completed

    @property
    def between_requests(self) -> bool:
        """True before a request's first byte (the connection is idle or its request is being answered)."""
        return self._phase is _Phase.HEAD and not self._line

    def expired(self, now: float) -> Refusal | None:
        if self.deadline is None or now < self.deadline:
            return None
        if self._phase is _Phase.HEAD:
            what = "request head" if self._line else "request"
            return Refusal(408, f"no complete {what} within {self._limits.header_timeout:g} s")
        return Refusal(408, f"request body not complete within {self._limits.body_timeout:g} s of its head")

    def receive(self, data: bytes, now: float) -> bytes | Refusal:
        """The bytes to pass on to the parser, or why the connection is refused.

        What is passed on is `data`, except that a request head is held back
        until it is complete: the parser never holds an incomplete head, so a
        slow or oversized one costs only this machine's copy of it.
        """
        pos, end = 0, len(data)
        start = 0  # data[start:] is passed on, unless held
        passed: list[bytes] = []
        while pos < end:
            phase = self._phase
            if phase is _Phase.HEAD:
                if not self._line:
                    # Empty lines before a request line are allowed (RFC 9112, 2.2).
                    while pos < end and data[pos] in b"\r\n":
                        pos += 1
                    if pos == end:
                        break
                    if self.deadline is None:
                        self.deadline = now + self._limits.header_timeout
                head_start = pos
                pos, refusal, released = self._receive_head(data, pos, now)
                if refusal is None:
                    if released is not None:  # a held head is complete: it goes first
                        passed.append(released)
                        start = pos
                    elif self._line:  # the head is incomplete: it waits
                        passed.append(data[start:head_start])
                        start = end
            elif phase is _Phase.LENGTH or phase is _Phase.CHUNK_DATA:
                taken = min(self._remaining, end - pos)
                pos += taken
                self._remaining -= taken
                if self._remaining == 0:
                    if phase is _Phase.LENGTH:
                        self._request_done()
                    else:
                        self._phase = _Phase.CHUNK_END
                refusal = None
            else:
                pos, line = self._take_line(data, pos)
                if line is None:
                    refusal = self._line_too_long()
                else:
                    refusal = self._chunk_line(line)
            if refusal is not None:
                return refusal
        if not passed:
            return data if start == 0 else data[start:]
        passed.append(data[start:])
        return b"".join(passed)

    def _receive_head(self, data: bytes, pos: int, now: float) -> tuple[int, Refusal | None, bytes | None]:
        """Consume head bytes from `data[pos:]`; a complete head starts its body. The
        third value is a head that was held and is now complete, to be passed on."""
        limit = self._limits.max_header_bytes
        before = len(self._line)
        if before:
            # No more than can still belong to a head within the limit, plus one byte to see it exceeded.
            taken = data[pos : pos + limit + 1 - before]
            self._line += taken
            self._head_lines += taken.count(b"\n")
            end = _head_end(self._line, max(0, before - 3))
            if 0 <= end <= limit:
                head = bytes(self._line[:end])
                self._line.clear()
                self._head_lines = 0
                return pos + end - before, self._start_head(head, now), head
        else:
            # The common case, a whole head in one read: nothing is copied.
            end = _head_end(data, pos)
            if 0 <= end - pos <= limit:
                return end, self._start_head(data[pos:end], now), None
            if end < 0:
                self._line += data[pos : pos + limit + 1]
                self._head_lines = self._line.count(b"\n")
        if end >= 0 or len(self._line) > limit:
            return len(data), Refusal(431, f"request head larger than {limit} bytes"), None
        # Every line ended so far but the request line is a header line.
        return len(data), self._count_fields(self._head_lines - 1), None

    def _count_fields(self, fields: int) -> Refusal | None:
        # Many tiny header lines cost far more as the parser's objects than as bytes.
        if fields > self._limits.max_header_fields:
            return Refusal(431, f"request head has more than {self._limits.max_header_fields} header lines")
        return None

    def _start_head(self, head: bytes, now: float) -> Refusal | None:
        self.requests += 1
        # A complete head's lines: the request line, the header lines and the blank line that ends it.
        return self._count_fields(head.count(b"\n") - 2) or self._start_body(head, now)

    def _start_body(self, head: bytes, now: float) -> Refusal | None:
        lower = head.lower()
        lengths = _header_values(lower, b"\ncontent-length:")
        codings = [c for c in _header_values(lower, b"\ntransfer-encoding:") if c]
        if codings:
            self._max_body = self._body_limit(head)
            if lengths:
                # A request that can be framed two ways is how requests are smuggled (RFC 9112, 6.3).
                return Refusal(400, "Content-Length and Transfer-Encoding together")
            if codings[-1] != b"chunked":
                return Refusal(400, "a request's Transfer-Encoding must end with chunked")
            self._phase = _Phase.CHUNK_SIZE
            self._body_bytes = 0
            self.deadline = now + self._limits.body_timeout
            return None
        self._max_body = self._body_limit(head)
        if lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit():
                return Refusal(400, "invalid Content-Length")
            size = int(lengths[0])
            if size > self._max_body:
                return Refusal(413, f"request body is {size} bytes; the limit is {self._max_body}")
            if size > 0:
                self._phase = _Phase.LENGTH
                self._remaining = size
                self.deadline = now + self._limits.body_timeout
                return None
        self._request_done()
        return None

    def _body_limit(self, head: bytes) -> int:
        routes = self._limits.route_body_bytes
        if routes:
            target = head.split(b" ", 2)[1] if head.count(b" ", 0, head.find(b"\n")) >= 2 else b""
            for prefix, limit in routes:
                if target.startswith(prefix):
                    return limit
        return self._limits.max_body_bytes

    def _take_line(self, data: bytes, pos: int) -> tuple[int, bytes | None]:
        """Bytes up to a line end, once the line is complete; None past the line limit."""
        cap = MAX_CHUNK_LINE_BYTES if self._phase is not _Phase.TRAILER else self._limits.max_header_bytes
        newline = data.find(b"\n", pos)
        stop = len(data) if newline < 0 else newline + 1
        self._line += data[pos : min(stop, pos + cap + 1 - len(self._line))]
        if len(self._line) > cap:
            return len(data), None
        if newline < 0:
            return len(data), b""  # incomplete: nothing to act on yet
        line = bytes(self._line).rstrip(b"\r\n")
        self._line.clear()
        return stop, line + b"\n"  # the trailing marker says "complete", also for an empty line

    def _line_too_long(self) -> Refusal:
        if self._phase is _Phase.TRAILER:
            return Refusal(431, f"request trailers larger than {self._limits.max_header_bytes} bytes")
        return Refusal(400, f"chunk size line longer than {MAX_CHUNK_LINE_BYTES} bytes")

    def _chunk_line(self, marked: bytes) -> Refusal | None:
        if not marked:
            return None  # the line is not complete yet
        line = marked[:-1]
        phase = self._phase
        if phase is _Phase.CHUNK_END:
            if line:
                return Refusal(400, "chunk data longer than its size")
            self._phase = _Phase.CHUNK_SIZE
            return None
        if phase is _Phase.TRAILER:
            if not line:
                self._request_done()
            return None
        size_text = line.split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            return Refusal(400, "invalid chunk size")
        size = int(size_text, 16)
        self._body_bytes += size
        if self._body_bytes > self._max_body:
            return Refusal(413, f"request body larger than {self._max_body} bytes")
        if size == 0:
            self._phase = _Phase.TRAILER
        else:
            self._phase = _Phase.CHUNK_DATA
            self._remaining = size
        return None

    def _request_done(self) -> None:
        self._phase = _Phase.HEAD
        self.deadline = None


def _head_end(buffer: bytes | bytearray, start: int) -> int:
    """The index just past the blank line that ends a head, or -1."""
    crlf = buffer.find(b"\r\n\r\n", start)
    # A bare LF also ends a line; look for it only before the first CRLF CRLF.
    lf = buffer.find(b"\n\n", start, crlf + 4 if crlf >= 0 else len(buffer))
    if lf >= 0 and (crlf < 0 or lf + 2 < crlf + 4):
        return lf + 2
    return crlf + 4 if crlf >= 0 else -1


def _header_values(lower_head: bytes, name: bytes) -> list[bytes]:
    """The comma-separated values of every header `name` (lower case, with its colon) in the head."""
    values: list[bytes] = []
    at = lower_head.find(name)
    while at >= 0:
        start = at + len(name)
        end = lower_head.find(b"\n", start)
        values.extend(v.strip() for v in lower_head[start:end].split(b","))
        at = lower_head.find(name, end)
    return values
