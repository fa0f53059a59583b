"""`BatchingConnection` (gateway and worker): frames queued together leave in one write, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from connect.gateway.connection import GatewayWebSocket
from connect.websocket import BatchingConnection, frame_header


class _CountingTransport:
    """The real transport, with its write calls counted."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.writes: list[tuple[str, int]] = []

    def write(self, data: bytes) -> None:
        self.writes.append(("write", 1))
        self._inner.write(data)

    def writelines(self, chunks: Any) -> None:
        chunks = list(chunks)
        self.writes.append(("writelines", len(chunks)))
        self._inner.writelines(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Counted(GatewayWebSocket):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_CountingTransport(transport))  # type: ignore[arg-type]


async def _exchange(
    frames: list[bytes], *, client_closes_first: bool = False, now: bool = False
) -> tuple[list[bytes], Any]:
    outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    client_gone = asyncio.Event()

    async def handler(ws: GatewayWebSocket) -> None:
        assert isinstance(ws.transport, _CountingTransport)
        if client_closes_first:
            await client_gone.wait()
            await ws.wait_closed()
        ws.transport.writes.clear()
        if now:
            if not ws.writable_now():
                outcome.set_result("not writable")
                return
            ws.send_frames_now(frames)
        else:
            try:
                await ws.send_frames(frames)
            except ConnectionClosed as exc:
                outcome.set_result(exc)
                return
        outcome.set_result(list(ws.transport.writes))
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, create_connection=_Counted, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        received: list[bytes] = []
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as client:
            if client_closes_first:
                await client.close()
                client_gone.set()
            else:
                for _ in frames:
                    message = await asyncio.wait_for(client.recv(), 10)
                    assert isinstance(message, bytes)
                    received.append(message)
        return received, await asyncio.wait_for(outcome, 10)


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_queued_frames_leave_in_one_write_in_order(run: Any) -> None:
    frames = [b"a" * 40, b"b" * 300, b"c" * 70000]  # lengths in all three encodings
    received, writes = run(_exchange(frames))
    assert received == frames
    assert writes == [("writelines", 3)]


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_frames_sent_now_leave_in_one_write_in_order(run: Any) -> None:
    frames = [b"a" * 40, b"b" * 300]
    received, writes = run(_exchange(frames, now=True))
    assert received == frames
    assert writes == [("writelines", 2)]


def test_a_closed_connection_is_not_writable_now() -> None:
    _, outcome = uvloop.run(_exchange([b"late"], client_closes_first=True, now=True))
    assert outcome == "not writable"


def test_both_sides_use_it() -> None:
    from connect.worker.connection import _WorkerWebSocket

    assert issubclass(GatewayWebSocket, BatchingConnection)
    assert issubclass(_WorkerWebSocket, BatchingConnection)


def test_a_single_frame_is_one_write() -> None:
    received, writes = uvloop.run(_exchange([b"x" * 300]))
    assert received == [b"x" * 300]
    assert writes == [("writelines", 1)]


def test_sending_on_a_closed_connection_raises_connection_closed() -> None:
    _, outcome = uvloop.run(_exchange([b"late"], client_closes_first=True))
    assert isinstance(outcome, ConnectionClosed)


# --- receiving: `on_binary` ---------------------------------------------------------------


async def _receive_scenario(script: Any) -> Any:
    """Run `script(server_ws, client, signal)` with a real server and client;
    `signal` is an asyncio.Event the server side sets to let the client go on."""
    result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    server_side: asyncio.Future[GatewayWebSocket] = asyncio.get_running_loop().create_future()

    async def handler(ws: GatewayWebSocket) -> None:
        server_side.set_result(ws)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, create_connection=GatewayWebSocket, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as client:
            ws = await asyncio.wait_for(server_side, 10)
            result.set_result(await asyncio.wait_for(script(ws, client), 10))
    return result.result()


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_binary_messages_go_to_on_binary_and_the_rest_to_recv(run: Any) -> None:
    async def script(ws: GatewayWebSocket, client: Any) -> Any:
        got: list[bytes] = []
        ws.on_binary = got.append
        await client.send(b"one")
        await client.send(b"two")
        await _until(lambda: len(got) == 2)
        await client.send("text")
        text = await ws.recv()
        await client.send([b"frag", b"mented"])  # a fragmented message
        fragmented = await ws.recv()
        await client.send(b"three")
        await _until(lambda: len(got) == 3)
        return got, text, fragmented

    got, text, fragmented = run(_receive_scenario(script))
    assert got == [b"one", b"two", b"three"]
    assert text == "text"
    assert fragmented == b"fragmented"


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_messages_waiting_for_recv_are_not_overtaken(run: Any) -> None:
    async def script(ws: GatewayWebSocket, client: Any) -> Any:
        got: list[bytes] = []
        await client.send(b"1")
        await client.send(b"2")
        await _until(lambda: len(ws.recv_messages.frames) == 2)
        ws.on_binary = got.append  # set while two messages wait for recv()
        await client.send(b"3")
        await _until(lambda: len(ws.recv_messages.frames) == 3)
        early = got[:]
        received = [await ws.recv() for _ in range(3)]
        await client.send(b"4")  # nothing waits any more: straight to the callback
        await _until(lambda: len(got) == 1)
        return early, received, got

    early, received, got = run(_receive_scenario(script))
    assert early == []
    assert received == [b"1", b"2", b"3"]
    assert got == [b"4"]


