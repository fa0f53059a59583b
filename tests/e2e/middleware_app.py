"""Our SDK's side of the middleware end-to-end tests (served by `connect worker`).

* `mw-ours`: `recorded`, whose client middleware `A` (async) and `B` (sync)
  and function middleware `C` are a middleware class written for the official
  SDK with only its imports changed; every hook call is appended to MW_LOG.
* `mw-enc`: `relay`, with `EncryptionMiddleware` and `LoggerMiddleware`;
  `tests/compat/official_encryption_app.py` serves the same app and function
  with the official SDK and `inngest-encryption`, so a run can start on one
  SDK and finish on the other.

Targets: `tests.e2e.middleware_app:recorded_apps`, `tests.e2e.middleware_app:enc_apps`.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
from typing import Any

from connect.sdk import Client, Context, Event, Middleware, MiddlewareSync, Step, TriggerEvent
from connect.sdk.encryption import EncryptionMiddleware
from connect.sdk.log_middleware import LoggerMiddleware

#: The key both SDKs' encryption middleware use in these tests.
KEY = "correct horse battery staple"
SDK = "ours"

_lock = threading.Lock()


def _append(path_var: str, line: dict[str, Any]) -> None:
    path = os.environ.get(path_var)
    if path:
        with _lock, open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


# --- a middleware written for the official SDK (only the import above differs) -----------


def recorder(base: Any, label: str) -> Any:
    class Recorder(base):  # type: ignore[misc,valid-type]
        def __init__(self, client: Any, raw_request: Any) -> None:
            super().__init__(client, raw_request)
            self.run_id = None
            self._note("init")

        def _note(self, hook: str, **seen: Any) -> None:
            _append("MW_LOG", {"label": label, "hook": hook, "run": self.run_id, **seen})

        def transform_input(self, ctx: Any, function: Any, steps: Any) -> None:
            self.run_id = ctx.run_id
            self._note("transform_input", memos=steps.size)

        def before_execution(self) -> None:
            self._note("before_execution")

        def after_execution(self) -> None:
            self._note("after_execution")

        def transform_output(self, result: Any) -> None:
            step = None if result.step is None else result.step.id
            self._note("transform_output", step=step, output=result.output if result.has_output() else None)

        def before_response(self) -> None:
            self._note("before_response")

        def before_send_events(self, events: Any) -> None:
            self._note("before_send_events", events=[e.name for e in events])

        def after_send_events(self, result: Any) -> None:
            self._note("after_send_events", ids=len(result.ids), error=result.error)

    if base is Middleware:

        class AsyncRecorder(Recorder):  # type: ignore[valid-type,misc]
            async def transform_input(self, ctx: Any, function: Any, steps: Any) -> None:
                Recorder.transform_input(self, ctx, function, steps)

            async def before_execution(self) -> None:
                Recorder.before_execution(self)

            async def after_execution(self) -> None:
                Recorder.after_execution(self)

            async def transform_output(self, result: Any) -> None:
                Recorder.transform_output(self, result)

            async def before_response(self) -> None:
                Recorder.before_response(self)

            async def before_send_events(self, events: Any) -> None:
                Recorder.before_send_events(self, events)

            async def after_send_events(self, result: Any) -> None:
                Recorder.after_send_events(self, result)

        return AsyncRecorder
    return Recorder


recording_client = Client(app_id="mw-ours", middleware=[recorder(Middleware, "A"), recorder(MiddlewareSync, "B")])


@recording_client.create_function(
    fn_id="recorded", trigger=TriggerEvent(event="mw/record"), middleware=[recorder(MiddlewareSync, "C")]
)
async def recorded(ctx: Context, step: Step) -> int:
    a = await step.run("a", lambda: 1)
    await step.send_event("send", Event(name="mw/sent", data={"run": ctx.run_id}))
    return a + 1


# --- encryption and logging ------------------------------------------------------------------

enc_client = Client(app_id="mw-enc", middleware=[EncryptionMiddleware.factory(KEY), LoggerMiddleware])


def _seen(ctx: Context, what: str, value: Any) -> None:
    _append("SEEN_LOG", {"sdk": SDK, "run": ctx.run_id, "what": what, "value": value})


@enc_client.create_function(fn_id="relay", trigger=TriggerEvent(event="enc/relay"))
async def relay(ctx: Context, step: Step) -> dict[str, Any]:
    secret = ctx.event.data["encrypted"]["secret"]
    ctx.logger.info("relay started")

    def first() -> dict[str, Any]:
        ctx.logger.info("in the first step")
        _seen(ctx, "first", secret)
        return {"by": SDK, "secret": secret}

    got_first = await step.run("first", first)
    await step.wait_for_event(
        "go", event="enc/go", if_exp="async.data.run == event.data.run", timeout=datetime.timedelta(minutes=2)
    )

    def second() -> dict[str, Any]:
        _seen(ctx, "second", got_first)
        return {"by": SDK, "first": got_first, "secret": ctx.event.data["encrypted"]["secret"]}

    got_second = await step.run("second", second)
    await step.send_event(
        "tell", Event(name="enc/told", data={"run": ctx.event.data["run"], "encrypted": {"secret": secret}})
    )
    return {"first": got_first, "second": got_second}


@enc_client.create_function(fn_id="listener", trigger=TriggerEvent(event="enc/told"))
async def listener(ctx: Context, step: Step) -> str:
    _seen(ctx, "told", ctx.event.data["encrypted"])
    return "heard"


recorded_apps = [(recording_client, list(recording_client.functions))]
enc_apps = [(enc_client, list(enc_client.functions))]
