"""What the executor counts (`connect_runs_*`, `connect_step_duration_seconds`), on both engines:
runs a gate refused are skipped by reason, and runs that debounces and batches start (fired by a
timer, or by the event that fills a batch) are counted as started once, so started = ended."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from connect.metrics import RunMetrics
from tests.executor.harness import Harness
from tests.executor.scripted_worker import Ctx, Step
from tests.postgres import PostgresServer

pytestmark = pytest.mark.anyio


class Metered(Harness):
    """The harness's executor, counting in a registry of the test's own."""

    registry = CollectorRegistry()


@pytest.fixture(params=["sqlite", "postgres"])
async def hs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Metered]:
    dsn = None
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        dsn = server.create_database()
    harness = Metered(tmp_path / "connect.db", dsn)
    harness.registry = CollectorRegistry()
    await harness.open(metrics=RunMetrics(harness.registry))
    try:
        yield harness
    finally:
        await harness.close()


def sample(hs: Metered, name: str, **labels: str) -> float:
    found = hs.registry.get_sample_value(name, labels)
    return 0.0 if found is None else float(found)


def two_steps(step: Step, ctx: Ctx) -> Any:
    step.run("a", lambda _attempt: 1)
    return step.run("b", lambda _attempt: 2)


async def until(predicate: Any, timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


async def test_skips_are_counted_by_reason_and_started_runs_end(hs: Metered) -> None:
    await hs.deploy("limited", "shop/limited", two_steps, flow={"rateLimit": {"limit": 2, "period": "1m"}})
    await hs.deploy("once", "shop/once", two_steps, flow={"idempotency": "event.data.order"})
    for _ in range(5):
        await hs.send("shop/limited")
    for order in ("o-1", "o-1", "o-2"):
        await hs.send("shop/once", {"order": order})

    def ended() -> bool:
        return sample(hs, "connect_runs_finished_total", function="shop-limited", status="completed") == 2 and (
            sample(hs, "connect_runs_finished_total", function="shop-once", status="completed") == 2
        )

    await until(ended)
    assert sample(hs, "connect_runs_started_total", function="shop-limited") == 2
    assert sample(hs, "connect_runs_skipped_total", function="shop-limited", reason="rate_limit") == 3
    assert sample(hs, "connect_runs_started_total", function="shop-once") == 2
    assert sample(hs, "connect_runs_skipped_total", function="shop-once", reason="idempotency") == 1
    # Requests answered: each run's discovery and its steps; one observation each.
    observed = sample(hs, "connect_step_duration_seconds_count", function="shop-limited")
    assert observed >= 2 * 2
    assert observed == sample(hs, "connect_step_duration_seconds_bucket", function="shop-limited", le="+Inf")


async def test_runs_of_debounces_and_batches_are_started_once(hs: Metered) -> None:
    await hs.deploy("digest", "app/d", two_steps, debounce={"period": "1s"})
    await hs.deploy("bulk", "app/b", two_steps, batch_events={"maxSize": 2, "timeout": "60s"})
    for n in range(3):
        await hs.send("app/d", {"n": n})  # one run, by the debounce's timer
    for n in range(4):
        await hs.send("app/b", {"n": n})  # two runs, each started by the event that fills its batch

    def ended() -> bool:
        return sample(hs, "connect_runs_finished_total", function="shop-digest", status="completed") == 1 and (
            sample(hs, "connect_runs_finished_total", function="shop-bulk", status="completed") == 2
        )

    await until(ended)
    assert sample(hs, "connect_runs_started_total", function="shop-digest") == 1
    assert sample(hs, "connect_runs_started_total", function="shop-bulk") == 2


async def test_events_a_debounces_rate_limit_keeps_out_are_counted_as_skips(hs: Metered) -> None:
    await hs.deploy(
        "digest-rated",
        "app/dr",
        two_steps,
        debounce={"period": "1s"},
        flow={"rateLimit": {"limit": 1, "period": "1m"}},
    )
    for n in range(3):
        await hs.send("app/dr", {"n": n})  # the first is held, the two after it are over the limit

    def ended() -> bool:
        return sample(hs, "connect_runs_finished_total", function="shop-digest-rated", status="completed") == 1

    await until(ended)
    assert sample(hs, "connect_runs_skipped_total", function="shop-digest-rated", reason="rate_limit") == 2
    assert sample(hs, "connect_runs_started_total", function="shop-digest-rated") == 1
