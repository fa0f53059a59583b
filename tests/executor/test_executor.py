from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from protocol.payloads import IncomingEvent
from tests.executor.harness import APP, Harness
from tests.executor.scripted_worker import (
    AtCapacity,
    Ctx,
    NonRetriable,
    NoWorker,
    RetryAfter,
    Step,
    WorkerStoppedResponding,
    h,
)

pytestmark = pytest.mark.anyio

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def three_steps(step: Step, ctx: Ctx) -> Any:
    a = step.run("a", lambda _: 1)
    b = step.run("b", lambda _: a + 1)
    c = step.run("c", lambda _: b + 1)
    return {"sum": a + b + c, "who": ctx.event["data"]["who"]}


async def test_three_step_run_completes(harness: Harness) -> None:
    await harness.deploy("three", "shop/order", three_steps)
    event_id = await harness.send("shop/order", {"who": "ann"})
    run = await harness.finished((await harness.only_run(event_id))["run_id"])

    assert run["status"] == "Completed"
    assert run["output"] == {"sum": 6, "who": "ann"}
    assert harness.worker.executions == {"a": 1, "b": 1, "c": 1}
    requests = harness.worker.requests
    assert [len(r["steps"]) for r in requests] == [0, 1, 2, 3]
    assert all(r["step_id"] == "step" and r["ctx"]["attempt"] == 0 for r in requests)
    last = requests[-1]
    assert last["steps"][h("a")] == {"data": 1}
    assert last["ctx"]["stack"] == {"stack": [h("a"), h("b"), h("c")], "current": 3}
    assert last["ctx"]["max_attempts"] == 5
    assert last["ctx"]["fn_id"] == f"{APP}-three"
    assert last["ctx"]["run_id"] == run["run_id"]
    assert last["use_api"] is False and last["ctx"]["use_api"] is False
    assert last["event"] == last["events"][0]
    assert last["event"]["id"] == event_id and isinstance(last["event"]["ts"], int)
    # Every request had its own id.
    assert len(set(harness.worker.request_ids)) == 4


async def test_run_view_and_runs_for_event_shape(harness: Harness) -> None:
    await harness.deploy("one", "shop/a", lambda step, ctx: "done")
    await harness.deploy("two", "shop/a", lambda step, ctx: 2)
    event_id = await harness.send("shop/a")
    runs = await harness.executor.runs_for_event(event_id)
    assert len(runs) == 2
    for run in runs:
        assert set(run) == {"run_id", "function_id", "status", "output", "event_id", "run_started_at", "ended_at"}
        assert run["event_id"] == event_id
        assert RFC3339.match(run["run_started_at"])
    assert {r["function_id"] for r in runs} == {f"{APP}-one", f"{APP}-two"}
    done = [await harness.finished(r["run_id"]) for r in runs]
    assert {d["function_id"]: d["output"] for d in done} == {f"{APP}-one": "done", f"{APP}-two": 2}
    assert all(RFC3339.match(d["ended_at"]) for d in done)
    assert await harness.executor.runs_for_event("nope") == []
    assert await harness.executor.get_run("nope") is None


async def test_function_error_retried_until_success_on_third_attempt(harness: Harness) -> None:
    def flaky(step: Step, ctx: Ctx) -> Any:
        if ctx.attempt < 2:
            raise RuntimeError(f"boom {ctx.attempt}")
        return {"attempt": ctx.attempt}

    await harness.deploy("flaky", "shop/flaky", flaky)
    run = await harness.finished((await harness.only_run(await harness.send("shop/flaky")))["run_id"])
    assert run["status"] == "Completed"
    assert run["output"] == {"attempt": 2}
    assert [r["ctx"]["attempt"] for r in harness.worker.requests] == [0, 1, 2]
    assert len(set(harness.worker.request_ids)) == 3  # a retry is a new request


