"""Buffered masking keys: the source alone, the frame encoder, and a real connection."""

from __future__ import annotations

import itertools
import os
import secrets

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosedOK, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from connect.worker import masking
from connect.worker.masking import MaskedClientConnection, MaskedClientProtocol, MaskSource, serialize_masked


def _counting_urandom(reads: list[int]) -> object:
    """A stand-in for os.urandom whose bytes are a running counter, so every
    byte it ever returned is distinct and its position is known."""
    counter = itertools.count()

    def urandom(n: int) -> bytes:
        reads.append(n)
        return b"".join(next(counter).to_bytes(4, "big") for _ in range(n // 4))

    return urandom


def test_keys_are_four_fresh_bytes_handed_out_once_across_refills(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    monkeypatch.setattr(masking.os, "urandom", _counting_urandom(reads))
    source = MaskSource(16)  # four keys per read
    keys = [source.take() for _ in range(10)]
    assert all(isinstance(k, bytes) and len(k) == 4 for k in keys)
    assert keys == [i.to_bytes(4, "big") for i in range(10)]  # in order, none skipped or repeated
    assert reads == [16, 16, 16]  # lazily refilled at each boundary, one read per four keys


def test_keys_come_from_the_os_and_differ() -> None:
    source = MaskSource()
    keys = [source.take() for _ in range(3 * masking.BUFFER_BYTES // 4)]  # three buffers
    assert all(len(k) == 4 for k in keys)
    # 3072 random 32-bit keys collide with probability ~1e-3; all-equal would be a bug.
    assert len(set(keys)) > len(keys) - 5


@pytest.mark.parametrize("size", [0, 3, 5, 4097])
def test_buffer_size_must_be_a_positive_multiple_of_four(size: int) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        MaskSource(size)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_reuse_the_parents_buffered_keys() -> None:
    source = MaskSource()
    source.take()  # the buffer now holds keys the parent will use next
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(wfd, source.take())
        os._exit(0)
    os.close(wfd)
    child_key = os.read(rfd, 4)
    os.close(rfd)
    os.waitpid(pid, 0)
    assert len(child_key) == 4
    assert child_key != source.take()


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70_000])
@pytest.mark.parametrize("opcode", [Opcode.BINARY, Opcode.TEXT])
def test_frames_match_websockets_own_encoding(monkeypatch: pytest.MonkeyPatch, length: int, opcode: Opcode) -> None:
    key = b"\x01\x82\x7f\xfe"
    data = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    if opcode is Opcode.TEXT:
        data = b"x" * length
    frame = Frame(opcode, data)
    ours = serialize_masked(frame, [], key)
    monkeypatch.setattr(secrets, "token_bytes", lambda n: key)
    assert ours == frame.serialize(mask=True)

    reader = StreamReader()
    reader.feed_data(ours)
    parser = Frame.parse(reader.read_exact, mask=True)
    with pytest.raises(StopIteration) as done:
        next(parser)
    assert done.value.value == frame


def test_control_frames_are_masked_too() -> None:
    out = serialize_masked(Frame(Opcode.PING, b"hi"), [], b"\xff\x00\x00\x00")
    assert out[0] == 0x80 | Opcode.PING and out[1] == 0x80 | 2 and out[2:6] == b"\xff\x00\x00\x00"
    assert out[6:] == bytes([ord("h") ^ 0xFF, ord("i")])
    with pytest.raises(ProtocolError, match="control frame"):
        serialize_masked(Frame(Opcode.CLOSE, b"x" * 200), [], b"\x00\x00\x00\x00")


@pytest.mark.anyio
async def test_a_real_connection_round_trips_masked_frames() -> None:
    """A websockets server refuses unmasked client frames (close 1002), so
    echoes of every size, a ping and a clean close prove the keys are used."""
    server_saw: list[bytes | str] = []
    closed_with: list[int | None] = []

    async def echo(conn: ServerConnection) -> None:
        try:
            async for message in conn:
                server_saw.append(message)
                await conn.send(message)
        finally:
            closed_with.append(conn.close_code)

    async with serve(echo, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await websockets.connect(
            f"ws://127.0.0.1:{port}",
            create_connection=MaskedClientConnection,
            compression=None,
            max_size=None,
        )
        assert isinstance(ws.protocol, MaskedClientProtocol)
        messages: list[bytes | str] = [b"", b"a", os.urandom(126), os.urandom(70_000), "text \u00e9"]
        # Well past one buffer of keys, so refills happen on the live connection.
        messages += [i.to_bytes(4, "big") for i in range(masking.BUFFER_BYTES // 4 + 10)]
        for message in messages:
            await ws.send(message)
            assert await ws.recv() == message
        pong = await ws.ping(b"p")
        await pong
        await ws.close()
        with pytest.raises(ConnectionClosedOK):
            await ws.recv()
        assert server_saw == messages
    assert closed_with == [1000]


@pytest.mark.anyio
async def test_other_connections_in_the_process_are_untouched() -> None:
    async def echo(conn: ServerConnection) -> None:
        async for message in conn:
            await conn.send(message)

    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with websockets.connect(f"ws://127.0.0.1:{port}") as plain:
            assert type(plain) is ClientConnection
            assert type(plain.protocol) is ClientProtocol
            await plain.send(b"x")
            assert await plain.recv() == b"x"
