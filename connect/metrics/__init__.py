"""Prometheus metrics: one registry per process, served as `/metrics`.

Every process builds its own `CollectorRegistry` (never the library's global
default registry): the platform's roles share the one of their process
(`PlatformMetrics`), and a worker's connection has its own
(`WorkerConnection.metrics`), so metrics a user defines in a worker's
process are never mixed into ours, nor ours into theirs.

Counting costs no await and no store statement: counters are incremented
where the event already happens, and what is a state rather than an event
(connections, in flight, capacity, buffered replies) is read when scraped.
The README's "Metrics" section lists every metric, its labels and meaning.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from connect.metrics.platform import PlatformMetrics, RunMetrics

__all__ = ["CONTENT_TYPE", "PlatformMetrics", "RunMetrics", "render"]

#: The media type of the text exposition format.
CONTENT_TYPE = CONTENT_TYPE_LATEST


def render(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the text exposition format."""
    return generate_latest(registry)