def test_a_failing_on_binary_closes_the_connection_with_1011() -> None:
    async def script(ws: GatewayWebSocket, client: Any) -> Any:
        def boom(data: bytes) -> None:
            raise RuntimeError("handler bug")

        ws.on_binary = boom
        await client.send(b"x")
        with pytest.raises(ConnectionClosed) as client_side:
            await client.recv()
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        return client_side.value.rcvd

    rcvd = uvloop.run(_receive_scenario(script))
    assert rcvd is not None and rcvd.code == 1011


# --- receiving: frames split by BatchingConnection while `on_binary` is set ------------------


def _masked(payload: bytes, opcode: Opcode = Opcode.BINARY, *, fin: bool = True) -> bytes:
    """A frame as a client sends it (masked)."""
    return Frame(opcode, payload, fin).serialize(mask=True)


class _Counting(GatewayWebSocket):
    """Counts the frames websockets' own parser produced."""

    parsed = 0

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame):  # not the handshake's request
            self.parsed += 1
        super().process_event(event)


async def _scenario(script: Any, **serve_options: Any) -> Any:
    server_side: asyncio.Future[GatewayWebSocket] = asyncio.get_running_loop().create_future()

    async def handler(ws: GatewayWebSocket) -> None:
        server_side.set_result(ws)
        await ws.wait_closed()

    options = {"create_connection": _Counting, "compression": None, **serve_options}
    async with serve(handler, "127.0.0.1", 0, **options) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as client:
            ws = await asyncio.wait_for(server_side, 10)
            return await asyncio.wait_for(script(ws, client, port), 10)


def test_final_binary_frames_skip_the_websockets_parser() -> None:
    async def script(ws: _Counting, client: Any, _port: int) -> Any:
        got: list[bytes] = []
        ws.on_binary = got.append
        for message in (b"one", b"two" * 100, b"three" * 20000):
            await client.send(message)
        await _until(lambda: len(got) == 3)
        parsed_binary = ws.parsed
        await client.send("text")
        return got, parsed_binary, await ws.recv(), ws.parsed

    got, parsed_binary, text, parsed = uvloop.run(_scenario(script))
    assert got == [b"one", b"two" * 100, b"three" * 20000]
    assert parsed_binary == 0
    assert (text, parsed) == ("text", 1)


def _chunkings(stream: bytes) -> list[list[bytes]]:
    sizes = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233]
    cycled, pos, i = [], 0, 0
    while pos < len(stream):
        cycled.append(stream[pos : pos + sizes[i % len(sizes)]])
        pos, i = pos + sizes[i % len(sizes)], i + 1
    return [[stream], [stream[i : i + 1] for i in range(len(stream))], cycled]


@pytest.mark.parametrize("chunking", [0, 1, 2], ids=["whole", "byte-by-byte", "uneven"])
def test_any_chunking_gives_the_same_messages_in_order(chunking: int) -> None:
    """Lengths in all three encodings, a ping, text and a fragmented message
    between binary ones, cut at every possible point."""
    big = bytes(range(256)) * 300  # 76,800 bytes: a 64-bit length
    stream = b"".join(
        [
            _masked(b"a"),
            _masked(b"m" * 300),  # a 16-bit length
            _masked(big),
            _masked(b"are you there", Opcode.PING),
            _masked(b"text", Opcode.TEXT),
            _masked(b"frag", fin=False),
            _masked(b"mented", Opcode.CONT),
            _masked(b"z"),
        ]
    )

    async def script(ws: _Counting, client: Any, _port: int) -> Any:
        got: list[bytes] = []
        ws.on_binary = got.append
        for chunk in _chunkings(stream)[chunking]:
            ws.data_received(chunk)  # the transport's own callback, with chosen cuts
        await _until(lambda: len(got) == 3)
        others = [await ws.recv() for _ in range(3)]
        return got, others, ws.parsed, ws.protocol.state

    got, others, parsed, state = uvloop.run(_scenario(script))
    assert got == [b"a", b"m" * 300, big]
    # The last binary message waits behind the text and the fragmented one, which wait for recv().
    assert others == ["text", b"fragmented", b"z"]
    assert parsed == 5  # the ping, the text, the two fragments and the binary message behind them
    assert state is State.OPEN


