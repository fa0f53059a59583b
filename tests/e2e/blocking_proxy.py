"""A TCP proxy that can cut every connection and refuse new ones until told to let them through."""

from __future__ import annotations

import asyncio
import contextlib
import threading


class BlockingProxy:
    """Forwards bytes both ways to `target_port`. `cut()` drops every live
    connection at once (as a network failure would: no close frame, no FIN
    handshake) and closes new ones as they arrive, until `restore()`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._blocked = False
        self._live: set[asyncio.Transport] = set()
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

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set(True), self._loop).result(10)

    def restore(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set(False), self._loop).result(10)

    async def _set(self, blocked: bool) -> None:
        self._blocked = blocked
        if blocked:
            for transport in list(self._live):
                transport.abort()
            self._live.clear()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

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
