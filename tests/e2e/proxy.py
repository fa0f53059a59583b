"""TCP proxies between a client (a worker, an event sender) and the server: one that cuts the
socket once, one that cuts every connection and refuses new ones until told otherwise (or
silences the live ones, leaving them open)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


class _ThreadedProxy:
    """A listener on a free local port, served by an event loop on a thread of its own."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> int:
        self._thread.start()
        self._ready.wait(10)
        return self.port

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class CuttingProxy(_ThreadedProxy):
    """Forwards bytes both ways. The first time `should_cut()` is true when a
    chunk arrives from the client (or, with `cut_answers`, from the server),
    that chunk is dropped and both sides of the connection are closed at once
    (as if the network failed). Later connections pass through untouched."""

    def __init__(self, target_port: int, should_cut: Callable[[], bool], *, cut_answers: bool = False) -> None:
        super().__init__(target_port)
        self.should_cut = should_cut
        self.cut_answers = cut_answers
        self.cuts = 0
        self.connections = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        done = asyncio.Event()

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, from_worker: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    if from_worker != self.cut_answers and self.cuts == 0 and self.should_cut():
                        self.cuts += 1
                        break
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                done.set()

        tasks = [
            asyncio.create_task(pump(reader, up_writer, True)),
            asyncio.create_task(pump(up_reader, writer, False)),
        ]
        await done.wait()
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.transport.abort()


class BlockingProxy(_ThreadedProxy):
    """Forwards bytes both ways to `target_port`. `cut()` drops every live
    connection at once (as a network failure would: no close frame, no FIN
    handshake) and closes new ones as they arrive, until `restore()`."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self._blocked = False
        self._live: set[asyncio.Transport] = set()

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set(True), self._loop).result(10)

    def restore(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set(False), self._loop).result(10)

    def freeze(self) -> None:
        """Forward nothing more on the live connections, both ways, and leave
        them open (a link gone silent: no reset, no FIN); new ones pass."""
        asyncio.run_coroutine_threadsafe(self._freeze(), self._loop).result(10)

    async def _freeze(self) -> None:
        for transport in list(self._live):
            transport.pause_reading()  # kept: `cut` still drops them

    async def _set(self, blocked: bool) -> None:
        self._blocked = blocked
        if blocked:
            for transport in list(self._live):
                transport.abort()
            self._live.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        ends = [writer.transport, up_writer.transport]
        self._live.update(ends)  # type: ignore[arg-type]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()

        try:
            await asyncio.wait(
                [asyncio.create_task(pump(reader, up_writer)), asyncio.create_task(pump(up_reader, writer))],
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for transport in ends:
                self._live.discard(transport)  # type: ignore[arg-type]
                with contextlib.suppress(Exception):
                    transport.abort()
