"""The executor's side of every step kind and function option, driven by `ScriptedWorker`."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from connect.executor.system_events import FUNCTION_CANCELLED, FUNCTION_FAILED, FUNCTION_FINISHED
from protocol.payloads import IncomingEvent, Trigger
from tests.executor.harness import APP, Harness
from tests.executor.scripted_worker import EXECUTED_AT, Ctx, NonRetriable, Step, h

pytestmark = pytest.mark.anyio


async def events_named(hs: Harness, name: str) -> list[dict[str, Any]]:
    def op(conn: Any) -> list[bytes]:
        return [row[0] for row in conn.execute("SELECT body FROM events WHERE name = ? ORDER BY id", (name,))]

    return [json.loads(body) for body in await hs.store._writer.submit(op)]


async def until(predicate: Any, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.sleep(0.005)


# --- parallel ------------------------------------------------------------------------------


@pytest.mark.serial  # a latency figure: run alone (see the Makefile)
async def test_parallel_steps_run_concurrently_and_discovery_is_coalesced(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        results = step.group([lambda i=i: step.run(f"p{i}", lambda _, i=i: i * 10) for i in range(4)])
        return step.run("after", lambda _: sum(results))

    harness.worker.step_delays = {f"p{i}": 0.3 for i in range(4)}
    await harness.deploy("par", "shop/par", fn)
    started = time.monotonic()
    run = await harness.finished((await harness.only_run(await harness.send("shop/par")))["run_id"])
    elapsed = time.monotonic() - started
    assert run["status"] == "Completed" and run["output"] == 60
    # Four 0.3 s steps took about 0.3 s, not 1.2 s: they were in flight together.
    assert harness.worker.max_in_flight == 4
    assert elapsed < 0.9
    assert harness.worker.executions == {"p0": 1, "p1": 1, "p2": 1, "p3": 1, "after": 1}
    seq = [(r["step_id"], r["ctx"]["disable_immediate_execution"]) for r in harness.worker.requests]
    assert seq[0] == ("step", False)
    assert sorted(seq[1:5]) == sorted((h(f"p{i}"), True) for i in range(4))
    # One discovery for the whole group, then `after` runs at once (immediate execution is back).
    assert seq[5:] == [("step", False), ("step", False)]
    assert len(harness.worker.requests[5]["steps"]) == 4


async def test_a_group_mixing_a_step_and_a_sleep(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        a, _ = step.group([lambda: step.run("a", lambda _: "a"), lambda: step.sleep("nap", 0.3)])
        return a

    await harness.deploy("mix", "shop/mix", fn)
    started = time.monotonic()
    run = await harness.finished((await harness.only_run(await harness.send("shop/mix")))["run_id"])
    assert run["status"] == "Completed" and run["output"] == "a"
    assert 0.25 < time.monotonic() - started < 2
    final = harness.worker.requests[-1]["steps"]
    assert final == {h("a"): {"data": "a"}, h("nap"): None}


async def test_a_failing_branch_is_retried_alone_then_raises_into_the_function(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        def bad(attempt: int) -> Any:
            raise ValueError(f"bad {attempt}")

        try:
            step.group([lambda: step.run("ok", lambda _: 1), lambda: step.run("bad", bad)])
        except Exception as exc:
            return {"caught": str(exc)}
        return "no"

    await harness.deploy("branch", "shop/branch", fn, retries=2)
    run = await harness.finished((await harness.only_run(await harness.send("shop/branch")))["run_id"])
    assert run["status"] == "Completed" and run["output"] == {"caught": "bad 2"}
    assert harness.worker.executions == {"ok": 1, "bad": 3}


async def test_a_race_group_moves_each_branch_on_independently(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        def chain() -> Any:
            first = step.run("a1", lambda _: 1)
            return step.run("a2", lambda _: first + 1)

        a, b = step.group([chain, lambda: step.run("b1", lambda _: "b")], mode="race")
        return [a, b]

    harness.worker.step_delays = {"b1": 0.5}
    await harness.deploy("race", "shop/race", fn)
    run = await harness.finished((await harness.only_run(await harness.send("shop/race")))["run_id"])
    assert run["status"] == "Completed" and run["output"] == [2, "b"]
    # a2 was discovered and ran while b1 was still running.
    assert EXECUTED_AT["a2"] < EXECUTED_AT["b1"]
    assert harness.worker.executions == {"a1": 1, "a2": 1, "b1": 1}


# --- sleeps --------------------------------------------------------------------------------------


@pytest.mark.serial  # a latency figure: run alone (see the Makefile)
async def test_a_sleeping_run_holds_no_task_and_wakes_on_time(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        due = step.run("plan", lambda _: time.time() + 0.4)
        step.sleep("nap", max(0.0, due - time.time()))
        return step.run("woke", lambda _: time.time() - due)

    await harness.deploy("nap", "shop/nap", fn)
    run_id = (await harness.only_run(await harness.send("shop/nap")))["run_id"]
    await until(lambda: _true(len(harness.worker.requests) == 2))
    await anyio.sleep(0.05)
    assert harness.executor.active_runs == 0  # parked: no task while it sleeps
    run = await harness.finished(run_id)
    assert run["status"] == "Completed"
    # Never early, and on time.
    assert 0 <= run["output"] < 0.1


@pytest.mark.serial  # a latency figure: run alone (see the Makefile)
async def test_many_sleeps_wake_close_to_their_time(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        due = step.run("plan", lambda _: time.time() + 0.5)
        step.sleep("nap", max(0.0, due - time.time()))
        return step.run("woke", lambda _: time.time() - due)

    await harness.deploy("many", "shop/many", fn)
    ids = await harness.executor.send_events([IncomingEvent(name="shop/many") for _ in range(200)])
    late = []
    for event_id in ids:
        run = await harness.finished((await harness.only_run(event_id))["run_id"])
        assert run["status"] == "Completed"
        late.append(run["output"])
    assert max(late) < 1.0, sorted(late)[-5:]


async def _true(value: bool) -> bool:
    return value


# --- waits -------------------------------------------------------------------------------------


def waiter(step: Step, ctx: Ctx) -> Any:
    got = step.wait_for_event("w", "billing/paid", "async.data.id == event.data.id", "10s")
    return None if got is None else got["data"]


async def test_wait_resumed_by_the_matching_event_only(harness: Harness) -> None:
    await harness.deploy("wait", "billing/invoice", waiter)
    run_ids = {}
    for i in range(3):
        run_ids[i] = (await harness.only_run(await harness.send("billing/invoice", {"id": i})))["run_id"]
    await until(lambda: _true(harness.executor.paused_watches == 3))
    assert harness.executor.active_runs == 0
    await harness.send("billing/paid", {"id": 99})  # matches nobody
    await harness.send("billing/other", {"id": 1})  # wrong name
    paid = await harness.send("billing/paid", {"id": 1, "amount": 5})
    run = await harness.finished(run_ids[1])
    assert run["output"] == {"id": 1, "amount": 5}
    memo = harness.worker.requests[-1]["steps"][h("w")]
    assert memo["id"] == paid and memo["name"] == "billing/paid"  # the raw event, not wrapped
    await anyio.sleep(0.1)
    for i in (0, 2):
        still = await harness.executor.get_run(run_ids[i])
        assert still is not None and still["status"] == "Running"
    # The same event sent again resumes nothing more.
    await harness.executor.send_events([IncomingEvent(name="billing/paid", id=paid, data={"id": 0})])
    await anyio.sleep(0.1)
    still = await harness.executor.get_run(run_ids[0])
    assert still is not None and still["status"] == "Running"


async def test_wait_times_out_with_null(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        got = step.wait_for_event("w", "never/comes", None, "1s")
        return {"got": got}

    await harness.deploy("timeout", "shop/t", fn)
    started = time.monotonic()
    run = await harness.finished((await harness.only_run(await harness.send("shop/t")))["run_id"])
    assert run["output"] == {"got": None}
    assert 0.9 < time.monotonic() - started < 3


async def test_waits_are_rebuilt_after_a_restart(tmp_path: Path) -> None:
    hs = Harness(tmp_path / "connect.db")
    await hs.open()
    await hs.deploy("wait", "billing/invoice", waiter)
    run_id = (await hs.only_run(await hs.send("billing/invoice", {"id": "x"})))["run_id"]
    await until(lambda: _true(hs.executor.paused_watches == 1))
    await hs.close()
    await hs.open()
    hs.worker.functions[f"{APP}-wait"] = waiter
    try:
        assert hs.executor.paused_watches == 1
        await hs.send("billing/paid", {"id": "x", "n": 1})
        run = await hs.finished(run_id)
        assert run["output"] == {"id": "x", "n": 1}
    finally:
        await hs.close()


@pytest.mark.serial  # a latency figure: run alone (see the Makefile)
async def test_a_thousand_waits_find_their_events_by_index(harness: Harness) -> None:
    await harness.deploy("wait", "billing/invoice", waiter)
    ids = await harness.executor.send_events(
        [IncomingEvent(name="billing/invoice", data={"id": i}) for i in range(1000)]
    )
    await until(lambda: _true(harness.executor.paused_watches == 1000), timeout=30)
    started = time.monotonic()
    await harness.executor.send_events([IncomingEvent(name="billing/paid", data={"id": -i - 1}) for i in range(1000)])
    unrelated = time.monotonic() - started
    assert harness.executor.paused_watches == 1000
    await harness.executor.send_events(
        [IncomingEvent(name="billing/paid", data={"id": i, "tag": f"t{i}"}) for i in range(1000)]
    )
    for i, event_id in enumerate(ids):
        run = await harness.finished((await harness.only_run(event_id))["run_id"], timeout=30)
        assert run["output"] == {"id": i, "tag": f"t{i}"}
    assert unrelated < 1.0  # a dictionary lookup per event, not a thousand CEL evaluations


async def test_wait_condition_beyond_equality_is_evaluated(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        got = step.wait_for_event("w", "shop/bid", "async.data.amount > event.data.floor && async.data.ok", "10s")
        return got["data"]["amount"]

    await harness.deploy("bid", "shop/auction", fn)
    run_id = (await harness.only_run(await harness.send("shop/auction", {"floor": 10})))["run_id"]
    await until(lambda: _true(harness.executor.paused_watches == 1))
    await harness.send("shop/bid", {"amount": 5, "ok": True})
    await harness.send("shop/bid", {"amount": 50, "ok": False})
    await harness.send("shop/bid", {"amount": 20, "ok": True})
    assert (await harness.finished(run_id))["output"] == 20


# --- invoke --------------------------------------------------------------------------------------


async def test_invoke_returns_the_child_result_and_raises_its_error(harness: Harness) -> None:
    def child(step: Step, ctx: Ctx) -> Any:
        if ctx.event["data"].get("fail"):
            raise NonRetriable("child broke")
        return step.run("double", lambda _: ctx.event["data"]["n"] * 2)

    def parent(step: Step, ctx: Ctx) -> Any:
        ok = step.invoke("ok", f"{APP}-child", {"n": 21})
        try:
            step.invoke("bad", f"{APP}-child", {"fail": True})
        except Exception as exc:
            return {"ok": ok, "error": str(exc)}
        return {"ok": ok}

    await harness.deploy("child", "never/sent", child)
    await harness.deploy("parent", "shop/parent", parent)
    run = await harness.finished((await harness.only_run(await harness.send("shop/parent")))["run_id"])
    assert run["output"] == {"ok": 42, "error": "child broke"}
    invoked = await events_named(harness, "inngest/function.invoked")
    assert len(invoked) == 2
    [ok_event] = [e for e in invoked if e["data"].get("n") == 21]
    meta = ok_event["data"]["_inngest"]
    assert meta["correlation_id"] == f"{run['run_id']}.{h('ok')}" and meta["fn_id"] == f"{APP}-child"
    finished = {e["data"]["run_id"]: e["data"] for e in await events_named(harness, FUNCTION_FINISHED)}
    assert finished[run["run_id"]]["result"] == {"ok": 42, "error": "child broke"}


async def test_invoke_of_an_unknown_function_and_timeout(harness: Harness) -> None:
    def slow_child(step: Step, ctx: Ctx) -> Any:
        step.sleep("forever", 30)
        return "late"

    def parent(step: Step, ctx: Ctx) -> Any:
        out = []
        for step_id, fn_id, timeout in (("missing", f"{APP}-nope", None), ("slow", f"{APP}-slow", "1s")):
            try:
                step.invoke(step_id, fn_id, {}, timeout)
            except Exception as exc:
                out.append(str(exc))
        return out

    await harness.deploy("slow", "never/sent", slow_child)
    await harness.deploy("parent", "shop/parent", parent)
    run = await harness.finished((await harness.only_run(await harness.send("shop/parent")))["run_id"], timeout=10)
    assert "no registered function" in run["output"][0]
    assert run["output"][1] == "Timed out waiting for invoked function to complete"


# --- failure, system events, on_failure -----------------------------------------------------------


async def test_failure_emits_failed_and_finished_and_triggers_the_failure_handler(harness: Harness) -> None:
    def broken(step: Step, ctx: Ctx) -> Any:
        raise NonRetriable("boom")

    def on_failure(step: Step, ctx: Ctx) -> Any:
        data = ctx.event["data"]
        return {"failed": data["function_id"], "message": data["error"]["message"], "run": data["run_id"]}

    await harness.deploy("broken", "shop/broken", broken)
    expression = f"event.data.function_id == '{APP}-broken'"
    await harness.deploy(
        "broken-failure", None, on_failure, triggers=[Trigger(event=FUNCTION_FAILED, expression=expression)]
    )
    run = await harness.finished((await harness.only_run(await harness.send("shop/broken")))["run_id"])
    assert run["status"] == "Failed"
    failed = await events_named(harness, FUNCTION_FAILED)
    assert [e["id"] for e in failed] == [run["run_id"]]
    assert failed[0]["data"]["error"]["message"] == "boom"
    assert failed[0]["data"]["event"]["name"] == "shop/broken"
    [handler] = await harness.executor.runs_for_event(run["run_id"])
    done = await harness.finished(handler["run_id"])
    assert done["output"] == {"failed": f"{APP}-broken", "message": "boom", "run": run["run_id"]}
    finished = await events_named(harness, FUNCTION_FINISHED)
    assert {e["data"]["function_id"] for e in finished} == {f"{APP}-broken", f"{APP}-broken-failure"}


async def test_a_function_on_every_finished_event_does_not_trigger_itself(harness: Harness) -> None:
    await harness.deploy("work", "shop/work", lambda step, ctx: "worked")
    await harness.deploy("audit", FUNCTION_FINISHED, lambda step, ctx: ctx.event["data"]["function_id"])
    run = await harness.finished((await harness.only_run(await harness.send("shop/work")))["run_id"])
    finished = [e for e in await events_named(harness, FUNCTION_FINISHED) if e["data"]["run_id"] == run["run_id"]]
    [audit] = await harness.executor.runs_for_event(finished[0]["id"])
    assert (await harness.finished(audit["run_id"]))["output"] == f"{APP}-work"
    await anyio.sleep(0.2)
    # The audit run's own end is recorded, and starts nothing.
    assert len(await events_named(harness, FUNCTION_FINISHED)) == 2
    for event in await events_named(harness, FUNCTION_FINISHED):
        runs = await harness.executor.runs_for_event(event["id"])
        assert [r["function_id"] for r in runs] == (
            [f"{APP}-audit"] if event["data"]["function_id"] != f"{APP}-audit" else []
        )


# --- cancellation and timeouts ------------------------------------------------------------------


async def test_cancel_through_the_api_stops_a_sleeping_run(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        step.sleep("long", 60)
        return "never"

    await harness.deploy("sleepy", "shop/sleepy", fn)
    run_id = (await harness.only_run(await harness.send("shop/sleepy")))["run_id"]
    await until(lambda: _true(len(harness.worker.requests) == 1))
    await anyio.sleep(0.05)
    view = await harness.executor.cancel_run(run_id)
    assert view is not None and view["status"] == "Cancelled"
    assert await harness.executor.cancel_run("nope") is None
    cancelled = await events_named(harness, FUNCTION_CANCELLED)
    assert [e["data"]["run_id"] for e in cancelled] == [run_id]
    assert len(harness.worker.requests) == 1


async def test_cancel_waits_for_the_step_in_flight_then_stops(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        # A one-step group: the step is planned, then run by a request targeting it.
        step.group([lambda: step.run("slow", lambda _: "done")])
        step.run("next", lambda _: "should not run")
        return "finished"

    harness.worker.step_delays = {"slow": 0.4}
    await harness.deploy("two", "shop/two", fn)
    run_id = (await harness.only_run(await harness.send("shop/two")))["run_id"]
    await until(lambda: _true(harness.worker.in_flight == 1))
    view = await harness.executor.cancel_run(run_id)
    assert view is not None and view["status"] == "Cancelled"
    assert harness.worker.executions == {"slow": 1}  # the step finished; nothing ran after it


async def test_cancel_on_event_with_condition(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        step.sleep("long", 60)
        return "never"

    cancel = [{"event": "shop/order.cancelled", "if": "async.data.order == event.data.order"}]
    await harness.deploy("order", "shop/order", fn, cancel=cancel)
    first = (await harness.only_run(await harness.send("shop/order", {"order": 1})))["run_id"]
    second = (await harness.only_run(await harness.send("shop/order", {"order": 2})))["run_id"]
    await until(lambda: _true(len(harness.worker.requests) == 2))
    await harness.send("shop/order.cancelled", {"order": 2})
    assert (await harness.finished(second))["status"] == "Cancelled"
    still = await harness.executor.get_run(first)
    assert still is not None and still["status"] == "Running"


async def test_finish_timeout_cancels(harness: Harness) -> None:
    def fn(step: Step, ctx: Ctx) -> Any:
        step.sleep("long", 60)
        return "never"

    await harness.deploy("bounded", "shop/bounded", fn, timeouts={"finish": "1s"})
    started = time.monotonic()
    run = await harness.finished((await harness.only_run(await harness.send("shop/bounded")))["run_id"])
    assert run["status"] == "Cancelled"
    assert 0.9 < time.monotonic() - started < 3


async def test_start_timeout_cancels_a_run_no_worker_took(harness: Harness) -> None:
    await harness.deploy("unserved", "shop/unserved", lambda step, ctx: "ran", timeouts={"start": "1s"})
    harness.worker.worker_ready.clear()
    from tests.executor.scripted_worker import NoWorker

    harness.worker.failures = [NoWorker() for _ in range(100)]
    run = await harness.finished((await harness.only_run(await harness.send("shop/unserved")))["run_id"])
    assert run["status"] == "Cancelled"


# --- cron ----------------------------------------------------------------------------------------


async def test_cron_runs_once_per_tick_across_a_restart(tmp_path: Path) -> None:
    hs = Harness(tmp_path / "connect.db")
    await hs.open()
    fn = lambda step, ctx: ctx.event["ts"]  # noqa: E731
    # croniter's six-field form ticks every second, which keeps this test short.
    await hs.deploy("tick", None, fn, triggers=[Trigger(cron="* * * * * *")])

    async def ticks() -> list[int]:
        return sorted(e["ts"] for e in await events_named(hs, "inngest/scheduled.timer"))

    await until(lambda: _true_async(ticks, 2), timeout=5)
    await hs.close()
    # A tick passes while nothing runs: the executor started again sees its clock 1.5 s on.
    await hs.open(clock=lambda: time.time() + 1.5)
    hs.worker.functions[f"{APP}-tick"] = fn
    try:
        await until(lambda: _true_async(ticks, 5), timeout=8)
        seen = await ticks()
        assert len(seen) == len(set(seen))
        assert all(t % 1000 == 0 for t in seen)
        # No tick before the last run one was skipped, apart from those missed while stopped
        # (of which only the latest ran).
        gaps = [b - a for a, b in itertools.pairwise(seen)]
        assert max(gaps) <= 3000 and gaps.count(1000) >= len(gaps) - 1
        for event in await events_named(hs, "inngest/scheduled.timer"):
            assert len(await hs.executor.runs_for_event(event["id"])) == 1
    finally:
        await hs.close()


async def _true_async(fetch: Any, at_least: int) -> bool:
    return len(await fetch()) >= at_least
