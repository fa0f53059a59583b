"""A worker's metrics (`connect_worker_*`), read from its connection when scraped.

The connection keeps plain counts where the events happen (requests handed
to user code, connections opened, replies posted to `/v0/connect/flush`);
in flight, capacity and the reply buffer are its state. Served on the
worker's health port (`connect(health_port=...)`, `connect worker
--health-port`) from the connection's own registry, apart from any
metrics the user's code registers in the process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from connect.worker.connection import WorkerConnection


@dataclass
class WorkerCounts:
    """What a worker counts as it happens (each on one loop; a scrape only reads)."""

    #: Requests handed to user code (on the loop that called `connect()`).
    requests: int = 0
    #: Connections to a gateway opened (on the connection's loop).
    connections: int = 0
    #: Replies delivered over `/v0/connect/flush` (on the connection's loop).
    flushes: int = 0


class WorkerCollector(Collector):
    """`connect_worker_*` for one `WorkerConnection`."""

    def __init__(self, worker: WorkerConnection) -> None:
        self._worker = worker

    def describe(self) -> Iterable[Metric]:
        return self._families(live=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(live=True)

    def _families(self, *, live: bool) -> list[Metric]:
        requests = CounterMetricFamily("connect_worker_requests", "Requests handed to the worker's functions to run")
        in_flight = GaugeMetricFamily(
            "connect_worker_in_flight", "Requests running, or answered and not yet acknowledged"
        )
        capacity = GaugeMetricFamily(
            "connect_worker_capacity", "max_worker_concurrency (not present when the worker has no limit)"
        )
        connections = CounterMetricFamily(
            "connect_worker_connections", "Connections to a gateway opened (the first, then every reconnect)"
        )
        reconnects = CounterMetricFamily("connect_worker_reconnects", "Connections opened after the first")
        flushes = CounterMetricFamily(
            "connect_worker_flushes", "Replies delivered over POST /v0/connect/flush (not acknowledged on the socket)"
        )
        buffered = GaugeMetricFamily(
            "connect_worker_replies_buffered", "Replies held until the gateway acknowledges them"
        )
        buffered_bytes = GaugeMetricFamily("connect_worker_replies_buffered_bytes", "The size of the replies held")
        ready = GaugeMetricFamily("connect_worker_ready", "1 while the worker takes work (as GET /ready answers 200)")
        if live:
            worker = self._worker
            counts = worker.counts
            requests.add_metric([], counts.requests)
            in_flight.add_metric([], worker.in_flight)
            limit = worker.max_worker_concurrency
            if limit is not None:
                capacity.add_metric([], limit)
            connections.add_metric([], counts.connections)
            reconnects.add_metric([], max(0, counts.connections - 1))
            flushes.add_metric([], counts.flushes)
            buffered.add_metric([], worker.replies_buffered)
            buffered_bytes.add_metric([], worker.replies_buffered_bytes)
            ready.add_metric([], 1 if worker.ready else 0)
        return [requests, in_flight, capacity, connections, reconnects, flushes, buffered, buffered_bytes, ready]
