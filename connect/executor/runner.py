"""Driving one run, reply by reply, until it ends or has nothing to do but wait.

A run waits on two kinds of things, both kept in its `RunRecord`:

* **requests** (`run.requests`): call requests for a worker. Usually one (a
  discovery, or the one step it targets); one per planned step while a
  parallel group runs (see `connect.executor.dispatching`).
* **waiting steps** (`run.waiting`): sleeps, waits for events and invokes,
  which the executor completes without a worker (its timers and event
  matching store their memo and wake the run).

Replies and wake-ups arrive in the runner's inbox (`connect.executor.inbox`)
and are handled one at a time; each handling is one store write (the save
path of `connect.executor.run_state`), made before anything acts on it. When
nothing is outstanding any more the next request is a discovery; after a
group this is the one discovery for the whole group.

A run with no request outstanding holds no task and no worker: the runner
parks (returns), and the executor starts a new one, from the store, when one
of its waiting steps completes or it is cancelled.

The other concerns of a run each have their module: `attempts` (retries and
lost workers), `cancellation`, `checkpoints`, `opcodes` (ops the executor
carries out itself).
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from connect.dispatch import ReplySettled, StepReply, WorkerStoppedResponding
from connect.executor import replies, step_infos
from connect.executor.attempts import Attempts
from connect.executor.cancellation import Cancelling
from connect.executor.dispatching import Dispatching
from connect.executor.inbox import CancelRequested, DispatchFailed, Message, Oversized, Replied, Resolved, StartTimedOut
from connect.executor.opcodes import RunFails, invoke, sleep_entry, steps_before_run_complete, wait_entry
from connect.executor.retries import parse_retry_after
from connect.executor.run_state import MAX_LEASE_LAPSES, RunHost, RunServices
from connect.executor.triggers import Target
from connect.store.base import COMPLETED, DISCOVERY, FAILED, RUNNING, PendingRequest, StepInfo, StepMemo, Waiting
from protocol.limits import MAX_REQUEST_PAYLOAD_BYTES
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

log = logging.getLogger("connect.executor.runner")
__all__ = [
    "MAX_LEASE_LAPSES",
    "CancelRequested",
    "Message",
    "Resolved",
    "RunHost",
    "RunServices",
    "Runner",
]

_decode_event = msgspec.json.Decoder(Event).decode


class Runner(Dispatching, Cancelling, Attempts):
    """One run's state and the loop that advances it (see the module docstring)."""

    # --- loading --------------------------------------------------------------------

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
        self.batch = [_decode_event(body) for body in loaded.batch]
        if self.count_start:
            self.count_start = False
            if self._s.metrics is not None:
                self._s.metrics.run_started(loaded.run.function_id)
        if self._limits is not None:
            # Slots of requests a stopped process left behind (their replies
            # committed, the release not): only the current requests keep theirs.
            await self._s.store.release_run_slots(self.run_id, keep=[r.request_id for r in loaded.run.requests])
        return True

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
                    # worker, a backoff or its concurrency slots) goes to a task instead.
                    pending = run.requests[0]
                    if self._limits is not None and pending.request_id not in self._slots:
                        if not await self._try_slots(pending):
                            self._tasks[pending.request_id] = asyncio.create_task(
                                self._dispatch(pending), name=f"run:{run.run_id}:{pending.request_id}"
                            )
                        continue  # what happened meanwhile (a cancellation) goes first
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
        for request_id in self._unhandled:
            self._s.dispatcher.send(ReplySettled(request_id, committed=False))
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
            self._drop_joined()  # before the reply is settled (see `CheckpointOffered`)
            raise
        finally:
            if isinstance(message, Replied):
                if self._s.metrics is not None and self.run is not None:
                    self._s.metrics.step_done(self.run.function_id, time.perf_counter() - message.sent_at)
                # The worker is acknowledged now if a commit of this run consumed
                # the reply; otherwise the gateway stores the reply first.
                self._unhandled.discard(message.request_id)
                committed = message.request_id in self._consumed
                self._s.dispatcher.send(ReplySettled(message.request_id, committed))
            self._consumed.clear()

    async def _handle_message(self, message: Message) -> None:
        run = self.run
        assert run is not None
        if isinstance(message, Replied | DispatchFailed | Oversized):
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
            if isinstance(message, DispatchFailed) and isinstance(message.error, WorkerStoppedResponding):
                await self._on_lapse(pending, message.error)
                return
            run.requests.remove(pending)
            if isinstance(message, Replied):
                await self._on_reply(pending, message.reply)
            elif isinstance(message, Oversized):
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
        elif isinstance(message, StartTimedOut):
            if not self._has_replied:
                await self._begin_cancel(f"no worker started the run within timeouts.start ({message.timeout_ms} ms)")
        else:
            raise message.error

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
        # The first step a worker ran in this request is the first op, unless
        # checkpoints stored steps of the request before it.
        first_id = ops[0].id if self._checkpointed != pending.request_id else None
        offset = step_infos.clock_offset(ops, now_ms)

        def ran(op: Opcode) -> StepInfo:
            return step_infos.ran(op, pending, now_ms, first=op.id == first_id, offset=offset)

        try:
            if any(op.op == OP_RUN_COMPLETE for op in ops):
                memos = steps_before_run_complete(ops, self.memos, ran)
                for stored in memos:
                    self.memos.setdefault(stored.step_hash, msgspec.Raw(stored.result))
                # The handler returned: the steps before it and the run's end are one commit.
                await self._finish(COMPLETED, replies.encode(ops[-1].data), memos=memos, consumed=pending.request_id)
                return
            for op in ops:
                kind = op.op
                if kind in (OP_STEP_RUN, OP_STEP):
                    memos.append(StepMemo(op.id, replies.data_memo(op), ran(op)))
                elif kind == OP_STEP_PLANNED:
                    if not self._known(op.id):
                        self._request(op.id)
                elif kind == OP_STEP_ERROR and single and not reply.no_retry and pending.attempt + 1 < run.max_attempts:
                    self._retry(pending, parse_retry_after(reply.retry_after, now))
                elif kind in (OP_STEP_ERROR, OP_STEP_FAILED):
                    # A step error reported among other ops is final: retrying it
                    # would mean re-sending a request that reported its siblings too.
                    error = replies.error_memo(replies.error_from_op(op))
                    memos.append(StepMemo(op.id, error, ran(op)))
                elif kind in (OP_SLEEP, OP_WAIT_FOR_EVENT, OP_INVOKE_FUNCTION):
                    if self._known(op.id):
                        continue
                    if kind == OP_SLEEP:
                        waiting.append(sleep_entry(op, now))
                    elif kind == OP_WAIT_FOR_EVENT:
                        waiting.append(wait_entry(op, now_ms))
                    else:
                        item, memo, child = invoke(op, run, self._host, now_ms)
                        if item is not None:
                            waiting.append(item)
                        if memo is not None:
                            memos.append(memo)
                        if child is not None:
                            children.append(child)
                else:
                    raise RunFails("UnsupportedOpcode", f"opcode {kind} is not supported")
        except RunFails as exc:
            log.warning(
                "run %s (%s): %s; failing the run",
                run.run_id,
                run.function_id,
                exc,
                extra={"run_id": run.run_id, "function": run.function_id, "step": pending.step_id},
            )
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

    def _known(self, step: str) -> bool:
        """Whether a step already has a result, a request or a waiting entry."""
        run = self.run
        assert run is not None
        return (
            step in self.memos
            or any(r.step_id == step for r in run.requests)
            or any(w.step == step for w in run.waiting)
        )

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
