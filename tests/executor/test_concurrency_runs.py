"""Concurrency limits in the executor over a real store: what a waiting step
does with `timeouts.start`, cancellation and a run's end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from connect.executor.concurrency import SlotGrants
from connect.store import SlotClaim, SqliteStore
from protocol.payloads import ConcurrencyLimit
from tests.executor.harness import APP, Harness
from tests.executor.scripted_worker import Ctx, Step

pytestmark = pytest.mark.anyio


async def deploy_limited(harness: Harness, fn_id: str, fn: Any, limit: int, **kw: Any) -> None:
    await harness.deploy(fn_id, f"shop/{fn_id}", fn, **kw)
    harness.configs[fn_id] = msgspec.structs.replace(
        harness.configs[fn_id], concurrency=[ConcurrencyLimit(limit=limit)]
    )
    await harness.executor.sync_app(APP, "v2", list(harness.configs.values()))


def slow(step: Step, ctx: Ctx) -> Any:
    step.run("a", lambda _: 1)
    return step.run("b", lambda _: "done")


async def until_in_flight(harness: Harness, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while harness.worker.in_flight == 0:
        assert time.monotonic() < deadline, "no request reached the worker"
        await asyncio.sleep(0.005)


async def test_a_step_waiting_for_its_slot_counts_toward_timeouts_start(harness: Harness) -> None:
    # Requests after step "a" take 2 s each: the first run holds the slot that long.
    harness.worker.delay_after["a"] = 2.0
    await deploy_limited(harness, "gated", slow, 1, timeouts={"start": "1s"})
    first = (await harness.only_run(await harness.send("shop/gated")))["run_id"]
    await until_in_flight(harness)
    started = time.monotonic()
    second = (await harness.only_run(await harness.send("shop/gated")))["run_id"]
    run = await harness.finished(second, timeout=10)
    assert run["status"] == "Cancelled"
    assert 0.8 < time.monotonic() - started < 1.9  # before the first run let go of the slot
    assert (await harness.finished(first, timeout=10))["status"] == "Completed"
    assert harness.worker.max_in_flight == 1


async def test_a_run_cancelled_while_waiting_leaves_the_line(harness: Harness) -> None:
    harness.worker.delay_after["a"] = 0.5
    await deploy_limited(harness, "line", slow, 1)
    first = (await harness.only_run(await harness.send("shop/line")))["run_id"]
    await until_in_flight(harness)
    waiting = (await harness.only_run(await harness.send("shop/line")))["run_id"]
    third = (await harness.only_run(await harness.send("shop/line")))["run_id"]
    assert await harness.executor.cancel_run(waiting)
    assert (await harness.finished(waiting))["status"] == "Cancelled"
    for run_id in (first, third):
        assert (await harness.finished(run_id))["status"] == "Completed"
    assert harness.worker.max_in_flight == 1
    # Nothing is left held or waiting (released in the background once each run ended).
    deadline = time.monotonic() + 5
    while await harness.store.slots_held(f"fn:{APP}-line:"):
        assert time.monotonic() < deadline, "slots still held after every run ended"
        await asyncio.sleep(0.01)
    assert await harness.store.release_run_slots(waiting) == []


async def test_a_grant_not_heard_is_found_by_asking_again(tmp_path: Path) -> None:
    """Two store objects on one SQLite file hear only their own notifications, as
    processes that lost one would: the waiter learns of its grant by asking again."""
    here, there = await SqliteStore.open(tmp_path / "s.db"), await SqliteStore.open(tmp_path / "s.db")
    try:
        grants = SlotGrants(here, sweep=0.2)
        await grants.start()
        claims = [SlotClaim("k", 1)]
        assert await there.acquire_slots("holder", "run0", claims, 0)
        waiting = asyncio.create_task(grants.acquire("waiter", "run1", claims, 1))
        await asyncio.sleep(0.05)
        assert not waiting.done() and grants.waiting == 1
        assert await there.release_slots(["holder"]) == ["waiter"]  # announced on `there` only
        await asyncio.wait_for(waiting, 5)
        assert waiting.result() is True and grants.waiting == 0
        # With a deadline and no room: False, still in line.
        assert not await grants.acquire("late", "run2", claims, 2, timeout=0.3)
        assert await there.release_slots(["waiter"]) == ["late"]
    finally:
        await here.close()
        await there.close()
