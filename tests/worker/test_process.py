"""`connect worker` leaves the user's process as the user set it up: Python's
garbage-collector thresholds, no busy polling, and a normal exit that runs
the `atexit` hooks after a clean SIGTERM."""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from connect import Client, cli
from tests.e2e.harness import DevServer, Proc, start_worker, wait_for_log, wait_until

TARGET = "tests.worker.process_app:client"
#: The worker's settings come from its flags here, not from the test runner's environment.
GC_ENV = "CONNECT_RAISE_GC_THRESHOLDS"
CLEAN_ENV = {"CONNECT_POLL_WINDOW_MS": "", GC_ENV: ""}


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevServer]:
    server = DevServer(tmp_path).start()
    yield server
    server.stop()


def _worker(dev: DevServer, tmp: Path, name: str, *extra: str, env: dict[str, str] | None = None) -> Proc:
    proc = start_worker(dev, tmp, name=name, target=TARGET, env={**CLEAN_ENV, **(env or {})}, extra_args=extra)
    wait_for_log(proc, "worker state ACTIVE")
    return proc


def _gc_of_a_run(dev: DevServer) -> tuple[int, ...]:
    (eid,) = dev.send([{"name": "process/settings"}])
    (run,) = dev.wait_runs([eid], timeout=60)
    assert run["status"] == "Completed", run
    return tuple(run["output"]["gc"])


def test_worker_keeps_pythons_gc_thresholds_and_does_not_poll_unless_asked(dev: DevServer, tmp_path: Path) -> None:
    w = _worker(dev, tmp_path, "plain", env={"CONNECT_LOG_LEVEL": "debug"})
    try:
        assert _gc_of_a_run(dev) == gc.get_threshold() != cli.GC_THRESHOLDS  # Python's defaults, here and there
        assert "poll window off" in w.output()
    finally:
        w.stop()


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--raise-gc-thresholds", "--poll-window-ms", "1"], {"CONNECT_LOG_LEVEL": "debug"}),
        ([], {GC_ENV: "1", "CONNECT_POLL_WINDOW_MS": "1", "CONNECT_LOG_LEVEL": "debug"}),
    ],
    ids=["flags", "environment"],
)
def test_worker_raises_gc_thresholds_and_polls_when_asked(
    dev: DevServer, tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    w = _worker(dev, tmp_path, "tuned", *args, env=env)
    try:
        assert _gc_of_a_run(dev) == cli.GC_THRESHOLDS
        assert "poll window up to 1 ms" in w.output()
    finally:
        w.stop()


def test_sigterm_exits_zero_after_running_the_users_atexit_hooks(dev: DevServer, tmp_path: Path) -> None:
    report = tmp_path / "atexit.txt"
    w = _worker(dev, tmp_path, "exiting", env={"ATEXIT_REPORT": str(report)})
    try:
        w.signal(signal.SIGTERM)
        assert w.wait(60) == 0, w.output()[-3000:]
        assert report.read_text() == "atexit hooks ran\n"
        assert "worker exited (code 0)" in w.output()
    finally:
        w.stop()


def test_the_drain_deadline_still_bounds_the_exit(dev: DevServer, tmp_path: Path) -> None:
    """Past the drain deadline the process leaves at once with 1, not waiting for the step."""
    w = _worker(dev, tmp_path, "stuck", "--drain-timeout", "1")
    try:
        dev.send([{"name": "process/hang"}])
        wait_for_log(w, "hang started")
        w.signal(signal.SIGTERM)
        assert w.wait(60) == 1, w.output()[-3000:]
        assert "abandoning 1 requests" in w.output()
    finally:
        w.stop()


@pytest.mark.anyio
async def test_connect_in_code_does_not_poll_by_default(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connect.worker import connect
    from tests.worker.process_app import client

    monkeypatch.delenv("CONNECT_POLL_WINDOW_MS", raising=False)
    caplog.set_level(logging.DEBUG, logger="connect.worker")
    gone = Client(app_id="process-app", api_base_url="http://127.0.0.1:9")  # nobody answers: it keeps retrying
    conn = await connect([(gone, list(client.functions))], handle_shutdown_signals=(), wait_active=False)
    try:
        wait_until(lambda: "poll window" in caplog.text, 30, "the connection thread to start")
        assert "poll window off" in caplog.text
    finally:
        await conn.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
