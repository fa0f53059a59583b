"""Debounce and event batching in the executor, on SQLite and on PostgreSQL:
which runs start, with which events, and when (timings asserted as margins)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from connect.api.stored_runs import StoredRuns
from connect.executor import Executor
from connect.executor.held_starts import HeldRule, hold_for, rule_of
from connect.store import BATCH, DEBOUNCE, PostgresStore, Store
from protocol.payloads import IncomingEvent
from tests.executor.harness import Harness, config
from tests.executor.scripted_worker import Ctx, ScriptedWorker, Step
from tests.postgres import PostgresServer

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgres"])
async def hs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    dsn = None
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        dsn = server.create_database()
    harness = Harness(tmp_path / "connect.db", dsn)
    await harness.open()
    try:
        yield harness
    finally:
        await harness.close()


def events_of(_step: Step, ctx: Ctx) -> dict[str, Any]:
    return {"event": ctx.event["data"], "events": [e["data"] for e in ctx.events]}


async def runs_of(hs: Harness, event_id: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The runs `event_id` started, once there are `count` of them."""
    with anyio.fail_after(timeout):
        while True:
            runs = await hs.executor.runs_for_event(event_id)
            if len(runs) >= count:
                return runs
            await anyio.sleep(0.02)


async def ended(hs: Harness, event_id: str) -> dict[str, Any]:
    [run] = await runs_of(hs, event_id)
    return await hs.finished(run["run_id"])


async def started_ms(hs: Harness, run: dict[str, Any]) -> int:
    record = await hs.store.get_run(run["run_id"])
    assert record is not None
    return record.started_at_ms


def ms() -> int:
    return int(time.time() * 1000)


async def test_a_burst_makes_one_run_with_the_last_event_after_the_period(hs: Harness) -> None:
    await hs.deploy("digest", "app/x", events_of, debounce={"period": "1s", "key": "event.data.user"})
    ids = []
    for i in range(5):
        last_sent = ms()
        ids.append(await hs.send("app/x", {"user": "u1", "n": i}))
        await anyio.sleep(0.1)
    other = await hs.send("app/x", {"user": "u2", "n": 9})
    run = await ended(hs, ids[-1])
    assert run["status"] == "Completed"
    assert run["output"] == {"event": {"user": "u1", "n": 4}, "events": [{"user": "u1", "n": 4}]}
    assert await started_ms(hs, run) >= last_sent + 1000  # a period after the last event
    for event_id in ids[:-1]:
        assert await hs.executor.runs_for_event(event_id) == []
    # Another key debounces apart.
    assert (await ended(hs, other))["output"]["event"] == {"user": "u2", "n": 9}


async def test_a_debounce_timeout_caps_the_delay(hs: Harness) -> None:
    await hs.deploy("digest", "app/x", events_of, debounce={"period": "1s", "timeout": "2s"})
    ids: list[str] = []
    first_sent = ms()
    while ms() - first_sent < 3500:  # an event every 0.3 s: the period alone would never pass
        ids.append(await hs.send("app/x", {"n": len(ids)}))
        await anyio.sleep(0.3)
    started = []
    for event_id in ids:
        started += await hs.executor.runs_for_event(event_id)
    assert started, "the timeout started no run while events kept coming"
    first = min([await started_ms(hs, r) for r in started])
    assert first_sent + 2000 <= first <= first_sent + 2000 + 1000


async def test_a_full_batch_starts_at_once_with_its_events_in_order(hs: Harness) -> None:
    await hs.deploy("bulk", "app/x", events_of, batch_events={"maxSize": 3, "timeout": "60s"})
    sent = ms()
    ids = [await hs.send("app/x", {"n": i}) for i in range(3)]
    run = await ended(hs, ids[0])
    assert run["output"] == {"event": {"n": 0}, "events": [{"n": 0}, {"n": 1}, {"n": 2}]}
    assert await started_ms(hs, run) - sent < 5000  # long before the 60 s timeout


async def test_a_partial_batch_starts_after_its_timeout(hs: Harness) -> None:
    await hs.deploy("bulk", "app/x", events_of, batch_events={"maxSize": 10, "timeout": "1s"})
    opened = ms()
    ids = [await hs.send("app/x", {"n": i}) for i in range(2)]
    run = await ended(hs, ids[0])
    assert run["output"]["events"] == [{"n": 0}, {"n": 1}]
    assert await started_ms(hs, run) >= opened + 1000


