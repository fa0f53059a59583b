"""Real processes for end-to-end tests: `connect dev` and `connect worker`."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "ab")
        self.popen = subprocess.Popen(args, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


class _PortTaken(RuntimeError):
    """`connect dev` could not bind a port it was given."""


class DevServer:
    """`connect dev` on free ports with its own SQLite file, or on the
    PostgreSQL database `database_url` names."""

    def __init__(
        self,
        tmp: Path,
        db: Path | None = None,
        extra: Iterable[str] = (),
        command: str = "dev",
        headers: dict[str, str] | None = None,
        event_key: str = "test",
        database_url: str | None = None,
    ) -> None:
        self.tmp = tmp
        self.command = command
        self.headers = headers or {}
        self.event_key = event_key
        self.port = free_port()
        self.gateway_port = free_port()
        self.db = db or tmp / "connect.db"
        self.database_url = database_url
        self.extra = list(extra)
        self.proc: Proc | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.starts = 0

    def start(self) -> DevServer:
        """Start the server (again, on the same ports and file, after `stop`).

        A first start whose port was taken meanwhile (`free_port` only finds
        a port free at the moment it looks; an outgoing connection of any
        process may take it next) moves to new ports: nothing knows the old
        ones yet. A restart keeps its ports, which its workers know."""
        for _ in range(5):
            try:
                return self._start()
            except _PortTaken:
                assert self.proc is not None
                self.proc.stop()  # it has exited; this closes its log
                if self.starts > 1:
                    raise
                self.starts -= 1
                self.port, self.gateway_port = free_port(), free_port()
                self.url = f"http://127.0.0.1:{self.port}"
        raise RuntimeError("connect dev found its ports taken five times")

    def _start(self) -> DevServer:
        self.starts += 1
        args = [
            sys.executable,
            "-m",
            "connect",
            self.command,
            "--port",
            str(self.port),
            "--gateway-port",
            str(self.gateway_port),
            *(["--database-url", self.database_url] if self.database_url else ["--db", str(self.db)]),
            *self.extra,
        ]
        self.proc = Proc(args, dict(os.environ), self.tmp / f"dev-{self.starts}.log")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.popen.poll() is not None:
                output = self.proc.output()
                if "already in use" in output:
                    raise _PortTaken(output)
                raise RuntimeError(f"connect dev exited:\n{output}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"connect dev did not come up:\n{self.proc.output()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stop()

    # --- API helpers ---------------------------------------------------------

    def send(self, events: list[dict[str, Any]]) -> list[str]:
        resp = httpx.post(f"{self.url}/e/{self.event_key}", json=events, timeout=30)
        resp.raise_for_status()
        ids: list[str] = resp.json()["ids"]
        return ids

    def runs(self, event_id: str) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.url}/v1/events/{event_id}/runs", timeout=30, headers=self.headers)
        resp.raise_for_status()
        data: list[dict[str, Any]] = resp.json()["data"]
        return data

    def wait_runs(self, event_ids: list[str], *, timeout: float = 120.0, count: int = 1) -> list[dict[str, Any]]:
        """Wait until every event has `count` finished runs; return the runs."""
        deadline = time.monotonic() + timeout
        pending = list(event_ids)
        done: dict[str, list[dict[str, Any]]] = {}
        with httpx.Client(base_url=self.url, timeout=30, headers=self.headers) as http:
            while pending and time.monotonic() < deadline:
                still = []
                for eid in pending:
                    runs = http.get(f"/v1/events/{eid}/runs").json()["data"]
                    if len(runs) >= count and all(r["status"] != "Running" for r in runs):
                        done[eid] = runs
                    else:
                        still.append(eid)
                pending = still
                if pending:
                    time.sleep(0.2)
        if pending:
            raise AssertionError(f"{len(pending)} of {len(event_ids)} events still have unfinished runs")
        return [run for eid in event_ids for run in done[eid]]


def start_worker(
    dev: DevServer,
    tmp: Path,
    *,
    name: str = "worker",
    target: str = "tests.e2e.apps:client",
    instance_id: str | None = None,
    max_concurrency: int | None = None,
    env: dict[str, str] | None = None,
    extra_args: Iterable[str] = (),
) -> Proc:
    args = [sys.executable, "-m", "connect", "worker", target, *extra_args]
    if instance_id:
        args += ["--instance-id", instance_id]
    if max_concurrency:
        args += ["--max-worker-concurrency", str(max_concurrency)]
    full_env = dict(os.environ)
    full_env.update(
        {
            "CONNECT_API_URL": dev.url,
            "WORKER_NAME": name,
            "STEP_LOG": str(tmp / "steps.log"),
            "STARTED_LOG": str(tmp / "started.log"),
        }
    )
    full_env.update(env or {})
    return Proc(args, full_env, tmp / f"{name}.log")


def wait_for_log(proc: Proc, needle: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in proc.output():
            return
        if proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not seen in {proc.log_path}:\n{proc.output()[-3000:]}")


def complete_lines(path: Path) -> list[str]:
    """The non-blank lines a log file holds, leaving out a line still being written.

    Test workers append to these logs from other processes while tests read them, so the
    last line may be cut short; only lines that end in a newline are whole.
    """
    if not path.exists():
        return []
    text = path.read_text()
    return [line for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def started_steps(tmp: Path) -> list[tuple[str, str, str]]:
    """`(run_id, step, worker name)` for every step body that began."""
    rows = [line.split() for line in complete_lines(tmp / "started.log")]
    return [(r[0], r[1], r[2]) for r in rows]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return None


def step_counts(tmp: Path) -> collections.Counter[tuple[str, str]]:
    lines = [line.split() for line in complete_lines(tmp / "steps.log")]
    return collections.Counter((parts[0], parts[1]) for parts in lines)