def test_an_unmasked_frame_from_a_client_fails_the_connection_with_1002() -> None:
    async def script(ws: _Counting, client: Any, _port: int) -> Any:
        got: list[bytes] = []
        ws.on_binary = got.append
        ws.data_received(_masked(b"ok") + Frame(Opcode.BINARY, b"bare").serialize(mask=False))
        with pytest.raises(ConnectionClosed):
            await client.recv()
        return got, ws.protocol.close_sent

    got, close_sent = uvloop.run(_scenario(script))
    assert got == [b"ok"]
    assert close_sent is not None and close_sent.code == 1002


def test_a_frame_over_the_size_limit_fails_from_its_header_with_1009() -> None:
    async def script(ws: _Counting, client: Any, _port: int) -> Any:
        ws.on_binary = lambda data: None
        header = _masked(b"x" * 5000)[:8]  # the header alone: 126, length, mask
        ws.data_received(header)
        with pytest.raises(ConnectionClosed):
            await client.recv()
        return ws.protocol.close_sent

    close_sent = uvloop.run(_scenario(script, max_size=1000))
    assert close_sent is not None and close_sent.code == 1009


def test_a_stream_that_ends_inside_a_frame_closes_abnormally() -> None:
    async def script(ws: _Counting, client: Any, port: int) -> Any:
        got: list[bytes] = []
        ws.on_binary = got.append
        ws.data_received(_masked(b"whole") + _masked(b"half of it")[:7])
        ws.eof_received()
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        return got, closed.value

    got, closed = uvloop.run(_scenario(script))
    assert got == [b"whole"]
    assert closed.rcvd is None  # no close frame: the stream was cut inside a frame
    assert isinstance(closed.__cause__, EOFError) and "stream ends after" in str(closed.__cause__)


def test_the_worker_side_splits_unmasked_frames_and_refuses_masked_ones_with_1002() -> None:
    from connect.worker.connection import _WorkerWebSocket

    async def main() -> Any:
        async def handler(ws: Any) -> None:
            await ws.wait_closed()

        async with serve(handler, "127.0.0.1", 0, compression=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            async with connect(
                f"ws://127.0.0.1:{port}/", compression=None, create_connection=_WorkerWebSocket
            ) as client:
                assert isinstance(client, _WorkerWebSocket)
                got: list[bytes] = []
                client.on_binary = got.append
                unmasked = b"".join(Frame(Opcode.BINARY, m).serialize(mask=False) for m in (b"one", b"two" * 200))
                for i in range(len(unmasked)):
                    client.data_received(unmasked[i : i + 1])
                client.data_received(_masked(b"from a server, masked"))
                await _until(lambda: client.protocol.close_sent is not None)
                return got, client.protocol.close_sent

    got, close_sent = uvloop.run(main())
    assert got == [b"one", b"two" * 200]
    assert close_sent.code == 1002


@pytest.mark.parametrize("length", [0, 1, 125, 126, 300, 65535, 65536, 70000])
def test_frame_headers_are_the_ones_websockets_writes(length: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    expected = Frame(Opcode.BINARY, payload).serialize(mask=False)
    assert frame_header(0x82, length, 0) + payload == expected


def test_the_worker_side_sends_masked_frames_a_server_reads() -> None:
    from connect.worker.connection import _WorkerWebSocket

    messages = [b"", b"x" * 125, b"y" * 300, b"z" * 70000]

    async def main() -> list[bytes]:
        received: list[bytes] = []
        done = asyncio.Event()

        async def handler(ws: Any) -> None:
            async for message in ws:  # websockets' own server parser checks the masking
                received.append(message)
                if len(received) == len(messages):
                    done.set()

        async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            async with connect(
                f"ws://127.0.0.1:{port}/", compression=None, create_connection=_WorkerWebSocket
            ) as client:
                assert isinstance(client, _WorkerWebSocket) and client.writable_now()
                client.send_frames_now(messages[:2])
                await client.send_frames(messages[2:])
                await asyncio.wait_for(done.wait(), 10)
        return received

    assert uvloop.run(main()) == messages
