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
    from connect.worker.link import WorkerWebSocket

    assert issubclass(GatewayWebSocket, BatchingConnection)
    assert issubclass(WorkerWebSocket, BatchingConnection)


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
        await _until(lambda: ws._queued == 2)
        ws.on_binary = got.append  # set while two messages wait for recv()
        await client.send(b"3")
        await _until(lambda: ws._queued == 3)
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


# --- back-pressure -------------------------------------------------------------------------


async def _stalled_reader_scenario(script: Any) -> Any:
    """Run `script(server_ws, client)`: a real client that reads nothing until told to
    (its queue of one message fills, then the kernel's buffers, then the server's transport)."""
    server_side: asyncio.Future[GatewayWebSocket] = asyncio.get_running_loop().create_future()

    async def handler(ws: GatewayWebSocket) -> None:
        server_side.set_result(ws)
        await ws.wait_closed()

    async with serve(
        handler, "127.0.0.1", 0, create_connection=GatewayWebSocket, compression=None, write_limit=64 * 1024
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", compression=None, max_queue=1, max_size=None) as client:
            ws = await asyncio.wait_for(server_side, 10)
            return await asyncio.wait_for(script(ws, client), 60)


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.001)


_CHUNK = b"p" * (256 * 1024)


async def _fill(ws: GatewayWebSocket) -> int:
    """Send now until the transport is over its write limit; the number of frames sent."""
    sent = 0
    while ws.writable_now():
        ws.send_frames_now([_CHUNK])
        sent += 1
        await asyncio.sleep(0)  # let the kernel take what it will
    return sent


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_send_frames_waits_while_the_peer_does_not_read_and_ends_when_it_does(run: Any) -> None:
    async def script(ws: GatewayWebSocket, client: Any) -> Any:
        sent = await _fill(ws)
        sending = asyncio.ensure_future(ws.send_frames([b"last"]))
        await asyncio.sleep(0)
        waited = not sending.done() and not ws.writable_now()
        received = [await client.recv() for _ in range(sent + 1)]
        await asyncio.wait_for(sending, 30)
        return sent, waited, received, ws.writable_now()

    sent, waited, received, writable = run(_stalled_reader_scenario(script))
    assert sent >= 1
    assert waited
    assert received == [_CHUNK] * sent + [b"last"]
    assert writable


def test_send_frames_raises_connection_closed_when_the_connection_is_lost_while_it_waits() -> None:
    async def script(ws: GatewayWebSocket, client: Any) -> Any:
        await _fill(ws)
        sending = asyncio.ensure_future(ws.send_frames([b"never read"]))
        await asyncio.sleep(0)
        assert not sending.done()
        client.transport.abort()  # the peer vanishes without a close frame
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(sending, 30)
        return closed.value

    closed = uvloop.run(_stalled_reader_scenario(script))
    assert closed.rcvd is None


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_messages_from_the_peer_arrive_through_recv_in_order(run: Any) -> None:
    async def script(ws: GatewayWebSocket, client: Any) -> Any:
        await client.send(b"one")
        await client.send("text")
        await client.send([b"frag", b"mented"])
        await client.send(b"two")
        return [await ws.recv() for _ in range(4)]

    assert run(_stalled_reader_scenario(script)) == [b"one", "text", b"fragmented", b"two"]


def test_the_module_reads_no_private_state_of_websockets() -> None:
    """What the module touches of websockets is its documented API, and `process_event`,
    the hook its asyncio connection calls for subclasses with each parsed event (see the
    module's docstring; pinned and tested at both ends of the declared range).
    Introspecting its parser or its private attributes is how it once broke on a release
    it declared."""
    import ast
    import inspect

    import connect.websocket

    tree = ast.parse(inspect.getsource(connect.websocket))
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    private = {
        "parser", "gi_yieldfrom", "gi_code", "__code__", "recv_messages", "send_in_progress", "send_context",
        "writes", "paused", "current_size", "max_fragment_size", "max_message_size", "expect_continuation_frame",
        "reader", "transport", "protocol", "send_data", "masks",
    }  # fmt: skip
    assert attributes & private == set()


@pytest.mark.parametrize("length", [0, 1, 125, 126, 300, 65535, 65536, 70000])
def test_frame_headers_are_the_ones_websockets_writes(length: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    expected = Frame(Opcode.BINARY, payload).serialize(mask=False)
    assert frame_header(0x82, length, 0) + payload == expected


def test_the_worker_side_sends_masked_frames_a_server_reads() -> None:
    from connect.worker.link import WorkerWebSocket

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
                f"ws://127.0.0.1:{port}/", compression=None, create_connection=WorkerWebSocket
            ) as client:
                assert isinstance(client, WorkerWebSocket) and client.writable_now()
                client.send_frames_now(messages[:2])
                await client.send_frames(messages[2:])
                await asyncio.wait_for(done.wait(), 10)
        return received

    assert uvloop.run(main()) == messages
