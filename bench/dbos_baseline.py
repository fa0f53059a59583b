"""Baseline: DBOS Transact, the PostgreSQL-backed durable-execution library a Python user would pick instead.

Processes: PostgreSQL (`bench.postgres`, the same cluster as our PostgreSQL
case, a database of its own), the DBOS application (`bench.dbos_app`: the
same five no-op steps as a DBOS workflow, started by keys written to its
stdin) and this driver.

- latency: one workflow at a time; the workflow's stored `updated_at` when
  it turned SUCCESS minus the wall time just before its key was written (the
  rule of our runs' `ended_at` and Celery's `date_done`). `updated_at` is in
  milliseconds, truncated like ours, so the same uniform 0-1 ms is added
  back. The driver learns the workflow is nearly done from the datagram its
  end sends, waits `READBACK_DELAY` and reads the row from PostgreSQL
  directly (which costs the DBOS process nothing);
- throughput: 300 workflows kept in flight (`bench.load`, the same closed
  loop as ours and Celery's), steps/s = 5 x workflows completed per second;
- CPU: the DBOS process's and PostgreSQL's (server and backends) per step;
- statements and commits per step: `pg_stat_statements` and
  `pg_stat_database` of its database (`bench.postgres.Database.counters`),
  the same counters as ours.

`python -m bench.dbos_baseline` runs it alone on a cluster of its own.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

import psycopg

from bench import procs, scenario
from bench.load import closed_loop
from bench.notify import ENV as NOTIFY_ENV
from bench.notify import Listener
from bench.postgres import Cluster, Counters, Database
from bench.stats import summary_ms

STEPS = 5
IN_FLIGHT = 300
#: As `bench.durable.READBACK_DELAY`: the readback stays out of the timed path.
READBACK_DELAY = 0.002
#: Seconds after a window before PostgreSQL's statistics are read: backends
#: report them at the end of a transaction, idle ones within about a second.
STATS_SETTLE = 1.2

_dither = random.Random(7)


class DbosApp:
    """The DBOS application process and the driver's side of it."""

    def __init__(self, children: procs.Children, db: Database, listener: Listener, tag: str = "dbos") -> None:
        self.db = db
        self.listener = listener
        self.proc = children.start(
            f"{tag}-app",
            procs.python("-m", "bench.dbos_app", db.dsn),
            env={NOTIFY_ENV: listener.address},
            stdout_pipe=True,
            stdin_pipe=True,
        )
        self.proc.expect("ready", 120)
        self.sent: dict[str, float] = {}
        self._conn = psycopg.connect(db.dsn, autocommit=True)
        self._seq = 0

    def submit(self, keys: list[str]) -> None:
        t = time.time()
        for k in keys:
            self.sent[k] = t
        self.proc.write((" ".join(keys) + "\n").encode())

    def ended_at(self, key: str, timeout: float = 30.0) -> float | None:
        """The stored end of the workflow (epoch seconds, the truncated
        millisecond plus the dither), or None if it did not end in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self._conn.execute(
                "SELECT status, updated_at FROM dbos.workflow_status WHERE workflow_uuid = %s", (key,)
            ).fetchone()
            if row is not None and row[0] != "PENDING" and row[0] != "ENQUEUED":
                if row[0] != "SUCCESS":
                    raise RuntimeError(f"DBOS workflow {key} ended {row[0]}")
                return float(row[1]) / 1000 + _dither.random() / 1000
            time.sleep(0.002)
        return None

    def one_at_a_time(self, count: int) -> list[float]:
        """`count` workflows one after another; their latencies (seconds)."""
        out: list[float] = []
        for _ in range(count):
            self._seq += 1
            key = f"seq{self._seq}"
            t_send = time.time()
            self.submit([key])
            got: list[tuple[str, float]] = []
            limit = time.monotonic() + 30
            while not any(k == key for k, _ in got) and time.monotonic() < limit:
                if not self.proc.alive():
                    raise RuntimeError(f"DBOS app exited:\n{self.proc.tail()}")
                got += self.listener.poll(1.0)
            time.sleep(READBACK_DELAY)
            ended = self.ended_at(key)
            if ended is None:
                raise RuntimeError(f"DBOS workflow {key} did not end")
            out.append(ended - t_send)
        return out

    def close(self) -> None:
        self._conn.close()
        self.proc.stop()


def throughput(
    opts: scenario.Options,
    app: DbosApp,
    cluster: Cluster,
    *,
    seconds: float,
    warmup: float,
    prefix: str = "d",
) -> dict[str, Any]:
    """300 workflows in flight: steps/s, latency of those started in the window, CPU and statements per step."""
    counters0 = app.db.counters()
    c0 = (time.monotonic(), app.proc.cpu_seconds(), cluster.cpu_seconds())
    loop = closed_loop(app.submit, app.listener, in_flight=IN_FLIGHT, warmup=warmup, seconds=seconds, prefix=prefix)
    c1 = (time.monotonic(), app.proc.cpu_seconds(), cluster.cpu_seconds())
    time.sleep(STATS_SETTLE)
    done: Counters = app.db.counters() - counters0
    wall = c1[0] - c0[0]
    keys = loop.window_keys()
    random.shuffle(keys)
    loaded: list[float] = []
    for k in keys[: opts.count(1000, 300)]:
        ended = app.ended_at(k, timeout=10)
        if ended is not None:
            loaded.append(ended - loop.sent[k])
    s = summary_ms(loaded)
    # Everything the loop started finished (or is `unfinished`): per step over all of them.
    steps = max(1, len(loop.done) * STEPS)
    return {
        "steps_per_s": loop.jobs_per_s * STEPS,
        "in_flight": IN_FLIGHT,
        "loaded_run_p50_ms": s["p50_ms"],
        "loaded_run_p99_ms": s["p99_ms"],
        "runs_unfinished": loop.unfinished,
        "app_cpu_share": (c1[1] - c0[1]) / wall,
        "pg_cpu_share": (c1[2] - c0[2]) / wall,
        "app_cpu_us_per_step": (c1[1] - c0[1]) / steps * 1e6,
        "pg_cpu_us_per_step": (c1[2] - c0[2]) / steps * 1e6,
        "statements_per_step": done.statements / steps,
        "commits_per_step": done.commits / steps,
    }


def measure(
    opts: scenario.Options,
    app: DbosApp,
    cluster: Cluster,
    *,
    sequential: int,
    seconds: float,
) -> dict[str, Any]:
    """The DBOS figures alone: runs one at a time, then 300 in flight."""
    out: dict[str, Any] = {}
    app.one_at_a_time(20)  # warm-up
    lat = app.one_at_a_time(sequential)
    s = summary_ms(lat)
    out["run_p50_ms"], out["run_p99_ms"], out["run_n"] = s["p50_ms"], s["p99_ms"], s["n"]
    out.update(throughput(opts, app, cluster, seconds=seconds, warmup=opts.pick(3.0, 2.0)))
    return out


def dbos_version() -> str:
    from importlib.metadata import version

    return version("dbos")


def run(opts: scenario.Options, children: procs.Children) -> dict[str, Any]:
    cluster = Cluster()
    try:
        cluster.start(children)
        listener = Listener()
        app = DbosApp(children, cluster.create_database("bench_dbos"), listener)
        try:
            out = measure(opts, app, cluster, sequential=opts.count(300, 100), seconds=opts.pick(12.0, 5.0))
        finally:
            app.close()
            listener.close()
    finally:
        cluster.stop()
    out["dbos_version"] = dbos_version()
    return out


def main(argv: list[str] | None = None) -> int:
    return scenario.main("dbos_baseline", run, argv)


if __name__ == "__main__":
    sys.exit(main())
