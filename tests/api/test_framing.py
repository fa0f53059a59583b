"""`RequestFraming`, driven directly: where requests end, and every limit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connect.api.framing import MAX_CHUNK_LINE_BYTES, HttpLimits, Refusal, RequestFraming

LIMITS = HttpLimits(max_header_bytes=1024, max_body_bytes=100, header_timeout=10, body_timeout=30)


def post(body: bytes, *, chunked: bool = False, extra: bytes = b"") -> bytes:
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:3], body[3:]) if part)
        head = b"POST /e/k HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n" + extra + b"\r\n"
        return head + framed + b"0\r\n\r\n"
    return b"POST /e/k HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n" % len(body) + extra + b"\r\n" + body


def feed(data: bytes, cuts: list[int] = (), limits: HttpLimits = LIMITS) -> tuple[RequestFraming, Refusal | None]:
    """Feed `data` in reads cut at `cuts`; a stream that is not refused must be passed on whole."""
    framing = RequestFraming(limits, now=0.0)
    start = 0
    passed = b""
    for cut in [*sorted(cuts), len(data)]:
        result = framing.receive(data[start:cut], now=1.0)
        if isinstance(result, Refusal):
            return framing, result
        passed += result
        start = cut
    if framing.between_requests:
        assert passed == data
    else:  # an incomplete head is held back, nothing else
        assert data.startswith(passed)
    return framing, None


def test_pipelined_requests_of_every_framing_are_counted_and_end_between_requests() -> None:
    get = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
    stream = b"\r\n" + post(b"hello world") + get + post(b"abcdefgh", chunked=True)
    framing, refusal = feed(stream)
    assert refusal is None
    assert framing.requests == 3 and framing.between_requests and framing.deadline is None


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=100),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_any_split_of_the_bytes_frames_the_same(body: bytes, chunked: bool, cuts: list[int]) -> None:
    stream = post(body, chunked=chunked) + post(b"x")
    framing, refusal = feed(stream, [c for c in cuts if c < len(stream)])
    assert refusal is None
    assert framing.requests == 2 and framing.between_requests


def test_a_head_past_the_limit_is_431_whether_it_comes_at_once_or_byte_by_byte() -> None:
    big = post(b"", extra=b"x-big: " + b"a" * 1100 + b"\r\n")
    assert feed(big)[1] == Refusal(431, "request head larger than 1024 bytes")
    assert feed(big, list(range(1, 1200)))[1] == Refusal(431, "request head larger than 1024 bytes")
    # A head that never ends is refused once it passes the limit, and no more of it is kept.
    framing = RequestFraming(LIMITS, now=0.0)
    assert framing.receive(b"GET / HTTP/1.1\r\nx: " + b"a" * 1000, now=0) == b""  # held back, incomplete
    assert framing.receive(b"a" * 10_000_000, now=0) == Refusal(431, "request head larger than 1024 bytes")


def test_a_head_exactly_at_the_limit_is_accepted() -> None:
    head = post(b"")
    exact = head[:-2] + b"x: " + b"a" * (1024 - len(head) - 5) + b"\r\n\r\n"
    assert len(exact) == 1024
    assert feed(exact)[1] is None
    assert feed(exact, [500, 1022])[1] is None


def test_a_declared_body_past_the_limit_is_413_before_any_of_it_arrives() -> None:
    refusal = feed(b"POST /e/k HTTP/1.1\r\ncontent-length: 314572800\r\n\r\n")[1]
    assert refusal == Refusal(413, "request body is 314572800 bytes; the limit is 100")


def test_a_chunked_body_is_413_once_its_chunks_pass_the_limit() -> None:
    framing = RequestFraming(LIMITS, now=0.0)
    head = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
    assert framing.receive(head, now=0) == head
    chunk = b"40\r\n" + b"a" * 64 + b"\r\n"
    assert framing.receive(chunk, now=0) == chunk
    assert framing.receive(b"40\r\n", now=0) == Refusal(413, "request body larger than 100 bytes")


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"content-length: 5\r\ntransfer-encoding: chunked\r\n", "Content-Length and Transfer-Encoding together"),
        (b"transfer-encoding: gzip\r\n", "a request's Transfer-Encoding must end with chunked"),
        (b"content-length: 5\r\ncontent-length: 6\r\n", "invalid Content-Length"),
        (b"content-length: -5\r\n", "invalid Content-Length"),
        (b"content-length: 0x5\r\n", "invalid Content-Length"),
    ],
)
def test_ambiguous_framing_is_400(head: bytes, message: str) -> None:
    assert feed(b"POST / HTTP/1.1\r\n" + head + b"\r\n")[1] == Refusal(400, message)


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        (b"zz\r\n", "invalid chunk size"),
        (b"-1\r\n", "invalid chunk size"),
        (b"0x10\r\n", "invalid chunk size"),
        (b"1_0\r\n", "invalid chunk size"),
        (b"\r\n", "invalid chunk size"),
        (b"3\r\nabcdef\r\n", "chunk data longer than its size"),
        (b"1;" + b"e" * MAX_CHUNK_LINE_BYTES + b"\r\n", f"chunk size line longer than {MAX_CHUNK_LINE_BYTES} bytes"),
    ],
)
def test_malformed_chunks_are_400(chunks: bytes, message: str) -> None:
    assert feed(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n" + chunks)[1] == Refusal(400, message)


def test_trailers_count_against_the_head_limit() -> None:
    stream = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-trailer: " + b"t" * 2000
    assert feed(stream)[1] == Refusal(431, "request trailers larger than 1024 bytes")
    framing, refusal = feed(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx-t: 1\r\n\r\n")
    assert refusal is None and framing.between_requests


def test_deadlines_head_from_opening_and_from_the_first_byte_body_from_the_head() -> None:
    framing = RequestFraming(LIMITS, now=100.0)
    assert framing.deadline == 110.0 and framing.expired(109.9) is None
    assert framing.expired(110.0) == Refusal(408, "no complete request within 10 s")

    framing = RequestFraming(LIMITS, now=100.0)
    assert framing.receive(b"POST / HTTP/1.1\r\ncontent-length: 10\r\n", now=105.0) == b""
    assert framing.expired(110.0) == Refusal(408, "no complete request head within 10 s")
    assert framing.receive(b"\r\n12345", now=106.0) == b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\n12345"
    assert framing.deadline == 136.0  # the body's deadline runs from its head
    assert framing.expired(136.0) == Refusal(408, "request body not complete within 30 s of its head")
    assert framing.receive(b"67890", now=107.0) == b"67890"
    # Between requests (the application at work, or keep-alive idle) there is no deadline here ...
    assert framing.deadline is None and framing.expired(10_000.0) is None
    # ... until the next request's first byte.
    assert framing.receive(b"GET", now=500.0) == b""
    assert framing.deadline == 510.0


def test_a_route_with_a_limit_of_its_own_is_held_to_it() -> None:
    limits = HttpLimits(max_body_bytes=10, route_body_bytes=((b"/e/", 50), (b"/v0/connect/flush", 80)))
    assert feed(post(b"a" * 50), limits=limits)[1] is None
    assert feed(post(b"a" * 51), limits=limits)[1] == Refusal(413, "request body is 51 bytes; the limit is 50")
    flush = b"POST /v0/connect/flush HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n51\r\n"
    assert feed(flush, limits=limits)[1] == Refusal(413, "request body larger than 80 bytes")
    other = b"POST /v1/runs/x/cancel HTTP/1.1\r\ncontent-length: 11\r\n\r\n"
    assert feed(other, limits=limits)[1] == Refusal(413, "request body is 11 bytes; the limit is 10")


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.binary(max_size=300), max_size=8),
    st.sampled_from([b"", b"POST /e/k HTTP/1.1\r\n", b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"]),
)
def test_any_bytes_get_a_verdict_and_nothing_else(reads: list[bytes], prefix: bytes) -> None:
    framing = RequestFraming(LIMITS, now=0.0)
    for data in [prefix, *reads]:
        result = framing.receive(data, now=1.0)
        if isinstance(result, Refusal):
            assert result.status in (400, 413, 431) and result.message
            return
        assert isinstance(result, bytes) and len(result) <= len(data) + LIMITS.max_header_bytes


def test_a_head_of_too_many_header_lines_is_431_at_once_or_as_they_come() -> None:
    limits = HttpLimits(max_header_fields=3)
    head = b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n"
    assert feed(head + b"\r\n", limits=limits)[1] is None
    assert feed(head + b"\r\n", list(range(1, len(head))), limits=limits)[1] is None
    refusal = Refusal(431, "request head has more than 3 header lines")
    assert feed(head + b"d: 4\r\n\r\n", limits=limits)[1] == refusal
    assert feed(head + b"d: 4\r\ne", [3], limits=limits)[1] == refusal
