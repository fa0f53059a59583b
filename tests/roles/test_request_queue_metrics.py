"""Gateway processes of split roles: the store's request queue in their metrics,
and where the API is when their port is opened in a browser.

1 API, 2 gateways and 1 executor as real processes on one PostgreSQL. A
worker registers its app and leaves; the runs of the events sent then queue
their first step in the store, where no gateway can take it: both gateways'
`/metrics` show them waiting, and the wait of the oldest growing. A worker
comes back, takes them all, and the queue reads empty again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.harness import wait_for_log
from tests.e2e.test_metrics import DASHBOARD, SPLIT_GATEWAY_ONLY, Samples, _metric_names, scrape, value
from tests.postgres import PostgresServer
from tests.split.harness import Cluster, RoleProcess, poll_until

RUNS = 6


@pytest.fixture(scope="module")
def cluster(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("queue-metrics"), postgres_server.create_database())
    try:
        c.start_platform(gateways=2, executors=1)
        yield c
    finally:
        c.stop()


def gateway_metrics(gateway: RoleProcess) -> Samples:
    return scrape(f"http://{gateway.cluster.host}:{gateway.gateway_port}/metrics")


def test_gateways_export_the_depth_of_the_stored_queue_and_the_wait_of_its_oldest(cluster: Cluster) -> None:
    worker = cluster.start_worker("w1")
    wait_for_log(worker, "worker state ACTIVE")
    cluster.wait_connected(["w1"])
    cluster.stop_worker("w1")
    poll_until(lambda: not cluster.probe.connections(), 60, "the worker's connection to leave the registry")

    for gateway in cluster.gateways:
        empty = gateway_metrics(gateway)
        assert value(empty, "connect_request_queue_depth", state="waiting") == 0
        assert value(empty, "connect_request_queue_oldest_seconds") == 0

    sent_at = time.time()
    ids = cluster.send_five(RUNS)
    # Every run's first step waits in the store: no gateway has a worker for it.
    poll_until(
        lambda: all(
            value(gateway_metrics(g), "connect_request_queue_depth", state="waiting") == RUNS for g in cluster.gateways
        ),
        60,
        f"{RUNS} requests waiting, as both gateways read the queue",
    )
    time.sleep(1.5)  # the queue's oldest wait grows while nothing takes it
    for gateway in cluster.gateways:
        samples = gateway_metrics(gateway)
        assert value(samples, "connect_request_queue_depth", state="held") == 0
        assert value(samples, "connect_request_queue_depth", state="lapsed") == 0
        oldest = value(samples, "connect_request_queue_oldest_seconds")
        assert 1.0 <= oldest <= time.time() - sent_at + 1, oldest

    cluster.start_worker("w2")
    cluster.wait_finished(ids, timeout=120)
    poll_until(
        lambda: all(
            value(gateway_metrics(g), "connect_request_queue_depth") == 0
            and value(gateway_metrics(g), "connect_request_queue_oldest_seconds") == 0
            for g in cluster.gateways
        ),
        30,
        "the queue to read empty once the runs finished",
    )


def test_the_gateway_port_says_where_the_api_and_dashboard_are(cluster: Cluster) -> None:
    assert cluster.api is not None
    for gateway in cluster.gateways:
        resp = httpx.get(f"http://{cluster.host}:{gateway.gateway_port}/", timeout=10)
        assert resp.status_code == 404
        body = resp.json()
        assert body["api_urls"] == [cluster.api.url]
        assert "worker gateway" in body["error"]
        assert httpx.get(f"http://{cluster.host}:{gateway.gateway_port}/nope", timeout=10).status_code == 404


def test_the_grafana_dashboard_queries_the_queue_metrics_a_gateway_process_has(cluster: Cluster) -> None:
    text = httpx.get(f"http://{cluster.host}:{cluster.gateways[0].gateway_port}/metrics", timeout=10).text
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    queried = {n for n in _metric_names(json.loads(DASHBOARD.read_text())) if n.startswith(SPLIT_GATEWAY_ONLY)}
    assert queried == {"connect_request_queue_depth", "connect_request_queue_oldest_seconds"}
    assert queried <= declared
