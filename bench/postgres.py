"""A throwaway PostgreSQL cluster for the benchmarks, from Debian's `postgresql` package.

`Cluster.start(children)` runs `initdb` into a fresh temporary directory
(trust authentication) and starts `postgres` itself in the foreground as a
child of the scenario (`bench.procs`: its own process group, dies with the
scenario, reaped by the run token), listening on a free port of 127.0.0.1.
PostgreSQL refuses to run as root: as root, the cluster belongs to the
`postgres` user Debian's package creates.

The server runs with PostgreSQL's defaults for durability (`fsync` and
`synchronous_commit` on: a commit is flushed to the WAL on disk before it is
acknowledged), the setting a user would run either system with, plus
`pg_stat_statements` loaded so that `Database.counters()` can count the
statements each side's database executed.

This is not `tests/postgres.py` (benchmarks and tests import nothing from
each other): the tests' cluster is daemonized by `pg_ctl`, fails a test
through pytest when PostgreSQL is missing, and has no statistics extension.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import procs

INSTALL_HINT = "install Debian's `postgresql` package (apt-get install postgresql; `make bench` does)"
#: Enough for the store's pool, DBOS's pool (20 by default) and the driver's readers.
MAX_CONNECTIONS = 200


def find_bin_dir() -> Path:
    """The newest Debian `/usr/lib/postgresql/<version>/bin`, else wherever PATH finds `pg_ctl`."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    raise RuntimeError(f"PostgreSQL (initdb, postgres) not found: {INSTALL_HINT}")


@dataclass(frozen=True)
class Counters:
    """What one database did, from PostgreSQL's own statistics (cumulative)."""

    #: Statements executed (`pg_stat_statements.calls`, top-level statements:
    #: each execution of a prepared or pipelined statement counts once).
    statements: int
    #: Committed transactions (`pg_stat_database.xact_commit`).
    commits: int

    def __sub__(self, other: Counters) -> Counters:
        return Counters(self.statements - other.statements, self.commits - other.commits)


class Database:
    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name

    @property
    def dsn(self) -> str:
        return self.cluster.dsn(self.name)

    def counters(self) -> Counters:
        # Statistics reach the views when a backend reports them (at the end of
        # each transaction, at most every second or so while idle): take them
        # after a pause, or accept that the last ~second may be missing.
        row = self.cluster.psql(
            "SELECT pg_stat_clear_snapshot();"
            " SELECT (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            f" WHERE d.datname = '{self.name}'),"
            f" (SELECT xact_commit FROM pg_stat_database WHERE datname = '{self.name}')"
        )
        statements, commits = row.splitlines()[-1].split("|")
        return Counters(int(statements), int(commits))

    def top_statements(self, limit: int = 25) -> list[str]:
        """The statements this database executed most often (cumulative), as "calls: query" lines."""
        rows = self.cluster.psql(
            "SELECT calls || ': ' || left(regexp_replace(query, '\\s+', ' ', 'g'), 160)"
            " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            f" WHERE d.datname = '{self.name}' ORDER BY calls DESC LIMIT {int(limit)}"
        )
        return rows.splitlines()


class Cluster:
    """One cluster in a temporary directory, its server a child process; see the module doc."""

    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self.user = self._server_user()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.data = self.dir / "data"
        self.port = 0
        self.server: procs.Child | None = None
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)

    @staticmethod
    def _server_user() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError(
                f"PostgreSQL will not run as root and there is no `postgres` user: {INSTALL_HINT}"
            ) from None

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> str:
        uid = None if self.user is None else self.user.pw_uid
        gid = None if self.user is None else self.user.pw_gid
        result = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr or result.stdout}")
        return result.stdout.strip()

    def start(self, children: procs.Children) -> None:
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C",
            "--no-sync",  # the cluster is thrown away; the server itself runs with fsync on
        )  # fmt: skip
        self.port = procs.free_port()
        self.server = children.start(
            "postgres",
            [
                str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                "-c", f"max_connections={MAX_CONNECTIONS}",
                "-c", "shared_preload_libraries=pg_stat_statements", "-c", "pg_stat_statements.track=top",
            ],
            cwd=self.dir,
            user=self.user,
        )  # fmt: skip

        def up() -> bool:
            assert self.server is not None
            if not self.server.alive():
                raise RuntimeError(f"postgres exited:\n{self.server.tail()}")
            try:
                self.psql("SELECT 1")
            except RuntimeError:
                return False
            return True

        procs.wait_until(up, 60, "postgres", interval=0.2)
        self.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(
            "psql", "-X", "-q", "-A", "-t", "-h", str(self.dir), "-p", str(self.port), "-U", "postgres",
            "-d", database, "-v", "ON_ERROR_STOP=1", "-c", sql,
        )  # fmt: skip

    def create_database(self, name: str) -> Database:
        self.psql(f'CREATE DATABASE "{name}"')
        return Database(self, name)

    def cpu_seconds(self) -> float:
        """CPU of the server and its live backends (user + system)."""
        return 0.0 if self.server is None else self.server.cpu_seconds()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=20, sig=signal.SIGINT)  # SIGINT: a fast shutdown, clients are cut
        shutil.rmtree(self.dir, ignore_errors=True)
