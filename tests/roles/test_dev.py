"""`connect dev` composes every role; a start that cannot bind one of its
ports stops the roles already started and exits 1 with the reason."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, free_port


@pytest.mark.parametrize(("taken_by", "flag"), [("the HTTP API", "--port"), ("the worker gateway", "--gateway-port")])
def test_a_taken_port_exits_1_naming_it(tmp_path: Path, taken_by: str, flag: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = (port, free_port()) if flag == "--port" else (free_port(), port)
        args = ["--port", str(ports[0]), "--gateway-port", str(ports[1]), "--db", str(tmp_path / "dev.db")]
        done = subprocess.run(
            [sys.executable, "-m", "connect", "dev", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1
    # One line naming the port, the flag that sets it, the cause and the fix.
    errors = [line for line in done.stderr.splitlines() if "in use" in line]
    assert errors == [
        f"connect dev: {taken_by} port {port} on 127.0.0.1 ({flag}) is already in use: "
        f"stop the process that holds it, or choose another port with {flag}"
    ]
    assert "ERROR" not in done.stderr
    assert "Traceback" not in done.stderr
