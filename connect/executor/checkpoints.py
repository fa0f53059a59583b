"""Steps a worker stores while it goes on running the same request.

A discovery request of a run doing nothing else offers checkpoints
(`ctx.checkpoint_steps`). A worker that supports them stores each `step.run`
result through `checkpoint_offered` (one `save_run`, like a reply's) and goes on
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

import logging

import msgspec

from connect.dispatch import CheckpointDecided, CheckpointJoined, CheckpointOffered
from connect.executor import replies, step_infos
from connect.executor.run_state import RunState
from connect.store.base import DISCOVERY, RUNNING, PendingRequest, StepMemo
from protocol.limits import MAX_CHECKPOINTS_PER_REQUEST
from protocol.payloads import OP_NONE, OP_STEP, OP_STEP_PLANNED, OP_STEP_RUN, STATUS_NOT_COMPLETED

log = logging.getLogger("connect.executor.runner")


class CheckpointTaking(RunState):
    """Checkpoints of the run's one outstanding request."""

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

    async def checkpoint_offered(self, offer: CheckpointOffered) -> None:
        """Answer a checkpoint of the request being dispatched (see
        `CheckpointReceiver`); runs while `drive` awaits that request."""
        rid = offer.request_id
        try:
            stored = await self._take_checkpoint(offer)
        except BaseException:
            self._s.dispatcher.send(CheckpointDecided(rid, stored=False))
            raise
        if stored is not None:
            self._s.dispatcher.send(CheckpointDecided(rid, stored))

    async def _take_checkpoint(self, offer: CheckpointOffered) -> bool | None:
        """Store the steps a worker ran in the offered request, which goes on
        running; True once stored, None when joined.

        A `joinable` offer has the request's reply already in (the handler
        returned after this step): the step is taken now and stored by the
        commit that handles that reply, which comes next; that commit tells
        the gateway its outcome (see `RunState._save`)."""
        request_id, reply = offer.request_id, offer.reply
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
        pending = run.requests[0]
        now_ms = int(self._s.clock() * 1000)
        offset = step_infos.clock_offset(ops, now_ms)
        memos = [
            StepMemo(
                op.id, replies.data_memo(op), step_infos.ran(op, pending, now_ms, first=taken == i == 0, offset=offset)
            )
            for i, op in enumerate(ops)
        ]
        # The request now looks for the step after this one: its attempts (and lapses) start over.
        run.requests[0] = msgspec.structs.replace(pending, attempt=0, wake_at_ms=0, lapses=0)
        if reply.request_version > 0:
            run.request_version = reply.request_version
        if offer.joinable:
            self._s.dispatcher.send(CheckpointJoined(request_id))
            self._joined.append((memos, request_id))
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
        self._checkpointed = request_id
        self._has_replied = True
        return None if offer.joinable else True
