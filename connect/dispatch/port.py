"""The executor's only way to reach workers.

`Port.dispatch` runs one step request on some connected worker and returns
the worker's reply once it is durably stored (or, for a request whose caller
`takes_over`, once the caller may commit it). Everything else the two sides
tell each other about the request is a message (`connect.dispatch.messages`).
Failures are the types of `connect.dispatch.failures`.

In one process, `connect.gateway.dispatcher.GatewayDispatcher` implements it
directly, with its fast paths: a reply handed over and committed with the
run's next state in one commit, and checkpoints joined to the reply behind
them.
"""

from __future__ import annotations

from typing import Protocol

from connect.dispatch.messages import CheckpointOffered, ExecutorMessage, StepReply, StepRequest


class CheckpointReceiver(Protocol):
    async def checkpoint_offered(self, offer: CheckpointOffered) -> None:
        """Take or refuse the offered steps; the answer is a `CheckpointDecided`
        (or `CheckpointJoined`, then `CheckpointDecided`) sent through
        `Port.send`, before this returns unless the step was joined."""
        ...


class Port(Protocol):
    async def dispatch(self, request: StepRequest, receiver: CheckpointReceiver | None = None) -> StepReply:
        """Run `request` on a worker and return its stored reply.

        Order: a reply already stored for `request.request_id` is returned at
        once; a live lease on it means a worker still runs it, so wait for
        that; otherwise route, forward and wait. Checkpoints of a request
        that `offers_checkpoints` go to `receiver` (required then). Raises
        NoWorker, AtCapacity or WorkerStoppedResponding.
        """
        ...

    def send(self, message: ExecutorMessage) -> None:
        """Tell the gateway what became of a checkpoint or a reply."""
        ...

    async def wait_for_worker(self, app_name: str, function_slug: str, timeout: float) -> None:
        """Return when a connection for this function may have free capacity
        (a connect, a ready, a released slot), or after `timeout` seconds."""
        ...
