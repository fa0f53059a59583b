"""The step and trigger test functions, written with the official `inngest` SDK.

The same functions as `tests/e2e/steps_app.py` (same ids, events and
outputs), so each end-to-end scenario runs against both SDKs. Run as its own
process: `python tests/compat/official_steps_app.py [main|cron]` with
CONNECT_API_URL pointing at `connect dev` (and STEPS_LOG at a file).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import sys
import threading
import time
from typing import Any

import inngest
from inngest.connect import connect

URL = os.environ["CONNECT_API_URL"]
APP = "official-steps"
OTHER = "official-other"


def _client(app_id: str) -> inngest.Inngest:
    return inngest.Inngest(
        app_id=app_id,
        is_production=False,
        api_base_url=URL,
        event_api_base_url=URL,
        logger=logging.getLogger(app_id),
    )


client = _client(APP)
other = _client(OTHER)
cron_client = _client("official-cron")

_lock = threading.Lock()


def log(kind: str, ctx: inngest.Context, **fields: Any) -> None:
    path = os.environ.get("STEPS_LOG")
    if path:
        line = json.dumps({"kind": kind, "run": ctx.run_id, "sdk": "official", **fields})
        with _lock, open(path, "a") as f:
            f.write(line + "\n")


# --- sleeps ----------------------------------------------------------------------------


@client.create_function(fn_id="sleeper", trigger=inngest.TriggerEvent(event="steps/sleep"))
async def sleeper(ctx: inngest.Context) -> dict[str, Any]:
    seconds = float(ctx.event.data.get("seconds", 1))
    mode = ctx.event.data.get("mode", "until")
    due = await ctx.step.run("plan", lambda: time.time() + seconds)
    if mode == "ms":
        await ctx.step.sleep("nap", int(seconds * 1000))
    elif mode == "timedelta":
        await ctx.step.sleep("nap", datetime.timedelta(seconds=seconds))
    else:
        await ctx.step.sleep_until("nap", datetime.datetime.fromtimestamp(due, datetime.UTC))
    woke = await ctx.step.run("woke", _woke, ctx, due)
    return {"late": woke - due, "mode": mode}


def _woke(ctx: inngest.Context, due: float) -> float:
    now = time.time()
    log("woke", ctx, late=now - due)
    return now


@client.create_function(fn_id="quick", trigger=inngest.TriggerEvent(event="steps/quick"))
async def quick(ctx: inngest.Context) -> str:
    return await ctx.step.run("only", lambda: "quick done")


# --- waits -------------------------------------------------------------------------------


@client.create_function(fn_id="waiter", trigger=inngest.TriggerEvent(event="steps/wait"))
async def waiter(ctx: inngest.Context) -> dict[str, Any]:
    timeout = datetime.timedelta(seconds=int(ctx.event.data.get("timeout", 60)))
    await ctx.step.run("ready", lambda: True)
    log("reached-wait", ctx)
    got = await ctx.step.wait_for_event(
        "payment", event="billing/paid", if_exp="async.data.id == event.data.id", timeout=timeout
    )
    result = {"id": ctx.event.data.get("id"), "got": None if got is None else {"id": got.id, "data": got.data}}
    await ctx.step.run("record", lambda: log("resumed", ctx, **result))
    return result


# --- send_event ---------------------------------------------------------------------------


@client.create_function(fn_id="emitter", trigger=inngest.TriggerEvent(event="steps/emit"))
async def emitter(ctx: inngest.Context) -> dict[str, Any]:
    tag = ctx.event.data["tag"]
    ids = await ctx.step.send_event(
        "announce", [inngest.Event(name="steps/emitted", data={"tag": tag, "n": i}) for i in range(2)]
    )
    after = await ctx.step.run("after", lambda: "after sending")
    return {"ids": ids, "after": after}


@client.create_function(fn_id="emitted-listener", trigger=inngest.TriggerEvent(event="steps/emitted"))
async def emitted_listener(ctx: inngest.Context) -> dict[str, Any]:
    log("emitted", ctx, tag=ctx.event.data.get("tag"), event=ctx.event.id)
    return dict(ctx.event.data)


# --- invoke ------------------------------------------------------------------------------------


@client.create_function(fn_id="child", trigger=inngest.TriggerEvent(event="steps/child.direct"))
async def child(ctx: inngest.Context) -> dict[str, Any]:
    n = await ctx.step.run("times-ten", lambda: int(ctx.event.data["n"]) * 10)
    meta = ctx.event.data.get("_inngest")
    return {"n": n, "parent": meta.get("source_fn_id") if isinstance(meta, dict) else None}


@client.create_function(fn_id="failing-child", trigger=inngest.TriggerEvent(event="steps/child.fail"), retries=0)
async def failing_child(ctx: inngest.Context) -> None:
    raise inngest.NonRetriableError("child says no")


@other.create_function(fn_id="other-child", trigger=inngest.TriggerEvent(event="steps/other.direct"))
async def other_child(ctx: inngest.Context) -> str:
    return await ctx.step.run("greet", lambda: f"other app got {ctx.event.data['n']}")


@client.create_function(fn_id="invoker", trigger=inngest.TriggerEvent(event="steps/invoke"))
async def invoker(ctx: inngest.Context) -> dict[str, Any]:
    same = await ctx.step.invoke("same-app", function=child, data={"n": 4})
    across = await ctx.step.invoke_by_id("other-app", app_id=OTHER, function_id="other-child", data={"n": 5})
    try:
        await ctx.step.invoke("failing", function=failing_child, data={})
        failure = None
    except inngest.StepError as err:
        failure = err.message
    return {"same": same, "across": across, "failure": failure}


# --- parallel --------------------------------------------------------------------------------


async def _square(ctx: inngest.Context, i: int) -> int:
    log("branch-start", ctx, branch=i, at=time.time())
    await asyncio.sleep(1.0)
    log("branch-end", ctx, branch=i, at=time.time())
    return i * i


@client.create_function(fn_id="fan-out", trigger=inngest.TriggerEvent(event="steps/parallel"))
async def fan_out(ctx: inngest.Context) -> dict[str, Any]:
    squares = await ctx.group.parallel(
        tuple(lambda i=i: ctx.step.run(f"square-{i}", _square, ctx, i) for i in range(4))
    )
    total = await ctx.step.run("total", lambda: sum(squares))
    return {"squares": list(squares), "total": total}


# --- errors ------------------------------------------------------------------------------------


def _always_fails(ctx: inngest.Context, what: str) -> None:
    log("attempt", ctx, what=what, attempt=ctx.attempt)
    raise RuntimeError(f"{what} is down")


@client.create_function(fn_id="compensate", trigger=inngest.TriggerEvent(event="steps/compensate"), retries=1)
async def compensate(ctx: inngest.Context) -> dict[str, Any]:
    try:
        await ctx.step.run("charge", _always_fails, ctx, "the card service")
    except inngest.StepError as err:
        refund = await ctx.step.run("refund", lambda: "refunded")
        return {"compensated": err.message, "error_name": err.name, "refund": refund}
    return {"compensated": None}


@client.create_function(fn_id="uncaught", trigger=inngest.TriggerEvent(event="steps/uncaught"), retries=1)
async def uncaught(ctx: inngest.Context) -> None:
    await ctx.step.run("boom", _always_fails, ctx, "the boom service")


# --- triggers, system events, on_failure ------------------------------------------------------


@client.create_function(
    fn_id="multi",
    trigger=[
        inngest.TriggerEvent(event="steps/multi.a"),
        inngest.TriggerEvent(event="steps/multi.b", expression="event.data.amount > 10"),
    ],
)
async def multi(ctx: inngest.Context) -> str:
    return await ctx.step.run("name", lambda: ctx.event.name)


async def _on_failure(ctx: inngest.Context) -> dict[str, Any]:
    data = ctx.event.data
    log("on-failure", ctx, failed_run=data["run_id"], function_id=data["function_id"])
    return {"error": data["error"]["message"], "original": data["event"]["data"], "function_id": data["function_id"]}


@client.create_function(
    fn_id="fails", trigger=inngest.TriggerEvent(event="steps/fail"), retries=0, on_failure=_on_failure
)
async def fails(ctx: inngest.Context) -> None:
    await ctx.step.run("ok-first", lambda: 1)
    raise inngest.NonRetriableError("this function fails on purpose")


@client.create_function(
    fn_id="finished-listener",
    trigger=inngest.TriggerEvent(
        event="inngest/function.finished", expression=f"event.data.function_id == '{APP}-multi'"
    ),
)
async def finished_listener(ctx: inngest.Context) -> None:
    log("finished", ctx, finished_run=ctx.event.data["run_id"], result=ctx.event.data.get("result"))


@client.create_function(fn_id="cancelled-listener", trigger=inngest.TriggerEvent(event="inngest/function.cancelled"))
async def cancelled_listener(ctx: inngest.Context) -> None:
    log("cancelled", ctx, cancelled_run=ctx.event.data["run_id"], function_id=ctx.event.data["function_id"])


# --- cancellation and timeouts ----------------------------------------------------------------


@client.create_function(
    fn_id="cancellable",
    trigger=inngest.TriggerEvent(event="steps/cancellable"),
    cancel=[inngest.Cancel(event="steps/cancel", if_exp="async.data.id == event.data.id", timeout=600_000)],
)
async def cancellable(ctx: inngest.Context) -> str:
    await ctx.step.run("before", lambda: "before")
    await ctx.step.sleep("long", datetime.timedelta(seconds=60))
    await ctx.step.run("after", lambda: log("after-cancel-point", ctx))
    return "not cancelled"


@client.create_function(
    fn_id="bounded", trigger=inngest.TriggerEvent(event="steps/bounded"), timeouts=inngest.Timeouts(finish=2000)
)
async def bounded(ctx: inngest.Context) -> str:
    await ctx.step.sleep("long", datetime.timedelta(seconds=60))
    return "not timed out"


# --- the compatibility matrix's rows (tests/e2e/test_steps_matrix.py) ----------------------------


@client.create_function(fn_id="slow-child", trigger=inngest.TriggerEvent(event="steps/child.slow"))
async def slow_child(ctx: inngest.Context) -> str:
    await ctx.step.sleep("long", datetime.timedelta(seconds=60))
    return "too late"


@client.create_function(fn_id="invoke-timeout", trigger=inngest.TriggerEvent(event="steps/invoke-timeout"))
async def invoke_timeout(ctx: inngest.Context) -> dict[str, Any]:
    try:
        await ctx.step.invoke("slow", function=slow_child, data={}, timeout=datetime.timedelta(seconds=2))
    except inngest.StepError as err:
        return {"failure": err.message}
    return {"failure": None}


def _body(ctx: inngest.Context, name: str, value: Any) -> Any:
    log("body", ctx, step=name)
    return value


@client.create_function(fn_id="multi-step", trigger=inngest.TriggerEvent(event="steps/multi-step"))
async def multi_step(ctx: inngest.Context) -> dict[str, Any]:
    one = await ctx.step.run("one", _body, ctx, "one", int(ctx.event.data["x"]) + 1)
    two = await ctx.step.run("two", _body, ctx, "two", one * 2)
    three = await ctx.step.run("three", _body, ctx, "three", f"{one}-{two}")
    return {"one": one, "two": two, "three": three}


def _flaky(ctx: inngest.Context) -> str:
    log("attempt", ctx, what="flaky", attempt=ctx.attempt)
    if ctx.attempt < 2:
        raise RuntimeError(f"attempt {ctx.attempt} failed")
    return f"ok on attempt {ctx.attempt}"


@client.create_function(fn_id="flaky", trigger=inngest.TriggerEvent(event="steps/flaky"), retries=3)
async def flaky(ctx: inngest.Context) -> dict[str, Any]:
    return {"value": await ctx.step.run("flaky", _flaky, ctx)}


def _refuse(ctx: inngest.Context) -> None:
    log("attempt", ctx, what="refuse", attempt=ctx.attempt)
    raise inngest.NonRetriableError("this step refuses to be retried")


@client.create_function(
    fn_id="non-retriable", trigger=inngest.TriggerEvent(event="steps/non-retriable"), retries=3, on_failure=_on_failure
)
async def non_retriable(ctx: inngest.Context) -> None:
    await ctx.step.run("refuse", _refuse, ctx)


@client.create_function(
    fn_id="exhausted", trigger=inngest.TriggerEvent(event="steps/exhausted"), retries=1, on_failure=_on_failure
)
async def exhausted(ctx: inngest.Context) -> None:
    await ctx.step.run("down", _always_fails, ctx, "the exhausted service")


@client.create_function(
    fn_id="fn-error", trigger=inngest.TriggerEvent(event="steps/fn-error"), retries=1, on_failure=_on_failure
)
async def fn_error(ctx: inngest.Context) -> None:
    await ctx.step.run("fine", lambda: 1)
    log("attempt", ctx, what="handler", attempt=ctx.attempt)
    raise RuntimeError("the handler itself failed")


@client.create_function(fn_id="big-output", trigger=inngest.TriggerEvent(event="steps/big-output"))
async def big_output(ctx: inngest.Context) -> dict[str, Any]:
    return {"blob": await ctx.step.run("blob", lambda: "0123456789" * int(ctx.event.data["tens"]))}


async def _hold(ctx: inngest.Context) -> None:
    log("hold-start", ctx, at=time.time())
    await asyncio.sleep(1.0)
    log("hold-end", ctx, at=time.time())


@client.create_function(fn_id="hold", trigger=inngest.TriggerEvent(event="steps/hold"))
async def hold(ctx: inngest.Context) -> str:
    await ctx.step.run("hold", _hold, ctx)
    return "held"


async def _slow(ctx: inngest.Context) -> int:
    log("slow-start", ctx, pid=os.getpid())
    await asyncio.sleep(3.0)
    log("slow-end", ctx, pid=os.getpid())
    return os.getpid()


def _after(ctx: inngest.Context) -> int:
    log("after", ctx, pid=os.getpid())
    return os.getpid()


@client.create_function(fn_id="drained", trigger=inngest.TriggerEvent(event="steps/drained"))
async def drained(ctx: inngest.Context) -> dict[str, Any]:
    slow = await ctx.step.run("slow", _slow, ctx)
    after = await ctx.step.run("after", _after, ctx)
    return {"slow": slow, "after": after}


# --- cron ---------------------------------------------------------------------------------------


@cron_client.create_function(fn_id="every-minute", trigger=inngest.TriggerCron(cron="* * * * *"))
async def every_minute(ctx: inngest.Context) -> int:
    log("tick", ctx, ts=ctx.event.ts, name=ctx.event.name, fn="every-minute")
    return ctx.event.ts


@cron_client.create_function(fn_id="every-minute-paris", trigger=inngest.TriggerCron(cron="TZ=Europe/Paris * * * * *"))
async def every_minute_paris(ctx: inngest.Context) -> int:
    log("tick", ctx, ts=ctx.event.ts, name=ctx.event.name, fn="every-minute-paris")
    return ctx.event.ts


MAIN = [
    sleeper,
    quick,
    waiter,
    emitter,
    emitted_listener,
    child,
    failing_child,
    invoker,
    fan_out,
    compensate,
    uncaught,
    multi,
    fails,
    finished_listener,
    cancelled_listener,
    cancellable,
    bounded,
    slow_child,
    invoke_timeout,
    multi_step,
    flaky,
    non_retriable,
    exhausted,
    fn_error,
    big_output,
    hold,
    drained,
]


async def main() -> None:
    logging.basicConfig(level=logging.INFO)
    which = sys.argv[1] if len(sys.argv) > 1 else "main"
    if which == "cron":
        apps = [(cron_client, [every_minute, every_minute_paris])]
    else:
        apps = [(client, MAIN), (other, [other_child])]
    instance = os.environ.get("WORKER_NAME", f"official-{which}")
    # The SDK's default shutdown signals (SIGTERM, SIGINT): a SIGTERM drains the connection
    # and lets in-flight steps finish before the process exits.
    await connect(apps, instance_id=instance).start()


if __name__ == "__main__":
    asyncio.run(main())
