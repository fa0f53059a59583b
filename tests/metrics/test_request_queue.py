"""The store's request queue as gauges: read before a scrape, at most once per
`MIN_INTERVAL`, the last values kept when a reading fails. Over a real SQLite
store, with the clocks injected."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connect.metrics import PlatformMetrics
from connect.metrics.request_queue import MIN_INTERVAL, RequestQueueGauges
from connect.store import QueuedRequest, SqliteStore


def _gauges(text: bytes) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name.startswith("connect_request_queue_"):
                state = sample.labels.get("state")
                found[f"{sample.name}:{state}" if state else sample.name] = sample.value
    return found


def test_only_a_process_that_watches_the_queue_exports_it(tmp_path: Path) -> None:
    async def go() -> tuple[dict[str, float], dict[str, float]]:
        store = await SqliteStore.open(tmp_path / "queue.db")
        metrics = PlatformMetrics()
        before = _gauges(await metrics.scrape())
        metrics.watch_request_queue(store)
        metrics.watch_request_queue(store)  # once per process, however often asked
        await store.queue_request(QueuedRequest("r1", "run-1", "app", "app-fn", "step", b"{}", 1))
        after = _gauges(await metrics.scrape())
        await store.close()
        return before, after

    before, after = asyncio.run(go())
    assert before == {}
    assert after["connect_request_queue_depth:waiting"] == 1


def test_the_queue_is_read_at_most_once_per_interval_and_a_failed_reading_keeps_the_last(tmp_path: Path) -> None:
    now = [1_000.0]
    ticks = [0.0]

    async def go() -> list[dict[str, float]]:
        store = await SqliteStore.open(tmp_path / "queue.db")
        registry = CollectorRegistry()
        gauges = RequestQueueGauges(registry, store, clock=lambda: now[0], monotonic=lambda: ticks[0])

        async def scrape() -> dict[str, float]:
            await gauges.refresh()
            return _gauges(generate_latest(registry))

        seen = []
        await store.queue_request(QueuedRequest("r1", "run-1", "app", "app-fn", "step", b"{}", 995_000))
        seen.append(await scrape())
        await store.queue_request(QueuedRequest("r2", "run-2", "app", "app-fn", "step", b"{}", 999_000))
        ticks[0] += MIN_INTERVAL / 2
        seen.append(await scrape())  # too soon: the last reading
        ticks[0] += MIN_INTERVAL
        now[0] += 1
        seen.append(await scrape())
        await store.close()
        ticks[0] += MIN_INTERVAL
        seen.append(await scrape())  # the store is gone: the last values stay
        return seen

    first, too_soon, second, failed = asyncio.run(go())
    assert first == {
        "connect_request_queue_depth:waiting": 1,
        "connect_request_queue_depth:held": 0,
        "connect_request_queue_depth:lapsed": 0,
        "connect_request_queue_oldest_seconds": 5.0,
    }
    assert too_soon == first
    assert second["connect_request_queue_depth:waiting"] == 2
    assert second["connect_request_queue_oldest_seconds"] == 6.0
    assert failed == second
