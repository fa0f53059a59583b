"""A TCP proxy between a client (a worker, an event sender) and the server that can cut the socket once."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


class CuttingProxy:
    """Forwards bytes both ways. The first time `should_cut()` is true when a
    chunk arrives from the client (or, with `cut_answers`, from the server),
    that chunk is dropped and both sides of the connection are closed at once
    (as if the network failed). Later connections pass through untouched."""

    def __init__(self, target_port: int, should_cut: Callable[[], bool], *, cut_answers: bool = False) -> None:
        self.target_port = target_port
        self.should_cut = should_cut
        self.cut_answers = cut_answers
        self.cuts = 0
        self.connections = 0
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
