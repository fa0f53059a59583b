"""`BatchingConnection` (gateway and worker): frames queued together leave in one write, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from connect.gateway.connection import GatewayWebSocket
from connect.websocket import BatchingConnection


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
    frames = [b"a" * 40, b"b" * 300, b"c" * 5000]
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
