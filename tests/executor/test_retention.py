"""History retention as the executor runs it: the period setting, rounds of
batches against a real store on an injected clock, and a SQLite file that
stays the same size under steady load."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from connect.executor.retention import DEFAULT_RETENTION, MIN_RETENTION, Retention, parse_retention
from connect.store import (
    COMPLETED,
    EventRecord,
    NewEvent,
    PendingRequest,
    Pruned,
    RunRecord,
    SqliteStore,
    StepMemo,
)
from tests.executor.harness import Harness
from tests.executor.scripted_worker import Ctx, Step

pytestmark = pytest.mark.anyio

HOUR = 3600.0


class Clock:
    """Wall time that moves only when a test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 7 * 86400.0),
        ("12h", 12 * HOUR),
        ("30m", 1800.0),
        ("1h30m", 5400.0),
        ("2w", 14 * 86400.0),
        (" 1D ", 86400.0),
        ("60s", 60.0),
        ("forever", None),
        ("Forever", None),
    ],
)
def test_parse_retention(text: str, seconds: float | None) -> None:
    assert parse_retention(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "7 days", "-1d", "soon", "1d junk", "never"])
def test_parse_retention_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration: use a number with a unit"):
        parse_retention(text)


def test_parse_retention_refuses_less_than_the_minimum() -> None:
    assert MIN_RETENTION == 60.0
    with pytest.raises(ValueError, match="shorter than the minimum of 60 s"):
        parse_retention("59s")
    assert DEFAULT_RETENTION == 7 * 86400.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"period": 0}, "period must be positive"),
        ({"interval": 0}, "interval must be positive"),
        ({"batch": 0}, "batch must be at least 1"),
        ({"pause": -1}, "must not be negative"),
    ],
)
async def test_retention_settings_are_checked(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        kw: dict[str, Any] = {"period": HOUR, **options}
        period = kw.pop("period")
        with pytest.raises(ValueError, match=message):
            Retention(store, period, **kw)
    finally:
        await store.close()


def _body(name: str, size: int) -> bytes:
    return b'{"name":"%s","data":{"pad":"%s"}}' % (name.encode(), b"x" * size)


async def _ended_runs(store: SqliteStore, prefix: str, count: int, at_ms: int, *, pad: int = 300) -> None:
    """`count` runs of three steps each that started and ended at `at_ms`, with
    their triggering events and the `function.finished` each emitted."""
    runs = [
        RunRecord(
            run_id=f"{prefix}-{i}",
            function_id="app-fn",
            app_name="app",
            event_id=f"{prefix}-e{i}",
            started_at_ms=at_ms,
            requests=[PendingRequest(f"{prefix}-q{i}")],
        )
        for i in range(count)
    ]
    await store.record_events(
        [NewEvent(EventRecord(r.event_id, "app/x", at_ms, at_ms, _body("app/x", pad)), [r]) for r in runs]
    )
    saves = []
    for r in runs:
        r.status, r.ended_at_ms, r.output, r.requests = COMPLETED, at_ms, b'{"ok":true}', []
        memos = [StepMemo(f"h{j}", b'{"data":"%s"}' % (b"y" * pad)) for j in range(3)]
        finished = EventRecord(f"{r.run_id}-fin", "inngest/function.finished", at_ms, at_ms, _body("f", pad))
        saves.append(store.save_run(r, fence=0, memos=memos, events=[NewEvent(finished, [])]))
    await asyncio.gather(*saves)


async def test_a_round_prunes_in_batches_until_nothing_older_is_left(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        retention = Retention(store, HOUR, clock=clock, batch=100, pause=0)
        await _ended_runs(store, "old", 250, int(clock.now * 1000))
        # Within the period: nothing goes.
        assert await retention.prune() == Pruned()
        clock.now += HOUR - 1
        assert await retention.prune() == Pruned()
        await _ended_runs(store, "new", 10, int(clock.now * 1000))
        clock.now += 2
        # An hour and a second after the first runs ended: all 250 go, in
        # several batches of at most 100, and the 10 newer runs stay.
        pruned = await retention.prune()
        assert (pruned.runs, pruned.steps, pruned.events) == (250, 750, 500)
        assert retention.rounds == 3
        assert await store.get_run("old-0") is None and await store.get_run("old-249") is None
        assert len(await store.runs_with_status(COMPLETED)) == 10
        assert await retention.prune() == Pruned()
    finally:
        await store.close()


def three_steps(step: Step, ctx: Ctx) -> Any:
    a = step.run("a", lambda _: 1)
    b = step.run("b", lambda _: a + 1)
    return step.run("c", lambda _: b + 1)


def sleeps(step: Step, ctx: Ctx) -> Any:
    step.run("before", lambda _: 1)
    step.sleep("nap", 86400)
    return "woke"


def waits(step: Step, ctx: Ctx) -> Any:
    step.run("before", lambda _: 1)
    return step.wait_for_event("paid", "shop/paid", timeout="7d")


async def _until(condition: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not await condition():
            await anyio.sleep(0.005)


async def test_the_executor_prunes_ended_runs_and_keeps_live_ones(tmp_path: Path) -> None:
    clock = Clock(time.time())
    hs = Harness(tmp_path / "connect.db")
    await hs.open(clock=clock, history_retention=HOUR, retention_interval=0.01)
    try:
        retention = hs.executor.retention
        assert retention is not None
        await hs.deploy("three", "shop/order", three_steps)
        await hs.deploy("sleeps", "shop/nap", sleeps)
        await hs.deploy("waits", "shop/wait", waits)
        done = []
        for i in range(3):
            event_id = await hs.send("shop/order", {"i": i})
            done.append((event_id, (await hs.finished((await hs.only_run(event_id))["run_id"]))["run_id"]))
        nap_event = await hs.send("shop/nap")
        wait_event = await hs.send("shop/wait")
        nap, wait = (await hs.only_run(nap_event))["run_id"], (await hs.only_run(wait_event))["run_id"]

        async def parked() -> bool:
            memos = [len(await hs.store.get_memos(r)) for r in (nap, wait)]
            return memos == [1, 1] and hs.executor.active_runs == 0

        await _until(parked)
        # Rounds run, and delete nothing within the hour.
        rounds = retention.rounds
        await _until(lambda: _at_least(retention, rounds + 2))
        assert all([await hs.store.get_run(r) is not None for _, r in done])

        clock.now += 2 * HOUR
        rounds = retention.rounds
        await _until(lambda: _at_least(retention, rounds + 2))

        for event_id, run_id in done:
            assert await hs.executor.get_run(run_id) is None
            assert await hs.executor.runs_for_event(event_id) == []
            assert await hs.store.get_event(event_id) is None
            assert await hs.store.get_memos(run_id) == []
        for event_id, run_id in ((nap_event, nap), (wait_event, wait)):
            run = await hs.executor.get_run(run_id)
            assert run is not None and run["status"] == "Running"
            assert await hs.store.get_event(event_id) is not None
        # The waiting run still resumes on its event, with what it stored before.
        await hs.send("shop/paid", {"ok": 1})
        resumed = await hs.finished(wait)
        assert resumed["status"] == "Completed" and resumed["output"]["data"] == {"ok": 1}
        assert hs.worker.executions["before"] == 2  # once per run, not again
    finally:
        await hs.close()


async def _at_least(retention: Retention, rounds: int) -> bool:
    return retention.rounds >= rounds


async def test_forever_keeps_everything(tmp_path: Path) -> None:
    clock = Clock(time.time())
    hs = Harness(tmp_path / "connect.db")
    await hs.open(clock=clock, history_retention=None)
    try:
        assert hs.executor.retention is None  # no task that could delete anything
        await hs.deploy("three", "shop/order", three_steps)
        event_id = await hs.send("shop/order")
        run_id = (await hs.finished((await hs.only_run(event_id))["run_id"]))["run_id"]
    finally:
        await hs.close()
    # Years later, an executor that keeps everything still has it all.
    clock.now += 10 * 365 * 86400
    await hs.open(clock=clock, history_retention=parse_retention("forever"))
    try:
        assert (await hs.only_run(event_id))["run_id"] == run_id
        assert len(await hs.store.get_memos(run_id)) == 3
    finally:
        await hs.close()


def _checkpointed_size(path: Path) -> int:
    """The database's bytes on disk once the WAL is moved into it and truncated."""
    conn = sqlite3.connect(path)
    try:
        for _ in range(100):
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                break
            time.sleep(0.01)  # the store's checkpointer thread holds the log for a moment
        else:
            raise AssertionError("the WAL could not be checkpointed")
    finally:
        conn.close()
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def test_the_sqlite_file_stays_the_same_size_under_steady_load(tmp_path: Path) -> None:
    """Every minute (of the injected clock) 200 three-step runs start and end;
    history is kept 5 minutes. Once the first runs pass the retention period
    the file stops growing: what is deleted is reused by what comes in."""
    path = tmp_path / "steady.db"
    clock = Clock(1_000_000.0)
    store = await SqliteStore.open(path)
    try:
        retention = Retention(store, 5 * 60, clock=clock, pause=0)
        sizes: dict[int, int] = {}
        deleted = Pruned()
        for minute in range(1, 41):
            await _ended_runs(store, f"m{minute}", 200, int(clock.now * 1000))
            clock.now += 60
            deleted += await retention.prune()
            if minute in (20, 40):
                sizes[minute] = _checkpointed_size(path)
        # 40 minutes of runs went in; all but the last 5 minutes' went out again.
        assert deleted.runs == 200 * 35
        assert deleted.events == 2 * 200 * 35
        assert len(await store.runs_with_status(COMPLETED)) == 200 * 5
        # Bounded growth: twice the load, (nearly) the same file. Without
        # retention the second 20 minutes would double it.
        assert sizes[40] <= sizes[20] * 1.05, sizes
    finally:
        await store.close()
