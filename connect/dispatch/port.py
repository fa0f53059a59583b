"""The executor's only way to reach workers.

`Dispatcher.dispatch` runs one step request on some connected worker and
returns the worker's reply once it is durably stored (or, for a request whose
caller `takes_over`, once the caller may commit it). Failures are the types
of `connect.dispatch.failures`.
"""

from __future__ import annotations

from typing import Protocol

from connect.dispatch.messages import StepReply, StepRequest


class Dispatcher(Protocol):
    async def dispatch(self, request: StepRequest) -> StepReply:
        """Run `request` on a worker and return its stored reply.

        Order: a reply already stored for `request.request_id` is returned at
        once; a live lease on it means a worker still runs it, so wait for
        that; otherwise route, forward and wait. Raises NoWorker, AtCapacity
        or WorkerStoppedResponding.
        """
        ...

    async def wait_for_worker(self, app_name: str, function_slug: str, timeout: float) -> None:
        """Return when a connection for this function may have free capacity
        (a connect, a ready, a released slot), or after `timeout` seconds."""
        ...
