"""Events in and run queries for an API process that runs no executor.

`StoredRuns` is the API's `EventSink` over the store alone. It matches each
event against the registered triggers (the apps read from the store, read
again whenever `APPS_CHANGED` says one changed, or the notification
connection came back), records the event and the runs it starts in one
`record_events` with no owner, and announces them on `RUNS_RELEASED`, so
that executors claim them at once rather than at their next sweep. An event
id already stored is a duplicate send: it is answered with its id and
nothing is written again.

Events for debounced or batched functions are recorded with their held
starts (`connect.executor.held_starts`): the store announces those on
`HELD_STARTS_CHANGED` for the executors' timers, and a batch an event fills
starts its run in the same write, announced on `RUNS_RELEASED`.

Only the start of runs is decided here. Waits an event resumes and the
cancel conditions it matches are the executors' (they read the events
recorded from `EVENTS_RECORDED`), as they hold the runs in memory.

An event sent in the moment between an app's registration being stored and
its notification reaching this process is matched against the apps as they
were; in practice the notification comes within milliseconds of the
worker's registration, before the worker is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec

from connect.executor import bulk_cancel
from connect.executor.bulk_cancel import Cancellation
from connect.executor.registry import Registration, Registry
from connect.executor.reruns import rerun_event, rerun_view
from connect.executor.service import CANCEL_WAIT
from connect.executor.starts import event_record, gated_event, received, started
from connect.executor.stored_views import StoredViews
from connect.executor.triggers import TriggerIndex
from connect.executor.views import run_view
from connect.metrics import RunMetrics
from connect.store.base import APPS_CHANGED, RUNNING, RUNS_RELEASED, AppRecord, RunRecord, Store
from protocol.payloads import IncomingEvent

log = logging.getLogger(__name__)

#: Bounds on the pause between two looks at a run being cancelled, in seconds.
_CANCEL_POLL_MIN: Final = 0.02
_CANCEL_POLL_MAX: Final = 0.25
#: Pause before reading the apps again after the read failed, in seconds.
_APPS_RETRY: Final = 1.0
#: The longest an event waits for a read of the apps under way, in seconds
#: (past it, the event is matched against the apps as last read).
_APPS_WAIT: Final = 5.0


class StoredRuns(StoredViews):
    """`connect.api.app.EventSink` over the store (see the module doc).

    `start` reads the apps and subscribes to their changes; until then every
    event would start nothing. `stop` ends the background read of the apps."""

    def __init__(
        self,
        store: Store,
        *,
        default_retries: int = 4,
        clock: Callable[[], float] = time.time,
        cancel_wait: float = CANCEL_WAIT,
        metrics: RunMetrics | None = None,
    ) -> None:
        """`cancel_wait`: how long `cancel_run` waits for the run to end, in seconds;
        `metrics`: where the runs refused here by a gate are counted as skipped
        (the executor that claims the others counts them as started)."""
        self._metrics = metrics
        self._store = store
        self._clock = clock
        self._cancel_wait = cancel_wait
        self._index = TriggerIndex(default_retries)
        self._apps = Registry()
        #: Changes announced, and the last one the index has caught up with.
        self._announced = 0
        self._applied = 0
        self._reading: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        await self._store.listen(APPS_CHANGED, self._apps_changed)
        self._announced += 1
        await self._read_apps()

    async def stop(self) -> None:
        self._stopped = True
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading

    def _apps_changed(self, _app_name: str) -> None:
        # "" (the notification connection came back) also reads everything again.
        if self._stopped:
            return  # the store outlives this object and keeps calling
        self._announced += 1
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read_apps(), name="api:read-apps")

    async def _read_apps(self) -> None:
        """Catch the index up with every change announced so far."""
        while self._applied < self._announced:
            wanted = self._announced
            try:
                apps = await self._store.list_apps()
            except Exception:
                log.warning("could not read the registered apps; retrying in %.0f s", _APPS_RETRY, exc_info=True)
                await asyncio.sleep(_APPS_RETRY)
                continue
            self._remember(apps)
            self._applied = wanted

    def _remember(self, apps: list[AppRecord]) -> None:
        for app in apps:
            registration = Registration(app.app_name, app.app_version, app.functions)
            if not self._apps.unchanged(registration):
                self._index.set_app(app.app_name, app.functions)
                self._apps.record(registration)

    # --- EventSink ---------------------------------------------------------------------------

    async def send_events(self, events: list[IncomingEvent]) -> list[str]:
        """Record events and the runs they start; return the event ids in order."""
        reading = self._reading
        if reading is not None and not reading.done():
            # An app changed a moment ago: match against what it registers now.
            await asyncio.wait({reading}, timeout=_APPS_WAIT)
        now_ms = int(self._clock() * 1000)
        built = received(events, now_ms)
        batch = [gated_event(self._index, event_record(event, now_ms), event, now_ms, None) for event in built]
        stored = await self._store.record_events(batch)
        if self._metrics is not None:
            for new, is_new in zip(batch, stored, strict=True):
                if is_new:
                    self._metrics.recorded(new, count_started=False)
        if any(is_new and started(new) for new, is_new in zip(batch, stored, strict=True)):
            await self._store.notify(RUNS_RELEASED, "")
        return [event.id for event in built]

    async def rerun(self, run_id: str) -> dict[str, Any] | None:
        """`POST /v1/runs/{id}/rerun` (see `connect.executor.reruns`): the run is
        recorded with no owner and announced, as events' runs are."""
        run = await self._store.get_run(run_id)
        if run is None:
            return None
        now_ms = int(self._clock() * 1000)
        info = self._index.lookup(run.function_id)
        again = rerun_event(run, await self._store.get_event(run.event_id), info, now_ms)
        assert info is not None
        new = gated_event(self._index, event_record(again, now_ms), again, now_ms, None, [info.target])
        [is_new] = await self._store.record_events([new])
        if is_new and started(new):
            await self._store.notify(RUNS_RELEASED, "")
        return rerun_view(run_id, new)

    async def cancel_matching(self, cancellation: Cancellation) -> int:
        """Flag the runs `cancellation` selects (the store tells their executors); how many."""
        return await bulk_cancel.cancel_matching(self._store, cancellation, self._store.request_cancel)

    async def cancel_run(self, run_id: str) -> dict[str, Any] | None:
        """Flag the run for cancellation (the store tells its executor) and wait
        up to `cancel_wait` seconds for it to end; None if there is no such run.
        A run still finishing a step comes back `Running` (answered 202)."""
        run = await self._store.get_run(run_id)
        if run is None:
            return None
        if run.status == RUNNING and await self._store.request_cancel(run_id):
            run = await self._until_ended(run)
        return run_view(run)

    async def _until_ended(self, run: RunRecord) -> RunRecord:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._cancel_wait
        pause = _CANCEL_POLL_MIN
        while run.status == RUNNING and loop.time() < deadline:
            await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
            pause = min(pause * 2, _CANCEL_POLL_MAX)
            latest = await self._store.get_run(run.run_id)
            if latest is None:  # pruned the moment it ended
                break
            run = latest
        return run

    def registered_apps(self) -> list[dict[str, Any]]:
        """Every app with its functions (`GET /v1/apps`)."""
        return [msgspec.to_builtins(app) for app in self._apps.apps()]

    def registered_functions(self) -> list[dict[str, Any]]:
        """The functions of every stored app. Refusals are decided by the
        executors and kept in their memory, so they are not listed here."""
        return [msgspec.to_builtins(view) for view in self._apps.views()]
