"""Metrics of split roles: each process serves its own, and summed they add up.

1 API, 1 gateway and 2 executors as real processes on one PostgreSQL, the
executors with `--metrics-port` (they have no other port), and one worker
with its health port. After 40 five-step runs: the API counted the events,
the executors the runs (each run started by the executor that first
claimed it, ended by the one that ended it) and the steps.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Proc, free_port, wait_for_log
from tests.e2e.test_metrics import scrape, value
from tests.postgres import PostgresServer
from tests.split.harness import Cluster, RoleProcess

RUNS = 40


class MeteredRole(RoleProcess):
    """A role process with `--metrics-port`."""

    def __init__(self, cluster: Cluster, role: str, base: str) -> None:
        super().__init__(cluster, role, base)
        self.metrics_port = free_port()

    def args(self) -> list[str]:
        return [*super().args(), "--metrics-port", str(self.metrics_port)]

    @property
    def metrics_url(self) -> str:
        return f"http://{self.cluster.host}:{self.metrics_port}/metrics"


@pytest.fixture(scope="module")
def cluster(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("split-metrics"), postgres_server.create_database())
    try:
        c.api = RoleProcess(c, "api", "api").launch()
        c.gateways = [RoleProcess(c, "gateway", "gwa").launch()]
        c.executors = [MeteredRole(c, "executor", f"exec{i}").launch() for i in (1, 2)]
        for p in [c.api, *c.gateways, *c.executors]:
            p.wait_up()
        yield c
    finally:
        c.stop()


def test_each_process_counts_its_share_and_the_sums_add_up(cluster: Cluster, tmp_path: Path) -> None:
    health = free_port()
    args = [sys.executable, "-m", "connect", "worker", "tests.split.app:client", "--instance-id", "w1"]
    args += ["--max-worker-concurrency", "16", "--health-port", str(health)]
    worker = Proc(args, cluster.worker_env("w1"), tmp_path / "worker.log")
    try:
        wait_for_log(worker, "worker state ACTIVE")
        cluster.wait_connected(["w1"])
        ids = cluster.send_five(RUNS)
        cluster.wait_finished(ids, timeout=120)

        assert cluster.api is not None
        api = scrape(f"{cluster.api.url}/metrics")
        assert value(api, "connect_events_received_total") == RUNS
        assert value(api, "connect_runs_started_total") == 0  # runs are the executors' to count

        executors = [scrape(e.metrics_url) for e in cluster.executors if isinstance(e, MeteredRole)]
        assert len(executors) == 2
        started = sum(value(e, "connect_runs_started_total") for e in executors)
        completed = sum(value(e, "connect_runs_finished_total", status="completed") for e in executors)
        assert (started, completed) == (RUNS, RUNS)

        worker_side = scrape(f"http://127.0.0.1:{health}/metrics")
        steps = sum(value(e, "connect_step_duration_seconds_count") for e in executors)
        assert steps == value(worker_side, "connect_worker_requests_total") >= RUNS * 5

        gateway = scrape(f"http://{cluster.host}:{cluster.gateways[0].gateway_port}/metrics")
        assert value(gateway, "connect_gateway_connections", state="ready") == 1
        assert value(gateway, "connect_gateway_capacity", worker_instance="w1") == 16
    finally:
        worker.stop()
