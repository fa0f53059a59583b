"""`connect dev` composes every role; a start that cannot bind its API port
stops the roles already started and exits 1 with the reason."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.e2e.harness import ROOT, free_port


def test_a_taken_api_port_exits_1_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway_port = free_port()
        args = ["--port", str(port), "--gateway-port", str(gateway_port), "--db", str(tmp_path / "dev.db")]
        done = subprocess.run(
            [sys.executable, "-m", "connect", "dev", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1
    assert "address already in use" in done.stderr
    assert f"API could not start on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
