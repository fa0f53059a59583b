"""`connect dev` composes every role; a start that cannot bind one of its
ports stops the roles already started and exits 1 with the reason."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, free_port


@pytest.mark.parametrize("taken_by", ["API", "gateway"])
def test_a_taken_port_exits_1_naming_it(tmp_path: Path, taken_by: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = (port, free_port()) if taken_by == "API" else (free_port(), port)
        args = ["--port", str(ports[0]), "--gateway-port", str(ports[1]), "--db", str(tmp_path / "dev.db")]
        done = subprocess.run(
            [sys.executable, "-m", "connect", "dev", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1
    assert "address already in use" in done.stderr
    assert f"{taken_by} could not start on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
