"""`/metrics` of a real `connect dev` and a real worker after a load: the counters add up.

50 runs of a three-step function (10 of them failing), one run cancelled
while it sleeps, one event sent before any worker was there (it waits in
the queue); then the scrapes of the API port, the gateway port and the
worker's health port are read with prometheus-client's own parser.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connect.gateway.auth import hash_signing_key
from tests.e2e.harness import DevServer, Proc, free_port, start_worker, wait_for_log, wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples" / "grafana" / "connect-dashboard.json"

#: Metrics only a gateway process of split roles exports (the store's request queue).
SPLIT_GATEWAY_ONLY = "connect_request_queue_"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    resp = httpx.get(url, headers=headers or {}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(tmp_path_factory.mktemp("metrics")).start()
    yield server
    server.stop()


def test_counters_add_up_after_a_load(dev: DevServer, tmp_path: Path) -> None:
    api, gateway = f"{dev.url}/metrics", f"http://127.0.0.1:{dev.gateway_port}/metrics"
    before = scrape(api)
    assert value(before, "connect_gateway_connections", state="ready") == 0

    # A worker registers the app, then leaves: the gauge follows it.
    first = start_worker(dev, tmp_path, name="first", target="tests.e2e.metrics_app:client")
    try:
        wait_for_log(first, "worker state ACTIVE")
        wait_until(lambda: value(scrape(gateway), "connect_gateway_connections", state="ready") == 1, 30, "a ready one")
    finally:
        first.stop()
    wait_until(lambda: value(scrape(gateway), "connect_gateway_connections") == 0, 30, "the worker to leave")
    assert value(scrape(gateway), "connect_gateway_disconnects_total", reason="WORKER_SHUTDOWN") == 1

    # Sent while no worker is there: it waits in the queue.
    early = dev.send([{"name": "metrics/three", "data": {}}])
    wait_until(
        lambda: value(scrape(api), "connect_queue_depth", waiting_for="worker") == 1, 30, "the run queued for a worker"
    )

    health = free_port()
    worker = start_worker(
        dev,
        tmp_path,
        target="tests.e2e.metrics_app:client",
        max_concurrency=8,
        extra_args=["--health-port", str(health)],
    )
    try:
        wait_for_log(worker, "worker state ACTIVE")
        wait_until(lambda: value(scrape(gateway), "connect_gateway_connections", state="ready") == 1, 30, "a ready one")
        ids = early + [dev.send([{"name": "metrics/three", "data": {"fail": i % 5 == 0}}])[0] for i in range(49)]
        sleeping = dev.send([{"name": "metrics/sleep", "data": {}}])[0]
        runs = dev.wait_runs(ids)
        assert sum(r["status"] == "Completed" for r in runs) == 40
        assert sum(r["status"] == "Failed" for r in runs) == 10

        def sleeping_run() -> dict[str, object]:
            found = dev.runs(sleeping)
            return found[0] if found else {}

        wait_until(lambda: bool(sleeping_run()), 30, "the sleeping run")
        run_id = str(sleeping_run()["run_id"])
        wait_until(
            lambda: (
                value(scrape(api), "connect_runs_started_total", function="metrics-app-sleepy") == 1
                and value(scrape(f"http://127.0.0.1:{health}/metrics"), "connect_worker_in_flight") == 0
            ),
            30,
            "the sleeping run parked",
        )
        assert httpx.post(f"{dev.url}/v1/runs/{run_id}/cancel", timeout=30).status_code in (200, 202)
        wait_until(lambda: sleeping_run().get("status") == "Cancelled", 30, "the cancelled run")

        platform = scrape(api)
        worker_side = scrape(f"http://127.0.0.1:{health}/metrics")

        assert value(platform, "connect_events_received_total") == 51
        fn = "metrics-app-metered"
        started = value(platform, "connect_runs_started_total", function=fn)
        completed = value(platform, "connect_runs_finished_total", function=fn, status="completed")
        failed = value(platform, "connect_runs_finished_total", function=fn, status="failed")
        assert (started, completed, failed) == (50, 40, 10)
        cancelled = value(platform, "connect_runs_finished_total", function="metrics-app-sleepy", status="cancelled")
        assert cancelled == 1
        # Every run started has ended (none is still running).
        assert value(platform, "connect_runs_started_total") == value(platform, "connect_runs_finished_total")

        # One histogram observation per request the worker ran.
        requests = value(worker_side, "connect_worker_requests_total")
        assert requests >= 50 * 1 + 1
        assert value(platform, "connect_step_duration_seconds_count") == requests
        assert value(platform, "connect_step_duration_seconds_count", function=fn) == value(
            platform, "connect_step_duration_seconds_bucket", function=fn, le="+Inf"
        )
        # The early run waited for the worker, and nothing waits now.
        assert value(platform, "connect_queue_wait_seconds_count") >= 1
        assert value(platform, "connect_queue_depth") == 0

        # HTTP answers by route template, never by raw path.
        assert value(platform, "connect_http_responses_total", route="/e/{event_key}", status="200") == 51
        assert value(platform, "connect_http_responses_total", route="/v1/runs/{run_id}/cancel") == 1
        assert not any("route" in dict(ls) and run_id in dict(ls)["route"] for _, ls in platform)

        # The worker's side: nothing in flight, its capacity, one connection.
        assert value(worker_side, "connect_worker_in_flight") == 0
        assert value(worker_side, "connect_worker_capacity") == 8
        assert value(worker_side, "connect_worker_connections_total") == 1
        assert value(worker_side, "connect_worker_reconnects_total") == 0
        assert value(worker_side, "connect_worker_replies_buffered") == 0
        assert value(worker_side, "connect_worker_ready") == 1
        # Only the worker's own registry: not the user's metrics, nor the process's defaults.
        assert all(name.startswith("connect_worker_") for name, _ in worker_side)

        gw = scrape(gateway)
        instance = [dict(ls)["worker_instance"] for n, ls in gw if n == "connect_gateway_capacity"]
        assert len(instance) == 1
        assert value(gw, "connect_gateway_capacity", worker_instance=instance[0]) == 8
        assert value(gw, "connect_gateway_in_flight", worker_instance=instance[0]) == 0
        assert value(gw, "connect_gateway_worker_connections_total") == 2
    finally:
        worker.stop()

    # The worker left: no connection, one disconnect with its reason.
    wait_until(
        lambda: value(scrape(gateway), "connect_gateway_connections") == 0, 30, "the gateway to see the worker leave"
    )
    gw = scrape(gateway)
    assert value(gw, "connect_gateway_disconnects_total") == 2
    assert value(gw, "connect_gateway_disconnects_total", reason="WORKER_SHUTDOWN") == 2


def test_grafana_dashboard_queries_only_metrics_that_exist(dev: DevServer, tmp_path: Path) -> None:
    """Every metric the example dashboard queries is in a scrape of `connect dev` or of a worker."""
    health = free_port()
    worker: Proc = start_worker(
        dev, tmp_path, target="tests.e2e.metrics_app:client", extra_args=["--health-port", str(health)]
    )
    urls = [f"{dev.url}/metrics", f"http://127.0.0.1:{dev.gateway_port}/metrics", f"http://127.0.0.1:{health}/metrics"]
    try:
        wait_for_log(worker, "worker state ACTIVE")
        texts = [httpx.get(url, timeout=10).text for url in urls]
    finally:
        worker.stop()
    # A family declared with no sample yet (a labelled metric nothing counted so far) has its TYPE line.
    declared = {line.split()[2] for text in texts for line in text.splitlines() if line.startswith("# TYPE")}
    known = {f"{d}{suffix}" for d in declared for suffix in ("", "_total", "_count", "_sum", "_bucket")}

    dashboard = json.loads(DASHBOARD.read_text())
    queried = _metric_names(dashboard)
    assert queried, "the dashboard queries no metric"
    # Only the gateway processes of split roles export these: tests/roles/test_request_queue_metrics.py
    # checks the dashboard's queries of them against a scrape of one.
    missing = sorted(name for name in queried - known if not name.startswith(SPLIT_GATEWAY_ONLY))
    assert not missing, f"the dashboard queries metrics no scrape has: {missing}"


def _metric_names(dashboard: dict[str, object]) -> set[str]:
    import re

    names: set[str] = set()
    for panel in dashboard["panels"]:  # type: ignore[attr-defined]
        for target in panel.get("targets", []):
            names |= set(re.findall(r"\bconnect_[a-z_]+", target["expr"]))
    return names


def test_metrics_under_serve_need_the_signing_key(tmp_path: Path) -> None:
    """On the API port, the gateway port and a `--metrics-port` of its own."""
    signing_key = "signkey-test-00112233445566778899aabbccddeeff"
    metrics_port = free_port()
    extra = ["--signing-key", signing_key, "--event-key", "ek-metrics", "--metrics-port", str(metrics_port)]
    server = DevServer(tmp_path, command="serve", extra=extra).start()
    try:
        urls = [
            f"{server.url}/metrics",
            f"http://127.0.0.1:{server.gateway_port}/metrics",
            f"http://127.0.0.1:{metrics_port}/metrics",
        ]
        for url in urls:
            refused = httpx.get(url, timeout=10)
            assert refused.status_code == 401
            assert "signing key" in refused.json()["error"]
            assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
            for token in (signing_key, hash_signing_key(signing_key)):
                samples = scrape(url, {"Authorization": f"Bearer {token}"})
                assert ("connect_events_received_total", ()) in samples
        # The refusals were counted, by route template and status.
        samples = scrape(urls[0], {"Authorization": f"Bearer {signing_key}"})
        assert value(samples, "connect_http_responses_total", route="/metrics", status="401") == 2
    finally:
        server.stop()
