"""A throwaway PostgreSQL server for tests, from Debian's `postgresql` package.

`PostgresServer.start()` runs `initdb` into a fresh temporary directory (trust
authentication, so no password is involved), starts the server with `pg_ctl`
on a free TCP port of 127.0.0.1 and on a unix socket in that directory, and
`stop()` stops it and deletes the directory. Every test database is created
fresh with `create_database`.

PostgreSQL refuses to run as root. When the tests run as root, the cluster
belongs to the `postgres` user that Debian's package creates, and the server
binaries run as that user (`subprocess`'s `user=`; no sudo or su involved).

A missing PostgreSQL fails the test that needs it with what to install:
tests never skip for want of it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Final

import pytest

INSTALL_HINT: Final = "install Debian's `postgresql` package (apt-get install postgresql)"

#: How long `pg_ctl` waits for the server to start or stop, in seconds.
PG_CTL_TIMEOUT: Final = 120


def find_bin_dir() -> Path:
    """The directory holding `initdb` and `pg_ctl`: the newest Debian
    `/usr/lib/postgresql/<version>/bin`, else wherever PATH finds `pg_ctl`."""
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if versions:
        return Path(versions[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    pytest.fail(f"PostgreSQL is needed by this test but initdb/pg_ctl were not found: {INSTALL_HINT}", pytrace=False)


def _server_user() -> pwd.struct_passwd | None:
    """The user to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(
            f"PostgreSQL refuses to run as root and there is no `postgres` user to run it as: {INSTALL_HINT}",
            pytrace=False,
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One cluster in a temporary directory; see the module docstring."""

    def __init__(self, *, fsync: bool = True) -> None:
        self.bin_dir = find_bin_dir()
        self.fsync = fsync
        self._user = _server_user()
        # Directly under the system temp dir: pytest's own temp dirs are
        # private to the user running the tests, so `postgres` could not enter them.
        self.dir = Path(tempfile.mkdtemp(prefix="connect-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = 0
        self._databases = 0
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)

    @property
    def socket_dir(self) -> Path:
        return self.dir

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        user = None if self._user is None else self._user.pw_uid
        group = None if self._user is None else self._user.pw_gid
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=PG_CTL_TIMEOUT + 30,
            check=False,
        )

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr or result.stdout}\n{log}")

    def start(self) -> None:
        # initdb --no-sync: the cluster is thrown away, so there is nothing to
        # keep across a power cut; the server itself runs with `fsync` as asked.
        self._check(
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ),
            "initdb",
        )
        options = f"-c listen_addresses=127.0.0.1 -k {self.dir} -c fsync={'on' if self.fsync else 'off'}"
        # A free port can be taken by someone else before the server binds it: try a few.
        for attempt in range(5):
            self.port = _free_port()
            started = self._run(
                "pg_ctl",
                "start",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(PG_CTL_TIMEOUT),
                "-o",
                f"-p {self.port} {options}",
            )
            if started.returncode == 0:
                return
            if attempt == 4:
                self._check(started, "pg_ctl start")

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every client connection is cut."""
        self._check(
            # `-l`: the new server's output goes to the log, not to our pipe (which
            # `subprocess.run` would otherwise read until the server exits).
            self._run(
                *("pg_ctl", "restart", "-D", str(self.data), "-l", str(self.log)),
                *("-m", "fast", "-w", "-t", str(PG_CTL_TIMEOUT)),
            ),
            "pg_ctl restart",
        )

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = self._run(
            "psql", "-X", "-q", "-A", "-t", "-h", str(self.dir), "-p", str(self.port), "-U", "postgres",
            "-d", database, "-v", "ON_ERROR_STOP=1", "-c", sql,
        )  # fmt: skip
        self._check(result, f"psql {sql!r}")
        return result.stdout.strip()

    def create_database(self) -> str:
        """A new empty database; returns its DSN."""
        self._databases += 1
        name = f"test_{self._databases}"
        self.psql(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.port:
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        shutil.rmtree(self.dir, ignore_errors=True)
