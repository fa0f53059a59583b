"""A completion side channel: the last step of a benchmark job sends one UDP datagram.

The driver of a closed-loop load needs to know when a job is (nearly) done
to start the next one, without polling the system under test. The last
step body of every benchmark function and task calls `notify(key)`, which
sends the key to the address in `BENCH_NOTIFY` (if set). The datagram leaves
before the result is stored, so it only paces the load; latencies are taken
from the timestamps the system itself stores.
"""

from __future__ import annotations

import os
import socket
import time

ENV = "BENCH_NOTIFY"
_sock: socket.socket | None = None
_addr: tuple[str, int] | None = None


def notify(key: object) -> None:
    global _sock, _addr
    if key is None:
        return
    if _addr is None:
        target = os.environ.get(ENV)
        if not target:
            return
        host, _, port = target.rpartition(":")
        _addr = (host, int(port))
        _sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    assert _sock is not None
    try:
        _sock.sendto(str(key).encode(), _addr)
    except OSError:
        pass  # the driver is gone; nothing to pace any more


class Listener:
    """The driver's end: a UDP socket on a free loopback port."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def poll(self, timeout: float) -> list[tuple[str, float]]:
        """Every key that arrived, waiting up to `timeout` for the first one."""
        out: list[tuple[str, float]] = []
        self.sock.settimeout(timeout if timeout > 0 else 0.0)
        try:
            data = self.sock.recv(256)
            out.append((data.decode(), time.time()))
        except (TimeoutError, BlockingIOError):
            return out
        self.sock.setblocking(False)
        while True:
            try:
                data = self.sock.recv(256)
            except BlockingIOError:
                return out
            out.append((data.decode(), time.time()))

    def close(self) -> None:
        self.sock.close()
