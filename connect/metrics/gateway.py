"""The gateway's metrics, read from its state when scraped.

Nothing here is counted on the gateway's hot path: connections, in flight
and capacity are what the server and its dispatcher hold anyway, and the
totals (connections accepted, disconnects by reason, lease lapses) are the
plain counters they keep. A scrape walks the live connections once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from protocol import gateway_session as gs

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from connect.gateway.server import GatewayServer

#: The label naming a worker's instance id: not `instance`, which Prometheus
#: sets on every series to the scraped target's address.
#: `state` label per session phase; `paused` is the draining phase of a
#: worker that paused itself (the gateway is not draining).
_STATES = {
    gs.Phase.HANDSHAKING: "handshaking",
    gs.Phase.AUTHENTICATED: "authenticated",
    gs.Phase.READY: "ready",
    gs.Phase.DRAINING: "draining",
    gs.Phase.CLOSED: "closed",
}
STATES = ("handshaking", "authenticated", "ready", "paused", "draining", "closed")


class GatewayCollector(Collector):
    """`connect_gateway_*` for one `GatewayServer`."""

    def __init__(self, server: GatewayServer) -> None:
        self._server = server

    def describe(self) -> Iterable[Metric]:
        return self._families(live=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(live=True)

    def _families(self, *, live: bool) -> list[Metric]:
        server = self._server
        dispatcher = server.dispatcher
        connections = GaugeMetricFamily(
            "connect_gateway_connections",
            "Worker connections by state: handshaking, authenticated, ready, paused, draining, closed",
            labels=["state"],
        )
        accepted = CounterMetricFamily(
            "connect_gateway_worker_connections",
            "Worker connections authenticated since the gateway started (a worker's reconnect is one more)",
        )
        disconnects = CounterMetricFamily(
            "connect_gateway_disconnects",
            "Worker connections ended, by disconnect reason (as the gateway logs it)",
            labels=["reason"],
        )
        lapses = CounterMetricFamily(
            "connect_gateway_lease_lapses",
            "Requests whose worker stopped extending its lease (lost with its worker; dispatched again)",
        )
        in_flight = GaugeMetricFamily(
            "connect_gateway_in_flight",
            "Requests a worker instance holds through this gateway",
            labels=["worker_instance"],
        )
        capacity = GaugeMetricFamily(
            "connect_gateway_capacity",
            "A worker instance's max_worker_concurrency (instances without a limit are not listed)",
            labels=["worker_instance"],
        )
        if live:
            states: Counter[str] = Counter()
            instances: set[str] = set()
            for conn in list(server.connections):
                session = conn.session
                state = _STATES.get(session.phase, "closed")
                if state == "draining" and not session.gateway_draining:
                    state = "paused"
                states[state] += 1
                if conn.hello is not None:
                    instances.add(conn.instance_id)
            for state in STATES:
                connections.add_metric([state], states[state])
            ended = dict(server.disconnects)
            accepted.add_metric([], server.authenticated_connections + sum(ended.values()))
            for reason, count in sorted(ended.items()):
                disconnects.add_metric([reason], count)
            lapses.add_metric([], dispatcher.lease_lapses)
            for instance in sorted(instances):
                in_flight.add_metric([instance], dispatcher.capacity.in_flight(instance))
                limit = dispatcher.capacity.limit(instance)
                if limit is not None:
                    capacity.add_metric([instance], limit)
        return [connections, accepted, disconnects, lapses, in_flight, capacity]
