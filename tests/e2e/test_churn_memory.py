"""Memory of a real `connect dev` under connection churn: connections that
upgrade, never send WORKER_CONNECT and are closed by the handshake timeout,
and peers that vanish in the middle of their upgrade request.

The platform raises the cyclic collector's thresholds (`connect.cli.GC_THRESHOLDS`),
so whatever such a connection leaves in a reference cycle piles up for a long
time; what reference counting frees keeps the process flat."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

from tests.e2e.harness import DevServer

UPGRADE = (
    "GET /v0/connect HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: v0.connect.inngest.com\r\n\r\n"
)
CLOSE_FRAME = 0x88


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def silent_worker(port: int, answer_close: bool) -> None:
    """Upgrade, stay silent until the gateway closes (1008 hello timeout), then
    either answer the close frame or just drop the socket (a vanished peer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(UPGRADE.format(key=key).encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        while True:  # GATEWAY_HELLO, then the close frame
            first = await reader.readexactly(2)
            length = first[1] & 0x7F
            if length == 126:
                length = int.from_bytes(await reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await reader.readexactly(8), "big")
            payload = await reader.readexactly(length)
            if first[0] & 0x0F == CLOSE_FRAME & 0x0F:
                break
        if answer_close:
            mask = os.urandom(4)
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload[:2]))
            writer.write(bytes([CLOSE_FRAME, 0x80 | len(masked)]) + mask + masked)
            await writer.drain()
            await reader.read()  # the gateway closes the TCP connection
    finally:
        writer.close()


async def vanishing_peer(port: int) -> None:
    """Half an upgrade request, then gone."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(UPGRADE.format(key="x")[:40].encode())
    await writer.drain()
    writer.close()


async def churn(port: int, count: int, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            if i % 3 == 2:
                await vanishing_peer(port)
            else:
                await silent_worker(port, answer_close=i % 3 == 0)

    await asyncio.gather(*(one(i) for i in range(count)))


def test_rss_plateaus_under_handshake_timeout_churn(tmp_path: Path) -> None:
    # A handshake timeout long enough for the connections' objects to outlive
    # a few young collections, as the default 5 s does, with many at once.
    server = DevServer(tmp_path, extra=["--handshake-timeout", "0.5"]).start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        for _ in range(2):  # warm-up: buffers, caches, allocator pools
            asyncio.run(churn(server.gateway_port, 1500, 200))
        before = rss_mib(pid)
        for _ in range(3):
            asyncio.run(churn(server.gateway_port, 1500, 200))
        after = rss_mib(pid)
        assert server.proc.popen.poll() is None
        # Cyclic garbage weighed about 3.5 KiB a connection (16 MiB over these
        # 4,500); without it the process stays within a few MiB.
        assert after - before < 6, f"RSS grew from {before:.1f} to {after:.1f} MiB over 4,500 connections"
    finally:
        server.stop()
