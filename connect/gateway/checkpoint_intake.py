"""Taking a worker's checkpoint (over its socket, or posted over HTTP) to the
executor, and answering it once the executor decided.

Whether a checkpoint is taken, and what a refused one becomes, is
`RequestFlow`'s; this module carries it out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from connect.dispatch import (
    CheckpointDecided,
    CheckpointJoined,
    CheckpointOffered,
    CheckpointReceiver,
    CheckpointTaken,
    StepReply,
)
from connect.dispatch.flow import CheckpointSent, Refuse
from connect.gateway.inflight import InFlight, answered, reply_of
from protocol import connect_pb2 as pb
from protocol.leases import LeaseTable


class CheckpointIntake:
    """The checkpoint half of `GatewayDispatcher` (which provides these attributes)."""

    _pending: dict[str, InFlight]
    leases: LeaseTable
    # Requests whose checkpoint is with the caller, undecided (also after
    # `dispatch` returned: a joined checkpoint is decided by a later commit).
    _deciding: dict[str, InFlight]

    def accept_checkpoint(
        self, raw: bytes, request_id: str, instance_id: str, response: pb.SDKResponse | None = None
    ) -> Awaitable[bool]:
        """Offer a worker's checkpoint to the request's caller; the result is
        True once the step is durably stored. False (the worker ends the
        request with the step) when the request offers no checkpoints, is
        not in flight here on `instance_id`, already has its reply, or has
        one checkpoint being stored already.

        Whether the checkpoint is taken is decided at the call, so a reply
        taken after it (the next frame of the same read) waits for it, or is
        stored with it (see `_offer`). `response` is `raw` parsed, if the
        caller has it.

        A worker may send its reply right behind a checkpoint, before the
        answer (our worker does when the handler returns after its last
        step). So a refused checkpoint is kept, and the request's reply is
        that checkpoint whatever the worker sends next: exactly the reply a
        worker that waited for the refusal would send."""
        loop = asyncio.get_running_loop()
        pending = self._pending.get(request_id)
        if pending is None:
            return answered(loop, False)
        lease = self.leases.get(request_id)
        on_lease = lease is not None and lease.instance_id == instance_id
        (action,) = pending.flow.handle(CheckpointSent(raw, over_socket=True, on_lease=on_lease))
        if isinstance(action, Refuse) or pending.receiver is None:
            return answered(loop, False)
        pending.checkpointing = loop.create_future()
        return self._offer(request_id, pending, pending.receiver, lambda: reply_of(raw, response))

    async def checkpoint_over_http(self, run_id: str, request_id: str, body: bytes) -> CheckpointTaken:
        """Steps an official TypeScript worker ran in request `request_id`
        and posts (`body`: a JSON array of StepRun ops) before going on.

        Unlike a WORKER_CHECKPOINT, a declined one is not kept as the
        request's reply: the SDK itself ends the request with the steps when
        the checkpoint fails. Nothing names the worker here (the call is
        authenticated by the signing key under `connect serve`), so a worker
        whose lease lapsed may still store a step: that is a step result like
        any other, and the first stored for a step wins."""
        pending = self._pending.get(request_id)
        if pending is None or pending.run_id != run_id:
            return CheckpointTaken.STALE
        (action,) = pending.flow.handle(CheckpointSent(body, over_socket=False))
        if isinstance(action, Refuse) or pending.receiver is None:
            return CheckpointTaken.STALE if isinstance(action, Refuse) and action.stale else CheckpointTaken.DECLINED
        pending.checkpointing = asyncio.get_running_loop().create_future()
        reply = StepReply(request_id=request_id, status=pb.NOT_COMPLETED, body=body)
        stored = await self._offer(request_id, pending, pending.receiver, lambda: reply)
        return CheckpointTaken.STORED if stored else CheckpointTaken.DECLINED

    async def _offer(
        self,
        request_id: str,
        pending: InFlight,
        receiver: CheckpointReceiver,
        reply: Callable[[], StepReply],
    ) -> bool:
        """Offer the checkpoint to the request's caller; True once it is stored.

        Starting a loop turn after the checkpoint was taken, this knows
        whether the request's reply came in the same read. If so, and the
        caller commits replies itself (`takes_over`), the offer is
        `joinable` (see `CheckpointOffered`): the reply is handed over at
        once and one commit stores both, so a run's last step and its end
        cost one commit instead of two. The answer then waits for that
        commit; if it fails, the checkpoint is refused after all and the
        request's reply, should the dispatcher have to store it, is the
        checkpoint."""
        decision: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        pending.decision = decision
        self._deciding[request_id] = pending
        try:
            await receiver.checkpoint_offered(CheckpointOffered(request_id, reply(), pending.flow.joinable()))
        finally:
            if self._deciding.get(request_id) is pending and not pending.flow.joined:
                # The caller returned without an answer: refused.
                self.decide_checkpoint(CheckpointDecided(request_id, stored=False))
        return await decision

    def join_checkpoint(self, joined: CheckpointJoined) -> None:
        """The caller took the offered checkpoint to store with the reply behind it."""
        pending = self._deciding.get(joined.request_id)
        if pending is None:
            return
        pending.flow.handle(joined)
        pending.checkpoint_decided()  # the reply behind it goes on

    def decide_checkpoint(self, decided: CheckpointDecided) -> None:
        """The caller's answer to the offered checkpoint. For a joined one it
        comes before the reply is settled: a failed commit must make the
        checkpoint the reply the dispatcher stores."""
        pending = self._deciding.pop(decided.request_id, None)
        if pending is None:
            return
        pending.flow.handle(decided)
        pending.checkpoint_decided()
        if pending.decision is not None and not pending.decision.done():
            pending.decision.set_result(decided.stored)
