"""Driving one run, reply by reply, until it ends or has nothing to do but wait.

A run waits on two kinds of things, both kept in its `RunRecord`:

* **requests** (`run.requests`): call requests for a worker. Usually one (a
  discovery, or the one step it targets); one per planned step while a
  parallel group runs. Each is dispatched by its own task, so the steps of a
  group run concurrently on whichever workers have capacity.
* **waiting steps** (`run.waiting`): sleeps, waits for events and invokes,
  which the executor completes without a worker (its timers and event
  matching store their memo and wake the run).

Replies and wake-ups arrive in the runner's inbox and are handled one at a
time; each handling is one store write (`save_run`: memos, the new state,
the consumed reply and any events, atomically), made before anything acts
on it. When nothing is outstanding any more the next request is a
discovery; after a group this is the one discovery for the whole group.

A run with no request outstanding holds no task and no worker: the runner
parks (returns), and the executor starts a new one, from the store, when one
of its waiting steps completes or it is cancelled.

A request whose worker is lost (its lease lapses: the worker was killed, cut
off, or went silent) is dispatched again under the same request id, spending
no attempt: a reply the lost worker still delivers answers it (first stored
wins), and a worker that gets it again recognises it. The lapses of one
request are counted in the store, and one past `max_lease_lapses` fails the
run (a step that kills every worker it runs on must not circle forever).

Cancellation takes effect at the next step boundary: requests not yet with
a worker are dropped, requests a worker is running are awaited (their step
bodies are not interrupted), and the run ends `Cancelled`.

Checkpoints: a discovery request of a run doing nothing else offers them
(`ctx.checkpoint_steps`). A worker that supports them stores each `step.run`
result through `_on_checkpoint` (one `save_run`, like a reply's) and goes on
to the next step in the same request; the request's attempt count starts
again, as the next discovery's would. A checkpoint is refused (and the
worker ends the request with the step, as without checkpoints) once a
cancellation is asked for, after `MAX_CHECKPOINTS_PER_REQUEST`, or when the
run has anything else outstanding. A checkpoint whose request's reply came
right behind it (the handler returned after that step) is joined to that
reply: the step is stored by the commit that handles the reply, so a run's
last step and its end are one commit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from connect.dispatch import (
    AtCapacity,
    Dispatcher,
    DispatchError,
    Join,
    NoWorker,
    StepReply,
    StepRequest,
    Stored,
    WorkerStoppedResponding,
)
from connect.executor import replies
from connect.executor.expressions import compiled
from connect.executor.intake import Intake
from connect.executor.requests import build_request
from connect.executor.retries import Backoff, parse_retry_after
from connect.executor.sleeps import MAX_SLEEP, parse_duration, wake_time
from connect.executor.system_events import (
    CANCELLED_ERROR,
    FUNCTION_FINISHED,
    correlation_id,
    end_events,
    invoked_event,
)
from connect.executor.triggers import FunctionInfo, Target
from connect.store.base import (
    CANCELLED,
    COMPLETED,
    DISCOVERY,
    FAILED,
    RUNNING,
    WAIT_EVENT,
    WAIT_INVOKE,
    WAIT_SLEEP,
    NewEvent,
    PendingRequest,
    RunRecord,
    StepMemo,
    Store,
    Waiting,
)
from protocol.ids import new_ulid
from protocol.limits import MAX_CHECKPOINTS_PER_REQUEST, MAX_REQUEST_PAYLOAD_BYTES
from protocol.payloads import (
    OP_INVOKE_FUNCTION,
    OP_NONE,
    OP_RUN_COMPLETE,
    OP_SLEEP,
    OP_STEP,
    OP_STEP_ERROR,
    OP_STEP_FAILED,
    OP_STEP_PLANNED,
    OP_STEP_RUN,
    OP_WAIT_FOR_EVENT,
    STATUS_DONE,
    STATUS_NOT_COMPLETED,
    Event,
    Opcode,
)

log = logging.getLogger(__name__)

_decode_event = msgspec.json.Decoder(Event).decode
#: How long a wait or an invoke without a timeout lasts (as the reference executor).
DEFAULT_WAIT: float = MAX_SLEEP
#: How many times one request is dispatched again after its worker was lost
#: (`connect dev --max-lease-lapses`); one more loss fails the run.
MAX_LEASE_LAPSES: int = 10


@dataclass(frozen=True, slots=True)
class RunServices:
    """What every run of one executor shares."""

    store: Store
    dispatcher: Dispatcher
    backoff: Backoff
    clock: Callable[[], float]
    #: Upper bound on one wait for a worker; the dispatcher normally wakes us sooner.
    worker_wait: float = 30.0
    #: Whether discovery requests offer checkpoints (see the module docstring).
    checkpoint_steps: bool = True
    #: Re-dispatches of one request after lost workers (see the module docstring).
    max_lease_lapses: int = MAX_LEASE_LAPSES


# --- messages -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resolved:
    """A waiting step's memo is stored (by a timer, an event or a finished child)."""

    step: str
    memo: bytes


