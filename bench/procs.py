"""Child processes of a benchmark: started in their own session, always reaped.

Every child gets its own process group (so `stop()` also ends what it forks,
e.g. Celery's prefork pool), dies with its parent (PR_SET_PDEATHSIG on
Linux), and carries `BENCH_RUN_TOKEN` in its environment so that
`reap_marked()` can find and end any process a crashed scenario left behind,
by pid, never by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import resource
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
TOKEN_VAR = "BENCH_RUN_TOKEN"
_PR_SET_PDEATHSIG = 1


def run_token() -> str:
    """The token of this benchmark run (inherited, or made here once)."""
    token = os.environ.get(TOKEN_VAR)
    if not token:
        token = uuid.uuid4().hex
        os.environ[TOKEN_VAR] = token
    return token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def _die_with_parent() -> None:
    os.setsid()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Child:
    """One child process (and its group) with its output in a log file."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_dir: Path,
        *,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
        stdin_pipe: bool = False,
        cwd: Path | None = None,
        user: pwd.struct_passwd | None = None,
    ) -> None:
        """`stdin_pipe`: `write()` feeds the child's stdin. `user` runs it as
        that user (PostgreSQL refuses to run as root)."""
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        full_env = dict(os.environ)
        full_env[TOKEN_VAR] = run_token()
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            list(args),
            cwd=cwd or ROOT,
            env=full_env,
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            # The user is switched before preexec_fn runs, so the parent-death
            # signal set there is not cleared by the credential change.
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
            preexec_fn=_die_with_parent,  # the parent starts no threads before it forks
        )
        self._buf = b""
        self.ps = psutil.Process(self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def write(self, data: bytes) -> None:
        """Write to the child's stdin (`stdin_pipe=True`) and flush."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    def readline(self, timeout: float) -> str | None:
        """Next stdout line (stdout_pipe=True); None at EOF or timeout.

        Reads the pipe's file descriptor directly: a buffered reader would
        hold lines that select() no longer reports, and phase marks must be
        seen when they are printed."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                if self._buf:
                    line, self._buf = self._buf, b""
                    return line.decode(errors="replace")
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode(errors="replace") + "\n"

    def expect(self, prefix: str, timeout: float) -> str:
        """Read stdout lines until one starts with `prefix`; return the rest of it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            line = self.readline(max(0.0, left))
            if line is None:
                raise RuntimeError(f"{self.name}: no {prefix!r} line (exit={self.popen.poll()}); see {self.log_path}")
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
            self._log.write(line.encode())
            self._log.flush()

    def cpu_seconds(self) -> float:
        """User+system CPU of the process and its live children."""
        total = 0.0
        with contextlib.suppress(psutil.Error):
            t = self.ps.cpu_times()
            total += t.user + t.system
            for child in self.ps.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    ct = child.cpu_times()
                    total += ct.user + ct.system
        return total

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def send_signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 10.0, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """Signal the process, wait `grace`, then kill its whole group."""
        if self.alive():
            self.send_signal(sig)
            self.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        code = self.wait(10)
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()
        return code

    def tail(self, chars: int = 3000) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class Children:
    """Owns several children; `close()` stops all of them, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._all: list[Child] = []

    def start(self, name: str, args: Sequence[str], **kw: object) -> Child:
        child = Child(name, args, self.log_dir, **kw)  # type: ignore[arg-type]
        self._all.append(child)
        return child

    def close(self) -> None:
        for child in reversed(self._all):
            with contextlib.suppress(Exception):
                child.stop(grace=5.0)
        self._all.clear()

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def reap_marked(token: str, exclude: set[int] | None = None) -> list[int]:
    """Kill every process that carries this run's token (but us and `exclude`)."""
    me = os.getpid()
    skip = {me, *(exclude or set())}
    killed: list[int] = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid in skip:
            continue
        try:
            if proc.environ().get(TOKEN_VAR) == token:
                proc.kill()
                killed.append(proc.pid)
        except psutil.Error:
            continue
    return killed


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def install_stop_handlers(cleanup: Callable[[], None]) -> None:
    """SIGTERM/SIGINT run `cleanup` and exit, so an orchestrator's timeout
    still stops every child this scenario started."""

    def handler(signum: int, _frame: object) -> None:
        cleanup()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
