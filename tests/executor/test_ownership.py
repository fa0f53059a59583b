"""Two executors on one database: each run is driven by one owner, and moves on when its owner goes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.executor.harness import Harness
from tests.executor.scripted_worker import Ctx, Step, h
from tests.postgres import PostgresServer

pytestmark = pytest.mark.anyio

LEASE = 0.3


def two_steps(who: str) -> Any:
    def fn(step: Step, ctx: Ctx) -> Any:
        a = step.run("a", lambda _: 1)
        b = step.run("b", lambda _: who)
        return {"a": a, "b": b}

    return fn


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Harness, Harness]]:
    first, second = Harness(tmp_path / "shared.db"), Harness(tmp_path / "shared.db")
    try:
        yield first, second
    finally:
        for harness in (first, second):
            if hasattr(harness, "executor"):
                await harness.close()


async def until(predicate: Any, timeout: float = 15.0) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.01)


async def test_runs_of_a_stopped_executor_are_finished_by_another(pair: tuple[Harness, Harness]) -> None:
    a, b = pair
    await a.open(executor_id="exec-a", owner_lease=LEASE)
    await b.open(executor_id="exec-b", owner_lease=LEASE)
    a.worker.delay_after["a"] = float("inf")  # A's worker never answers the request after step a
    await a.deploy("two", "shop/order", two_steps("A"))
    await b.deploy("two", "shop/order", two_steps("B"))
    event_id = await a.send("shop/order")
    run_id = (await a.only_run(event_id))["run_id"]

    async def a_ran_step_a() -> bool:
        return a.worker.executions["a"] == 1 and a.worker.in_flight == 1

    await until(a_ran_step_a)
    assert b.executor.active_runs == 0  # A owns the run and is alive: B leaves it alone

    await a.executor.stop()  # a deploy: A releases its runs
    await a.store.close()
    del a.executor
    run = await b.finished(run_id)
    assert run["status"] == "Completed"
    assert run["output"] == {"a": 1, "b": "B"}
    assert b.worker.executions["a"] == 0  # A's stored result of step a was used


async def test_a_lapsed_owner_loses_its_runs_and_its_late_write_is_refused(
    pair: tuple[Harness, Harness], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    await a.open(executor_id="exec-a", owner_lease=LEASE)
    a.worker.delay_after["a"] = 1.5  # A's worker is slow on the request after step a
    await a.deploy("two", "shop/order", two_steps("A"))
    event_id = await a.send("shop/order")
    run_id = (await a.only_run(event_id))["run_id"]

    async def a_runs_step_b() -> bool:
        return a.worker.in_flight == 1 and a.worker.executions["a"] == 1

    await until(a_runs_step_b)
    # B's clock is far ahead: to it, A's heartbeat lapsed long ago (a paused or partitioned owner).
    await b.open(executor_id="exec-b", owner_lease=LEASE, clock=lambda: time.time() + 3600)
    await b.deploy("two", "shop/order", two_steps("B"))
    run = await b.finished(run_id)
    assert run["output"] == {"a": 1, "b": "B"}

    # A's slow step answers now; its save carries a stale token and is refused.
    async def a_let_go() -> bool:
        return a.worker.in_flight == 0 and a.executor.active_runs == 0

    await until(a_let_go)
    assert a.worker.executions["b"] == 1
    assert f"run {run_id}: another executor owns it now; letting it go" in caplog.text
    assert (await a.executor.get_run(run_id)) == run
    memos = await a.store.get_memos(run_id)
    assert [m.result for m in memos if m.step_hash == h("b")] == [b'{"data":"B"}']


async def test_runs_released_on_postgres_are_claimed_at_once_by_notification(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    dsn = postgres_server.create_database()
    # A lease of ten minutes: the sweep at each renewal would come far past the deadline
    # below, so only the notification of the release can move the run in time.
    a, b = Harness(tmp_path / "unused.db", dsn), Harness(tmp_path / "unused.db", dsn)
    await a.open(executor_id="exec-a", owner_lease=600)
    await b.open(executor_id="exec-b", owner_lease=600)
    try:
        a.worker.delay_after["a"] = float("inf")
        await a.deploy("two", "shop/order", two_steps("A"))
        await b.deploy("two", "shop/order", two_steps("B"))
        run_id = (await a.only_run(await a.send("shop/order")))["run_id"]

        async def a_ran_step_a() -> bool:
            return a.worker.executions["a"] == 1 and a.worker.in_flight == 1

        await until(a_ran_step_a)
        await a.close()
        run = await b.finished(run_id, timeout=20)
        assert run["output"] == {"a": 1, "b": "B"}
    finally:
        await b.close()
