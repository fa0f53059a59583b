"""Our SDK's side of the step and trigger end-to-end tests (served by `connect worker`).

`tests/compat/official_steps_app.py` defines the same functions with the
official `inngest` SDK, so every scenario runs against both. Functions that
tests observe from outside append one JSON line per event to STEPS_LOG.

Targets: `tests.e2e.steps_app:apps` (two apps, for invokes across apps) and
`tests.e2e.steps_app:cron_apps` (cron functions only, for the cron test).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import threading
import time
from typing import Any

from connect import Client, Context, Event, NonRetriableError, Step, StepError, TriggerCron, TriggerEvent
from connect.sdk import Cancel, Timeouts

APP = "steps-app"
OTHER = "steps-other"

client = Client(app_id=APP)
other = Client(app_id=OTHER)
cron_client = Client(app_id="steps-cron")

_lock = threading.Lock()


def log(kind: str, ctx: Context, **fields: Any) -> None:
    path = os.environ.get("STEPS_LOG")
    if path:
        line = json.dumps({"kind": kind, "run": ctx.run_id, "sdk": "ours", **fields})
        with _lock, open(path, "a") as f:
            f.write(line + "\n")


# --- sleeps ----------------------------------------------------------------------------


@client.create_function(fn_id="sleeper", trigger=TriggerEvent(event="steps/sleep"))
async def sleeper(ctx: Context, step: Step) -> dict[str, Any]:
    seconds = float(ctx.event.data.get("seconds", 1))
    mode = ctx.event.data.get("mode", "until")
    due = await step.run("plan", lambda: time.time() + seconds)
    if mode == "ms":
        await step.sleep("nap", int(seconds * 1000))
    elif mode == "timedelta":
        await step.sleep("nap", datetime.timedelta(seconds=seconds))
    else:
        await step.sleep_until("nap", datetime.datetime.fromtimestamp(due, datetime.UTC))
    woke = await step.run("woke", _woke, ctx, due)
    return {"late": woke - due, "mode": mode}


def _woke(ctx: Context, due: float) -> float:
    now = time.time()
    log("woke", ctx, late=now - due)
    return now


@client.create_function(fn_id="quick", trigger=TriggerEvent(event="steps/quick"))
async def quick(ctx: Context, step: Step) -> str:
    return await step.run("only", lambda: "quick done")


# --- waits -------------------------------------------------------------------------------


@client.create_function(fn_id="waiter", trigger=TriggerEvent(event="steps/wait"))
async def waiter(ctx: Context, step: Step) -> dict[str, Any]:
    timeout = datetime.timedelta(seconds=int(ctx.event.data.get("timeout", 60)))
    await step.run("ready", lambda: True)
    log("reached-wait", ctx)
    got = await step.wait_for_event(
        "payment", event="billing/paid", if_exp="async.data.id == event.data.id", timeout=timeout
    )
    result = {"id": ctx.event.data.get("id"), "got": None if got is None else {"id": got.id, "data": got.data}}
    await step.run("record", lambda: log("resumed", ctx, **result))
    return result


# --- send_event ---------------------------------------------------------------------------


@client.create_function(fn_id="emitter", trigger=TriggerEvent(event="steps/emit"))
async def emitter(ctx: Context, step: Step) -> dict[str, Any]:
    tag = ctx.event.data["tag"]
    ids = await step.send_event("announce", [Event(name="steps/emitted", data={"tag": tag, "n": i}) for i in range(2)])
    after = await step.run("after", lambda: "after sending")
    return {"ids": ids, "after": after}


@client.create_function(fn_id="emitted-listener", trigger=TriggerEvent(event="steps/emitted"))
async def emitted_listener(ctx: Context, step: Step) -> dict[str, Any]:
    log("emitted", ctx, tag=ctx.event.data.get("tag"), event=ctx.event.id)
    return dict(ctx.event.data)


# --- invoke ------------------------------------------------------------------------------------


@client.create_function(fn_id="child", trigger=TriggerEvent(event="steps/child.direct"))
async def child(ctx: Context, step: Step) -> dict[str, Any]:
    n = await step.run("times-ten", lambda: int(ctx.event.data["n"]) * 10)
    return {"n": n, "parent": ctx.event.data.get("_inngest", {}).get("source_fn_id")}


@client.create_function(fn_id="failing-child", trigger=TriggerEvent(event="steps/child.fail"), retries=0)
async def failing_child(ctx: Context, step: Step) -> None:
    raise NonRetriableError("child says no")


@other.create_function(fn_id="other-child", trigger=TriggerEvent(event="steps/other.direct"))
async def other_child(ctx: Context, step: Step) -> str:
    return await step.run("greet", lambda: f"other app got {ctx.event.data['n']}")


@client.create_function(fn_id="invoker", trigger=TriggerEvent(event="steps/invoke"))
async def invoker(ctx: Context, step: Step) -> dict[str, Any]:
    same = await step.invoke("same-app", function=child, data={"n": 4})
    across = await step.invoke_by_id("other-app", app_id=OTHER, function_id="other-child", data={"n": 5})
    try:
        await step.invoke("failing", function=failing_child, data={})
        failure = None
    except StepError as err:
        failure = err.message
    return {"same": same, "across": across, "failure": failure}


# --- parallel --------------------------------------------------------------------------------


async def _square(ctx: Context, i: int) -> int:
    log("branch-start", ctx, branch=i, at=time.time())
    await asyncio.sleep(1.0)
    log("branch-end", ctx, branch=i, at=time.time())
    return i * i


@client.create_function(fn_id="fan-out", trigger=TriggerEvent(event="steps/parallel"))
async def fan_out(ctx: Context, step: Step) -> dict[str, Any]:
    squares = await step.parallel(tuple(lambda i=i: step.run(f"square-{i}", _square, ctx, i) for i in range(4)))
    total = await step.run("total", lambda: sum(squares))
    return {"squares": list(squares), "total": total}


# --- errors ------------------------------------------------------------------------------------


def _always_fails(ctx: Context, what: str) -> None:
    log("attempt", ctx, what=what, attempt=ctx.attempt)
    raise RuntimeError(f"{what} is down")


@client.create_function(fn_id="compensate", trigger=TriggerEvent(event="steps/compensate"), retries=1)
async def compensate(ctx: Context, step: Step) -> dict[str, Any]:
    try:
        await step.run("charge", _always_fails, ctx, "the card service")
    except StepError as err:
        refund = await step.run("refund", lambda: "refunded")
        return {"compensated": err.message, "error_name": err.name, "refund": refund}
    return {"compensated": None}


@client.create_function(fn_id="uncaught", trigger=TriggerEvent(event="steps/uncaught"), retries=1)
async def uncaught(ctx: Context, step: Step) -> None:
    await step.run("boom", _always_fails, ctx, "the boom service")


# --- triggers, system events, on_failure ------------------------------------------------------


@client.create_function(
    fn_id="multi",
    trigger=[
        TriggerEvent(event="steps/multi.a"),
        TriggerEvent(event="steps/multi.b", expression="event.data.amount > 10"),
    ],
)
async def multi(ctx: Context, step: Step) -> str:
    return await step.run("name", lambda: ctx.event.name)


async def _on_failure(ctx: Context, step: Step) -> dict[str, Any]:
    data = ctx.event.data
    log("on-failure", ctx, failed_run=data["run_id"], function_id=data["function_id"])
    return {"error": data["error"]["message"], "original": data["event"]["data"], "function_id": data["function_id"]}


@client.create_function(fn_id="fails", trigger=TriggerEvent(event="steps/fail"), retries=0, on_failure=_on_failure)
async def fails(ctx: Context, step: Step) -> None:
    await step.run("ok-first", lambda: 1)
    raise NonRetriableError("this function fails on purpose")


@client.create_function(
    fn_id="finished-listener",
    trigger=TriggerEvent(event="inngest/function.finished", expression=f"event.data.function_id == '{APP}-multi'"),
)
async def finished_listener(ctx: Context, step: Step) -> None:
    log("finished", ctx, finished_run=ctx.event.data["run_id"], result=ctx.event.data.get("result"))


@client.create_function(fn_id="cancelled-listener", trigger=TriggerEvent(event="inngest/function.cancelled"))
async def cancelled_listener(ctx: Context, step: Step) -> None:
    log("cancelled", ctx, cancelled_run=ctx.event.data["run_id"], function_id=ctx.event.data["function_id"])


# --- cancellation and timeouts ----------------------------------------------------------------


@client.create_function(
    fn_id="cancellable",
    trigger=TriggerEvent(event="steps/cancellable"),
    cancel=[Cancel(event="steps/cancel", if_exp="async.data.id == event.data.id", timeout=600_000)],
)
async def cancellable(ctx: Context, step: Step) -> str:
    await step.run("before", lambda: "before")
    await step.sleep("long", datetime.timedelta(seconds=60))
    await step.run("after", lambda: log("after-cancel-point", ctx))
    return "not cancelled"


@client.create_function(fn_id="bounded", trigger=TriggerEvent(event="steps/bounded"), timeouts=Timeouts(finish=2000))
async def bounded(ctx: Context, step: Step) -> str:
    await step.sleep("long", datetime.timedelta(seconds=60))
    return "not timed out"


# --- the compatibility matrix's rows (tests/e2e/test_steps_matrix.py) ----------------------------


@client.create_function(fn_id="slow-child", trigger=TriggerEvent(event="steps/child.slow"))
async def slow_child(ctx: Context, step: Step) -> str:
    await step.sleep("long", datetime.timedelta(seconds=60))
    return "too late"


@client.create_function(fn_id="invoke-timeout", trigger=TriggerEvent(event="steps/invoke-timeout"))
async def invoke_timeout(ctx: Context, step: Step) -> dict[str, Any]:
    try:
        await step.invoke("slow", function=slow_child, data={}, timeout=datetime.timedelta(seconds=2))
    except StepError as err:
        return {"failure": err.message}
    return {"failure": None}


def _body(ctx: Context, name: str, value: Any) -> Any:
    log("body", ctx, step=name)
    return value


@client.create_function(fn_id="multi-step", trigger=TriggerEvent(event="steps/multi-step"))
async def multi_step(ctx: Context, step: Step) -> dict[str, Any]:
    one = await step.run("one", _body, ctx, "one", int(ctx.event.data["x"]) + 1)
    two = await step.run("two", _body, ctx, "two", one * 2)
    three = await step.run("three", _body, ctx, "three", f"{one}-{two}")
    return {"one": one, "two": two, "three": three}


def _flaky(ctx: Context) -> str:
    log("attempt", ctx, what="flaky", attempt=ctx.attempt)
    if ctx.attempt < 2:
        raise RuntimeError(f"attempt {ctx.attempt} failed")
    return f"ok on attempt {ctx.attempt}"


@client.create_function(fn_id="flaky", trigger=TriggerEvent(event="steps/flaky"), retries=3)
async def flaky(ctx: Context, step: Step) -> dict[str, Any]:
    return {"value": await step.run("flaky", _flaky, ctx)}


def _refuse(ctx: Context) -> None:
    log("attempt", ctx, what="refuse", attempt=ctx.attempt)
    raise NonRetriableError("this step refuses to be retried")


@client.create_function(
    fn_id="non-retriable", trigger=TriggerEvent(event="steps/non-retriable"), retries=3, on_failure=_on_failure
)
async def non_retriable(ctx: Context, step: Step) -> None:
    await step.run("refuse", _refuse, ctx)


@client.create_function(
    fn_id="exhausted", trigger=TriggerEvent(event="steps/exhausted"), retries=1, on_failure=_on_failure
)
async def exhausted(ctx: Context, step: Step) -> None:
    await step.run("down", _always_fails, ctx, "the exhausted service")


@client.create_function(
    fn_id="fn-error", trigger=TriggerEvent(event="steps/fn-error"), retries=1, on_failure=_on_failure
)
async def fn_error(ctx: Context, step: Step) -> None:
    await step.run("fine", lambda: 1)
    log("attempt", ctx, what="handler", attempt=ctx.attempt)
    raise RuntimeError("the handler itself failed")


@client.create_function(fn_id="big-output", trigger=TriggerEvent(event="steps/big-output"))
async def big_output(ctx: Context, step: Step) -> dict[str, Any]:
    return {"blob": await step.run("blob", lambda: "0123456789" * int(ctx.event.data["tens"]))}


async def _hold(ctx: Context) -> None:
    log("hold-start", ctx, at=time.time())
    await asyncio.sleep(1.0)
    log("hold-end", ctx, at=time.time())


@client.create_function(fn_id="hold", trigger=TriggerEvent(event="steps/hold"))
async def hold(ctx: Context, step: Step) -> str:
    await step.run("hold", _hold, ctx)
    return "held"


async def _slow(ctx: Context) -> int:
    log("slow-start", ctx, pid=os.getpid())
    await asyncio.sleep(3.0)
    log("slow-end", ctx, pid=os.getpid())
    return os.getpid()


def _after(ctx: Context) -> int:
    log("after", ctx, pid=os.getpid())
    return os.getpid()


@client.create_function(fn_id="drained", trigger=TriggerEvent(event="steps/drained"))
async def drained(ctx: Context, step: Step) -> dict[str, Any]:
    slow = await step.run("slow", _slow, ctx)
    after = await step.run("after", _after, ctx)
    return {"slow": slow, "after": after}


# --- cron ---------------------------------------------------------------------------------------


@cron_client.create_function(fn_id="every-minute", trigger=TriggerCron(cron="* * * * *"))
async def every_minute(ctx: Context, step: Step) -> int:
    log("tick", ctx, ts=ctx.event.ts, name=ctx.event.name, fn="every-minute")
    return ctx.event.ts


@cron_client.create_function(fn_id="every-minute-paris", trigger=TriggerCron(cron="TZ=Europe/Paris * * * * *"))
async def every_minute_paris(ctx: Context, step: Step) -> int:
    log("tick", ctx, ts=ctx.event.ts, name=ctx.event.name, fn="every-minute-paris")
    return ctx.event.ts


apps = [(client, list(client.functions)), (other, list(other.functions))]
cron_apps = [(cron_client, list(cron_client.functions))]
