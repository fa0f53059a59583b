"""The one line a port that cannot be bound is reported with."""

from __future__ import annotations

import errno
import socket

from connect.binding import bind_failure, probe


def test_each_cause_names_its_fix() -> None:
    in_use = bind_failure("the HTTP API", "--port", "127.0.0.1", 8288, OSError(errno.EADDRINUSE, "in use"))
    assert in_use == (
        "the HTTP API port 8288 on 127.0.0.1 (--port) is already in use: "
        "stop the process that holds it, or choose another port with --port"
    )
    denied = bind_failure("the HTTP API", "--port", "0.0.0.0", 80, OSError(errno.EACCES, "denied"))
    assert denied.endswith("needs privileges this process lacks: choose a port above 1023 with --port")
    elsewhere = bind_failure(
        "the worker gateway", "--gateway-port", "10.9.9.9", 8289, OSError(errno.EADDRNOTAVAIL, "x")
    )
    assert elsewhere.endswith("10.9.9.9 is not an address of this machine: choose another with --host")


def test_the_probe_finds_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        found = probe("127.0.0.1", port)
        assert found is not None and found.errno == errno.EADDRINUSE
        assert "is already in use" in bind_failure("the HTTP API", "--port", "127.0.0.1", port)
    assert probe("127.0.0.1", port) is None