async def test_an_event_failing_the_batch_if_runs_alone_at_once_and_keys_batch_apart(hs: Harness) -> None:
    await hs.deploy(
        "bulk",
        "app/x",
        events_of,
        batch_events={"maxSize": 2, "timeout": "60s", "key": "event.data.team", "if": "event.data.batch == true"},
    )
    alone = await hs.send("app/x", {"team": "a", "batch": False, "n": 0})
    a1 = await hs.send("app/x", {"team": "a", "batch": True, "n": 1})
    b1 = await hs.send("app/x", {"team": "b", "batch": True, "n": 2})
    a2 = await hs.send("app/x", {"team": "a", "batch": True, "n": 3})
    assert (await ended(hs, alone))["output"]["events"] == [{"team": "a", "batch": False, "n": 0}]
    batched = await ended(hs, a1)
    assert [e["n"] for e in batched["output"]["events"]] == [1, 3]
    # It joined a1's run, which its event lists.
    assert [r["run_id"] for r in await hs.executor.runs_for_event(a2)] == [batched["run_id"]]
    assert await hs.executor.runs_for_event(b1) == []  # team b's batch is still open


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_a_restart_loses_no_pending_debounce_or_batch(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    dsn = None
    if engine == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        dsn = server.create_database()
    hs = Harness(tmp_path / "connect.db", dsn)
    await hs.open()
    # Due 2 s after the events: long after the executor stopped.
    await hs.deploy("digest", "app/d", events_of, debounce={"period": "2s"})
    await hs.deploy("bulk", "app/b", events_of, batch_events={"maxSize": 10, "timeout": "2s"})
    debounced = await hs.send("app/d", {"n": 1})
    batched = [await hs.send("app/b", {"n": i}) for i in range(2)]
    assert await hs.executor.runs_for_event(debounced) == await hs.executor.runs_for_event(batched[0]) == []
    await hs.close()
    await anyio.sleep(2.2)  # both came due while nothing ran
    hs = Harness(tmp_path / "connect.db", dsn)
    await hs.open()
    for fn_id in ("digest", "bulk"):
        hs.worker.functions[f"shop-{fn_id}"] = events_of
    try:
        assert (await ended(hs, debounced))["output"]["event"] == {"n": 1}
        assert (await ended(hs, batched[0]))["output"]["events"] == [{"n": 0}, {"n": 1}]
    finally:
        await hs.close()


# --- the rules as registered -----------------------------------------------------------------


def test_rules_are_read_from_the_registered_config() -> None:
    debounce = rule_of(config("f", "e", debounce={"period": "1m30s", "key": "event.data.id", "timeout": "2h"}))
    assert debounce is not None
    assert (debounce.kind, debounce.period_ms, debounce.timeout_ms) == (DEBOUNCE, 90_000, 7_200_000)
    batch = rule_of(config("f", "e", batch_events={"maxSize": 5, "timeout": "5s", "if": "event.data.ok"}))
    assert batch is not None
    assert (batch.kind, batch.max_size, batch.timeout_ms) == (BATCH, 5, 5000)
    assert rule_of(config("f", "e")) is None
    # Unreadable: logged, and the function starts runs at once.
    assert rule_of(config("f", "e", debounce={"period": "soon"})) is None


def test_keys_and_conditions() -> None:
    rule = rule_of(
        config("f", "e", batch_events={"maxSize": 5, "timeout": "5s", "key": "event.data.id", "if": "event.data.ok"})
    )
    assert isinstance(rule, HeldRule)

    def hold(data: dict[str, Any]) -> str | None:
        found = hold_for(rule, "f", "app", 3, {"name": "e", "data": data, "id": "1", "ts": 1, "user": {}})
        return None if found is None else found.key

    assert hold({"id": "a", "ok": True}) == "a"
    assert hold({"id": 7, "ok": True}) == "7"
    assert hold({"ok": True}) == ""  # no value for the key: the function's shared batch
    assert hold({"id": "a", "ok": False}) is None  # runs alone at once
    assert hold({"id": "a", "ok": "yes"}) is None  # not a boolean true


# --- split roles ------------------------------------------------------------------------------


async def test_with_split_roles_each_debounce_and_batch_starts_once(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """An API process records the events (StoredRuns), two executors share the
    database: every debounce and batch starts exactly one run."""
    dsn = postgres_server.create_database()
    stores: list[Store] = [await PostgresStore.open(dsn) for _ in range(3)]
    api = StoredRuns(stores[0])
    executors: list[Executor] = []
    try:
        await api.start()
        for i, store in enumerate(stores[1:]):
            worker = ScriptedWorker(store)
            worker.worker_ready.set()
            worker.functions["shop-digest"] = worker.functions["shop-bulk"] = events_of
            executor = Executor(store, worker, shared=True, executor_id=f"exec-{i}", backoff_base=0.001)
            await executor.start()
            executors.append(executor)
        digest = config("digest", "app/d", debounce={"period": "1s", "key": "event.data.user"})
        bulk = config("bulk", "app/b", batch_events={"maxSize": 3, "timeout": "1s"})
        await executors[0].sync_app("shop", "v1", [digest, bulk])
        with anyio.fail_after(15):
            while len(api.registered_functions()) < 2:
                await anyio.sleep(0.02)
        sent = await api.send_events(
            [IncomingEvent(name="app/d", data={"user": f"u{i % 2}", "n": i}) for i in range(10)]
            + [IncomingEvent(name="app/b", data={"n": i}) for i in range(7)]
        )
        debounced, batched = sent[:10], sent[10:]
        conn = await asyncpg.connect(dsn)
        try:
            with anyio.fail_after(20):
                while True:
                    rows = await conn.fetch(
                        "SELECT function_id, event_id, status FROM runs ORDER BY function_id, event_id"
                    )
                    if len(rows) == 5 and all(r["status"] == "Completed" for r in rows):
                        break
                    await anyio.sleep(0.05)
            owners = {r["owner"] for r in await conn.fetch("SELECT owner FROM runs")}
        finally:
            await conn.close()
        assert sorted(r["event_id"] for r in rows if r["function_id"] == "shop-digest") == sorted(debounced[-2:])
        assert sorted(r["event_id"] for r in rows if r["function_id"] == "shop-bulk") == sorted(
            [batched[0], batched[3], batched[6]]
        )
        assert owners <= {"exec-0", "exec-1"}
        for event_id in (batched[0], batched[3]):
            run = (await executors[0].runs_for_event(event_id))[0]
            assert len(run["output"]["events"]) == 3
    finally:
        for executor in executors:
            await executor.stop()
        await api.stop()
        for store in stores:
            await store.close()


# --- with the flow control of run starts (throttle, rate limit) ---------------------------


def when(_step: Step, ctx: Ctx) -> dict[str, Any]:
    return {"n": ctx.event["data"]["n"], "at_ms": ms()}


async def test_one_event_is_throttled_for_one_function_and_held_for_another(hs: Harness) -> None:
    await hs.deploy("throttled", "app/both", when, flow={"throttle": {"limit": 1, "period": "2s", "burst": 0}})
    await hs.deploy("digest", "app/both", when, debounce={"period": "1s"})
    first = await hs.send("app/both", {"n": 0})
    second = await hs.send("app/both", {"n": 1})
    # The throttled function runs for each event, a period apart.
    ran = []
    for event_id in (first, second):
        [run] = [r for r in await runs_of(hs, event_id) if r["function_id"] == "shop-throttled"]
        ran.append((await hs.finished(run["run_id"]))["output"])
    assert [r["n"] for r in ran] == [0, 1]
    assert ran[1]["at_ms"] - ran[0]["at_ms"] >= 1500
    # The debounced one once, with the last event; the first started nothing of it.
    [digest] = [r for r in await runs_of(hs, second, count=2) if r["function_id"] == "shop-digest"]
    assert (await hs.finished(digest["run_id"]))["output"]["n"] == 1
    assert [r["function_id"] for r in await hs.executor.runs_for_event(first)] == ["shop-throttled"]


async def test_an_event_a_batch_lets_through_passes_the_rate_limit(hs: Harness) -> None:
    await hs.deploy(
        "bulk",
        "app/x",
        events_of,
        batch_events={"maxSize": 2, "timeout": "60s", "if": "event.data.batch == true"},
        flow={"rateLimit": {"limit": 1, "period": "60s"}},
    )
    alone = await hs.send("app/x", {"batch": False, "n": 0})
    over = await hs.send("app/x", {"batch": False, "n": 1})
    batched = [await hs.send("app/x", {"batch": True, "n": n}) for n in (2, 3)]
    assert (await ended(hs, alone))["output"]["events"] == [{"batch": False, "n": 0}]
    [skip] = await hs.store.skipped_starts(over)
    assert skip.reason.startswith("rate limit 1 per 60s")
    assert [r["status"] for r in await hs.executor.runs_for_event(over)] == ["Skipped"]
    # Held events start no run of their own, so the rate limit does not refuse the batch.
    run = await ended(hs, batched[0])
    assert [e["n"] for e in run["output"]["events"]] == [2, 3]