async def test_step_error_retries_the_same_step_then_memoizes(harness: Harness) -> None:
    def body(attempt: int) -> str:
        if attempt < 2:
            raise ValueError("not yet")
        return "ok"

    await harness.deploy("stepretry", "shop/sr", lambda step, ctx: step.run("s", body))
    run = await harness.finished((await harness.only_run(await harness.send("shop/sr")))["run_id"])
    assert run["status"] == "Completed" and run["output"] == "ok"
    assert harness.worker.executions["s"] == 3
    # attempt 0 and 1 fail (StepError), attempt 2 succeeds, then discovery at attempt 0.
    assert [r["ctx"]["attempt"] for r in harness.worker.requests] == [0, 1, 2, 0]


async def test_step_failing_every_attempt_stores_error_memo(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        def body(attempt: int) -> Any:
            raise ValueError("always")

        try:
            step.run("s", body)
        except Exception as exc:
            return {"caught": str(exc)}
        return None

    await harness.deploy("stepfail", "shop/sf", fn, retries=1)
    run = await harness.finished((await harness.only_run(await harness.send("shop/sf")))["run_id"])
    assert run["status"] == "Completed"
    assert run["output"] == {"caught": "always"}
    last = harness.worker.requests[-1]
    assert last["steps"][h("s")] == {"error": {"name": "ValueError", "message": "always", "stack": "tb"}}
    assert last["ctx"]["max_attempts"] == 2


async def test_no_retry_fails_with_error_output(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        raise NonRetriable("give up")

    await harness.deploy("fatal", "shop/fatal", fn)
    run = await harness.finished((await harness.only_run(await harness.send("shop/fatal")))["run_id"])
    assert run["status"] == "Failed"
    assert run["output"] == {"name": "NonRetriableError", "message": "give up", "stack": "tb"}
    assert len(harness.worker.requests) == 1
    assert run["ended_at"] is not None


async def test_attempts_run_out(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        raise RuntimeError("still broken")

    await harness.deploy("broken", "shop/broken", fn, retries=2)
    run = await harness.finished((await harness.only_run(await harness.send("shop/broken")))["run_id"])
    assert run["status"] == "Failed"
    assert run["output"]["message"] == "still broken"
    assert [r["ctx"]["attempt"] for r in harness.worker.requests] == [0, 1, 2]


async def test_retry_after_is_honoured_and_clamped(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        if ctx.attempt == 0:
            raise RetryAfter("later", "0")  # clamped up to 1 s
        return "ok"

    await harness.deploy("later", "shop/later", fn)
    start = anyio.current_time()
    run = await harness.finished((await harness.only_run(await harness.send("shop/later")))["run_id"])
    assert run["status"] == "Completed"
    assert anyio.current_time() - start >= 0.95


async def test_no_worker_and_at_capacity_do_not_burn_attempts(harness: Harness) -> None:
    await harness.deploy("three", "shop/order", three_steps)
    worker = harness.worker
    worker.worker_ready.clear()
    worker.failures = [NoWorker(), AtCapacity(), NoWorker()]
    event_id = await harness.send("shop/order", {"who": "bo"})
    run_id = (await harness.only_run(event_id))["run_id"]

    with anyio.fail_after(5):
        while worker.wait_calls < 1:
            await anyio.sleep(0.005)
    await anyio.sleep(0.05)
    assert worker.wait_calls == 1  # waiting for a wake-up, not polling
    stored = await harness.store.get_run(run_id)
    assert stored is not None and [r.attempt for r in stored.requests] == [0]
    worker.worker_ready.set()

    run = await harness.finished(run_id)
    assert run["status"] == "Completed"
    assert worker.wait_calls == 3
    # The same request id was presented until a worker took it, and no attempt was spent.
    assert worker.request_ids[0] == worker.request_ids[1] == worker.request_ids[2] == worker.request_ids[3]
    assert [r["ctx"]["attempt"] for r in worker.requests] == [0, 0, 0, 0]


async def test_a_lost_worker_spends_no_attempt_and_keeps_the_request(harness: Harness) -> None:
    """A lapsed lease is the worker's loss, not the step's failure: a
    `retries=0` run completes, on attempt 0, and the same request id is
    dispatched again (so a late reply of the lost worker still answers it)."""
    await harness.deploy("one", "shop/one", lambda step, ctx: ctx.attempt, retries=0)
    harness.worker.failures = [WorkerStoppedResponding("lease lapsed")] * 3
    run = await harness.finished((await harness.only_run(await harness.send("shop/one")))["run_id"])
    assert run["status"] == "Completed"
    assert run["output"] == 0
    assert len(set(harness.worker.request_ids)) == 1
    assert harness.worker.dispatch_calls == 4


async def test_lease_lapses_of_one_step_are_bounded(tmp_path: Path) -> None:
    hs = Harness(tmp_path / "connect.db")
    await hs.open(max_lease_lapses=2)
    try:
        await hs.deploy("one", "shop/one", lambda step, ctx: ctx.attempt, retries=4)
        hs.worker.failures = [WorkerStoppedResponding("lease lapsed")] * 2
        within = await hs.finished((await hs.only_run(await hs.send("shop/one")))["run_id"])
        assert (within["status"], within["output"]) == ("Completed", 0)

        hs.worker.failures = [WorkerStoppedResponding("lease lapsed")] * 3
        calls = hs.worker.dispatch_calls
        past = await hs.finished((await hs.only_run(await hs.send("shop/one")))["run_id"])
        assert past["status"] == "Failed"
        assert past["output"]["name"] == "TooManyLeaseLapses"
        assert "3 times" in past["output"]["message"]
        assert "--max-lease-lapses 2" in past["output"]["message"]
        # Retries are for the step's own failures: the bound fails the run at once.
        assert hs.worker.dispatch_calls - calls == 3
    finally:
        await hs.close()


async def test_lease_lapse_count_survives_a_restart(tmp_path: Path) -> None:
    """The count is stored with the request, so restarts do not reset the bound."""
    hs = Harness(tmp_path / "connect.db")
    await hs.open(max_lease_lapses=1)
    await hs.deploy("one", "shop/one", lambda step, ctx: ctx.attempt, retries=0)
    hs.worker.failures = [WorkerStoppedResponding("lease lapsed")]
    hs.worker.hang_on = {"step"}
    event_id = await hs.send("shop/one")
    run_id = (await hs.only_run(event_id))["run_id"]
    with anyio.fail_after(10):
        while hs.worker.dispatch_calls < 2:  # the lapse, then the re-dispatch that hangs
            await anyio.sleep(0.005)
    loaded = await hs.store.load_run(run_id)
    assert loaded is not None and [r.lapses for r in loaded.run.requests] == [1]
    await hs.close()

    again = Harness(tmp_path / "connect.db")
    await again.open(max_lease_lapses=1)
    try:
        await again.deploy("one", "shop/one", lambda step, ctx: ctx.attempt, retries=0)
        again.worker.failures = [WorkerStoppedResponding("lease lapsed")]
        run = await again.finished(run_id)
        assert run["status"] == "Failed"
        assert run["output"]["name"] == "TooManyLeaseLapses"
    finally:
        await again.close()


@pytest.mark.parametrize("reply_stored_before_crash", [False, True])
async def test_restart_mid_run_resumes_same_request(tmp_path: Path, reply_stored_before_crash: bool) -> None:
    hs = Harness(tmp_path / "connect.db")
    await hs.open()
    await hs.deploy("three", "shop/order", three_steps)
    # The second request hangs: step "a" is memoized, step "b" is in flight.
    original = hs.worker.dispatch
    calls = 0

    async def second_hangs(request: Any, receiver: Any = None) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            hs.worker.hang_on = {"step"}
            hs.worker.store_before_hang = reply_stored_before_crash
        return await original(request, receiver)

    hs.worker.dispatch = second_hangs  # type: ignore[method-assign]
    event_id = await hs.send("shop/order", {"who": "cy"})
    run_id = (await hs.only_run(event_id))["run_id"]
    with anyio.fail_after(5):
        while calls < 2:
            await anyio.sleep(0.005)
    await anyio.sleep(0.05)
    stored = await hs.store.get_run(run_id)
    assert stored is not None
    [pending_request] = stored.requests
    pending = pending_request.request_id
    assert pending == hs.worker.request_ids[-1]
    executions_before = dict(hs.worker.executions)
    assert executions_before == ({"a": 1, "b": 1} if reply_stored_before_crash else {"a": 1})
    await hs.close()

    # A new process: same file, fresh executor and worker.
    await hs.open()
    hs.worker.functions[f"{APP}-three"] = three_steps
    try:
        run = await hs.finished(run_id)
        assert run["status"] == "Completed"
        assert run["output"] == {"sum": 6, "who": "cy"}
        assert hs.worker.request_ids[0] == pending
        assert hs.worker.executions["a"] == 0  # memoized before the restart, never re-run
        total = {k: executions_before.get(k, 0) + hs.worker.executions[k] for k in ("a", "b", "c")}
        assert total == {"a": 1, "b": 1, "c": 1}
    finally:
        await hs.close()


async def test_wildcard_trigger_starts_runs(harness: Harness) -> None:
    await harness.deploy("all", "shop/*", lambda step, ctx: ctx.event["name"])
    await harness.deploy("exact", "shop/x/y", lambda step, ctx: "exact")
    deep = await harness.send("shop/x/y")
    runs = await harness.executor.runs_for_event(deep)
    assert sorted(r["function_id"] for r in runs) == [f"{APP}-all", f"{APP}-exact"]
    shallow = await harness.send("shop/z")
    assert (await harness.only_run(shallow))["function_id"] == f"{APP}-all"
    other = await harness.send("shopping/z")
    assert await harness.executor.runs_for_event(other) == []
    run = await harness.finished((await harness.only_run(shallow))["run_id"])
    assert run["output"] == "shop/z"


async def test_expression_trigger_filters(harness: Harness) -> None:
    await harness.deploy("big", "shop/paid", lambda step, ctx: "big", expression="event.data.total > 100")
    small = await harness.send("shop/paid", {"total": 5})
    big = await harness.send("shop/paid", {"total": 500})
    missing = await harness.send("shop/paid", {})
    assert await harness.executor.runs_for_event(small) == []
    assert await harness.executor.runs_for_event(missing) == []
    assert len(await harness.executor.runs_for_event(big)) == 1


async def test_events_ids_and_duplicates(harness: Harness) -> None:
    await harness.deploy("one", "shop/dup", lambda step, ctx: 1)
    ids = await harness.executor.send_events(
        [IncomingEvent(name="shop/dup", id="evt-1"), IncomingEvent(name="shop/dup"), IncomingEvent(name="none")]
    )
    assert ids[0] == "evt-1" and len(set(ids)) == 3
    assert len(await harness.executor.runs_for_event("evt-1")) == 1
    again = await harness.executor.send_events([IncomingEvent(name="shop/dup", id="evt-1")])
    assert again == ["evt-1"]
    assert len(await harness.executor.runs_for_event("evt-1")) == 1


async def test_the_runs_an_event_starts_send_their_first_requests_before_it_is_answered(harness: Harness) -> None:
    await harness.deploy("first", "shop/first", lambda step, ctx: 1)
    await harness.deploy("second", "shop/first", lambda step, ctx: 2)
    # send_events returns what the event API answers with: by then both runs
    # have handed their first request over (no await between the two lines).
    [event_id] = await harness.executor.send_events([IncomingEvent(name="shop/first")])
    assert len(harness.worker.request_ids) == 2
    runs = await harness.executor.runs_for_event(event_id)
    assert len(runs) == 2
    for run in runs:
        await harness.finished(run["run_id"])


async def test_parallel_steps_run_one_after_another(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        p = step.parallel([("p1", lambda _: 1), ("p2", lambda _: 2)])
        after = step.run("after", lambda _: sum(p))
        return after

    await harness.deploy("par", "shop/par", fn)
    run = await harness.finished((await harness.only_run(await harness.send("shop/par")))["run_id"])
    assert run["status"] == "Completed" and run["output"] == 3
    seq = [(r["step_id"], r["ctx"]["disable_immediate_execution"]) for r in harness.worker.requests]
    assert seq == [
        ("step", False),
        (h("p1"), True),
        (h("p2"), True),
        ("step", False),  # the group is done: immediate execution allowed again
        ("step", False),
    ]


async def test_sleep_is_durable(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        step.sleep("nap", 0.3)
        return "awake"

    await harness.deploy("nap", "shop/nap", fn)
    run_id = (await harness.only_run(await harness.send("shop/nap")))["run_id"]
    with anyio.fail_after(5):
        while not harness.worker.requests:
            await anyio.sleep(0.005)
    asked = anyio.current_time()  # the sleep was reported by then: it is due 0.3 s after
    await anyio.sleep(0.05)
    # Restart in the middle of the sleep.
    await harness.close()
    await harness.open()
    harness.worker.functions[f"{APP}-nap"] = fn
    run = await harness.finished(run_id)
    assert run["status"] == "Completed" and run["output"] == "awake"
    # Not woken before its time (the restart forgot nothing), nor long after it.
    assert 0.3 <= anyio.current_time() - asked < 5
    assert harness.worker.requests[-1]["steps"] == {h("nap"): None}


async def test_stop_and_start_with_many_runs(tmp_path: Path) -> None:
    hs = Harness(tmp_path / "connect.db")
    await hs.open()
    await hs.deploy("three", "shop/order", three_steps)
    ids = await hs.executor.send_events([IncomingEvent(name="shop/order", data={"who": i}) for i in range(200)])
    await asyncio.sleep(0.05)
    await hs.close()
    await hs.open()
    hs.worker.functions[f"{APP}-three"] = three_steps
    try:
        for event_id in ids:
            run = await hs.finished((await hs.only_run(event_id))["run_id"], timeout=30)
            assert run["status"] == "Completed"
        assert hs.executor.active_runs == 0
    finally:
        await hs.close()


@pytest.mark.parametrize("body", [b"[]", b"not json", b'[{"op": "StepRun"}]'])
async def test_unreadable_or_empty_step_reports_are_retried(harness: Harness, body: bytes) -> None:
    from connect.dispatch import StepReply, StepRequest

    await harness.deploy("one", "shop/one", lambda step, ctx: ctx.attempt)
    original = harness.worker.dispatch
    calls = 0

    async def first_reply_is_bad(request: StepRequest, receiver: Any = None) -> StepReply:
        nonlocal calls
        calls += 1
        if calls == 1:
            return StepReply(request.request_id, 0, body)
        return await original(request, receiver)

    harness.worker.dispatch = first_reply_is_bad  # type: ignore[method-assign]
    run = await harness.finished((await harness.only_run(await harness.send("shop/one")))["run_id"])
    assert run["status"] == "Completed"
    assert run["output"] == 1  # the bad reply cost one attempt


async def test_bad_done_body_on_last_attempt_fails(harness: Harness) -> None:
    from connect.dispatch import StepReply, StepRequest

    await harness.deploy("one", "shop/one", lambda step, ctx: 1, retries=0)

    async def bad(request: StepRequest, receiver: Any = None) -> StepReply:
        return StepReply(request.request_id, 1, b"{oops")

    harness.worker.dispatch = bad  # type: ignore[method-assign]
    run = await harness.finished((await harness.only_run(await harness.send("shop/one")))["run_id"])
    assert run["status"] == "Failed"
    assert run["output"]["name"] == "UnreadableReply"
