"""Events whose notification never arrived still resume waits and cancel runs.

Two SQLite store objects on one file hear nothing of each other's
notifications: an event recorded through the second reaches the executor on
the first only by its own look at the store (at every ownership heartbeat,
here every 0.2 s). That is the path lost notifications take on PostgreSQL.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from connect.store import SqliteStore
from connect.store.base import EventRecord, NewEvent
from protocol.ids import new_ulid
from protocol.payloads import Event, json_encoder
from tests.executor.harness import Harness
from tests.executor.scripted_worker import Ctx, Step

pytestmark = pytest.mark.anyio


def waiter(step: Step, ctx: Ctx) -> Any:
    got = step.wait_for_event("w", "billing/paid", "async.data.id == event.data.id", "60s")
    return None if got is None else got["data"]


def sleeper(step: Step, ctx: Ctx) -> Any:
    step.sleep("nap", 60)
    return "woke"


async def record_elsewhere(path: Path, name: str, data: dict[str, Any]) -> None:
    other = await SqliteStore.open(path)
    try:
        now_ms = int(time.time() * 1000)
        event = Event(name=name, data=data, id=new_ulid(), ts=now_ms)
        record = EventRecord(event.id, event.name, event.ts, now_ms, json_encoder.encode(event))
        assert await other.record_events([NewEvent(record, [])]) == [True]
    finally:
        await other.close()


async def test_a_wait_and_a_cancel_condition_match_events_found_by_the_catch_up(tmp_path: Path) -> None:
    hs = Harness(tmp_path / "connect.db")
    await hs.open(shared=True, owner_lease=0.6)
    try:
        await hs.deploy("wait", "billing/invoice", waiter)
        await hs.deploy("nap", "billing/nap", sleeper, cancel=[{"event": "billing/stop", "if": "async.data.id == 7"}])
        waiting = (await hs.only_run(await hs.send("billing/invoice", {"id": 1})))["run_id"]
        napping = (await hs.only_run(await hs.send("billing/nap", {"id": 7})))["run_id"]
        with anyio.fail_after(10):
            while hs.executor.paused_watches < 2 or hs.executor.active_runs:
                await anyio.sleep(0.01)
        await record_elsewhere(hs.path, "billing/paid", {"id": 1, "amount": 3})
        await record_elsewhere(hs.path, "billing/stop", {"id": 7})
        run = await hs.finished(waiting)
        assert run["status"] == "Completed" and run["output"] == {"id": 1, "amount": 3}
        assert (await hs.finished(napping))["status"] == "Cancelled"
    finally:
        await hs.close()


async def test_an_event_from_before_the_wait_never_matches_it(tmp_path: Path) -> None:
    hs = Harness(tmp_path / "connect.db")
    await hs.open(shared=True, owner_lease=0.6)
    try:
        await hs.deploy("wait", "billing/invoice", waiter)
        await record_elsewhere(hs.path, "billing/paid", {"id": 2, "early": True})
        run_id = (await hs.only_run(await hs.send("billing/invoice", {"id": 2})))["run_id"]
        with anyio.fail_after(10):
            while hs.executor.paused_watches < 1:
                await anyio.sleep(0.01)
        await record_elsewhere(hs.path, "billing/paid", {"id": 2, "early": False})
        run = await hs.finished(run_id)
        assert run["output"] == {"id": 2, "early": False}
    finally:
        await hs.close()
