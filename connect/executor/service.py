"""The executor: turns events into runs and keeps every active run moving.

Each run with work for a worker is driven by one `Runner` task owned by the
`Executor` (`stop()` cancels and awaits them all). A run that only waits (a
sleep, a wait for an event, an invoke) holds no task: the executor keeps
what would wake it in memory, in two places:

* `Timers`: one heap and one asyncio timer for every deadline (sleeps
  ending, waits and invokes timing out, `timeouts.finish`, cron ticks);
* `WaitIndex`: paused runs by the event name (and value) they wait for, plus
  every run's `cancel` conditions.

Whatever completes a waiting step stores its memo first, then wakes the run
(starting a runner that reads it back from the store). All state lives in
the store, so `stop()` loses nothing: the next `start()` reads every Running
run back, re-arms its timers and waits, and resumes it.

A run task that fails unexpectedly (a store error, a bug) is logged and
started again from the stored state after a backoff, so one bad run neither
stops the others nor is silently abandoned.

With `shared=True` the executor is one of several processes over one
database (`connect serve --role executor`). Each drives only the runs it
owns, so timers and waits fire in the owner alone; what other processes
record reaches it through notifications: apps (the trigger index and crons
are rebuilt), events (matched against its waits and cancel conditions, see
`connect.executor.feed`), API cancellations, and new runs nobody owns yet
(claimed in small batches, so executors woken together share them). Cron
ticks are armed by every executor; the tick's derived event id makes
`record_tick` store one run per tick.

Debounced and batched functions (`connect.executor.held_starts`): their
events are recorded with the held start of their (function, key) instead of
a run. A batch that fills starts its run in that same write (owned by nobody,
claimed at once through `RUNS_RELEASED`); for the rest, every executor keeps
one timer for the earliest held start due, told of new ones by
`HELD_STARTS_CHANGED` (from any process) and reading it back at start, and
fires what is due with `start_held`, which starts each run once however
many executors try at the same moment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final

import msgspec
from prometheus_client import CollectorRegistry

from connect.dispatch import Port
from connect.executor import bulk_cancel, replies, step_infos
from connect.executor.bulk_cancel import Cancellation
from connect.executor.concurrency import SlotGrants, as_dict
from connect.executor.cron import CRON_EVENT, CronSchedule
from connect.executor.feed import PAGE as FEED_PAGE
from connect.executor.feed import EventFeed
from connect.executor.intake import Intake, IntakeItem
from connect.executor.ownership import (
    CLAIM_BATCH,
    DEFAULT_OWNER_LEASE,
    SHARED_CLAIM_BATCH,
    Ownership,
    default_executor_id,
)
from connect.executor.registry import Registration, Registry
from connect.executor.reruns import rerun_event, rerun_view
from connect.executor.retention import INTERVAL as RETENTION_INTERVAL
from connect.executor.retention import Retention
from connect.executor.retries import Backoff
from connect.executor.runner import MAX_LEASE_LAPSES, CancelRequested, Message, Resolved, Runner, RunServices
from connect.executor.starts import event_record, gated_event, received, started, told_invokers
from connect.executor.stored_views import StoredViews
from connect.executor.system_events import derived_id_at
from connect.executor.throttle_turns import ThrottleTurns
from connect.executor.timers import Timers
from connect.executor.triggers import FunctionInfo, Target, TriggerIndex
from connect.executor.views import run_view
from connect.executor.waits import CANCEL, INVOKE, RESUME, WaitIndex, Watch, WatchKey
from connect.metrics import RunMetrics
from connect.store.base import (
    APPS_CHANGED,
    EVENTS_RECORDED,
    HELD_STARTS_CHANGED,
    NEW_RUN_FENCE,
    RUN_CANCEL_REQUESTED,
    RUNNING,
    RUNS_RELEASED,
    WAIT_EVENT,
    WAIT_INVOKE,
    AppRecord,
    Claim,
    EventRecord,
    NewEvent,
    RunMemo,
    RunOwnershipLost,
    RunRecord,
    SlotAcquire,
    StepInfo,
    StepMemo,
    Store,
    Waiting,
    starting_slots,
)
from connect.waiting import wait_event
from protocol.payloads import Event, FunctionConfig, IncomingEvent, RefusedFunction, json_encoder

log = logging.getLogger(__name__)

_encode_functions = msgspec.json.Encoder().encode

#: Bounds on the pause before a run task that crashed is started again.
_RESTART_DELAY_MIN = 1.0
_RESTART_DELAY_MAX = 60.0
#: How long `cancel_run` waits for the run to reach its next step boundary.
CANCEL_WAIT: Final = 5.0
#: Pause before retrying a timer action whose store write failed.
_TIMER_RETRY_MS: Final = 1000
#: A run armed this soon after it started relies on notifications alone for its
#: waits; one armed later (read back from the store) also reads back the events
#: recorded since (`shared` only).
_FRESH_RUN_MS: Final = 1000

#: How many debounces and batches one store call fires at most.
HELD_BATCH: Final = 100
#: Pause before looking again at a due debounce or batch another transaction held.
_HELD_RETRY_MS: Final = 100
#: The timer of the next debounce or batch due.
_HELD_TIMER: Final = ("held",)

_NULL: Final = b"null"
_INVOKE_TIMEOUT: Final = replies.error_memo(
    replies.error("InngestInvokeTimeoutError", "Timed out waiting for invoked function to complete")
)

# Timer keys: ("step", run id, step hash), ("finish", run id), ("cron", schedule key),
# ("held",) (the next debounce or batch due).
TimerKey = tuple[str, ...]


class Executor(StoredViews):
    """Durable runs over a `Store` and a `Port` to workers."""

    def __init__(
        self,
        store: Store,
        dispatcher: Port,
        *,
        default_retries: int = 4,
        clock: Callable[[], float] = time.time,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        checkpoint_steps: bool = True,
        max_lease_lapses: int = MAX_LEASE_LAPSES,
        executor_id: str | None = None,
        owner_lease: float = DEFAULT_OWNER_LEASE,
        history_retention: float | None = None,
        retention_interval: float = RETENTION_INTERVAL,
        shared: bool = False,
        metrics: RunMetrics | None = None,
    ) -> None:
        """`history_retention`: seconds ended runs are kept before they are
        pruned in the background (see `connect.executor.retention`); None
        keeps everything.

        `shared`: other processes record events and runs in the same store
        (API processes, other executors). The executor then follows the app
        registry (`APPS_CHANGED`), matches the events others record against
        its runs' waits and cancel conditions (`EVENTS_RECORDED`, see
        `connect.executor.feed`), hands API cancellations to the runs it owns
        (`RUN_CANCEL_REQUESTED`), and claims new runs in small batches so
        executors woken together share them (`SHARED_CLAIM_BATCH`).

        `metrics`: where runs started, skipped and ended, step durations and
        the queue are counted (None: in a registry of its own, unserved)."""
        if max_lease_lapses < 0:
            raise ValueError("max_lease_lapses must not be negative")
        self._store = store
        self._clock = clock
        self._ownership = Ownership(
            store,
            executor_id or default_executor_id(),
            lease=owner_lease,
            clock=clock,
            claim_batch=SHARED_CLAIM_BATCH if shared else CLAIM_BATCH,
        )
        self._services = RunServices(
            store=store,
            dispatcher=dispatcher,
            backoff=Backoff(backoff_base, backoff_max),
            clock=clock,
            checkpoint_steps=checkpoint_steps,
            max_lease_lapses=max_lease_lapses,
            slots=SlotGrants(store),
            turns=ThrottleTurns(store, clock),
            metrics=metrics if metrics is not None else RunMetrics(CollectorRegistry()),
        )
        assert self._services.metrics is not None
        self._run_metrics = self._services.metrics
        self._registry = TriggerIndex(default_retries)
        #: What each app registered, refusals and options not honoured included.
        self._apps = Registry()
        self._app_versions: dict[str, tuple[str | None, bytes]] = {}
        self._waits = WaitIndex()
        self._timers: Timers[TimerKey] = Timers(self._on_due, clock)
        #: Waiting steps with a timer (and maybe a watch), by run.
        self._armed: dict[str, dict[str, Waiting]] = {}
        #: Watches resolved in memory whose memo is not stored yet.
        self._claims: set[WatchKey] = set()
        self._runners: dict[str, Runner] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._crons: dict[str, tuple[FunctionInfo, CronSchedule]] = {}
        self._cron_due: dict[str, int] = {}
        self._cron_last: dict[str, int] = {}
        self._go = asyncio.Event()
        self._started = False
        #: Set when runs may be waiting to be claimed (another executor released some).
        self._sweep_now = asyncio.Event()
        self._listening = False
        self._shared = shared
        self._feed = EventFeed()
        #: Ids from `EVENTS_RECORDED` notifications not read yet.
        self._heard: list[str] = []
        self._catch_up = False
        self._events_wake = asyncio.Event()
        self._apps_wake = asyncio.Event()
        self._retention = (
            None
            if history_retention is None
            else Retention(store, history_retention, clock=clock, interval=retention_interval)
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load the app registry, claim the Running runs nobody else drives,
        re-arm their timers and waits, resume them, and schedule cron ticks."""
        for app in await self._store.list_apps():
            self._remember_app(Registration(app.app_name, app.app_version, app.functions))
        self._started = True
        self._go.clear()
        self._timers.start()
        if not self._listening:
            await self._store.listen(RUNS_RELEASED, lambda _owner: self._sweep_now.set())
            await self._store.listen(HELD_STARTS_CHANGED, self._held_changed)
            assert self._services.slots is not None and self._services.turns is not None
            await self._services.slots.start()
            await self._services.turns.start()
            if self._shared:
                await self._store.listen(APPS_CHANGED, lambda _app: self._apps_wake.set())
                await self._store.listen(EVENTS_RECORDED, self._events_recorded)
                await self._store.listen(RUN_CANCEL_REQUESTED, self._cancel_requested)
            self._listening = True
        if self._shared:
            self._feed.start_at(self._now_ms())
        claims = await self._ownership.take_back()
        runners = [self._spawn_claimed(claim) for claim in claims]
        # Every run re-files its waits before any runs on: a child run finishing
        # now must find the parent that invoked it listening.
        await asyncio.gather(*(r.armed.wait() for r in runners if r is not None))
        self._go.set()
        self._cron_last = await self._store.cron_ticks()
        self._schedule_crons()
        held_due = await self._store.next_held_due()
        if held_due is not None:
            self._arm_held(held_due)
        self._background_task(self._hold_runs())
        if self._shared:
            self._background_task(self._follow_apps())
            self._background_task(self._follow_events())
        if self._retention is not None:
            self._background_task(self._retention.run())  # cancelled by `stop` with the rest

    async def stop(self) -> None:
        """Cancel every run task and wait for them; their state stays in the
        store, and the runs are released for any executor to claim at once."""
        self._started = False
        self._timers.stop()
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._background.clear()
        self._runners.clear()
        try:
            released = await self._ownership.release()
        except Exception:
            # The heartbeat lapses on its own; others claim the runs then.
            log.warning("could not release this executor's runs; they move on once its lease lapses", exc_info=True)
        else:
            log.log(logging.INFO if released else logging.DEBUG, "released %d run(s) for other executors", released)

    @property
    def executor_id(self) -> str:
        """The owner name this executor's runs carry in the store."""
        return self._ownership.executor_id

    async def _hold_runs(self) -> None:
        """Renew the heartbeat every third of the owner lease, and claim the runs
        other executors let go of: at once when one announces it released runs,
        and at every renewal for those whose owner was lost without a word."""
        renew_at = self._clock() + self._ownership.renew_interval
        while True:
            await wait_event(self._sweep_now, max(0.0, renew_at - self._clock()))
            self._sweep_now.clear()
            try:
                if self._clock() >= renew_at:
                    await self._ownership.renew()
                    renew_at = self._clock() + self._ownership.renew_interval
                    if self._shared:
                        self._catch_up_soon()  # notifications lost since the last look
                claims = await self._ownership.sweep()
            except Exception:
                log.warning("could not renew this executor's hold on its runs; retrying", exc_info=True)
                # Not at once: a store that is down would have this loop spin.
                await asyncio.sleep(min(_TIMER_RETRY_MS / 1000, self._ownership.renew_interval))
                continue
            if claims and self._shared:
                # New runs recorded by API processes come this way too: one line per sweep.
                log.debug("claimed %d run(s) nobody drove (new, or let go by another executor)", len(claims))
            for claim in claims:
                if not self._shared:
                    log.info("run %s: claimed (let go by an executor, or started by a batch)", claim.run_id)
                self._spawn_claimed(claim)

    @property
    def active_runs(self) -> int:
        """Runs currently driven by a task (not counting those only waiting)."""
        return len(self._runners)

    @property
    def retention(self) -> Retention | None:
        """The history retention task, or None when everything is kept."""
        return self._retention

    @property
    def paused_watches(self) -> int:
        """Waits, invokes and cancel conditions currently filed by event."""
        return len(self._waits)

    # --- apps ------------------------------------------------------------------------

    async def sync_app(
        self,
        app_name: str,
        app_version: str | None,
        functions: list[FunctionConfig],
        refused: Sequence[RefusedFunction] = (),
        unknown_fields: dict[str, list[str]] | None = None,
    ) -> None:
        """Record what `app_name` serves (a worker connected with it) and index
        its triggers; `refused` functions are listed but never started. Logs
        refusals and options not honoured once per change of the registration."""
        registration = Registration(app_name, app_version, functions, refused, unknown_fields)
        if self._apps.unchanged(registration):
            return  # another worker of the same app version: nothing changed
        encoded = _encode_functions(functions)
        if self._app_versions.get(app_name) != (app_version, encoded):
            app = AppRecord(app_name, list(functions), app_version, self._now_ms())
            await self._store.put_app(app)
        self._remember_app(registration)
        if self._started:
            self._schedule_crons()

    def _remember_app(self, registration: Registration) -> None:
        functions = list(registration.functions)
        self._app_versions[registration.app_name] = (registration.app_version, _encode_functions(functions))
        self._registry.set_app(registration.app_name, functions)
        self._apps.record(registration)

    def registered_apps(self) -> list[dict[str, Any]]:
        """Every app with its functions (`GET /v1/apps`)."""
        return [msgspec.to_builtins(app) for app in self._apps.apps()]

    def registered_functions(self) -> list[dict[str, Any]]:
        """Every function the apps registered, served or refused (`GET /v1/functions`)."""
        return [msgspec.to_builtins(view) for view in self._apps.views()]

    # --- events ------------------------------------------------------------------------

    async def send_events(self, events: list[IncomingEvent]) -> list[str]:
        """Store events, start the runs they trigger, resume the waits they
        match and cancel the runs they cancel; return the event ids in order.

        An event id already stored is a duplicate send: the id is returned but
        it has no effect again.

        Runs started (or resumed) by the events get one turn of the loop
        before this returns, so their first requests leave before the
        caller's answer: written first, the answer wakes the sender, which on
        a shared machine can take the CPU from this process before the run's
        request is out (in the benchmarks on 2 vCPUs the write of the answer
        took about 0.25 ms to return, see bench/README.md).
        """
        now_ms = self._now_ms()
        built = received(events, now_ms)
        intake = self.prepare_events(built, now_ms)
        try:
            stored = await self._store.record_events(intake.batch)
        except BaseException:
            self.discard_intake(intake)
            raise
        self.apply_events(intake, stored)
        if any(is_new and (item.new.runs or item.claimed) for item, is_new in zip(intake.items, stored, strict=True)):
            await asyncio.sleep(0)
        return [event.id for event in built]

    def prepare_events(self, events: list[Event], now_ms: int) -> Intake:
        """Match events against triggers, waits and cancel conditions (see `Intake`)."""
        intake = Intake()
        for event in events:
            record = event_record(event, now_ms)
            if self._shared:
                self._feed.saw(event.id)  # matched here: its notification needs no look
            new = gated_event(self._registry, record, event, now_ms, self._ownership.executor_id)
            if new.runs:
                self._starting_slots(new, event)
            item = IntakeItem(new, event)
            watches = self._waits.match(_as_dict(event), now_ms) if len(self._waits) else []
            for watch in watches:
                if watch.action == CANCEL:
                    if watch.run_id not in item.new.cancels:
                        item.new.cancels.append(watch.run_id)
                    continue
                memo = self._claim(watch, event, record.body)
                if memo is None:
                    continue
                item.claimed.append((watch, memo))
                item.new.memos.append(RunMemo(watch.run_id, StepMemo(watch.key, memo, _ended(watch, now_ms))))
            item.matched_cancels = len(item.new.cancels)
            intake.items.append(item)
        return intake

    def _starting_slots(self, new: NewEvent, event: Event) -> None:
        """The slots the first requests of the runs of functions with
        concurrency limits take as the event is recorded (`NewEvent.slots`):
        no store operation of their own before they are dispatched."""
        trigger: dict[str, Any] | None = None
        for run in new.runs:
            info = self._registry.lookup(run.function_id)
            if info is None or info.limits is None or not run.requests:
                continue
            trigger = trigger or as_dict(event)
            claims = info.limits.claims(trigger)
            order = info.limits.order(run.started_at_ms, trigger)
            new.slots.extend((run.run_id, SlotAcquire(r.request_id, claims, order)) for r in run.requests)

    def direct_events(self, starts: list[tuple[Event, Target]], now_ms: int) -> Intake:
        """Events that start one given function each (invokes, cron ticks), not matched against anything."""
        intake = Intake()
        for event, target in starts:
            if self._shared:
                self._feed.saw(event.id)
            record = EventRecord(event.id, event.name, event.ts, now_ms, json_encoder.encode(event))
            new = gated_event(self._registry, record, event, now_ms, self._ownership.executor_id, [target])
            intake.items.append(IntakeItem(new, event))
        return intake

    def apply_events(self, intake: Intake, stored: Sequence[bool]) -> None:
        """After the write: start the new runs, wake resumed and cancelled ones."""
        for item, is_new in zip(intake.items, stored, strict=True):
            for watch, memo in item.claimed:
                self._claims.discard(watch.id)
                if is_new:
                    self._forget_step(watch.run_id, watch.key)
                    self._deliver(watch.run_id, Resolved(watch.key, memo))
                else:
                    self._waits.add(watch)  # a duplicate event resumes nothing
            if not is_new:
                continue
            self._run_metrics.recorded(item.new)
            asked = {a.request_id for _, a in starting_slots(item.new)} if item.new.slots else None
            for run in started(item.new):
                self._ownership.started(run.run_id)
                runner = self._spawn(run.run_id, (run, item.event))
                if asked and runner is not None:
                    held = set(item.new.held)
                    for r in run.requests:
                        if r.request_id in asked:
                            runner.slots_asked(r.request_id, held=r.request_id in held)
            if item.new.gates:
                for told in told_invokers(item.new):  # stored with the event: wake the invoking run
                    self._deliver(told.run_id, Resolved(told.memo.step_hash, told.memo.result))
            for i, run_id in enumerate(item.new.cancels):
                if i < item.matched_cancels:
                    reason = f"event {item.event.name} ({item.event.id}) matched a cancel condition"
                else:  # added by the store: a singleton in `cancel` mode
                    reason = f"event {item.event.name} ({item.event.id}) started a new run of this singleton function"
                self._deliver(run_id, CancelRequested(reason))

    def discard_intake(self, intake: Intake) -> None:
        """The write failed: hand every claim back."""
        for item in intake.items:
            for watch, _ in item.claimed:
                self._claims.discard(watch.id)
                self._waits.add(watch)

    # --- events and apps of other processes (`shared`) ------------------------------------

    def _events_recorded(self, payload: str) -> None:
        if not self._started:
            return  # stopped: `start` re-files every wait and reads back what it needs
        if not payload:
            self._catch_up_soon()  # the listener reconnected: notifications may be lost
            return
        if not len(self._waits):
            return  # nothing here waits: no event recorded now can resume or cancel anything
        heard = self._feed.unseen(payload.split(","))
        if heard:
            self._heard.extend(heard)
            self._events_wake.set()

    def _catch_up_soon(self) -> None:
        self._catch_up = True
        self._events_wake.set()

    def _cancel_requested(self, run_id: str) -> None:
        if self._started and self._ownership.owns(run_id):
            self._deliver(run_id, CancelRequested("cancelled through the API"))

    async def _follow_events(self) -> None:
        """Read the events others recorded (by the ids heard, or since the
        cursor after a lost notification) and match them against this
        executor's waits and cancel conditions."""
        while True:
            await self._events_wake.wait()
            self._events_wake.clear()
            try:
                if self._catch_up:
                    self._catch_up = False
                    await self._catch_up_events()
                while self._heard:
                    ids, self._heard = self._heard[:FEED_PAGE], self._heard[FEED_PAGE:]
                    self._match_recorded(self._feed.take(await self._store.get_events(ids)))
            except Exception:
                log.warning("could not read events recorded elsewhere; looking again from the cursor", exc_info=True)
                self._heard.clear()
                self._catch_up = True
                await asyncio.sleep(_TIMER_RETRY_MS / 1000)
                self._events_wake.set()

    async def _catch_up_events(self) -> None:
        """Read back the events recorded since the cursor (less the lookback),
        a page at a time; with nothing waiting here, only move the cursor."""
        now_ms = self._now_ms()
        start = self._feed.catch_up_start()
        while len(self._waits):
            page = await self._store.events_since(start, FEED_PAGE)
            self._match_recorded(self._feed.take(page))
            if len(page) < FEED_PAGE:
                break
            # Pages by time; the seen ids skip the ones read twice at a page's last ms.
            last = page[-1].received_at_ms
            start = last - 1 if last - 1 > start else last
        self._feed.caught_up(now_ms)

    def _match_recorded(self, records: Sequence[EventRecord]) -> None:
        """Resume the waits and fire the cancel conditions that events recorded
        by another process match; a wait's memo is claimed with `put_memo`
        (first stored wins, against this executor's timer too)."""
        if not records or not len(self._waits):
            return
        now_ms = self._now_ms()
        for record in records:
            event = _decode_event(record.body)
            for watch in self._waits.match(_as_dict(event), now_ms):
                if record.received_at_ms < watch.since_ms or not self._ownership.owns(watch.run_id):
                    continue
                if watch.action == CANCEL:
                    reason = f"event {event.name} ({event.id}) matched a cancel condition"
                    self._background_task(self._cancel_for(watch.run_id, reason))
                    continue
                memo = self._claim(watch, event, record.body)
                if memo is not None:
                    self._background_task(self._resolve_recorded(watch, memo))

    def _claim(self, watch: Watch, event: Event, body: bytes) -> bytes | None:
        """Take a wait or invoke that `event` (stored as `body`) matched, until
        its memo is stored: the memo to store, or None if another event took it."""
        if watch.id in self._claims:
            return None
        self._waits.remove(*watch.id)
        self._claims.add(watch.id)
        return body if watch.action == RESUME else _invoke_memo(event)

    async def _resolve_recorded(self, watch: Watch, memo: bytes) -> None:
        try:
            ended = StepMemo(watch.key, memo, _ended(watch, self._now_ms()))
            inserted = await self._store.put_memo(watch.run_id, ended)
        except Exception:
            log.exception("run %s: storing the event that ends step %s failed", watch.run_id, watch.key)
            self._claims.discard(watch.id)
            self._waits.add(watch)  # the next catch-up finds the event again
            self._catch_up_soon()
            return
        self._claims.discard(watch.id)
        if inserted:
            self._forget_step(watch.run_id, watch.key)
            self._deliver(watch.run_id, Resolved(watch.key, memo))
        else:
            self._stored_elsewhere(watch.run_id)

    def _stored_elsewhere(self, run_id: str) -> None:
        """Another writer stored the step's memo first. In this process that
        writer wakes the run itself; another process (an executor that lost
        the run without noticing yet) cannot: a parked run is read back here."""
        if self._shared and run_id not in self._runners:
            self._spawn(run_id)

    async def _follow_apps(self) -> None:
        """Re-read the app registry whenever an app changes (any process's
        `put_app`), so new triggers start runs and new crons tick here."""
        while True:
            await self._apps_wake.wait()
            self._apps_wake.clear()
            try:
                apps = await self._store.list_apps()
            except Exception:
                log.warning("could not read the app registry; trying again", exc_info=True)
                await asyncio.sleep(_TIMER_RETRY_MS / 1000)
                self._apps_wake.set()
                continue
            changed = False
            for app in apps:
                if self._app_versions.get(app.app_name) != (app.app_version, _encode_functions(app.functions)):
                    self._remember_app(Registration(app.app_name, app.app_version, app.functions))
                    changed = True
            if changed and self._started:
                self._schedule_crons()

    # --- cancellation ------------------------------------------------------------------

    async def cancel_run(self, run_id: str) -> dict[str, Any] | None:
        """Cancel a run at its next step boundary; None if there is no such run.

        Waits up to `CANCEL_WAIT` seconds for the run to stop, then returns it
        as `get_run` does (still `Running` if a long step is finishing).
        """
        run = await self._store.get_run(run_id)
        if run is None:
            return None
        if run.status == RUNNING and await self._store.request_cancel(run_id):
            self._deliver(run_id, CancelRequested("cancelled through the API"))
            runner = self._runners.get(run_id)
            if runner is not None and runner.task is not None:
                await asyncio.wait({runner.task}, timeout=CANCEL_WAIT)
            run = await self._store.get_run(run_id)
            assert run is not None
        return run_view(run)

    async def rerun(self, run_id: str) -> dict[str, Any] | None:
        """`POST /v1/runs/{id}/rerun` (see `connect.executor.reruns`); None: no
        such run. Raises `RerunRefused`."""
        run = await self._store.get_run(run_id)
        if run is None:
            return None
        now_ms = self._now_ms()
        info = self._registry.lookup(run.function_id)
        again = rerun_event(run, await self._store.get_event(run.event_id), info, now_ms)
        assert info is not None
        intake = self.direct_events([(again, info.target)], now_ms)
        try:
            stored = await self._store.record_events(intake.batch)
        except BaseException:
            self.discard_intake(intake)
            raise
        self.apply_events(intake, stored)
        return rerun_view(run_id, intake.items[0].new)

    async def cancel_matching(self, cancellation: Cancellation) -> int:
        """`POST /v1/cancellations`: flag the runs `cancellation` selects; how many."""
        return await bulk_cancel.cancel_matching(self._store, cancellation, self._flag_cancel)

    async def _flag_cancel(self, run_id: str) -> bool:
        if not await self._store.request_cancel(run_id):
            return False
        self._deliver(run_id, CancelRequested("cancelled through the API"))
        return True

    async def _cancel_for(self, run_id: str, reason: str) -> None:
        if await self._store.request_cancel(run_id):
            self._deliver(run_id, CancelRequested(reason))

    # --- run tasks ------------------------------------------------------------------------

    def _spawn(self, run_id: str, fresh: tuple[RunRecord, Event] | None = None) -> Runner | None:
        if not self._started or not self._ownership.owns(run_id):
            return None
        runner = self._runners.get(run_id)
        if runner is not None:
            return runner
        runner = Runner(self._services, self, run_id, self._ownership.fence(run_id))
        if fresh is not None:
            runner.adopt(*fresh)
        self._runners[run_id] = runner
        task = asyncio.create_task(self._keep_driving(runner, fresh is not None), name=f"run:{run_id}")
        runner.task = task
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._task_done(runner, done))
        return runner

    def _spawn_claimed(self, claim: Claim) -> Runner | None:
        """`_spawn` a run this executor claimed. Its first claim (the first
        fencing token) means nobody drove it before: a run an API process, a
        full batch or a held start created; it counts as started once read
        back, when its function is known."""
        runner = self._spawn(claim.run_id)
        if runner is not None and claim.fence == NEW_RUN_FENCE:
            runner.count_start = True
        return runner

    def _task_done(self, runner: Runner, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._runners.get(runner.run_id) is runner:
            del self._runners[runner.run_id]
        if runner.run is None or runner.run.status != RUNNING:
            self._ownership.forget(runner.run_id)  # it ended (a parked run stays owned)

    def _deliver(self, run_id: str, message: Message) -> None:
        runner = self._runners.get(run_id)
        if runner is not None:
            runner.deliver(message)
        else:
            # Parked: what the message reports is in the store already.
            self._spawn(run_id)

    async def _keep_driving(self, runner: Runner, fresh: bool) -> None:
        """Drive a run until it ends or parks, starting over from the store after an unexpected error."""
        delay = _RESTART_DELAY_MIN
        try:
            while True:
                try:
                    if not fresh and not await runner.load():
                        return
                    await runner.drive()
                    return
                except RunOwnershipLost:
                    log.warning("run %s: another executor owns it now; letting it go", runner.run_id)
                    self._ownership.forget(runner.run_id)
                    self.disarm_run(runner.run_id)
                    return
                except Exception:
                    log.exception("run %s: driving failed; resuming from the store in %.0f s", runner.run_id, delay)
                finally:
                    runner.armed.set()
                fresh = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RESTART_DELAY_MAX)
        finally:
            runner.armed.set()

    # --- RunHost: what runners ask of the executor ------------------------------------------

    def lookup(self, function_id: str) -> FunctionInfo | None:
        return self._registry.lookup(function_id)

    def refusal(self, function_id: str) -> str | None:
        return self._apps.refusal(function_id)

    async def wait_until_started(self) -> None:
        await self._go.wait()

    def parked(self, runner: Runner) -> None:
        if self._runners.get(runner.run_id) is runner:
            del self._runners[runner.run_id]

    def arm_run(self, runner: Runner) -> None:
        """File the run's cancel conditions, its `timeouts.finish` and its waiting steps."""
        run, event = runner.run, runner.event
        assert run is not None and event is not None
        info = self._registry.lookup(run.function_id)
        now_ms = self._now_ms()
        filed = len(self._waits)
        if info is not None:
            trigger = _as_dict(event)
            for i, condition in enumerate(info.cancel):
                expires = None if condition.timeout_ms is None else run.started_at_ms + condition.timeout_ms
                if expires is not None and expires < now_ms:
                    continue
                key = f"cancel:{i}"
                if self._waits.get(run.run_id, key) is None:
                    self._waits.add(
                        Watch(
                            run.run_id,
                            key,
                            CANCEL,
                            condition.event,
                            trigger,
                            condition.expression,
                            expires,
                            since_ms=run.started_at_ms,
                        )
                    )
            if info.finish_timeout_ms is not None:
                self._timers.set(("finish", run.run_id), run.started_at_ms + info.finish_timeout_ms)
        # When its waits began is not stored: a run read back (restarted, or
        # claimed from another executor) takes the events others recorded
        # within the feed's lookback, and none from before the run started.
        since_ms = max(run.started_at_ms, now_ms - self._feed.lookback_ms)
        self._arm_waiting(runner, [w for w in run.waiting if w.step not in runner.memos], since_ms)
        if self._shared and len(self._waits) > filed and since_ms < now_ms - _FRESH_RUN_MS:
            # Filed late (a run read back): look for what was recorded since.
            self._feed.want_from(since_ms)
            self._catch_up_soon()

    def arm_waiting(self, runner: Runner, items: Sequence[Waiting]) -> None:
        self._arm_waiting(runner, items, self._now_ms())

    def _arm_waiting(self, runner: Runner, items: Sequence[Waiting], since_ms: int) -> None:
        run, event = runner.run, runner.event
        assert run is not None and event is not None
        armed = self._armed.setdefault(run.run_id, {})
        trigger: dict[str, Any] | None = None
        for item in items:
            if (run.run_id, item.step) in self._claims:
                continue  # resolved a moment ago; its memo is being stored
            armed[item.step] = item
            if item.kind == WAIT_EVENT and self._waits.get(run.run_id, item.step) is None:
                if trigger is None:
                    trigger = _as_dict(event)
                watch = Watch(
                    run.run_id, item.step, RESUME, item.event, trigger, item.expression, since_ms=since_ms, step=item
                )
                if not self._waits.add(watch):
                    log.info("run %s: wait %s can never match; it will time out", run.run_id, item.step)
            elif item.kind == WAIT_INVOKE and self._waits.get(run.run_id, item.step) is None:
                condition = f"async.data.correlation_id == {msgspec.json.encode(item.correlation_id).decode()}"
                # A child's end carries its correlation id: no event before the invoke has it.
                self._waits.add(Watch(run.run_id, item.step, INVOKE, item.event, {}, condition, step=item))
            key = ("step", run.run_id, item.step)
            if self._timers.due(key) != item.due_ms:
                self._timers.set(key, item.due_ms)
        if not armed:
            del self._armed[run.run_id]

    def disarm_step(self, run_id: str, step: str) -> None:
        self._waits.remove(run_id, step)
        self._forget_step(run_id, step)

    def disarm_run(self, run_id: str) -> None:
        self._waits.remove_run(run_id)
        self._timers.cancel(("finish", run_id))
        for step in self._armed.pop(run_id, {}):
            self._timers.cancel(("step", run_id, step))

    def _forget_step(self, run_id: str, step: str) -> None:
        self._timers.cancel(("step", run_id, step))
        armed = self._armed.get(run_id)
        if armed is not None:
            armed.pop(step, None)
            if not armed:
                del self._armed[run_id]

    # --- timers ----------------------------------------------------------------------------

    def _on_due(self, key: TimerKey) -> None:
        kind = key[0]
        if kind == "step":
            self._step_due(key[1], key[2])
        elif kind == "finish":
            self._background_task(self._cancel_for(key[1], "timeouts.finish passed"))
        elif kind == "cron":
            tick = self._cron_due.pop(key[1], None)
            if tick is not None:
                self._background_task(self._fire_cron(key[1], tick))
        elif kind == "held":
            self._background_task(self._fire_held())

    def _step_due(self, run_id: str, step: str) -> None:
        armed = self._armed.get(run_id, {})
        item = armed.pop(step, None)
        if not armed:
            self._armed.pop(run_id, None)
        if item is None:
            return
        watch: Watch | None = None
        if item.kind in (WAIT_EVENT, WAIT_INVOKE):
            watch = self._waits.remove(run_id, step)
            if watch is None and (run_id, step) in self._claims:
                # An event got there first. Should storing it fail, the wait is
                # back in the index and still needs its timeout: check again soon.
                self._armed.setdefault(run_id, {})[step] = item
                self._timers.set(("step", run_id, step), self._now_ms() + _TIMER_RETRY_MS)
                return
        memo = _INVOKE_TIMEOUT if item.kind == WAIT_INVOKE else _NULL
        self._claims.add((run_id, step))
        self._background_task(self._resolve_due(run_id, item, watch, memo))

    async def _resolve_due(self, run_id: str, item: Waiting, watch: Watch | None, memo: bytes) -> None:
        try:
            inserted = await self._store.put_memo(
                run_id, StepMemo(item.step, memo, step_infos.waited(item, self._now_ms()))
            )
        except Exception:
            log.exception("run %s: storing the end of step %s failed; retrying", run_id, item.step)
            self._claims.discard((run_id, item.step))
            if watch is not None:
                self._waits.add(watch)
            self._armed.setdefault(run_id, {})[item.step] = item
            self._timers.set(("step", run_id, item.step), self._now_ms() + _TIMER_RETRY_MS)
            return
        self._claims.discard((run_id, item.step))
        if inserted:
            self._deliver(run_id, Resolved(item.step, memo))
        else:
            self._stored_elsewhere(run_id)

    def _background_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- debounces and batches ------------------------------------------------------------------

    def _held_changed(self, payload: str) -> None:
        """A held start was written (here or by another process): its time may be the next."""
        if not self._started:
            return  # `start` reads the next due time itself
        if not payload:
            # The notification connection came back: some may be lost.
            self._background_task(self._rearm_held())
            return
        try:
            due = int(payload)
        except ValueError:
            return
        self._arm_held(due)

    def _arm_held(self, due_ms: int) -> None:
        current = self._timers.due(_HELD_TIMER)
        if current is None or due_ms < current:
            self._timers.set(_HELD_TIMER, due_ms)

    async def _rearm_held(self) -> None:
        try:
            due = await self._store.next_held_due()
        except Exception:
            log.warning("could not read when the next debounce or batch is due; retrying", exc_info=True)
            self._arm_held(self._now_ms() + _TIMER_RETRY_MS)
            return
        if due is not None:
            self._arm_held(due)

    async def _fire_held(self) -> None:
        """Start the runs of the debounces and batches whose time came. The
        store fires each once, whichever executor gets there first; this one
        drives those it fired."""
        started = 0
        try:
            while True:
                claims = await self._store.start_held(self.executor_id, self._now_ms(), HELD_BATCH)
                for claim in claims:
                    self._ownership.started(claim.run_id)
                    self._spawn_claimed(claim)
                started += len(claims)
                if len(claims) < HELD_BATCH:
                    break
            due = await self._store.next_held_due()
        except Exception:
            log.exception("starting the runs of debounces and batches failed; retrying")
            self._arm_held(self._now_ms() + _TIMER_RETRY_MS)
            return
        if due is not None:
            now_ms = self._now_ms()
            if due <= now_ms and not started:
                # Due, yet not started here: another transaction holds it (an
                # event being added, another executor firing it). Look again soon.
                due = now_ms + _HELD_RETRY_MS
            self._arm_held(due)

    # --- cron --------------------------------------------------------------------------------

    def _schedule_crons(self) -> None:
        """Arm the next tick of every cron trigger (and forget removed ones).

        A tick missed while the executor was down is run once on start (only
        the latest one; older missed ticks are skipped). Ticks already run are
        never run again: the last one of each schedule is stored with its run.
        """
        now_ms = self._now_ms()
        wanted = {
            f"{info.target.function_id} {schedule.spec}": (info, schedule) for info, schedule in self._registry.crons()
        }
        for key in set(self._crons) - set(wanted):
            del self._crons[key]
            self._cron_due.pop(key, None)
            self._timers.cancel(("cron", key))
        for key, entry in wanted.items():
            scheduled = key in self._crons
            self._crons[key] = entry
            if scheduled:
                continue
            _, schedule = entry
            due = schedule.next_after(now_ms)
            last = self._cron_last.get(key)
            if last is not None:
                latest = schedule.latest_at_or_before(now_ms)
                if latest > last:
                    due = latest
            self._arm_cron(key, due)

    def _arm_cron(self, key: str, tick_ms: int) -> None:
        self._cron_due[key] = tick_ms
        self._timers.set(("cron", key), tick_ms)

    async def _fire_cron(self, key: str, tick_ms: int) -> None:
        entry = self._crons.get(key)
        if entry is None:
            return
        info, schedule = entry
        event = Event(
            name=CRON_EVENT,
            data={"cron": schedule.spec},
            id=derived_id_at(tick_ms, "cron", key),
            ts=tick_ms,
        )
        intake = self.direct_events([(event, info.target)], self._now_ms())
        try:
            stored = await self._store.record_tick(key, tick_ms, intake.batch[0])
        except Exception:
            log.exception("cron %s: recording the tick at %d failed; retrying", key, tick_ms)
            self._cron_due[key] = tick_ms
            self._timers.set(("cron", key), self._now_ms() + _TIMER_RETRY_MS)
            return
        self._cron_last[key] = max(tick_ms, self._cron_last.get(key, tick_ms))
        self.apply_events(intake, [stored])
        if key not in self._crons:
            return
        now_ms = self._now_ms()
        following = schedule.next_after(tick_ms)
        latest = schedule.latest_at_or_before(now_ms)
        if latest > tick_ms:
            following = latest  # the loop was stalled past several ticks: run only the latest
        self._arm_cron(key, following)


_decode_event = msgspec.json.Decoder(Event).decode


def _as_dict(event: Event) -> dict[str, Any]:
    return {"name": event.name, "data": event.data, "id": event.id, "ts": event.ts, "user": event.user}


def _invoke_memo(finished: Event) -> bytes:
    """What an invoking step receives from its child's `function.finished`."""
    data = finished.data
    if "error" in data and data["error"] is not None:
        return replies.error_memo(data["error"])
    return replies.encode({"data": data.get("result")})


def _ended(watch: Watch, now_ms: int) -> StepInfo | None:
    """The timeline's record of the wait or invoke `watch` ends now."""
    return None if watch.step is None else step_infos.waited(watch.step, now_ms)
