"""`connect dev --database-url` while PostgreSQL restarts under it: real
`connect dev` and worker processes, a real `pg_ctl restart -m fast` mid-load.
The platform stays up, reconnects, and every run completes with each of its
steps run once."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.harness import DevServer, Proc, start_worker, started_steps, step_counts, wait_for_log, wait_until
from tests.postgres import PostgresServer

RUNS = 60
STEPS = 5  # the `five-steps` function
#: Steps at once per worker: two workers take 3 s over the load (300 steps of 0.2 s), so
#: the platform is writing all through the restart rather than done before it.
CONCURRENCY = 10


def test_a_postgres_restart_mid_load_loses_nothing_and_runs_no_step_twice(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    dev = DevServer(tmp_path, database_url=postgres_server.create_database()).start()
    workers: list[Proc] = []
    try:
        for name in ("w0", "w1"):
            workers.append(start_worker(dev, tmp_path, name=name, instance_id=name, max_concurrency=CONCURRENCY))
            wait_for_log(workers[-1], "worker state ACTIVE")
        ids = dev.send([{"name": "e2e/five", "data": {"delay": 0.2}} for _ in range(RUNS)])
        wait_until(lambda: len(started_steps(tmp_path)) > 2 * CONCURRENCY, 60, "load to build up")
        in_flight = sum(step_counts(tmp_path).values())
        assert in_flight < RUNS * STEPS  # the restart comes mid-load

        postgres_server.restart()

        runs = dev.wait_runs(ids, timeout=120)
        assert [r["status"] for r in runs] == ["Completed"] * RUNS
        assert all(r["output"] == 10 for r in runs)
        counts = step_counts(tmp_path)
        repeated = {k: v for k, v in counts.items() if v > 1}
        assert repeated == {}, f"completed steps that ran again: {repeated}"
        assert sum(counts.values()) == RUNS * STEPS
        assert dev.proc is not None and dev.proc.popen.poll() is None  # the same process all along
        assert dev.starts == 1
        log = dev.proc.output()
        assert "PostgreSQL connection lost" in log  # the restart did reach the platform
        assert "Traceback" not in log
    finally:
        for w in workers:
            w.stop()
        dev.stop()
