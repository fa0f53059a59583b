"""Driving one run, request by request, until it ends.

Every state change is stored before the run acts on it, so a process killed
at any point resumes where it stood:

* The id of the next request is stored (`pending_request_id`) before that
  request is dispatched. After a restart the same id is dispatched again, and
  the dispatcher answers with the reply stored before the crash, or waits on
  the worker still holding a lease on it. A step whose result was stored is
  therefore never run a second time.
* Handling a reply is one store operation: the new memo, the next pending
  request (or the final status) and the removal of the consumed reply are
  written together.

Parallel steps (several `StepPlanned` in one reply) are run one after another,
not concurrently: each is targeted in turn with `disable_immediate_execution`
set, and the next discovery is sent once all of them have a result (the
`wait` behaviour; a `race` group also runs every branch before the run
continues). Of the opcodes that need the executor to act, only `Sleep` is
supported; `WaitForEvent`, `InvokeFunction` and `AIGateway` fail the run with
a clear error for now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from connect.executor import replies
from connect.executor.requests import build_request
from connect.executor.retries import Backoff, parse_retry_after
from connect.executor.sleeps import wake_time
from connect.gateway.dispatch import (
    AtCapacity,
    Dispatcher,
    DispatchError,
    NoWorker,
    StepReply,
    StepRequest,
)
from connect.store.base import COMPLETED, DISCOVERY, FAILED, RUNNING, RunRecord, StepMemo, Store
from protocol.ids import new_ulid
from protocol.limits import MAX_REQUEST_PAYLOAD_BYTES
from protocol.payloads import (
    OP_NONE,
    OP_SLEEP,
    OP_STEP,
    OP_STEP_ERROR,
    OP_STEP_FAILED,
    OP_STEP_PLANNED,
    OP_STEP_RUN,
    STATUS_DONE,
    STATUS_NOT_COMPLETED,
    Event,
    Opcode,
)

log = logging.getLogger(__name__)

_NULL = msgspec.Raw(b"null")


@dataclass(frozen=True, slots=True)
class RunServices:
    """What every run of one executor shares."""

    store: Store
    dispatcher: Dispatcher
    backoff: Backoff
    clock: Callable[[], float]
    #: Upper bound on one wait for a worker; the dispatcher normally wakes us sooner.
    worker_wait: float = 30.0


class Runner:
    """One run's state and the loop that advances it."""

    def __init__(self, services: RunServices, run: RunRecord, event: Event, memos: list[StepMemo]) -> None:
        self._s = services
        self.run = run
        self._event = event
        self._memos: dict[str, msgspec.Raw] = {m.step_hash: msgspec.Raw(m.result) for m in memos}

    async def drive(self) -> None:
        """Advance the run until it is no longer Running. Cancellation leaves
        the stored state consistent; driving it again resumes it."""
        run = self.run
        if run.status == RUNNING and not run.pending_request_id:
            run.pending_request_id = new_ulid()
            await self._s.store.save_run(run)
        while run.status == RUNNING:
            await self._wait_until_due()
            payload = build_request(run, self._event, self._memos)
            if len(payload) > MAX_REQUEST_PAYLOAD_BYTES:
                message = (
                    f"the run's state ({len(payload)} bytes) is larger than the "
                    f"{MAX_REQUEST_PAYLOAD_BYTES}-byte request limit; return smaller step results"
                )
                await self._finish(FAILED, replies.encode(replies.error("RunStateTooLarge", message)))
                return
            request = StepRequest(
                request_id=run.pending_request_id,
                run_id=run.run_id,
                app_name=run.app_name,
                function_slug=run.function_id,
                step_id=run.step_id,
                payload=payload,
            )
            try:
                reply = await self._dispatch(request)
            except DispatchError as exc:  # WorkerStoppedResponding and any other failed delivery
                err = replies.error(type(exc).__name__, str(exc) or exc.code)
                await self._retry_or_fail(err, no_retry=False, retry_after=None)
                continue
            await self._on_reply(reply)

    # --- dispatch ------------------------------------------------------------------

    async def _dispatch(self, request: StepRequest) -> StepReply:
        """Dispatch, waiting (without spending an attempt) while no worker can take it."""
        while True:
            try:
                return await self._s.dispatcher.dispatch(request)
            except (NoWorker, AtCapacity):
                await self._s.dispatcher.wait_for_worker(
                    request.app_name, request.function_slug, timeout=self._s.worker_wait
                )

    async def _wait_until_due(self) -> None:
        run = self.run
        if run.wake_at_ms:
            delay = run.wake_at_ms / 1000 - self._s.clock()
            if delay > 0:
                await asyncio.sleep(delay)
        if run.sleep_step:
            memo = StepMemo(run.sleep_step, bytes(_NULL))
            self._memos.setdefault(run.sleep_step, _NULL)
            run.sleep_step = ""
            run.wake_at_ms = 0
            await self._s.store.save_run(run, memos=[memo])

    # --- replies -------------------------------------------------------------------

    async def _on_reply(self, reply: StepReply) -> None:
        run = self.run
        if reply.request_version > 0:
            run.request_version = reply.request_version
        try:
            if reply.status == STATUS_DONE:
                await self._finish(COMPLETED, replies.result_json(reply.body))
            elif reply.status == STATUS_NOT_COMPLETED:
                await self._on_ops(replies.parse_ops(reply.body), reply)
            else:
                retry_after = parse_retry_after(reply.retry_after, self._s.clock())
                await self._retry_or_fail(replies.error_from_body(reply.body), reply.no_retry, retry_after)
        except replies.UnreadableReply as exc:
            await self._retry_or_fail(replies.error("UnreadableReply", str(exc)), reply.no_retry, None)

    async def _on_ops(self, ops: list[Opcode], reply: StepReply) -> None:
        ops = [op for op in ops if op.op != OP_NONE]
        if not ops:
            err = replies.error("EmptyReply", "the worker reported neither a result nor a step to run")
            await self._retry_or_fail(err, reply.no_retry, None)
        elif len(ops) == 1:
            await self._on_op(ops[0], reply)
        else:
            await self._on_group(ops)

    async def _on_op(self, op: Opcode, reply: StepReply) -> None:
        run = self.run
        if op.op in (OP_STEP_RUN, OP_STEP):
            await self._advance([StepMemo(op.id, replies.data_memo(op))])
        elif op.op == OP_STEP_PLANNED:
            # A step that already has a result needs no targeted request.
            await self._advance([], target=None if op.id in self._memos else op.id)
        elif op.op == OP_STEP_ERROR:
            if not reply.no_retry and run.attempt + 1 < run.max_attempts:
                retry_after = parse_retry_after(reply.retry_after, self._s.clock())
                await self._retry(retry_after)
            else:
                await self._advance([StepMemo(op.id, replies.error_memo(replies.error_from_op(op)))])
        elif op.op == OP_STEP_FAILED:
            await self._advance([StepMemo(op.id, replies.error_memo(replies.error_from_op(op)))])
        elif op.op == OP_SLEEP:
            await self._sleep(op)
        else:
            await self._unsupported(op.op)

    async def _on_group(self, ops: list[Opcode]) -> None:
        """Several steps reported at once: record results, queue the planned ones."""
        run = self.run
        memos: list[StepMemo] = []
        for op in ops:
            if op.op in (OP_STEP_RUN, OP_STEP):
                memos.append(StepMemo(op.id, replies.data_memo(op)))
            elif op.op in (OP_STEP_ERROR, OP_STEP_FAILED):
                # A step error inside a group is final: retrying it would mean
                # re-sending a request that reported its siblings too.
                memos.append(StepMemo(op.id, replies.error_memo(replies.error_from_op(op))))
            elif op.op == OP_STEP_PLANNED:
                if op.id not in self._memos and op.id not in run.planned:
                    run.planned.append(op.id)
            else:
                await self._unsupported(op.op, in_group=True)
                return
        run.disable_immediate_execution = True
        await self._advance(memos)

    # --- state transitions (each is one store write) ----------------------------------

    def _new_request(self) -> str:
        """A fresh pending request id; returns the one it replaces (now consumed)."""
        consumed = self.run.pending_request_id
        self.run.pending_request_id = new_ulid()
        return consumed

    async def _advance(self, memos: list[StepMemo], *, target: str | None = None) -> None:
        """Store `memos` and move on: to `target`, else the next planned step, else discovery."""
        run = self.run
        for memo in memos:
            self._memos.setdefault(memo.step_hash, msgspec.Raw(memo.result))
        if target is None:
            while run.planned and run.planned[0] in self._memos:
                run.planned.pop(0)
            if run.planned:
                target = run.planned.pop(0)
        if target is None:
            target = DISCOVERY
            if run.request_version >= 2:
                # As the reference executor does: once a group is done, a
                # discovery may run the next step immediately again.
                run.disable_immediate_execution = False
        run.step_id = target
        run.attempt = 0
        run.wake_at_ms = 0
        consumed = self._new_request()
        await self._s.store.save_run(run, memos=memos, consumed_request_id=consumed)

    async def _retry(self, retry_after: float | None) -> None:
        """The same request again (same target), one attempt later, after a backoff."""
        run = self.run
        delay = retry_after if retry_after is not None else self._s.backoff.delay(run.attempt)
        run.attempt += 1
        run.wake_at_ms = int((self._s.clock() + delay) * 1000)
        consumed = self._new_request()
        await self._s.store.save_run(run, consumed_request_id=consumed)
        log.debug("run %s: attempt %d in %.2f s", run.run_id, run.attempt, delay)

    async def _retry_or_fail(self, err: dict[str, Any], no_retry: bool, retry_after: float | None) -> None:
        run = self.run
        if not no_retry and run.attempt + 1 < run.max_attempts:
            await self._retry(retry_after)
        else:
            await self._finish(FAILED, replies.encode(err))

    async def _sleep(self, op: Opcode) -> None:
        run = self.run
        now = self._s.clock()
        try:
            wake = wake_time(op, now)
        except ValueError as exc:
            await self._finish(FAILED, replies.encode(replies.error("InvalidSleep", str(exc))))
            return
        if op.id in self._memos:  # already slept; just look for the next step
            await self._advance([])
            return
        run.sleep_step = op.id
        run.wake_at_ms = int(wake * 1000)
        run.step_id = DISCOVERY
        run.attempt = 0
        consumed = self._new_request()
        await self._s.store.save_run(run, consumed_request_id=consumed)

    async def _unsupported(self, opcode: str, *, in_group: bool = False) -> None:
        where = " inside a parallel group" if in_group else ""
        message = f"opcode {opcode}{where} is not supported yet"
        log.warning("run %s (%s): %s; failing the run", self.run.run_id, self.run.function_id, message)
        err = replies.error("UnsupportedOpcode", message)
        await self._finish(FAILED, replies.encode(err))

    async def _finish(self, status: str, output: bytes) -> None:
        run = self.run
        consumed = run.pending_request_id
        run.status = status
        run.output = output
        run.ended_at_ms = int(self._s.clock() * 1000)
        run.pending_request_id = ""
        run.planned = []
        run.wake_at_ms = 0
        run.sleep_step = ""
        await self._s.store.save_run(run, consumed_request_id=consumed or None)
        log.debug("run %s (%s): %s", run.run_id, run.function_id, status)
