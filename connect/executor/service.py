"""The executor: turns events into runs and keeps every active run moving.

Each Running run is driven by one asyncio task owned by the `Executor`
(`stop()` cancels and awaits them all). All state lives in the store, so
`stop()` loses nothing: the next `start()` finds every Running run there and
resumes it from its stored pending request.

A run task that fails unexpectedly (a store error, a bug) is logged and
started again from the stored state after a backoff, so one bad run neither
stops the others nor is silently abandoned.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from connect.executor.retries import Backoff
from connect.executor.runner import Runner, RunServices
from connect.executor.triggers import TriggerIndex
from connect.executor.views import run_view
from connect.gateway.dispatch import Dispatcher
from connect.store.base import (
    FAILED,
    RUNNING,
    AppRecord,
    EventRecord,
    NewEvent,
    RunRecord,
    StepMemo,
    Store,
)
from protocol.ids import new_ulid
from protocol.payloads import Event, FunctionConfig, IncomingEvent, json_encoder

log = logging.getLogger(__name__)

_decode_event = msgspec.json.Decoder(Event).decode
_encode_functions = msgspec.json.Encoder().encode

#: Bounds on the pause before a run task that crashed is started again.
_RESTART_DELAY_MIN = 1.0
_RESTART_DELAY_MAX = 60.0


class Executor:
    """Durable runs over a `Store` and a `Dispatcher`."""

    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        *,
        default_retries: int = 4,
        clock: Callable[[], float] = time.time,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._services = RunServices(
            store=store,
            dispatcher=dispatcher,
            backoff=Backoff(backoff_base, backoff_max),
            clock=clock,
        )
        self._triggers = TriggerIndex(default_retries)
        self._app_versions: dict[str, tuple[str | None, bytes]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load the app registry and resume every run that is Running in the store."""
        for app in await self._store.list_apps():
            self._remember_app(app.app_name, app.app_version, app.functions)
        self._started = True
        for run in await self._store.runs_with_status(RUNNING):
            self._spawn(run, None)

    async def stop(self) -> None:
        """Cancel every run task and wait for them; their state stays in the store."""
        self._started = False
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    @property
    def active_runs(self) -> int:
        """Runs currently being driven by this executor."""
        return len(self._tasks)

    # --- apps ------------------------------------------------------------------------

    async def sync_app(self, app_name: str, app_version: str | None, functions: list[FunctionConfig]) -> None:
        """Record what `app_name` serves (a worker connected with it) and index its triggers."""
        encoded = _encode_functions(functions)
        if self._app_versions.get(app_name) == (app_version, encoded):
            return  # another worker of the same app version: nothing changed
        app = AppRecord(app_name, list(functions), app_version, self._now_ms())
        await self._store.put_app(app)
        self._remember_app(app_name, app_version, functions)

    def _remember_app(self, app_name: str, app_version: str | None, functions: list[FunctionConfig]) -> None:
        self._app_versions[app_name] = (app_version, _encode_functions(functions))
        self._triggers.set_app(app_name, functions)

    # --- events ------------------------------------------------------------------------

    async def send_events(self, events: list[IncomingEvent]) -> list[str]:
        """Store events, start one run per function each triggers; return the event ids in order.

        An event id already stored is a duplicate send: the id is returned but
        no runs start again.
        """
        now_ms = self._now_ms()
        batch: list[NewEvent] = []
        started: list[tuple[int, RunRecord, Event]] = []
        for incoming in events:
            if not incoming.name:
                raise ValueError("an event needs a non-empty name")
            event = Event(
                name=incoming.name,
                data=incoming.data or {},
                id=incoming.id or new_ulid(),
                ts=incoming.ts or now_ms,
                user=incoming.user or {},
            )
            runs = [
                RunRecord(
                    run_id=new_ulid(),
                    function_id=target.function_id,
                    app_name=target.app_name,
                    event_id=event.id,
                    started_at_ms=now_ms,
                    max_attempts=target.max_attempts,
                    pending_request_id=new_ulid(),
                )
                for target in self._triggers.match(event)
            ]
            record = EventRecord(event.id, event.name, event.ts, now_ms, json_encoder.encode(event))
            batch.append(NewEvent(record, runs))
            started.extend((len(batch) - 1, run, event) for run in runs)
        stored = await self._store.record_events(batch)
        for index, run, event in started:
            if stored[index]:
                self._spawn(run, event)
        return [new.event.id for new in batch]

    # --- queries -------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        run = await self._store.get_run(run_id)
        return None if run is None else run_view(run)

    async def runs_for_event(self, event_id: str) -> list[dict[str, Any]]:
        return [run_view(run) for run in await self._store.runs_for_event(event_id)]

    # --- run tasks ------------------------------------------------------------------------

    def _spawn(self, run: RunRecord, event: Event | None) -> None:
        if not self._started or run.run_id in self._tasks:
            return
        task = asyncio.create_task(self._keep_driving(run, event), name=f"run:{run.run_id}")
        self._tasks[run.run_id] = task
        task.add_done_callback(functools.partial(self._forget, run.run_id))

    def _forget(self, run_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(run_id) is task:
            del self._tasks[run_id]

    async def _keep_driving(self, run: RunRecord, event: Event | None) -> None:
        """Drive a run to its end, starting over from the store after an unexpected error."""
        fresh = event is not None  # a new run has no memos yet and its event is at hand
        delay = _RESTART_DELAY_MIN
        while True:
            try:
                if not fresh:
                    loaded = await self._load(run.run_id)
                    if loaded is None:
                        return
                    run, event, memos = loaded
                else:
                    memos = []
                assert event is not None
                await Runner(self._services, run, event, memos).drive()
                return
            except Exception:
                log.exception("run %s: driving failed; resuming from the store in %.0f s", run.run_id, delay)
            fresh = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESTART_DELAY_MAX)

    async def _load(self, run_id: str) -> tuple[RunRecord, Event, list[StepMemo]] | None:
        run = await self._store.get_run(run_id)
        if run is None or run.status != RUNNING:
            return None
        record = await self._store.get_event(run.event_id)
        if record is None:
            # Cannot happen through this API (event and runs are stored together).
            log.error("run %s: its event %s is missing; failing the run", run_id, run.event_id)
            run.status = FAILED
            run.output = json_encoder.encode(
                {"name": "EventMissing", "message": f"event {run.event_id} is not in the store", "stack": None}
            )
            run.ended_at_ms = self._now_ms()
            run.pending_request_id = ""
            await self._store.save_run(run)
            return None
        return run, _decode_event(record.body), await self._store.get_memos(run_id)
