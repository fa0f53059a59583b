"""Ours on PostgreSQL beside DBOS Transact, 2-pg: the durable scenario on the same PostgreSQL, in one run.

One throwaway cluster (`bench.postgres`), two databases in it: one for
`connect dev --database-url ...` with our worker (the `durable` scenario's
workload and rules, `bench.durable.measure`), one for the DBOS application
(`bench.dbos_baseline`).

- latency: our runs one at a time go in `bench.durable.BLOCKS` blocks, each
  followed by as many DBOS workflows one at a time (the same stored-end
  rule), so both p50s see the host at the same moments, as Celery's chains
  do in `durable`; the DBOS application stays up, idle, while ours runs;
- throughput: 300 in flight, ours (the DBOS process idle) then DBOS's (our
  processes stopped), each with its process CPU, PostgreSQL's CPU (server
  and backends) and the statements and commits per step its database
  executed (`pg_stat_statements`, `pg_stat_database`).

`python -m bench.durable_pg` runs it alone.
"""

from __future__ import annotations

import sys
from typing import Any

from bench import dbos_baseline, durable, procs, scenario
from bench.dispatch import default_poll_env
from bench.notify import Listener
from bench.postgres import Cluster


def run(opts: scenario.Options, children: procs.Children) -> dict[str, Any]:
    cluster = Cluster()
    try:
        cluster.start(children)
        ours_db = cluster.create_database("bench_connect")
        listener = Listener()
        app = dbos_baseline.DbosApp(children, cluster.create_database("bench_dbos"), listener)
        try:
            app.one_at_a_time(20)  # warm-up
            out = durable.measure(
                opts,
                children,
                worker_kind="ours",
                sequential=opts.count(300, 100),
                seconds=opts.pick(12.0, 5.0),
                profile_seconds=opts.pick(8.0, 4.0) if opts.profile else 0.0,
                tag="durable-pg",
                env=default_poll_env(),
                baseline=app.one_at_a_time,
                database=ours_db,
            )
            # `measure` names its interleaved baseline after Celery's chains (`durable`).
            for stat in ("p50_ms", "p99_ms", "n"):
                out[f"dbos_run_{stat}"] = out.pop(f"interleaved_chain5_{stat}")
            out.pop("interleaved_blocks", None)
            dbos = dbos_baseline.throughput(
                opts, app, cluster, seconds=opts.pick(12.0, 5.0), warmup=opts.pick(3.0, 2.0)
            )
            for key, value in dbos.items():
                out[f"dbos_{key}"] = value
        finally:
            app.close()
            listener.close()
    finally:
        cluster.stop()
    out["dbos_version"] = dbos_baseline.dbos_version()
    out["postgres_version"] = cluster.bin_dir.parent.name
    return out


def main(argv: list[str] | None = None) -> int:
    return scenario.main("durable_pg", run, argv)


if __name__ == "__main__":
    sys.exit(main())
