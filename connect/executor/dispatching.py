"""Sending a run's requests to workers.

Each outstanding request is dispatched by its own task (the steps of a
parallel group run concurrently on whichever workers have capacity), except
the common case of one request and nothing else going on, which the loop
dispatches inline. Waiting for a worker (none connected, or all at capacity)
spends no attempt; outcomes go to the runner's inbox.

A request of a function with concurrency limits first holds its slots
(`connect.executor.concurrency`): taken by the commit that created it, or by
one call to the store before an inline dispatch; a request that must wait
its turn does so in its task, without spending an attempt. The slots go with
the commit of the run that ends the request (`RunState._slot_change`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from connect.dispatch import AtCapacity, DispatchError, NoWorker, StepRequest
from connect.executor.checkpoints import CheckpointTaking
from connect.executor.inbox import DispatchFailed, Message, Oversized, Replied, StartTimedOut, TaskCrashed
from connect.executor.requests import build_request
from connect.metrics.platform import WAITING_FOR_SLOT, WAITING_FOR_WORKER
from connect.store.base import PendingRequest
from protocol.limits import MAX_REQUEST_PAYLOAD_BYTES

log = logging.getLogger("connect.executor.runner")


class Dispatching(CheckpointTaking):
    """Dispatch of the run's requests."""

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
            # A throttled start in priority order asks the store for its turn first.
            and not (self._ordered_throttle and run.requests[0].wake_at_ms)
        )

    async def _try_slots(self, pending: PendingRequest) -> bool:
        """One ask for `pending`'s slots, not waiting: True if it holds them;
        otherwise it has its place in line (and waits for it in its task)."""
        run = self.run
        assert run is not None
        rid = pending.request_id
        if rid in self._in_line:
            return False
        claims, order = self._slot_claims()
        if await self._s.store.acquire_slots(rid, run.run_id, claims, order):
            self._slots.add(rid)
            return True
        self._in_line.add(rid)
        return False

    async def _dispatch(self, pending: PendingRequest, *, no_worker_yet: bool = False) -> None:
        """Deliver one request (in a task) and post the outcome to the inbox.
        Waiting for a worker (none connected, or all at capacity) spends no attempt.
        `no_worker_yet`: an attempt just found no worker, so begin by waiting."""
        run = self.run
        assert run is not None
        s = self._s
        try:
            if pending.wake_at_ms and self._ordered_throttle and s.turns is not None:
                # A throttled start in priority order: its turn may come early, or move.
                await s.turns.take(run.run_id, pending.wake_at_ms)
            elif pending.wake_at_ms:
                delay = pending.wake_at_ms / 1000 - s.clock()
                if delay > 0:
                    await asyncio.sleep(delay)
            # The queue wait: from here (after any backoff) to the first
            # attempt after a wait, observed once per request that waited.
            metrics = s.metrics
            queued_at = time.perf_counter()
            waited = no_worker_yet
            observed = False
            if self._limits is not None and pending.request_id not in self._slots:
                waited = True
                if metrics is not None:
                    metrics.waiting(WAITING_FOR_SLOT, 1)
                try:
                    if not await self._hold_slots(pending):
                        return
                finally:
                    if metrics is not None:
                        metrics.waiting(WAITING_FOR_SLOT, -1)
            while True:
                if not no_worker_yet:
                    if waited and not observed and metrics is not None:
                        metrics.queue_wait.observe(time.perf_counter() - queued_at)
                        observed = True
                    message = await self._attempt(pending)
                    if message is not None:
                        self.deliver(message)
                        return
                no_worker_yet = False
                waited = True
                timeout = s.worker_wait
                start_timeout = self._start_timeout_ms()
                if start_timeout is not None:
                    remaining = (run.started_at_ms + start_timeout) / 1000 - s.clock()
                    if remaining <= 0:
                        self.deliver(StartTimedOut(start_timeout))
                        return
                    timeout = min(timeout, remaining)
                if metrics is not None:
                    metrics.waiting(WAITING_FOR_WORKER, 1)
                try:
                    await s.dispatcher.wait_for_worker(run.app_name, run.function_id, timeout=timeout)
                finally:
                    if metrics is not None:
                        metrics.waiting(WAITING_FOR_WORKER, -1)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.deliver(TaskCrashed(exc))

    async def _hold_slots(self, pending: PendingRequest) -> bool:
        """Wait until `pending` holds its concurrency slots; False (and the run
        told) if `timeouts.start` passed first."""
        run, slots = self.run, self._s.slots
        assert run is not None and slots is not None
        timeout = None
        start_timeout = self._start_timeout_ms()
        if start_timeout is not None:
            timeout = max(0.0, (run.started_at_ms + start_timeout) / 1000 - self._s.clock())
        claims, order = self._slot_claims()
        if not await slots.acquire(pending.request_id, run.run_id, claims, order, timeout=timeout):
            assert start_timeout is not None
            self.deliver(StartTimedOut(start_timeout))
            return False
        self._slots.add(pending.request_id)
        self._in_line.discard(pending.request_id)
        return True

    async def _attempt(self, pending: PendingRequest) -> Message | None:
        """One dispatch of `pending`: its outcome, or None if no worker can take it now."""
        run = self.run
        assert run is not None and self.event is not None
        rid = pending.request_id
        checkpoints = self._may_checkpoint(pending)
        payload = build_request(
            run, pending, self.event, self.memos, checkpoint_steps=checkpoints, events=self.batch or None
        )
        if len(payload) > MAX_REQUEST_PAYLOAD_BYTES:
            return Oversized(rid, len(payload))
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
            offers_checkpoints=checkpoints,
        )
        self._fresh.discard(rid)
        self._forwarded.add(rid)
        sent_at = time.perf_counter()
        try:
            reply = await self._s.dispatcher.dispatch(request, self if checkpoints else None)
        except (NoWorker, AtCapacity):
            return None
        except DispatchError as exc:  # WorkerStoppedResponding and any other failed delivery
            return DispatchFailed(rid, exc)
        finally:
            self._forwarded.discard(rid)
            self._checkpoints.pop(rid, None)
        return Replied(rid, reply, sent_at)

    def _start_timeout_ms(self) -> int | None:
        if self._has_replied:
            return None
        assert self.run is not None
        info = self._host.lookup(self.run.function_id)
        return None if info is None else info.start_timeout_ms
