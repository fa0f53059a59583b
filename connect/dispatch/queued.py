"""The port for an executor whose gateways run in other processes.

`dispatch` queues the request in the store (`Store.queue_request`). A
gateway that has a ready worker for the function takes it, forwards it,
stores the worker's reply as it stores every reply, and settles the request
(`connect.gateway.pump`); the store announces the settlement
(`REQUEST_SETTLED`) and `dispatch` reads the reply back. A request stays
queued while no gateway can serve it, so "no worker yet" and "all at
capacity" spend no attempt and never surface here: `NoWorker` and
`AtCapacity` are not raised. A worker lost while it ran the request is
reported by its gateway (`LAPSED`) and raised as `WorkerStoppedResponding`,
as in one process.

What does not cross processes: replies are always stored by the gateway
before the executor sees them (`takes_over` makes no difference, so
`ReplySettled` has nothing left to do), and checkpoints are not offered
(each step is a request of its own): a request that offers them is refused
with `ValueError`, so run the executor with `checkpoint_steps=False` on this
port. Notifications can be lost; every
`SWEEP_INTERVAL` seconds a waiting `dispatch` looks at the store itself.

A reply announced with its answer (`REQUEST_ANSWERED`) is not read back: the
announcing transaction stored it. An answer announced by its request id left
the queue in the transaction that announced it (`REQUEST_SETTLED` is sent only with the queued request's
removal or lapse, and storing a reply removes it), so the reply is read and
nothing more is written; a reply found any other way (a sweep, a request
dispatched again) is dequeued first. A request queued again while its answer
was on its way may stay queued after that answer: the run's commit that
consumes the reply dequeues it (`Store.save_run`), and a gateway that takes it
first finds the reply, or finds it gone and forwards nothing
(`connect.gateway.pump`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from connect.dispatch.failures import WorkerStoppedResponding
from connect.dispatch.messages import ExecutorMessage, StepReply, StepRequest
from connect.dispatch.port import CheckpointReceiver
from connect.dispatch.stored import reply_from_bytes
from connect.store.base import REQUEST_ANSWERED, REQUEST_SETTLED, QueuedRequest, Store, read_answers

log = logging.getLogger(__name__)

#: Seconds between a waiting request's own looks at the store.
SWEEP_INTERVAL: Final = 5.0


class QueuedPort:
    """`connect.dispatch.Port` over the store's request queue."""

    def __init__(
        self, store: Store, *, clock: Callable[[], float] = time.time, sweep_interval: float = SWEEP_INTERVAL
    ) -> None:
        if sweep_interval <= 0:
            raise ValueError(f"sweep_interval must be positive, got {sweep_interval}")
        self._store = store
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._waiting: dict[str, asyncio.Event] = {}
        #: Requests whose settlement was announced by id since they were queued.
        self._announced: set[str] = set()
        #: Replies announced with their answers (base64), not consumed yet.
        self._answers: dict[str, str] = {}
        self._listening: asyncio.Future[None] | None = None

    async def _listen(self) -> None:
        if self._listening is None:
            self._listening = asyncio.ensure_future(self._listen_both())
        await asyncio.shield(self._listening)

    async def _listen_both(self) -> None:
        # One after the other: each is listening once its `listen` returns.
        await self._store.listen(REQUEST_SETTLED, self._settled)
        await self._store.listen(REQUEST_ANSWERED, self._answered)

    def _answered(self, payload: str) -> None:
        if not payload:
            self._settled(payload)
            return
        for request_id, data in read_answers(payload):
            event = self._waiting.get(request_id)
            if event is not None:
                self._answers[request_id] = data
                self._announced.add(request_id)
                event.set()

    def _settled(self, request_ids: str) -> None:
        if request_ids:
            for request_id in request_ids.split(","):
                event = self._waiting.get(request_id)
                if event is not None:
                    self._announced.add(request_id)
                    event.set()
            return
        for event in self._waiting.values():  # reconnected: anything may have been missed
            event.set()

    async def dispatch(self, request: StepRequest, receiver: CheckpointReceiver | None = None) -> StepReply:
        rid = request.request_id
        if request.offers_checkpoints:
            raise ValueError(
                f"request {rid} offers checkpoints, which do not cross processes: "
                "run the executor with checkpoint_steps=False on this port"
            )
        await self._listen()
        # Waiting from before the look below: an answer announced while it looks is not missed.
        settled = self._waiting[rid] = asyncio.Event()
        try:
            if not request.fresh:
                stored = await self._store.get_reply(rid)
                if stored is not None:
                    await self._store.dequeue_request(rid)
                    return reply_from_bytes(stored)
            await self._store.queue_request(
                QueuedRequest(
                    rid,
                    request.run_id,
                    request.app_name,
                    request.function_slug,
                    request.step_id,
                    request.payload,
                    int(self._clock() * 1000),
                    request.fresh,
                )
            )
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(settled.wait(), self._sweep_interval)
                settled.clear()
                answer = self._answers.pop(rid, None)
                if answer is not None:
                    return reply_from_bytes(base64.b64decode(answer))
                announced = rid in self._announced
                stored = await self._store.get_reply(rid)
                if stored is not None:
                    if not announced:
                        # Out of the queue for good, so no gateway forwards it again once
                        # the executor has consumed the reply. An announced answer
                        # left the queue in the transaction that announced it.
                        await self._store.dequeue_request(rid)
                    return reply_from_bytes(stored)
                if await self._store.request_lapsed(rid):
                    await self._store.dequeue_request(rid)
                    raise WorkerStoppedResponding(f"the worker running {rid} was lost before it answered")
        finally:
            if self._waiting.get(rid) is settled:
                del self._waiting[rid]
                self._announced.discard(rid)
                self._answers.pop(rid, None)

    def send(self, message: ExecutorMessage) -> None:
        """Nothing to do: replies reach `dispatch` stored already, and checkpoints are never offered."""

    async def wait_for_worker(self, app_name: str, function_slug: str, timeout: float) -> None:
        """Returns at once: `dispatch` itself waits in the queue for a worker."""
