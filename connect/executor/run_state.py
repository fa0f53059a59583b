"""A run's in-memory state and its one save path.

Every change to a run is made by `RunState._save` (through `_commit` or
`_finish`): one `save_run` carrying the run's new state, the new step memos,
the consumed reply and any events, atomically, before anything acts on it.
Checkpointed steps joined to a reply (see `connect.executor.checkpoints`)
ride on the same commit, and so do the concurrency slots of a function with
limits (`SlotChange`): the slots of the requests the commit ends go, and the
requests it creates take theirs (or their place in line).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import msgspec

from connect.dispatch import CheckpointDecided, Port
from connect.executor import step_infos
from connect.executor.concurrency import FunctionLimits, SlotGrants, as_dict
from connect.executor.inbox import CancelRequested, Message, Replied
from connect.executor.intake import Intake
from connect.executor.retries import Backoff
from connect.executor.system_events import end_events
from connect.executor.throttle_turns import ThrottleTurns
from connect.executor.triggers import FunctionInfo, Target
from connect.metrics import RunMetrics
from connect.store.base import (
    CANCELLED,
    COMPLETED,
    DISCOVERY,
    RUNNING,
    NewEvent,
    PendingRequest,
    RunRecord,
    SlotAcquire,
    SlotChange,
    SlotClaim,
    StepMemo,
    Store,
    Waiting,
)
from protocol.ids import new_ulid
from protocol.payloads import Event

log = logging.getLogger("connect.executor.runner")

if TYPE_CHECKING:
    from connect.executor.runner import Runner


#: How many times one request is dispatched again after its worker was lost
#: (`connect dev --max-lease-lapses`); one more loss fails the run.
MAX_LEASE_LAPSES: int = 10


@dataclass(frozen=True, slots=True)
class RunServices:
    """What every run of one executor shares."""

    store: Store
    dispatcher: Port
    backoff: Backoff
    clock: Callable[[], float]
    #: Upper bound on one wait for a worker; the dispatcher normally wakes us sooner.
    worker_wait: float = 30.0
    #: Whether discovery requests offer checkpoints (see `connect.executor.checkpoints`).
    checkpoint_steps: bool = True
    #: Re-dispatches of one request after lost workers (see `connect.executor.attempts`).
    max_lease_lapses: int = MAX_LEASE_LAPSES
    #: Concurrency slots (see `connect.executor.concurrency`); None: never needed.
    slots: SlotGrants | None = None
    #: Throttle turns of functions with a priority (see `connect.executor.throttle_turns`).
    turns: ThrottleTurns | None = None
    #: Runs ended and steps timed (`connect_runs_*`, `connect_step_duration_seconds`, `connect_queue_*`).
    metrics: RunMetrics | None = None


class RunHost(Protocol):
    """What a runner needs from the executor that owns it."""

    def lookup(self, function_id: str) -> FunctionInfo | None: ...
    def refusal(self, function_id: str) -> str | None: ...

    def prepare_events(self, events: list[Event], now_ms: int) -> Intake: ...

    def direct_events(self, starts: list[tuple[Event, Target]], now_ms: int) -> Intake: ...

    def apply_events(self, intake: Intake, stored: Sequence[bool]) -> None: ...

    def discard_intake(self, intake: Intake) -> None: ...

    def arm_run(self, runner: Runner) -> None: ...

    def arm_waiting(self, runner: Runner, items: Sequence[Waiting]) -> None: ...

    def disarm_step(self, run_id: str, step: str) -> None: ...

    def disarm_run(self, run_id: str) -> None: ...

    def parked(self, runner: Runner) -> None: ...

    async def wait_until_started(self) -> None: ...


class RunState:
    """One run's state, shared by the concerns that make up a `Runner`."""

    def __init__(self, services: RunServices, host: RunHost, run_id: str, fence: int) -> None:
        self._s = services
        self._host = host
        self.run_id = run_id
        #: The run's fencing token as this executor claimed it; every save carries it.
        self.fence = fence
        self.run: RunRecord | None = None
        self.event: Event | None = None
        #: Every event of the batch that started the run (the first is `event`); empty for other runs.
        self.batch: list[Event] = []
        self.memos: dict[str, msgspec.Raw] = {}
        #: Set once the run's waits are armed (or it turned out not to need driving).
        self.armed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._forwarded: set[str] = set()
        self._cancel_reason: str | None = None
        self._has_replied = False
        #: Requests created by this runner and never dispatched: no reply or
        #: lease can be stored for them, so the dispatcher need not look.
        self._fresh: set[str] = set()
        #: Requests consumed by a commit while the current message was handled (see `_handle`).
        self._consumed: set[str] = set()
        #: Replies delivered to the inbox and not yet handled (see `_settle_unhandled`).
        self._unhandled: set[str] = set()
        #: A cancellation was delivered (maybe not handled yet): refuse checkpoints.
        self._cancel_asked = False
        #: Checkpoints stored per request id (see `CheckpointTaking.checkpoint_offered`).
        self._checkpoints: dict[str, int] = {}
        #: The last request a checkpoint was stored from: the step its reply ends
        #: with is not the first step that request ran (see `step_infos.ran`).
        self._checkpointed: str | None = None
        #: Checkpointed steps taken to be stored by the next commit, the one
        #: that handles the reply right behind them (see `CheckpointTaking.checkpoint_offered`).
        self._joined: list[tuple[list[StepMemo], str]] = []
        #: The function's concurrency limits (None: it has none, the usual case).
        self._limits: FunctionLimits | None = None
        #: Whether the function has a throttle and a priority: a throttled start takes
        #: its turn from the store (`connect.executor.throttle_turns`).
        self._ordered_throttle = False
        #: Requests of this run known to hold their concurrency slots.
        self._slots: set[str] = set()
        #: A run a held start (debounce, batch) fired: counted as started once read back.
        self.count_start = False
        #: Requests of this run that took their place in line for slots (not granted yet).
        self._in_line: set[str] = set()

    def deliver(self, message: Message) -> None:
        if isinstance(message, Replied):
            self._unhandled.add(message.request_id)
        elif isinstance(message, CancelRequested):
            self._cancel_asked = True
        self._inbox.put_nowait(message)

    def adopt(self, run: RunRecord, event: Event) -> None:
        """A run created a moment ago: no memos, nothing to read back."""
        self.run = run
        self.event = event
        self.memos = {}
        self._reset()
        self._fresh = {r.request_id for r in run.requests}

    def slots_asked(self, request_id: str, *, held: bool) -> None:
        """`request_id` asked for its slots as the run was recorded
        (`NewEvent.slots`): it holds them, or has its place in line."""
        (self._slots if held else self._in_line).add(request_id)

    def _reset(self) -> None:
        assert self.run is not None
        self._drop_joined()
        self._tasks = {}
        self._forwarded = set()
        self._fresh = set()
        self._cancel_reason = "cancelled" if self.run.cancel_requested else None
        self._has_replied = bool(self.memos) or self.run.request_version != -1
        info = self._host.lookup(self.run.function_id)
        self._limits = None if info is None else info.limits
        self._ordered_throttle = info is not None and info.start_limits is not None and info.start_limits.ordered
        self._slots = set()
        self._in_line = set()

    # --- transitions (each is one store write) ---------------------------------------

    async def _commit(
        self,
        *,
        memos: Sequence[StepMemo] = (),
        consumed: str | None = None,
        intake: Intake | None = None,
        new_waiting: Sequence[Waiting] = (),
    ) -> None:
        """Store the new state; then arm new waiting steps and start child runs."""
        run = self.run
        assert run is not None
        for memo in memos:
            self.memos.setdefault(memo.step_hash, msgspec.Raw(memo.result))
        if not run.requests and not run.waiting:
            self._add_discovery()
        try:
            stored = await self._save(memos=memos, consumed=consumed, events=intake.batch if intake else None)
        except BaseException:
            if intake:
                self._host.discard_intake(intake)
            raise
        if consumed:
            self._consumed.add(consumed)
        if new_waiting:
            # Before the children start: an invoked run must find its parent listening.
            # Every RunState is the state of a Runner (the only class the executor makes).
            self._host.arm_waiting(cast("Runner", self), new_waiting)
        if intake:
            self._host.apply_events(intake, stored)

    async def _save(
        self,
        *,
        memos: Sequence[StepMemo] = (),
        consumed: str | None = None,
        events: list[NewEvent] | None = None,
    ) -> list[bool]:
        """The run's state, `memos` and any joined checkpointed steps in one
        commit; each joined step learns the outcome before this returns."""
        run = self.run
        assert run is not None
        joined, self._joined = self._joined, []
        change = None if self._limits is None else self._slot_change()
        try:
            stored = await self._s.store.save_run(
                run,
                fence=self.fence,
                memos=[*(memo for taken, _ in joined for memo in taken), *memos],
                consumed_request_id=consumed,
                events=events,
                slots=change,
            )
        except BaseException:
            for _, request_id in joined:
                self._s.dispatcher.send(CheckpointDecided(request_id, stored=False))
            raise
        for _, request_id in joined:
            self._s.dispatcher.send(CheckpointDecided(request_id, stored=True))
        if change is not None:
            self._slots_changed(change)
        return stored

    def _slot_change(self) -> SlotChange | None:
        """What this commit does to the run's slots: the slots (and places in
        line) of requests it ends go, all of them when the run ended; requests
        it creates that are due now take theirs. None: nothing to change."""
        run = self.run
        assert run is not None
        if run.status != RUNNING:
            return SlotChange(release_run=True)
        current = {r.request_id for r in run.requests}
        release = [rid for rid in (*self._slots, *self._in_line) if rid not in current]
        acquire: list[SlotAcquire] = []
        if self._cancel_reason is None:
            now_ms = self._s.clock() * 1000
            asked = self._slots | self._in_line
            for r in run.requests:
                rid = r.request_id
                if rid in self._fresh and rid not in asked and r.wake_at_ms <= now_ms:
                    claims, order = self._slot_claims()
                    acquire.append(SlotAcquire(rid, claims, order))
        if not release and not acquire:
            return None
        return SlotChange(release=release, acquire=acquire)

    def _slots_changed(self, change: SlotChange) -> None:
        """Take in what a committed `SlotChange` did."""
        if change.release_run:
            self._slots.clear()
            self._in_line.clear()
            return
        self._slots.difference_update(change.release)
        self._in_line.difference_update(change.release)
        self._slots.update(change.held)
        self._in_line.update(a.request_id for a in change.acquire if a.request_id not in self._slots)

    def _slot_claims(self) -> tuple[list[SlotClaim], int]:
        """The slots every request of this run claims, and its place in line."""
        run, limits = self.run, self._limits
        assert run is not None and limits is not None and self.event is not None
        trigger = as_dict(self.event)
        return limits.claims(trigger), limits.order(run.started_at_ms, trigger)

    def _drop_joined(self) -> None:
        """Joined steps no commit will carry now: refused after all."""
        joined, self._joined = self._joined, []
        for _, request_id in joined:
            self._s.dispatcher.send(CheckpointDecided(request_id, stored=False))

    def _add_discovery(self) -> None:
        run = self.run
        assert run is not None
        if run.request_version >= 2 and not run.requests:
            # As the reference executor does: once a group is done, a
            # discovery may run the next step immediately again.
            run.disable_immediate_execution = False
        self._request(DISCOVERY)

    def _request(self, step_id: str, attempt: int = 0, wake_at_ms: int = 0) -> None:
        assert self.run is not None
        pending = PendingRequest(new_ulid(), step_id, attempt, wake_at_ms)
        self._fresh.add(pending.request_id)
        self.run.requests.append(pending)

    async def _finish(
        self,
        status: str,
        output: bytes,
        *,
        error: dict[str, Any] | None = None,
        consumed: str | None = None,
        memos: Sequence[StepMemo] = (),
    ) -> None:
        """End the run; `inngest/function.finished` (and `.failed` / `.cancelled`)
        and the steps in `memos` are stored in the same write."""
        run = self.run
        assert run is not None
        now_ms = int(self._s.clock() * 1000)
        if run.waiting:
            # Sleeps, waits and invokes the end cuts short keep their place in
            # the timeline: a `null` result, ended by the cancel (or the end).
            ended_by = step_infos.ENDED_BY_CANCEL if status == CANCELLED else step_infos.ENDED_BY_RUN_END
            reported = {memo.step_hash for memo in memos}
            memos = [
                *memos,
                *(
                    StepMemo(item.step, b"null", step_infos.waited(item, now_ms, ended_by))
                    for item in run.waiting
                    if item.step not in self.memos and item.step not in reported
                ),
            ]
        run.status = status
        run.output = output
        run.ended_at_ms = now_ms
        run.requests = []
        run.waiting = []
        result: Any = None
        if status == COMPLETED:
            result = msgspec.json.decode(output)
        elif error is None:
            error = msgspec.json.decode(output)
        trigger = self.event or Event(name="", id=run.event_id)
        events = end_events(
            run_id=run.run_id,
            function_id=run.function_id,
            trigger=trigger,
            status=status,
            result=result,
            error=error,
            cancelled=status == CANCELLED,
            now_ms=now_ms,
        )
        intake = self._host.prepare_events(events, now_ms)
        try:
            stored = await self._save(memos=memos, consumed=consumed, events=intake.batch)
        except BaseException:
            self._host.discard_intake(intake)
            raise
        if consumed:
            self._consumed.add(consumed)
        if self._s.metrics is not None:
            self._s.metrics.run_finished(run.function_id, status)
        self._host.disarm_run(run.run_id)
        self._host.apply_events(intake, stored)
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        # Once per run, at its end (never per step).
        log.info(
            "run %s (%s) ended: %s",
            run.run_id,
            run.function_id,
            status,
            extra={"run_id": run.run_id, "function": run.function_id, "status": status},
        )