@dataclass(frozen=True, slots=True)
class CancelRequested:
    reason: str


@dataclass(frozen=True, slots=True)
class _Replied:
    request_id: str
    reply: StepReply


@dataclass(frozen=True, slots=True)
class _DispatchFailed:
    request_id: str
    error: DispatchError


@dataclass(frozen=True, slots=True)
class _Oversized:
    request_id: str
    size: int


@dataclass(frozen=True, slots=True)
class _StartTimedOut:
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class _TaskCrashed:
    error: BaseException


Message = Resolved | CancelRequested | _Replied | _DispatchFailed | _Oversized | _StartTimedOut | _TaskCrashed


class _RunFails(Exception):
    """Processing a reply found that the run cannot go on (an invalid op)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.error = replies.error(name, message)


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


class Runner:
    """One run's state and the loop that advances it (see the module docstring)."""

    def __init__(self, services: RunServices, host: RunHost, run_id: str) -> None:
        self._s = services
        self._host = host
        self.run_id = run_id
        self.run: RunRecord | None = None
        self.event: Event | None = None
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
        self._unhandled: dict[str, StepReply] = {}
        #: A cancellation was delivered (maybe not handled yet): refuse checkpoints.
        self._cancel_asked = False
        #: Checkpoints stored per request id (see `_on_checkpoint`).
        self._checkpoints: dict[str, int] = {}
        #: Checkpointed steps taken to be stored by the next commit, the one
        #: that handles the reply right behind them (see `_on_checkpoint`).
        self._joined: list[tuple[list[StepMemo], Stored]] = []

    # --- loading --------------------------------------------------------------------

    def deliver(self, message: Message) -> None:
        if isinstance(message, _Replied):
            self._unhandled[message.request_id] = message.reply
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

    async def load(self) -> bool:
        """Read the run back from the store; False if it no longer needs driving."""
        loaded = await self._s.store.load_run(self.run_id)
        if loaded is None or loaded.run.status != RUNNING:
            return False
        self.run = loaded.run
        self.memos = {m.step_hash: msgspec.Raw(m.result) for m in loaded.memos}
        self._reset()
        if loaded.event is None:
            # Cannot happen through this API (events and their runs are stored together).
            log.error("run %s: its event %s is missing; failing the run", self.run_id, loaded.run.event_id)
            self.event = Event(name="", id=loaded.run.event_id)
            err = replies.error("EventMissing", f"event {loaded.run.event_id} is not in the store")
            await self._finish(FAILED, replies.encode(err), error=err)
            return False
        self.event = _decode_event(loaded.event.body)
        return True

    def _reset(self) -> None:
        assert self.run is not None
        self._drop_joined()
        self._tasks = {}
        self._forwarded = set()
        self._fresh = set()
        self._cancel_reason = "cancelled" if self.run.cancel_requested else None
        self._has_replied = bool(self.memos) or self.run.request_version != -1

    # --- the loop -------------------------------------------------------------------

    async def drive(self) -> None:
        """Advance the run until it ends or parks. Cancellation (of this task)
        leaves the stored state consistent; driving it again resumes it."""
        run = self.run
        assert run is not None
        try:
            if self._cancel_reason is not None:
                self.armed.set()
                await self._finish_cancelled()
                return
            await self._settle()
            self._host.arm_run(self)
            self.armed.set()
            await self._host.wait_until_started()
            while run.status == RUNNING:
                if not self._inbox.empty():
                    # Replies, wake-ups and cancellations first: a cancelled run
                    # must not start another step.
                    await self._handle(self._inbox.get_nowait())
                    continue
                if self._can_dispatch_inline():
                    # The common case (one request, nothing else going on): no
                    # task and no inbox hop. A request that must wait (for a
                    # worker, or a backoff) goes to a task instead.
                    pending = run.requests[0]
                    message = await self._attempt(pending)
                    if message is None:
                        waiting = self._dispatch(pending, no_worker_yet=True)
                        self._tasks[pending.request_id] = asyncio.create_task(waiting)
                    else:
                        await self._handle(message)
                    continue
                if self._cancel_reason is None:
                    self._start_dispatches()
                if not self._tasks and self._inbox.empty():
                    if self._cancel_reason is not None:
                        await self._finish_cancelled()
                        return
                    if not run.requests:
                        # Nothing for a worker to do: leave the waiting steps to
                        # the executor's timers and event matching.
                        self._host.parked(self)
                        return
                message = await self._inbox.get()
                await self._handle(message)
        finally:
            for task in self._tasks.values():
                task.cancel()
            self._tasks.clear()
            self._forwarded.clear()
            self._drop_joined()
            self._settle_unhandled()

    def _settle_unhandled(self) -> None:
        """Replies left in the inbox when driving stops were not committed here:
        the gateway stores them (they stay in the inbox for a later drive)."""
        for reply in self._unhandled.values():
            reply.settle(False)
        self._unhandled.clear()

    async def _settle(self) -> None:
        """Drop waiting steps completed while no runner was looking; make sure
        something is outstanding."""
        run = self.run
        assert run is not None
        changed = False
        if any(w.step in self.memos for w in run.waiting):
            run.waiting = [w for w in run.waiting if w.step not in self.memos]
            changed = True
        if not run.requests and not run.waiting:
            self._add_discovery()
            changed = True
        if changed:
            await self._save()

    async def _handle(self, message: Message) -> None:
        """Handle one message (one at a time: `drive` awaits each)."""
        try:
            await self._handle_message(message)
            if self._joined:
                # Handling the reply committed nothing: its checkpointed step
                # is stored on its own, before the reply is settled.
                await self._save()
        except BaseException:
            self._drop_joined()  # before the reply is settled (see `Join`)
            raise
        finally:
            if isinstance(message, _Replied):
                # The worker is acknowledged now if a commit of this run consumed
                # the reply; otherwise the gateway stores the reply first.
                self._unhandled.pop(message.request_id, None)
                message.reply.settle(message.request_id in self._consumed)
            self._consumed.clear()

    async def _handle_message(self, message: Message) -> None:
        run = self.run
        assert run is not None
        if isinstance(message, _Replied | _DispatchFailed | _Oversized):
            pending = None
            for candidate in run.requests:
                if candidate.request_id == message.request_id:
                    pending = candidate
                    break
            self._tasks.pop(message.request_id, None)
            if pending is None:
                return  # a request the run has moved past
            if self._cancel_reason is not None:
                if not self._tasks:
                    await self._finish_cancelled(consumed=pending.request_id)
                return
            if isinstance(message, _DispatchFailed) and isinstance(message.error, WorkerStoppedResponding):
                await self._on_lapse(pending, message.error)
                return
            run.requests.remove(pending)
            if isinstance(message, _Replied):
                await self._on_reply(pending, message.reply)
            elif isinstance(message, _Oversized):
                message_text = (
                    f"the run's state ({message.size} bytes) is larger than the "
                    f"{MAX_REQUEST_PAYLOAD_BYTES}-byte request limit; return smaller step results"
                )
                err = replies.error("RunStateTooLarge", message_text)
                await self._finish(FAILED, replies.encode(err), error=err, consumed=pending.request_id)
            else:
                err = replies.error(type(message.error).__name__, str(message.error) or message.error.code)
                await self._retry_or_fail(pending, err, no_retry=False, retry_after=None)
        elif isinstance(message, Resolved):
            await self._on_resolved(message)
        elif isinstance(message, CancelRequested):
            await self._begin_cancel(message.reason)
        elif isinstance(message, _StartTimedOut):
            if not self._has_replied:
                await self._begin_cancel(f"no worker started the run within timeouts.start ({message.timeout_ms} ms)")
        else:
            raise message.error

    # --- dispatch -------------------------------------------------------------------

    def _start_dispatches(self) -> None:
        run = self.run
        assert run is not None
        for pending in run.requests:
            if pending.request_id not in self._tasks:
                self._tasks[pending.request_id] = asyncio.create_task(
                    self._dispatch(pending), name=f"run:{run.run_id}:{pending.request_id}"
                )

    def _can_dispatch_inline(self) -> bool:
        run = self.run
        assert run is not None
        return (
            self._cancel_reason is None
            and len(run.requests) == 1
            and not self._tasks
            and not run.waiting
            and self._inbox.empty()
            and run.requests[0].wake_at_ms <= self._s.clock() * 1000
        )

    async def _dispatch(self, pending: PendingRequest, *, no_worker_yet: bool = False) -> None:
        """Deliver one request (in a task) and post the outcome to the inbox.
        Waiting for a worker (none connected, or all at capacity) spends no attempt.
        `no_worker_yet`: an attempt just found no worker, so begin by waiting."""
        run = self.run
        assert run is not None
        s = self._s
        try:
            if pending.wake_at_ms:
                delay = pending.wake_at_ms / 1000 - s.clock()
                if delay > 0:
                    await asyncio.sleep(delay)
            while True:
                if not no_worker_yet:
                    message = await self._attempt(pending)
                    if message is not None:
                        self.deliver(message)
                        return
                no_worker_yet = False
                timeout = s.worker_wait
                start_timeout = self._start_timeout_ms()
                if start_timeout is not None:
                    remaining = (run.started_at_ms + start_timeout) / 1000 - s.clock()
                    if remaining <= 0:
                        self.deliver(_StartTimedOut(start_timeout))
                        return
                    timeout = min(timeout, remaining)
                await s.dispatcher.wait_for_worker(run.app_name, run.function_id, timeout=timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.deliver(_TaskCrashed(exc))

    async def _attempt(self, pending: PendingRequest) -> Message | None:
        """One dispatch of `pending`: its outcome, or None if no worker can take it now."""
        run = self.run
        assert run is not None and self.event is not None
        rid = pending.request_id
        checkpoints = self._may_checkpoint(pending)
        payload = build_request(run, pending, self.event, self.memos, checkpoint_steps=checkpoints)
        if len(payload) > MAX_REQUEST_PAYLOAD_BYTES:
            return _Oversized(rid, len(payload))
        request = StepRequest(
            request_id=rid,
            run_id=run.run_id,
            app_name=run.app_name,
            function_slug=run.function_id,
            step_id=pending.step_id,
            payload=payload,
            # Only the first attempt: a failed forward may still have reached a worker.
            fresh=rid in self._fresh,
            # The reply becomes durable as this run's next commit (the step's memo).
            takes_over=True,
            checkpoint=functools.partial(self._on_checkpoint, rid) if checkpoints else None,
        )
        self._fresh.discard(rid)
        self._forwarded.add(rid)
        try:
            reply = await self._s.dispatcher.dispatch(request)
        except (NoWorker, AtCapacity):
            return None
        except DispatchError as exc:  # WorkerStoppedResponding and any other failed delivery
            return _DispatchFailed(rid, exc)
        finally:
            self._forwarded.discard(rid)
            self._checkpoints.pop(rid, None)
        return _Replied(rid, reply)

    def _may_checkpoint(self, pending: PendingRequest) -> bool:
        """Whether `pending` offers checkpoints: a discovery, with nothing else outstanding."""
        run = self.run
        assert run is not None
        return (
            self._s.checkpoint_steps
            and pending.step_id == DISCOVERY
            and not run.disable_immediate_execution
            and self._alone(pending.request_id)
        )

    def _alone(self, request_id: str) -> bool:
        """Whether request `request_id` is all the run has outstanding, with no cancellation asked."""
        run = self.run
        assert run is not None
        return (
            not self._cancel_asked
            and self._cancel_reason is None
            and not run.waiting
            and len(run.requests) == 1
            and run.requests[0].request_id == request_id
        )

    async def _on_checkpoint(self, request_id: str, reply: StepReply, join: Join | None = None) -> bool:
        """Store one step a worker ran in request `request_id`, which goes on
        running; True once stored. Runs while `drive` awaits that request.

        With `join`, the request's reply is already in (the handler returned
        after this step): the step is taken now and stored by the commit
        that handles that reply, which comes next (see `StepRequest.checkpoint`)."""
        run = self.run
        assert run is not None
        if run.status != RUNNING or not self._alone(request_id) or reply.status != STATUS_NOT_COMPLETED:
            return False
        try:
            # An SDK may announce a step before running it (StepPlanned): nothing to store.
            ops = [op for op in replies.parse_ops(reply.body) if op.op not in (OP_STEP_PLANNED, OP_NONE)]
        except replies.UnreadableReply:
            return False
        taken = self._checkpoints.get(request_id, 0)
        if (
            not ops
            or taken + len(ops) > MAX_CHECKPOINTS_PER_REQUEST
            or any(op.op not in (OP_STEP_RUN, OP_STEP) or op.id in self.memos for op in ops)
            or len({op.id for op in ops}) != len(ops)
        ):
            return False  # anything else is judged when the request ends with it
        memos = [StepMemo(op.id, replies.data_memo(op)) for op in ops]
        pending = run.requests[0]
        # The request now looks for the step after this one: its attempts (and lapses) start over.
        run.requests[0] = msgspec.structs.replace(pending, attempt=0, wake_at_ms=0, lapses=0)
        if reply.request_version > 0:
            run.request_version = reply.request_version
        if join is not None:
            self._joined.append((memos, join()))
        else:
            try:
                await self._save(memos=memos)
            except BaseException:
                if run.requests and run.requests[0].request_id == request_id:
                    run.requests[0] = pending
                raise
        for memo in memos:
            self.memos.setdefault(memo.step_hash, msgspec.Raw(memo.result))
        self._checkpoints[request_id] = taken + len(memos)
        self._has_replied = True
        return True

    def _start_timeout_ms(self) -> int | None:
        if self._has_replied:
            return None
        assert self.run is not None
        info = self._host.lookup(self.run.function_id)
        return None if info is None else info.start_timeout_ms

    # --- replies --------------------------------------------------------------------

    async def _on_reply(self, pending: PendingRequest, reply: StepReply) -> None:
        run = self.run
        assert run is not None
        self._has_replied = True
        if reply.request_version > 0:
            run.request_version = reply.request_version
        consumed = pending.request_id
        try:
            if reply.status == STATUS_DONE and reply.no_retry:
                # A final failure, as the TypeScript connect layer reports one
                # (its HTTP 400 with x-inngest-no-retry becomes DONE + no_retry):
                # a NonRetriableError, or an error on the last attempt.
                await self._retry_or_fail(pending, replies.error_from_body(reply.body), True, None)
            elif reply.status == STATUS_DONE:
                output = replies.result_json(reply.body)
                await self._finish(COMPLETED, output, consumed=consumed)
            elif reply.status == STATUS_NOT_COMPLETED:
                ops = [op for op in replies.parse_ops(reply.body) if op.op != OP_NONE]
                if not ops:
                    err = replies.error("EmptyReply", "the worker reported neither a result nor a step to run")
                    await self._retry_or_fail(pending, err, reply.no_retry, None)
                else:
                    await self._on_ops(pending, ops, reply)
            else:
                retry_after = parse_retry_after(reply.retry_after, self._s.clock())
                await self._retry_or_fail(pending, replies.error_from_body(reply.body), reply.no_retry, retry_after)
        except replies.UnreadableReply as exc:
            await self._retry_or_fail(pending, replies.error("UnreadableReply", str(exc)), reply.no_retry, None)

    async def _on_ops(self, pending: PendingRequest, ops: list[Opcode], reply: StepReply) -> None:
        run = self.run
        assert run is not None
        now = self._s.clock()
        now_ms = int(now * 1000)
        single = len(ops) == 1
        if not single:
            # As the reference executor does: after a group, new steps are
            # planned and run by requests targeting them.
            run.disable_immediate_execution = True
        memos: list[StepMemo] = []
        waiting: list[Waiting] = []
        children: list[tuple[Event, Target]] = []
        try:
            if any(op.op == OP_RUN_COMPLETE for op in ops):
                memos = self._steps_before_run_complete(ops)
                for stored in memos:
                    self.memos.setdefault(stored.step_hash, msgspec.Raw(stored.result))
                # The handler returned: the steps before it and the run's end are one commit.
                await self._finish(COMPLETED, replies.encode(ops[-1].data), memos=memos, consumed=pending.request_id)
                return
            for op in ops:
                kind = op.op
                if kind in (OP_STEP_RUN, OP_STEP):
                    memos.append(StepMemo(op.id, replies.data_memo(op)))
                elif kind == OP_STEP_PLANNED:
                    if not self._known(op.id):
                        self._request(op.id)
                elif kind == OP_STEP_ERROR and single and not reply.no_retry and pending.attempt + 1 < run.max_attempts:
                    self._retry(pending, parse_retry_after(reply.retry_after, now))
                elif kind in (OP_STEP_ERROR, OP_STEP_FAILED):
                    # A step error reported among other ops is final: retrying it
                    # would mean re-sending a request that reported its siblings too.
                    memos.append(StepMemo(op.id, replies.error_memo(replies.error_from_op(op))))
                elif kind in (OP_SLEEP, OP_WAIT_FOR_EVENT, OP_INVOKE_FUNCTION):
                    if self._known(op.id):
                        continue
                    if kind == OP_SLEEP:
                        waiting.append(_sleep(op, now))
                    elif kind == OP_WAIT_FOR_EVENT:
                        waiting.append(_wait(op, now_ms))
                    else:
                        item, memo, child = self._invoke(op, now_ms)
                        if item is not None:
                            waiting.append(item)
                        if memo is not None:
                            memos.append(memo)
                        if child is not None:
                            children.append(child)
                else:
                    raise _RunFails("UnsupportedOpcode", f"opcode {kind} is not supported")
        except _RunFails as exc:
            log.warning("run %s (%s): %s; failing the run", run.run_id, run.function_id, exc)
            await self._finish(FAILED, replies.encode(exc.error), error=exc.error, consumed=pending.request_id)
            return
        run.waiting.extend(waiting)
        if memos and any(op.opts and op.opts.get("parallelMode") == "race" for op in ops):
            # A `race` group: look for what comes next after each step that
            # ends, even while its siblings still run.
            if not any(r.step_id == DISCOVERY for r in run.requests):
                self._add_discovery()
        intake = self._host.direct_events(children, now_ms) if children else None
        await self._commit(memos=memos, consumed=pending.request_id, intake=intake, new_waiting=waiting)

    def _steps_before_run_complete(self, ops: list[Opcode]) -> list[StepMemo]:
        """The new step results reported before `RunComplete`, which must be
        the last op and follow nothing but step results (`_RunFails` otherwise)."""
        if ops[-1].op != OP_RUN_COMPLETE:
            raise _RunFails("UnsupportedOpcode", f"RunComplete must be the last op, not followed by {ops[-1].op}")
        memos: list[StepMemo] = []
        for op in ops[:-1]:
            if op.op in (OP_STEP_RUN, OP_STEP):
                if op.id not in self.memos:
                    memos.append(StepMemo(op.id, replies.data_memo(op)))
            elif op.op != OP_STEP_PLANNED:
                raise _RunFails("UnsupportedOpcode", f"opcode {op.op} reported together with RunComplete")
        return memos

    def _known(self, step: str) -> bool:
        """Whether a step already has a result, a request or a waiting entry."""
        run = self.run
        assert run is not None
        return (
            step in self.memos
            or any(r.step_id == step for r in run.requests)
            or any(w.step == step for w in run.waiting)
        )

    def _invoke(self, op: Opcode, now_ms: int) -> tuple[Waiting | None, StepMemo | None, tuple[Event, Target] | None]:
        run = self.run
        assert run is not None
        opts = op.opts or {}
        function_id = opts.get("function_id")
        if not isinstance(function_id, str) or not function_id:
            raise _RunFails("InvalidInvoke", f"invoke {op.name or op.id}: opts.function_id is missing")
        payload = opts.get("payload") or {}
        data = payload.get("data") if isinstance(payload, dict) else None
        if data is not None and not isinstance(data, dict):
            raise _RunFails("InvalidInvoke", f"invoke {op.name or op.id}: payload.data must be an object")
        timeout = _duration(opts.get("timeout"), f"invoke {op.name or op.id}: timeout")
        info = self._host.lookup(function_id)
        if info is None:
            refused = self._host.refusal(function_id)
            err = replies.error(
                "FunctionNotFoundError",
                f"no registered function has the id {function_id!r}; a worker serving it must connect first"
                if refused is None
                else f"function {function_id!r} was refused at registration: {refused}",
            )
            return None, StepMemo(op.id, replies.error_memo(err)), None
        expire_ms = now_ms + int(timeout * 1000)
        child = invoked_event(
            parent_run_id=run.run_id,
            parent_function_id=run.function_id,
            parent_app=run.app_name,
            step_hash=op.id,
            function_id=function_id,
            data=data,
            expire_ms=expire_ms,
            now_ms=now_ms,
        )
        item = Waiting(
            kind=WAIT_INVOKE,
            step=op.id,
            due_ms=expire_ms,
            event=FUNCTION_FINISHED,
            correlation_id=correlation_id(run.run_id, op.id),
        )
        return item, None, (child, info.target)

    async def _on_resolved(self, message: Resolved) -> None:
        run = self.run
        assert run is not None
        before = len(run.waiting)
        run.waiting = [w for w in run.waiting if w.step != message.step]
        if message.step in self.memos and len(run.waiting) == before:
            return
        # The memo is stored already (that is what resolving means).
        self.memos.setdefault(message.step, msgspec.Raw(message.memo))
        self._host.disarm_step(run.run_id, message.step)
        if self._cancel_reason is None:
            await self._commit()

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
            self._host.arm_waiting(self, new_waiting)
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
        try:
            stored = await self._s.store.save_run(
                run,
                memos=[*(memo for taken, _ in joined for memo in taken), *memos],
                consumed_request_id=consumed,
                events=events,
            )
        except BaseException:
            for _, told in joined:
                told(False)
            raise
        for _, told in joined:
            told(True)
        return stored

    def _drop_joined(self) -> None:
        """Joined steps no commit will carry now: refused after all."""
        joined, self._joined = self._joined, []
        for _, told in joined:
            told(False)

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

    def _retry(self, pending: PendingRequest, retry_after: float | None) -> None:
        """The same request again (same target), one attempt later, after a backoff."""
        run = self.run
        assert run is not None
        delay = retry_after if retry_after is not None else self._s.backoff.delay(pending.attempt)
        wake = int((self._s.clock() + delay) * 1000)
        self._request(pending.step_id, pending.attempt + 1, wake)
        log.debug("run %s: attempt %d in %.2f s", run.run_id, pending.attempt + 1, delay)

    async def _on_lapse(self, pending: PendingRequest, error: WorkerStoppedResponding) -> None:
        """The worker running `pending` was lost: the same request again, with
        no attempt spent and no backoff (nothing suggests the step is at
        fault); the count is stored first, so a restart does not reset it."""
        run = self.run
        assert run is not None
        lapses = pending.lapses + 1
        bound = self._s.max_lease_lapses
        if lapses > bound:
            run.requests.remove(pending)
            err = replies.error(
                "TooManyLeaseLapses",
                f"the worker running this step was lost {lapses} times ({error}); a step lost with its "
                f"worker is dispatched again at most {bound} times (--max-lease-lapses {bound})",
            )
            log.warning("run %s (%s): %s; failing the run", run.run_id, run.function_id, err["message"])
            await self._finish(FAILED, replies.encode(err), error=err, consumed=pending.request_id)
            return
        log.warning(
            "run %s (%s): %s; dispatching it again (lost worker %d of at most %d; no attempt spent)",
            run.run_id,
            run.function_id,
            error,
            lapses,
            bound,
        )
        run.requests[run.requests.index(pending)] = msgspec.structs.replace(pending, lapses=lapses)
        await self._save()

    async def _retry_or_fail(
        self, pending: PendingRequest, err: dict[str, Any], no_retry: bool, retry_after: float | None
    ) -> None:
        run = self.run
        assert run is not None
        if not no_retry and pending.attempt + 1 < run.max_attempts:
            self._retry(pending, retry_after)
            await self._commit(consumed=pending.request_id)
        else:
            await self._finish(FAILED, replies.encode(err), error=err, consumed=pending.request_id)

    async def _begin_cancel(self, reason: str) -> None:
        """Stop at the next step boundary: drop what no worker holds, await the rest."""
        if self._cancel_reason is not None:
            return
        self._cancel_reason = reason
        for rid, task in list(self._tasks.items()):
            if rid not in self._forwarded:
                task.cancel()
                del self._tasks[rid]
        if not self._tasks:
            await self._finish_cancelled()

    async def _finish_cancelled(self, consumed: str | None = None) -> None:
        reason = self._cancel_reason or "cancelled"
        err = {**CANCELLED_ERROR, "message": f"the run was cancelled: {reason}"}
        await self._finish(CANCELLED, replies.encode(err), error=err, consumed=consumed)

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
        self._host.disarm_run(run.run_id)
        self._host.apply_events(intake, stored)
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        log.debug("run %s (%s): %s", run.run_id, run.function_id, status)


# --- ops the executor carries out ----------------------------------------------------


def _sleep(op: Opcode, now: float) -> Waiting:
    try:
        wake = wake_time(op, now)
    except ValueError as exc:
        raise _RunFails("InvalidSleep", str(exc)) from exc
    return Waiting(kind=WAIT_SLEEP, step=op.id, due_ms=int(wake * 1000))


def _wait(op: Opcode, now_ms: int) -> Waiting:
    opts = op.opts or {}
    # The Python SDK names the event in `name`; others send `opts.event`.
    event = opts.get("event") or op.name
    if not isinstance(event, str) or not event:
        raise _RunFails("InvalidWait", f"wait {op.id}: no event name")
    expression = opts.get("if") or None
    if expression is not None and not isinstance(expression, str):
        raise _RunFails("InvalidWait", f"wait {op.id}: `if` must be a string")
    if expression is not None:
        try:
            compiled(expression)
        except ValueError as exc:
            raise _RunFails("InvalidWaitExpression", str(exc)) from exc
    timeout = _duration(opts.get("timeout"), f"wait {op.id}: timeout")
    return Waiting(kind=WAIT_EVENT, step=op.id, due_ms=now_ms + int(timeout * 1000), event=event, expression=expression)


def _duration(value: Any, what: str) -> float:
    if value is None:
        return DEFAULT_WAIT
    seconds = parse_duration(value) if isinstance(value, str) else None
    if seconds is None:
        raise _RunFails("InvalidDuration", f"{what} {value!r} is not a duration such as '30s'")
    return min(seconds, DEFAULT_WAIT)
