"""Flow control at run start through the executor, on SQLite and PostgreSQL:
throttle, rate limit, idempotency and singleton, registered in the wire form
the official SDKs send (`connect.executor.start_limits`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from connect.executor.start_limits import parse
from connect.executor.starts import told_invokers
from connect.executor.system_events import invoked_event, invoking_step
from connect.executor.throttle_turns import ThrottleTurns
from connect.store.base import EventRecord, NewEvent, PendingRequest, RunRecord
from connect.store.sqlite import SqliteStore
from connect.store.start_gates import (
    SKIPPED,
    Decision,
    Invoker,
    RateLimit,
    Singleton,
    SkippedStart,
    StartGate,
    Throttle,
    ThrottleWait,
    Turn,
    apply,
    decide,
    gcra,
    take_turn,
)
from protocol.payloads import Event, FunctionConfig
from tests.executor.harness import Harness, config
from tests.executor.scripted_worker import Ctx, Step

pytestmark = pytest.mark.anyio


# --- the decision, pure -------------------------------------------------------------------


def test_gcra_spaces_starts_and_allows_limit_plus_burst_at_once() -> None:
    tat = None
    starts = []
    for _ in range(5):
        at, tat = gcra(tat, 0, limit=2, period_ms=6000, burst=1)
        starts.append(at)
    assert starts == [0, 0, 0, 3000, 6000]
    # A key idle for long enough is as good as new.
    assert gcra(tat, 100_000, limit=2, period_ms=6000, burst=1)[0] == 100_000


def test_decide_checks_singleton_then_rate_limit_then_throttle() -> None:
    gate = StartGate("r", "f", Throttle("", 1, 1000), RateLimit("", 1, 1000), Singleton("", "skip"))
    assert decide(gate, 0, running="other", rate_tat=None, throttle_tat=None).skip is not None
    skipped = decide(gate, 0, running=None, rate_tat=5000, throttle_tat=None)
    assert skipped.skip is not None and skipped.throttle_tat is None
    ok = decide(gate, 0, running=None, rate_tat=None, throttle_tat=3000)
    assert (ok.skip, ok.wake_at_ms, ok.rate_tat, ok.throttle_tat, ok.hold) == (None, 3000, 1000, 4000, True)
    cancel = StartGate("r", "f", singleton=Singleton("", "cancel"))
    assert decide(cancel, 0, running="old", rate_tat=None, throttle_tat=None).cancel == "old"


def test_a_decision_applied_again_keeps_only_its_own_singleton_cancel() -> None:
    """A store batch that fails is applied again, deciding anew: the cancel the
    first attempt's singleton added does not survive a second decision that
    cancels another run, or none; a cancel the event's cancel conditions
    matched stays whatever the gate decides."""
    run = RunRecord("new", "f", "app", "e", 0, requests=[PendingRequest("req")])
    new = NewEvent(EventRecord("e", "app/x", 0, 0, b"{}"), [run], cancels=["matched"])
    assert apply(new, run, Decision(cancel="old", hold=True)) is None
    assert new.cancels == ["matched", "old"]
    apply(new, run, Decision(cancel="older", hold=True))  # the run holding the key changed meanwhile
    assert new.cancels == ["matched", "older"]
    apply(new, run, Decision(hold=True))  # the run holding the key ended meanwhile
    assert new.cancels == ["matched"]
    apply(new, run, Decision(cancel="matched", hold=True))
    apply(new, run, Decision(skip="singleton: ..."))
    assert new.cancels == ["matched"] and run.status == SKIPPED


def test_an_invoked_runs_gate_names_the_invoking_step_and_only_a_refusal_tells_it() -> None:
    invoked = invoked_event(
        parent_run_id="01PARENT",
        parent_function_id="app-parent",
        parent_app="app",
        step_hash="abc123",
        function_id="app-child",
        data={},
        expire_ms=0,
        now_ms=0,
    )
    assert invoking_step(invoked) == ("01PARENT", "abc123")
    assert invoking_step(Event(name="app/x", data={"_inngest": {"correlation_id": "01PARENT.abc123"}})) is None
    assert invoking_step(Event(name=invoked.name, data={"_inngest": {"correlation_id": "no-dot"}})) is None
    gate = StartGate("child", "app-child", invoked_by=Invoker("01PARENT", "abc123"))
    run = RunRecord("child", "app-child", "app", invoked.id, 0)
    record = EventRecord(invoked.id, invoked.name, 0, 0, b"{}")
    new = NewEvent(record, [run], gates=[gate])
    skip = SkippedStart("child", "app-child", invoked.id, "singleton: run r is running for key ''", 0)
    new.tell_invoker(gate, skip)
    new.tell_invoker(gate, skip)  # a transaction applied again
    assert len(new.memos) == 1
    assert told_invokers(new) == []  # the run was not refused after all
    run.status = SKIPPED
    assert told_invokers(new) == new.memos
    assert b"FunctionSkippedError" in new.memos[0].memo.result
    # Applied again, the gate let the run start: the invoking step is told nothing.
    assert new.tell_invoker(gate, None) is None
    assert new.memos == []


def wire(**flow: Any) -> FunctionConfig:
    return config("f", "shop/f", flow=flow)


def test_parse_reads_the_wire_forms_and_idempotency_replaces_rate_limit() -> None:
    assert parse(wire()) is None
    limits = parse(wire(throttle={"limit": 0, "period": "1m", "key": "event.data.user"}))
    assert limits is not None and limits.throttle is not None
    assert (limits.throttle.limit, limits.throttle.period_ms, limits.throttle.burst) == (1, 60_000, 0)
    both = parse(wire(rateLimit={"limit": 5, "period": "1h"}, idempotency="event.data.order"))
    assert both is not None and both.rate_limit is not None
    assert (both.rate_limit.limit, both.rate_limit.period_ms, both.rate_limit.idempotency) == (1, 86_400_000, True)
    assert parse(wire(throttle={"limit": 1, "period": "soon"})) is None  # unreadable: left out, logged


def test_keys_are_evaluated_against_the_event() -> None:
    limits = parse(
        wire(
            throttle={"limit": 1, "period": "1s", "key": "event.data.user"},
            rateLimit={"limit": 1, "period": "1s", "key": "event.data.vip == false"},
            singleton={"mode": "skip", "key": "event.data.missing.field"},
        )
    )
    assert limits is not None
    gate = limits.gate("run", Event("shop/f", {"user": "ada", "vip": False}, "e1"))
    assert gate is not None and gate.throttle is not None and gate.rate_limit is not None
    assert (gate.throttle.key, gate.rate_limit.key) == ("ada", "true")
    assert gate.singleton is not None and gate.singleton.key == ""  # not evaluable: the empty key
    # A rate-limit key evaluating to false exempts the event from the rate limit.
    exempt = limits.gate("run", Event("shop/f", {"user": 7, "vip": True}, "e2"))
    assert exempt is not None and exempt.rate_limit is None and exempt.throttle is not None
    assert exempt.throttle.key == "7"


def test_a_throttle_with_a_priority_orders_the_runs_it_holds_back() -> None:
    limits = parse(wire(throttle={"limit": 1, "period": "2s"}, priority={"run": "event.data.p"}))
    assert limits is not None and limits.ordered
    gate = limits.gate("run", Event("shop/f", {"p": 600}, "e1"), 700_000)
    assert gate is not None and gate.throttle is not None and gate.throttle.order == 100_000
    clamped = limits.gate("run", Event("shop/f", {"p": 9000}, "e2"), 700_000)
    assert clamped is not None and clamped.throttle is not None and clamped.throttle.order == 100_000
    plain = parse(wire(throttle={"limit": 1, "period": "2s"}))
    assert plain is not None and not plain.ordered
    unordered = plain.gate("run", Event("shop/f", {"p": 600}, "e1"), 700_000)
    assert unordered is not None and unordered.throttle is not None and unordered.throttle.order is None


def test_a_turn_that_came_goes_to_the_first_in_line() -> None:
    me = ThrottleWait("me", order=5, seq=1000, turn_ms=1000)
    vip = ThrottleWait("vip", order=1, seq=3000, turn_ms=3000)
    assert take_turn(me, 999, due=0, ahead=1, later=vip) == Turn(wait_ms=1000)  # not yet
    assert take_turn(me, 1000, due=1, ahead=0, later=None) == Turn()  # first in line
    assert take_turn(me, 1000, due=1, ahead=1, later=vip) == Turn(wait_ms=3000, granted="vip")
    # Two turns due, one run ahead (whose turn came too): both start, each on its own turn.
    assert take_turn(me, 1000, due=2, ahead=1, later=None) == Turn()


async def test_a_start_in_no_throttle_line_keeps_its_own_wake_time(tmp_path: Path) -> None:
    """A request of an ordered-throttle function waiting for something else (a
    retry's backoff) is in no line: it waits until its own time, not less."""
    store = await SqliteStore.open(tmp_path / "connect.db")
    try:
        turns = ThrottleTurns(store, time.time)
        await turns.start()
        started = time.monotonic()
        await turns.take("run-retrying", int(time.time() * 1000) + 300)
        assert time.monotonic() - started >= 0.25
    finally:
        await store.close()


# --- through the executor, both engines ---------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def hs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    dsn = None
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_server").create_database()
    harness = Harness(tmp_path / "connect.db", dsn)
    await harness.open()
    try:
        yield harness
    finally:
        await harness.close()


class Starts:
    """When each run first reached the worker (wall clock)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def __call__(self, step: Step, ctx: Ctx) -> Any:
        self.at.setdefault(ctx.run_id, time.time())
        seconds = ctx.event.get("data", {}).get("sleep")
        if seconds:
            step.sleep("nap", seconds)
        return ctx.event.get("data", {}).get("n")


async def all_finished(hs: Harness, event_ids: list[str], timeout: float = 30.0) -> list[dict[str, Any]]:
    runs = []
    for event_id in event_ids:
        runs.append(await hs.finished((await hs.only_run(event_id))["run_id"], timeout))
    return runs


async def test_throttle_starts_three_runs_at_least_a_period_apart(hs: Harness) -> None:
    starts = Starts()
    # The TypeScript SDK's form: no burst.
    await hs.deploy("f", "shop/f", starts, flow={"throttle": {"limit": 1, "period": "2s"}})
    sent = time.time()
    events = [await hs.send("shop/f", {"n": i}) for i in range(3)]
    runs = await all_finished(hs, events)
    assert [r["status"] for r in runs] == ["Completed"] * 3
    at = [starts.at[r["run_id"]] for r in runs]
    assert at[0] - sent < 1.5
    # Due 2 s apart from when the events were recorded (after `sent`).
    assert at[1] - sent >= 1.99 and at[2] - sent >= 3.99, at
    assert at[1] - at[0] >= 1.5 and at[2] - at[1] >= 1.5, at


async def test_throttle_burst_starts_one_more_at_once(hs: Harness) -> None:
    starts = Starts()
    # The Python SDK's form: burst 1.
    await hs.deploy("f", "shop/f", starts, flow={"throttle": {"limit": 1, "period": "2s", "burst": 1}})
    sent = time.time()
    events = [await hs.send("shop/f", {"n": i}) for i in range(3)]
    runs = await all_finished(hs, events)
    at = [starts.at[r["run_id"]] for r in runs]
    assert at[0] - sent < 1.5 and at[1] - sent < 1.5, at
    assert at[2] - sent >= 1.99, at


async def test_rate_limit_creates_limit_runs_and_records_the_rest_as_skipped(hs: Harness) -> None:
    await hs.deploy("f", "shop/f", Starts(), flow={"rateLimit": {"limit": 2, "period": "1m", "key": "event.data.k"}})
    events = [await hs.send("shop/f", {"n": i, "k": "a"}) for i in range(5)]
    other = await hs.send("shop/f", {"k": "b"})
    runs = await all_finished(hs, [*events[:2], other])
    assert [r["status"] for r in runs] == ["Completed"] * 3
    for event_id in events[2:]:
        [skipped] = await hs.executor.runs_for_event(event_id)
        assert skipped["status"] == "Skipped" and skipped["function_id"] == "shop-f"
        assert skipped["skip_reason"].startswith("rate limit 2 per 60s: key 'a'")
        assert await hs.executor.get_run(skipped["run_id"]) is None


async def test_idempotency_starts_one_run_per_key(hs: Harness) -> None:
    await hs.deploy("f", "shop/f", Starts(), flow={"idempotency": "event.data.order"})
    first, again, other = [await hs.send("shop/f", {"order": o}) for o in ("o-1", "o-1", "o-2")]
    assert [r["status"] for r in await all_finished(hs, [first, other])] == ["Completed"] * 2
    [skipped] = await hs.executor.runs_for_event(again)
    assert skipped["status"] == "Skipped" and skipped["skip_reason"].startswith("idempotency: key 'o-1'")


async def test_singleton_skip_drops_new_runs_while_one_runs(hs: Harness) -> None:
    await hs.deploy("f", "shop/f", Starts(), flow={"singleton": {"mode": "skip", "key": "event.data.k"}})
    first = await hs.send("shop/f", {"k": "a", "sleep": 1.0})
    skipped_id = await hs.send("shop/f", {"k": "a"})
    other = await hs.send("shop/f", {"k": "b"})
    [skipped] = await hs.executor.runs_for_event(skipped_id)
    assert skipped["status"] == "Skipped" and skipped["skip_reason"].startswith("singleton")
    assert [r["status"] for r in await all_finished(hs, [first, other])] == ["Completed"] * 2
    # The key is free again once the run ended.
    later = await hs.send("shop/f", {"k": "a"})
    assert [r["status"] for r in await all_finished(hs, [later])] == ["Completed"]


async def test_singleton_cancel_cancels_the_running_run_and_starts_the_new_one(hs: Harness) -> None:
    await hs.deploy("f", "shop/f", Starts(), flow={"singleton": {"mode": "cancel"}})
    first = await hs.send("shop/f", {"sleep": 30})
    first_run = await hs.only_run(first)
    second = await hs.send("shop/f", {"n": 2})
    [old] = await all_finished(hs, [first], timeout=10)
    assert old["status"] == "Cancelled" and old["run_id"] == first_run["run_id"]
    [new] = await all_finished(hs, [second])
    assert (new["status"], new["output"]) == ("Completed", 2)


async def test_a_restart_keeps_the_throttle_queue(tmp_path: Path) -> None:
    path = tmp_path / "connect.db"
    flow = {"throttle": {"limit": 1, "period": "2s"}}
    hs = Harness(path)
    await hs.open()
    starts = Starts()
    await hs.deploy("f", "shop/f", starts, flow=flow)
    sent = time.time()
    events = [await hs.send("shop/f", {"n": i}) for i in range(3)]
    run_ids = [(await hs.only_run(e))["run_id"] for e in events]
    await hs.close()  # the last two are queued, not started

    again = Harness(path)
    await again.open()
    try:
        await again.deploy("f", "shop/f", starts, flow=flow)
        runs = [await again.finished(run_id, 30) for run_id in run_ids]
        assert [r["status"] for r in runs] == ["Completed"] * 3
        assert starts.at[run_ids[1]] - sent >= 1.99 and starts.at[run_ids[2]] - sent >= 3.99, starts.at
        # The state survived too: a fourth run queues behind the third.
        fourth = await again.send("shop/f", {"n": 3})
        [run] = await all_finished(again, [fourth])
        assert starts.at[run["run_id"]] - sent >= 5.99
    finally:
        await again.close()


async def test_a_function_without_flow_control_has_no_gate(hs: Harness) -> None:
    await hs.deploy("f", "shop/f", Starts())
    events = [await hs.send("shop/f", {"n": i}) for i in range(5)]
    assert [r["status"] for r in await all_finished(hs, events)] == ["Completed"] * 5
    assert parse(hs.configs["f"]) is None


async def test_a_key_evaluates_per_event(hs: Harness) -> None:
    starts = Starts()
    await hs.deploy("f", "shop/f", starts, flow={"throttle": {"limit": 1, "period": "10s", "key": "event.data.k"}})
    events = [await hs.send("shop/f", {"k": k}) for k in ("a", "b", "c")]
    with anyio.fail_after(5):
        runs = await all_finished(hs, events)
    assert [r["status"] for r in runs] == ["Completed"] * 3
